// ngx_ws_heartbeat: the heartbeat state machine for one side (client or
// upstream) of a proxied WebSocket. A pure object: events in, actions out,
// explicit clocks (monotonic ms for deadlines, us for RTT). No nginx types.
// The configuration and the connection's Ping key are the caller's (the
// configuration is the same for every connection of a location) and come
// with each call that needs them: the machine keeps only what is its own,
// 44 bytes per side (its past moments in 32 bits: see heartbeat_times).
#pragma once

#include "cxx17.hpp"

#include <cstddef>
#include <cstdint>

// Hidden in the module's shared object: calls inside it bind directly and
// inline (no PLT, no semantic interposition); nginx finds the module
// through ngx_modules, not through these names.
#pragma GCC visibility push(hidden)

namespace wshb {

// Each of a configuration's times is at most this (30 days; the glue's
// directives accept no more: NGX_HTTP_WS_HEARTBEAT_MAX_TIME, checked
// there against this): the machine's 32-bit times rely on it.
constexpr std::uint32_t max_config_ms = 30u * 24 * 60 * 60 * 1000;

struct heartbeat_config {
    std::uint32_t interval_ms = 30000; // idle time before a Ping
    std::uint32_t timeout_ms = 10000;  // silence after a written Ping => dead
    std::uint32_t read_timeout_ms = 0; // no data frame for this long => close
    std::uint32_t send_timeout_ms = 0; // write blocked this long => close
    bool ping = true;                  // false: no Pings, only the timeouts
};

enum class close_reason : std::uint8_t {
    none = 0,
    heartbeat_timeout, // no bytes within timeout after a Ping
    read_timeout,      // no data frame within read_timeout
    send_timeout       // writes blocked for send_timeout
};

const char* to_string(close_reason r) noexcept;

struct action {
    enum kind_t : std::uint8_t { none, send_ping, close };
    kind_t kind = none;
    close_reason reason = close_reason::none;
};

// Module Ping payload, 16 bytes: tag "wshb" (4) + sequence (4, big endian)
// + the connection's key (4, big endian) + 4 zero bytes. Nothing in it
// tells the peer anything but what it already knows (how many Pings it got,
// the key it saw in the first one): no clock. The key is the caller's
// random value for the connection: it tells this module's Pongs from those
// of another heartbeat with the same tag (another nginx with this module
// further along the path), whose sequence numbers run the same way. The
// zero bytes keep the size the relay holds candidate Pongs at
// (candidate_pong_size in outbound.hpp).
constexpr std::size_t ping_payload_size = 16;

// Lays out the Ping payload of sequence number seq and key (make_ping()'s,
// and what a queued Ping is built again from: src/frame_builder.hpp).
inline void ping_payload(std::uint8_t* out, std::uint32_t seq,
                         std::uint32_t key) noexcept
{
    out[0] = 'w';
    out[1] = 's';
    out[2] = 'h';
    out[3] = 'b';

    for (std::size_t i = 0; i < 4; i++) {
        out[4 + i] = static_cast<std::uint8_t>(seq >> (24 - 8 * i));
        out[8 + i] = static_cast<std::uint8_t>(key >> (24 - 8 * i));
        out[12 + i] = 0;
    }
}

// The machine's times (heartbeat_times below): how often on_timer() must
// run at the latest while the machine runs, which next_deadline() asks
// for (2^30 ms, 12.4 days).
constexpr std::uint64_t refresh_ms = std::uint64_t(1) << 30;

class heartbeat {
public:
    heartbeat() noexcept
        : state_(stopped), ping_(false), blocked_(false), answered_(false),
          unwritten_(false)
    {
    }

    // Starts the machine at `now_ms`: the peer counts as just heard from.
    // Only cf.ping is kept; the other calls take the same configuration.
    // The ms clock (now_ms of every call) never goes back, and the times
    // of cf are at most max_config_ms.
    void start(const heartbeat_config& cf, std::uint64_t now_ms) noexcept;

    // Events.
    // (the three per-read/write events are one store each, inline)
    void on_receive(std::uint64_t now_ms) noexcept // any bytes from peer
    {
        last_receive_ = static_cast<std::uint32_t>(now_ms);
    }
    void on_data(std::uint64_t now_ms) noexcept // data frame from peer
    {
        last_data_ = static_cast<std::uint32_t>(now_ms);
    }

    // The Ping of the last make_ping() hit the socket (all of its bytes):
    // it is sent now, and outstanding (unless stopped). now_ms is the
    // caller's clock for deadlines: the Pong deadline runs from it, and
    // any bytes received at or after it answer the Ping. now_us is the
    // same monotonic clock in us, read at the write: the RTT of its answer
    // counts from it. now_us / 1000 must not be behind now_ms (the ms clock
    // may be a cached reading of the us one); now_ms is kept exactly while
    // it is at most 255 ms behind, else taken as now_us / 1000 - 255.
    void on_ping_written(std::uint64_t now_ms, std::uint64_t now_us) noexcept;

    // The Ping on_timer() asked for could not be queued (no random bytes
    // for its mask, the queue refused it), whether or not make_ping() was
    // called for it: back to idle, with the next Ping due an interval after
    // now_ms; the sequence number a make_ping() took for it is given back.
    // The read and send timeouts keep running as before, and the latest
    // written Ping can still be answered. No effect when no Ping was asked
    // for or made, or once it is written.
    void on_ping_not_sent(std::uint64_t now_ms) noexcept;

    void on_write_blocked(std::uint64_t now_ms) noexcept; // write to peer short
    void on_write_progress() noexcept { blocked_ = false; } // write done

    // A Pong from the peer; key is the connection's key, as given to
    // make_ping(). Returns true when the Pong is ours: exactly a payload of
    // ours (ping_payload_size bytes: our tag, our key, zeros, and a
    // sequence among the latest 2^16 Pings made); the caller swallows it
    // (the other endpoint never sees the module's Pongs). False otherwise
    // (another tag, another key: the endpoints' own, or another module's):
    // the caller relays it.
    //
    // A Pong of ours is an answer, and *sampled (if given) is set, only
    // when it is the first Pong for the latest Ping written: it is counted
    // in pongs() and gives an RTT sample, now_us minus the send time that
    // on_ping_written() recorded (last, min, smoothed 7/8 + 1/8). Nothing
    // the peer puts in the payload moves the RTT. Any other Pong of ours
    // (to an older Ping, a repeat of an answered one, or to a Ping made but
    // not written yet) is swallowed and neither counted nor measured: each
    // Ping is answered at most once. The caller counts its own figures
    // (Pongs, RTT) only when *sampled.
    bool on_pong(const std::uint8_t* payload, std::size_t len,
                 std::uint32_t key, std::uint64_t now_us,
                 bool* sampled = nullptr) noexcept;

    // Timer fired (or any time): what to do now. send_ping: the caller must
    // build a Ping with make_ping() and queue it, then report
    // on_ping_written() once it is written, or on_ping_not_sent() if it
    // cannot be queued; close: the peer is dead or timed out. After close,
    // the machine is stopped (returns none).
    action on_timer(const heartbeat_config& cf, std::uint64_t now_ms) noexcept;

    // Absolute time (ms) at which on_timer() must run next; 0 = no timer
    // (stopped). A Ping is due once the peer has been silent for the
    // interval; on_timer() sends it up to ping_slack() (1/16 of the
    // interval) before that. Never later than now_ms + refresh_ms while the
    // machine runs: the caller runs on_timer() by then (heartbeat_times).
    std::uint64_t next_deadline(const heartbeat_config& cf,
                                std::uint64_t now_ms) const noexcept;

    // Fills the Ping payload (ping_payload_size bytes) with the next
    // sequence number and `key` (the connection's random value; the same
    // for every Ping of the machine, and passed again to on_pong()), and
    // takes that number. Until on_ping_written() or on_ping_not_sent()
    // reports on it, another call makes the same Ping again.
    std::size_t make_ping(std::uint8_t* out, std::uint32_t key) noexcept
    {
        ping_payload(out, next_ping(), key);
        return ping_payload_size;
    }

    // make_ping() without the payload: takes the number and returns it
    // (the caller queues the Ping as its number: src/frame_builder.hpp).
    std::uint32_t next_ping() noexcept
    {
        // one Ping at a time: a Ping made again before it is reported
        // keeps its number
        if (!unwritten_) {
            pings_++;
            unwritten_ = true;
        }

        return pings_ - 1;
    }

    void stop() noexcept; // no more actions, no deadline

    static std::uint32_t ping_slack(const heartbeat_config& cf) noexcept
    {
        return cf.interval_ms / 16;
    }

    // Sends Pings (configured to, and not stopped).
    bool pinging() const noexcept { return ping_ && state_ != stopped; }

    // Figures.
    // pings: made (queued), not given back; pongs: answers, at most one
    // per Ping, each an RTT sample; rtt_last_us: 0 = no sample yet;
    // rtt_samples saturates at 65535
    std::uint32_t pings() const noexcept { return pings_; }
    std::uint32_t pongs() const noexcept { return pongs_; }
    std::uint64_t rtt_last_us() const noexcept { return rtt_last_; }
    std::uint64_t rtt_min_us() const noexcept { return rtt_min_; }
    std::uint64_t rtt_smoothed_us() const noexcept { return srtt_; }
    std::uint32_t rtt_samples() const noexcept
    {
        return pongs_ < 0xffff ? pongs_ : 0xffff;
    }

private:
    // idle: the next Ping is due at last_receive + interval.
    // queued: on_timer() asked for a Ping, not written yet.
    // outstanding: a Ping was written at written_ms(); it stops being
    // outstanding as soon as last_receive >= written_ms() (so on_receive()
    // stays one store, and the state is settled lazily).
    enum state_t { stopped, idle, queued, outstanding };

    state_t settled(std::uint64_t now_ms) const noexcept;

    // heartbeat_times. The three past moments last_receive_, last_data_
    // and blocked_since_ are kept as the low 32 bits of the ms clock, and
    // read as their age: now_ms - t, taken in 32 bits, exact while the
    // true age is below 2^32 ms (49.7 days); at() gives a moment back on
    // the 64-bit clock. (The write of the latest Ping keeps all 64 bits of
    // its us clock: the RTT of a Pong however late, and no wrap there.)
    //
    // Every read of a moment compares its age with one of cf's times
    // (<= max_config_ms, 30 days: the glue's ws_heartbeat_interval,
    // _timeout, _read_timeout and _send_timeout accept no more, see
    // NGX_HTTP_WS_HEARTBEAT_MAX_TIME), or two moments (settled():
    // last_receive >= written_ms(); stuck_since(): the later of two).
    // Interval + timeout can reach 60 days of silence, so the ages are
    // kept below 2^32 by two rules, not by the configuration:
    //
    // 1. on_timer() ends by saturating each age at max_config_ms
    //    (saturate()): an older moment is stored as max_config_ms ago.
    //    Each test "age >= x" with x <= max_config_ms answers the same for
    //    it, the later of two moments stays the later (saturation keeps
    //    the order, ties aside, and a tie of saturated moments is a tie of
    //    moments both older than every x), and settled() answers the same:
    //    once on_timer()'s checks have passed, an outstanding Ping is
    //    younger than cf.timeout_ms <= max_config_ms (older, it closed), so
    //    a saturated last_receive stays before its write (without cf.ping
    //    no check reads the state).
    // 2. next_deadline() is never later than now_ms + refresh_ms (2^30 ms)
    //    while the machine runs, and the caller runs on_timer() by then
    //    (the glue: the connection's timer, at most ~0.5 s late). The
    //    oldest age ever read is then max_config_ms + refresh_ms + the
    //    timer's lateness: 30 + 12.4 days + lateness < 49.7 days, with
    //    7.3 days of lateness to spare. (The extra wake-up costs only
    //    intervals over 12.4 days one timer event per 12.4 days.)
    //
    // A stopped machine reads no moment. Measured (bench/sizeof_ctx): the
    // machine 56 -> 44 bytes.
    static std::uint64_t age(std::uint32_t t, std::uint64_t now_ms) noexcept
    {
        return static_cast<std::uint32_t>(static_cast<std::uint32_t>(now_ms)
                                          - t);
    }
    static std::uint64_t at(std::uint32_t t, std::uint64_t now_ms) noexcept
    {
        return now_ms - age(t, now_ms);
    }
    void saturate(std::uint64_t now_ms) noexcept;

    // The latest written Ping's send time on the caller's ms clock.
    std::uint64_t written_ms() const noexcept
    {
        return written_us() / 1000 - written_lag_;
    }
    std::uint64_t written_us() const noexcept
    {
        return std::uint64_t(written_us_hi_) << 32 | written_us_lo_;
    }

    // A queued Ping that cannot be written: the peer neither reads (the
    // writes block) nor sends; from when both are true.
    std::uint64_t stuck_since(std::uint64_t now_ms) const noexcept
    {
        std::uint64_t b = at(blocked_since_, now_ms);
        std::uint64_t r = at(last_receive_, now_ms);

        return b > r ? b : r;
    }

    // (all 4-byte fields: the machine is 4-aligned, 44 bytes)
    std::uint32_t last_receive_ = 0;  // ms (or a Ping not sent, see there)
    std::uint32_t last_data_ = 0;     // ms
    std::uint32_t blocked_since_ = 0; // ms, valid while blocked_
    std::uint32_t written_us_hi_ = 0; // us, the latest written Ping's write
    std::uint32_t written_us_lo_ = 0;
    std::uint32_t pings_ = 0;    // Pings made: the last one's sequence + 1
    std::uint32_t pongs_ = 0;    // answers; also the RTT samples
    std::uint32_t rtt_last_ = 0; // us, samples clamped to 32 bits
    std::uint32_t rtt_min_ = 0;
    std::uint32_t srtt_ = 0;
    // ms: written_us() / 1000 - the write's now_ms (the caller's ms clock
    // may be cached behind its us one), so written_ms() is that now_ms
    std::uint8_t written_lag_ = 0;
    state_t state_ : 2;
    bool ping_ : 1;
    bool blocked_ : 1;
    bool answered_ : 1;  // the latest written Ping had its answer
    bool unwritten_ : 1; // the latest Ping made is not written yet
};

} // namespace wshb

#pragma GCC visibility pop
