// ngx_ws_heartbeat: the heartbeat state machine for one side (client or
// upstream) of a proxied WebSocket. A pure object: events in, actions out,
// explicit clocks (monotonic ms for deadlines, us for RTT). No nginx types.
// The configuration is the caller's (it is the same for every connection of
// a location) and comes with each call that needs it: the machine keeps only
// what is its own, 56 bytes per side.
#pragma once

#include <cstddef>
#include <cstdint>

// Hidden in the module's shared object: calls inside it bind directly and
// inline (no PLT, no semantic interposition); nginx finds the module
// through ngx_modules, not through these names.
#pragma GCC visibility push(hidden)

namespace wshb {

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

// Module Ping payload: tag "wshb" (4) + sequence (4, big endian) + send time
// in microseconds (8, big endian) = 16 bytes.
constexpr std::size_t ping_payload_size = 16;

class heartbeat {
public:
    heartbeat() noexcept : ping_(false), blocked_(false), sampled_(false) {}

    // Starts the machine at `now_ms`: the peer counts as just heard from.
    // Only cf.ping is kept; the other calls take the same configuration.
    void start(const heartbeat_config& cf, std::uint64_t now_ms) noexcept;

    // Events.
    // (the three per-read/write events are one store each, inline)
    void on_receive(std::uint64_t now_ms) noexcept // any bytes from peer
    {
        last_receive_ = now_ms;
    }
    void on_data(std::uint64_t now_ms) noexcept // data frame from peer
    {
        last_data_ = now_ms;
    }
    void on_ping_written(std::uint64_t now_ms) noexcept;  // ours hit the socket
    void on_write_blocked(std::uint64_t now_ms) noexcept; // write to peer short
    void on_write_progress() noexcept { blocked_ = false; } // write done

    // A Pong from the peer. True when it answers one of our Pings (payload
    // is ours: tag matches and sequence is one we sent, the latest 2^16):
    // the caller swallows it. When it answers the latest Ping, an RTT sample
    // now_us - send time is taken (last, min, smoothed 7/8 + 1/8), and
    // *sampled (if given) says so.
    bool on_pong(const std::uint8_t* payload, std::size_t len,
                 std::uint64_t now_us, bool* sampled = nullptr) noexcept;

    // Timer fired (or any time): what to do now. send_ping: the caller must
    // build a Ping with make_ping() and queue it; close: the peer is dead or
    // timed out. After close, the machine is stopped (returns none).
    action on_timer(const heartbeat_config& cf, std::uint64_t now_ms) noexcept;

    // Absolute time (ms) at which on_timer() must run next; 0 = no timer.
    // A Ping is due once the peer has been silent for the interval; on_timer()
    // sends it up to ping_slack() (1/16 of the interval) before that.
    std::uint64_t next_deadline(const heartbeat_config& cf) const noexcept;

    // Fills the Ping payload (ping_payload_size bytes), bumps the sequence.
    std::size_t make_ping(std::uint8_t* out, std::uint64_t now_us) noexcept;

    void stop() noexcept; // no more actions, no deadline

    static std::uint32_t ping_slack(const heartbeat_config& cf) noexcept
    {
        return cf.interval_ms / 16;
    }

    // Sends Pings (configured to, and not stopped).
    bool pinging() const noexcept { return ping_ && state_ != stopped; }

    // Figures.
    std::uint32_t pings() const noexcept;
    std::uint32_t pongs() const noexcept;       // our Pongs matched
    std::uint64_t rtt_last_us() const noexcept; // 0 = no sample yet
    std::uint64_t rtt_min_us() const noexcept;
    std::uint64_t rtt_smoothed_us() const noexcept;
    std::uint32_t rtt_samples() const noexcept; // saturates at 65535

private:
    // idle: the next Ping is due at last_receive_ + interval.
    // queued: on_timer() asked for a Ping, not written yet.
    // outstanding: a Ping was written at written_; it stops being
    // outstanding as soon as last_receive_ >= written_ (so on_receive()
    // stays one store, and the state is settled lazily).
    enum state_t : std::uint8_t { stopped, idle, queued, outstanding };

    state_t settled() const noexcept;

    // A queued Ping that cannot be written: the peer neither reads (the
    // writes block) nor sends; from when both are true.
    std::uint64_t stuck_since() const noexcept
    {
        return blocked_since_ > last_receive_ ? blocked_since_ : last_receive_;
    }

    std::uint64_t last_receive_ = 0;  // ms
    std::uint64_t last_data_ = 0;     // ms
    std::uint64_t written_ = 0;       // ms, our outstanding Ping's write
    std::uint64_t blocked_since_ = 0; // ms, valid while blocked_
    std::uint32_t pings_ = 0;         // also the next sequence number
    std::uint32_t pongs_ = 0;
    std::uint32_t rtt_last_ = 0; // us, samples clamped to 32 bits
    std::uint32_t rtt_min_ = 0;
    std::uint32_t srtt_ = 0;
    std::uint16_t samples_ = 0; // saturating
    state_t state_ = stopped;
    bool ping_ : 1;
    bool blocked_ : 1;
    bool sampled_ : 1; // the latest Ping already gave its RTT sample
};

} // namespace wshb

#pragma GCC visibility pop
