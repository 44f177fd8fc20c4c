// ngx_ws_heartbeat: one direction of the relay as seen by its send():
// relay bytes, frame boundaries, injected control frames and swallowed Pongs.
// This is the injection planner and the send-wrapper algorithm in one place,
// independent of nginx: the glue supplies an Io object that performs the real
// write. No heap, no exceptions; the relay path parses headers only.
#pragma once

#include "cxx17.hpp"

#include <cstddef>
#include <cstdint>

#include "frame.hpp"
#include "frame_builder.hpp"

// Hidden in the module's shared object: calls inside it bind directly and
// inline (no PLT, no semantic interposition); nginx finds the module
// through ngx_modules, not through these names.
#pragma GCC visibility push(hidden)

namespace wshb {

// Io::write() results (same values as NGX_ERROR and NGX_AGAIN).
constexpr long io_error = -1;
constexpr long io_again = -2;

// The Io concept (all called synchronously from send()/flush()):
//   long write(const std::uint8_t* p, std::size_t n);
//       the real send: bytes written (may be short, 0 counts as again),
//       io_again or io_error. After io_again for (p, n) the next write on
//       this direction is retried with the same p and at least n bytes
//       (OpenSSL's SSL_write retry rule); outbound guarantees that.
//   const std::uint8_t* frame(const queued_frame& f);
//       the bytes of the queued frame f (f.size of them, e.g. by
//       build_queued()), laid out for the write attempt that follows:
//       the same bytes at the same address at every call for the same f
//       (e.g. one buffer per thread, built again at each call), so that a
//       retry of them after io_again is the same write (see write_module()).
//   bool match_pong(const std::uint8_t* payload, std::size_t n);
//       a complete candidate Pong (FIN, RSV 0, 16-byte payload, unmasked
//       here) was absorbed: true to swallow it, false to forward it.
//   void on_header(const frame_header& h);  // a frame header was consumed
//   void on_frame(const frame_header& h, const std::uint8_t* payload,
//                 std::size_t n);           // a frame ended (control:
//                                           // captured payload, unmasked)
//   void on_error(scan_error e);            // stream rejected: passthrough

constexpr std::size_t candidate_pong_size = 6 + 16; // masked, 16 B payload

class outbound {
public:
    // sender: who produced the relay bytes (client: masked frames).
    // swallow: absorb candidate Pongs and ask Io::match_pong().
    outbound(role sender, bool swallow, bool allow_rsv1) noexcept;

    // Queue one complete control frame to inject at the next boundary of the
    // written stream, as what makes it (Io::frame() lays its bytes out).
    // False if one is already queued, if it is none (size 0) or larger than
    // inject_capacity, in passthrough, or once the stream is ended. last:
    // the frame ends the stream (a Close sent on behalf of the other peer):
    // once it is written whole, relay bytes are consumed without being
    // written (discarding()).
    bool queue(const queued_frame& f, bool last = false) noexcept;
    bool queued() const noexcept; // queued bytes not yet fully written
    void drop_queued() noexcept;  // forget it (unless partially written)

    // The last frame is written: what the sender still sends is parsed (the
    // Io hears of its frames as usual) but never written.
    bool discarding() const noexcept { return end_ == end_discarding; }

    // The send() wrapper body: write relay bytes p[0..n) (and any queued or
    // held module bytes that must go first). Returns the number of relay
    // bytes consumed (> 0), or io_again (nothing consumed, blocked), or
    // io_error. Returns less than n only when Io::write() was short or
    // returned io_again (so the real send cleared the ready flag).
    template <class Io>
    long send(Io& io, const std::uint8_t* p, std::size_t n) noexcept;

    // Write module-owned bytes (held Pong to forward, queued frame) if the
    // written stream is at a boundary and no relay retry is owed. Returns
    // io_again if blocked, io_error, or 0 (nothing left or not allowed now).
    template <class Io>
    long flush(Io& io) noexcept;

    // The sender's stream has ended (EOF or error): the bytes of a Pong
    // absorbed so far can no longer make a whole one; forward them as they
    // are, then flush(). Returns as flush().
    template <class Io>
    long release(Io& io) noexcept;

    bool passthrough() const noexcept; // gave up: plain forwarding
    bool pending() const noexcept;     // module bytes to write: flush() them
    bool in_message() const noexcept;  // a fragmented message unfinished
    bool blocked() const noexcept;     // last write was short or again
    bool at_boundary() const noexcept; // written stream between frames
    const frame_header& last_header() const noexcept;

    // Who produced the relay bytes (the constructor's `sender`): the
    // client for the stream written to the upstream (masked frames).
    role sender() const noexcept
    {
        return flag(f_client) ? role::client : role::server;
    }

private:
    // The scanner sees relay bytes as they are consumed: written, or
    // absorbed into the hold. The written stream is therefore at a boundary
    // when a hold is being absorbed (it started at a boundary and none of
    // it is written) or when there is no hold and the scanner is at one.
    //
    // inject_: the queued frame (inject_.size == 0: none), inject_off_
    // bytes of it written; once a write of it was attempted
    // (f_inject_started) it is in flight and goes out whole before
    // anything else. Not its bytes: Io::frame() lays them out for each
    // write attempt (12 bytes here instead of 28 and a length; measured,
    // bench/sizeof_ctx: a side 88 -> 72 bytes). hold(): an absorbed candidate
    // Pong, hold_len_ bytes of it taken in and hold_off_ of them written
    // while forwarding. No copy of them is kept: the scanner has seen
    // exactly those bytes (a hold starts at a boundary, and no relay byte
    // is fed while it is absorbing or forwarding), so when it turns to
    // forwarding they are laid out again from the scanner's state
    // (forward_hold(): sc_.rewire()), at sc_.wire(), where they stay put
    // for the retry rule until the hold is written and relay bytes go on.
    //
    // retry(): the kind of bytes the last io_again (or 0) was on and
    // retry_len_ their length: the next write must repeat them.
    enum hold_t : std::uint8_t { hold_none, hold_absorbing, hold_forwarding };
    enum retry_t : std::uint8_t {
        retry_none,
        retry_relay,
        retry_inject,
        retry_hold
    };
    // flags_: hold_t in bits 0-1, retry_t in bits 2-3, then these.
    // Passthrough is not stored: it is the scanner's error state.
    enum : std::uint8_t {
        f_client = 0x10,        // relay frames are masked
        f_swallow = 0x20,       // absorb candidate Pongs
        f_blocked = 0x40,       // last write short or io_again
        f_inject_started = 0x80 // a write of inject_ was attempted
    };

    // Relay writes are cut to this so that retry_len_ fits 32 bits.
    static constexpr std::size_t max_relay_write = std::size_t(1) << 30;

    bool flag(std::uint8_t f) const noexcept { return (flags_ & f) != 0; }
    void set(std::uint8_t f) noexcept { flags_ |= f; }
    void clear(std::uint8_t f) noexcept
    {
        flags_ &= static_cast<std::uint8_t>(~f);
    }
    hold_t hold() const noexcept { return hold_t(flags_ & 0x03); }
    retry_t retry() const noexcept { return retry_t((flags_ >> 2) & 0x03); }
    void set_hold(hold_t h) noexcept
    {
        flags_ = static_cast<std::uint8_t>((flags_ & ~0x03) | h);
    }
    void set_retry(retry_t r) noexcept
    {
        flags_ = static_cast<std::uint8_t>((flags_ & ~0x0c) | (r << 2));
    }

    bool relay_boundary() const noexcept;
    void forward_hold() noexcept;
    std::uint8_t pong_byte1() const noexcept;
    std::size_t pong_frame_size() const noexcept;
    bool candidate(const std::uint8_t* p, std::size_t n) const noexcept;
    std::size_t relay_length(const std::uint8_t* p,
                             std::size_t n) const noexcept;
    void give_up() noexcept;

    template <class Io>
    long put(Io& io, retry_t kind, const std::uint8_t* p,
             std::size_t n) noexcept;
    template <class Io>
    void feed(Io& io, const std::uint8_t* p, std::size_t n) noexcept;
    template <class Io>
    long write_module(Io& io) noexcept;
    template <class Io>
    std::size_t absorb(Io& io, const std::uint8_t* p, std::size_t n) noexcept;

    basic_frame_scanner<16> sc_;
    queued_frame inject_;
    std::uint8_t inject_off_ = 0;
    std::uint8_t hold_len_ = 0;
    std::uint8_t hold_off_ = 0;
    std::uint8_t flags_ = 0;
    // end_last_queued: the queued frame is the last; end_discarding: it
    // has been written and relay bytes are discarded.
    enum end_t : std::uint8_t { end_open, end_last_queued, end_discarding };
    end_t end_ = end_open;
    std::uint32_t retry_len_ = 0;
};

inline outbound::outbound(role sender, bool swallow, bool allow_rsv1) noexcept
    : sc_(sender, allow_rsv1)
{
    flags_ = static_cast<std::uint8_t>((sender == role::client ? f_client : 0)
                                       | (swallow ? f_swallow : 0));
}

inline bool outbound::queue(const queued_frame& f, bool last) noexcept
{
    // one frame at a time, whole, and never into a rejected or ended stream
    if (inject_.size != 0 || f.size == 0 || f.size > inject_capacity
        || passthrough() || end_ != end_open)
    {
        return false;
    }

    inject_ = f;
    inject_off_ = 0;
    clear(f_inject_started);
    end_ = last ? end_last_queued : end_open;

    return true;
}

inline bool outbound::queued() const noexcept
{
    return inject_.size != 0;
}

inline void outbound::drop_queued() noexcept
{
    // a frame in flight must be finished or the stream breaks
    if (flag(f_inject_started)) {
        return;
    }

    inject_.size = 0;
    inject_off_ = 0;

    // the last frame not started: the stream goes on
    if (end_ == end_last_queued) {
        end_ = end_open;
    }
}

inline bool outbound::passthrough() const noexcept
{
    return sc_.error() != scan_error::none;
}

inline bool outbound::in_message() const noexcept
{
    return sc_.in_message();
}

inline bool outbound::pending() const noexcept
{
    return inject_.size != 0 || hold() == hold_forwarding;
}

inline bool outbound::blocked() const noexcept
{
    return flag(f_blocked);
}

inline bool outbound::relay_boundary() const noexcept
{
    if (hold() == hold_absorbing) {
        return true;
    }

    return hold() == hold_none && sc_.at_boundary();
}

inline bool outbound::at_boundary() const noexcept
{
    return !flag(f_inject_started) && relay_boundary();
}

inline const frame_header& outbound::last_header() const noexcept
{
    return sc_.header();
}

// The hold (absorbing) is to be written after all: its bytes are laid out
// again from the scanner.
inline void outbound::forward_hold() noexcept
{
    set_hold(hold_forwarding);
    hold_off_ = 0;
    sc_.rewire(hold_len_);
}

inline std::uint8_t outbound::pong_byte1() const noexcept
{
    return static_cast<std::uint8_t>((flag(f_client) ? 0x80 : 0x00) | 16);
}

inline std::size_t outbound::pong_frame_size() const noexcept
{
    return flag(f_client) ? candidate_pong_size : candidate_pong_size - 4;
}

// Could p[0..n) (n >= 1), at a boundary, start a FIN Pong with RSV 0 and a
// 16-byte payload? Only its first two bytes decide.
inline bool outbound::candidate(const std::uint8_t* p,
                                std::size_t n) const noexcept
{
    return p[0] == 0x8a && (n < 2 || p[1] == pong_byte1());
}

// How many relay bytes of p[0..n) the next write may carry: to the next
// boundary when a queued frame waits for one, and never past a boundary
// where a candidate Pong starts (it must be absorbed, not written).
//
// The frames are parsed once, by feed() after the write, which also tells
// the Io about them. Here they are only skipped by their lengths
// (frame_extent: no checks, no state), which is all a cut needs: where a
// bad frame would make a skip land on a false boundary, the cut there
// changes only how the bytes are split into writes, for feed() turns the
// stream to passthrough at the bad frame, before those bytes are reached.
inline std::size_t outbound::relay_length(const std::uint8_t* p,
                                          std::size_t n) const noexcept
{
    if (n > max_relay_write) {
        n = max_relay_write;
    }

    if (passthrough()) {
        return n;
    }

    bool cut_inject = inject_.size != 0 && !flag(f_inject_started);

    if (!flag(f_swallow) && !cut_inject) {
        return n;
    }

    // the end of the frame in progress, or of the first one
    std::size_t off = sc_.at_boundary() ? 0 : sc_.until_boundary(p, n);

    if (off == 0) {
        if (!flag(f_swallow)) {
            return n;
        }

        off = frame_extent(p, n);
    }

    if (off == decltype(sc_)::npos || off == no_extent) {
        return n;
    }

    while (off < n) {
        if (cut_inject || candidate(p + off, n - off)) {
            return off;
        }

        std::size_t k = frame_extent(p + off, n - off);

        if (k == no_extent) {
            return n;
        }

        off += k;
    }

    return n;
}

// Stream rejected (the scanner's error is the passthrough state): a hold
// is forwarded first; a queued frame not yet started is dropped.
inline void outbound::give_up() noexcept
{
    if (hold() == hold_absorbing) {
        forward_hold();
    }

    drop_queued();
}

// One Io::write() of n > 0 bytes of the given kind. Returns the bytes
// written (fewer than n: short write, f_blocked set), 0 on io_again or a
// 0 write (f_blocked set, retry recorded), or io_error.
template <class Io>
WSHB_HOT_INLINE long outbound::put(Io& io, retry_t kind,
                                   const std::uint8_t* p,
                                   std::size_t n) noexcept
{
    long w = io.write(p, n);

    if (w == io_again || w == 0) {
        // OpenSSL may have taken them: the next write repeats these bytes
        set_retry(kind);
        retry_len_ = static_cast<std::uint32_t>(n);
        set(f_blocked);
        return 0;
    }

    if (w < 0) {
        return io_error;
    }

    set_retry(retry_none);

    if (static_cast<std::size_t>(w) >= n) {
        return static_cast<long>(n);
    }

    set(f_blocked);
    return w;
}

// Runs relay bytes that were written or absorbed through the scanner.
template <class Io>
WSHB_HOT_INLINE void outbound::feed(Io& io, const std::uint8_t* p,
                                    std::size_t n) noexcept
{
    std::size_t off = 0;

    while (off < n && !passthrough()) {
        // data frames, the common case: no error to look for, no payload
        bool fresh = sc_.at_boundary();
        std::size_t k = sc_.advance_data(p + off, n - off);

        if (k != 0) {
            if (fresh) {
                io.on_header(sc_.header());
            }

            if (sc_.frame_complete()) {
                io.on_frame(sc_.header(), nullptr, 0);
            }

            off += k;
            continue;
        }

        bool had = sc_.header_complete() && !fresh;
        k = sc_.advance(p + off, n - off);

        if (sc_.error() != scan_error::none) {
            give_up();
            io.on_error(sc_.error());
            return;
        }

        if (!had && sc_.header_complete()) {
            io.on_header(sc_.header());
        }

        if (sc_.frame_complete()) {
            const frame_header& h = sc_.header();

            if (is_control(h.op)) {
                io.on_frame(h, sc_.control_payload(), sc_.control_size());
            } else {
                io.on_frame(h, nullptr, 0);
            }
        }

        off += k;
    }
}

// Writes the module bytes that are owed or allowed now: a frame in flight,
// a hold being forwarded, then a queued frame if the written stream is at
// a boundary. Returns 0 when done (or nothing allowed), io_again when a
// write was short or blocked, io_error.
//
// The queued frame's bytes are laid out by Io::frame() for each attempt.
// OpenSSL's retry rule (nginx does not set SSL_MODE_ACCEPT_MOVING_WRITE_
// BUFFER): after SSL_write() wants a retry, the next SSL_write() must pass
// the same address and the same bytes (at least as many). A retry here
// writes from inject_off_ on again (retry_inject is owed first), and
// Io::frame() returns the same address with the same bytes for the same
// frame: a buffer rebuilt identically before each attempt (the glue: one
// buffer per worker, shared by all its connections, which overwrite it in
// between) meets both halves of the rule.
template <class Io>
long outbound::write_module(Io& io) noexcept
{
    for (;;) {
        // the socket said stop during this call
        if (flag(f_blocked)) {
            return io_again;
        }

        // relay bytes are owed first: nothing may come before them
        if (retry() == retry_relay) {
            return 0;
        }

        bool in_flight = inject_.size != 0 && flag(f_inject_started);
        bool allowed = inject_.size != 0 && relay_boundary();

        // a frame in flight goes first, even before a hold
        if (in_flight || allowed) {
            std::size_t n = inject_.size - inject_off_;
            set(f_inject_started);
            long w = put(io, retry_inject, io.frame(inject_) + inject_off_, n);

            if (w < 0) {
                return w;
            }

            inject_off_ = static_cast<std::uint8_t>(inject_off_ + w);

            if (flag(f_blocked)) {
                return io_again;
            }

            inject_.size = 0;
            inject_off_ = 0;
            clear(f_inject_started);

            // the stream ends here: a Pong being absorbed is never written
            if (end_ == end_last_queued) {
                end_ = end_discarding;
                set_hold(hold_none);
                hold_len_ = 0;
                hold_off_ = 0;
                return 0;
            }
            continue;
        }

        if (hold() == hold_forwarding) {
            std::size_t n = hold_len_ - hold_off_;
            long w = put(io, retry_hold, sc_.wire() + hold_off_, n);

            if (w < 0) {
                return w;
            }

            hold_off_ = static_cast<std::uint8_t>(hold_off_ + w);

            if (flag(f_blocked)) {
                return io_again;
            }

            set_hold(hold_none);
            hold_len_ = 0;
            hold_off_ = 0;
            continue;
        }

        return 0;
    }
}

// Takes relay bytes into the hold while they still look like a candidate
// Pong. Returns the bytes taken (0 when the hold turned to forwarding).
template <class Io>
std::size_t outbound::absorb(Io& io, const std::uint8_t* p,
                             std::size_t n) noexcept
{
    std::size_t size = pong_frame_size();

    // the second byte arrived late and says it is not a candidate
    if (hold_len_ == 1 && p[0] != pong_byte1()) {
        forward_hold();
        return 0;
    }

    std::size_t k = size - hold_len_;

    if (n < k) {
        k = n;
    }

    hold_len_ = static_cast<std::uint8_t>(hold_len_ + k);
    feed(io, p, k);

    if (hold_len_ == size && hold() == hold_absorbing) {
        if (io.match_pong(sc_.control_payload(), sc_.control_size())) {
            set_hold(hold_none);
            hold_len_ = 0;
        } else {
            forward_hold();
        }
    }

    return k;
}

// Inline into the glue's send() wrapper, its one caller there: one call
// and one set of register saves a frame instead of two. Measured
// (callgrind, the module per 64 B message, bench/run.py --only profile):
// 594 -> 555 instructions.
template <class Io>
WSHB_HOT_INLINE long outbound::send(Io& io, const std::uint8_t* p,
                                    std::size_t n) noexcept
{
    std::size_t done = 0;

    clear(f_blocked);

    // The common case first, the loop's first round without its questions:
    // nothing of ours queued or held, no retry owed, the stream open, and
    // p does not start a candidate Pong. Measured (make bench-callgrind,
    // one 64 B frame a call): 255 -> 202 instructions a frame.
    if (hold() == hold_none && retry() == retry_none && inject_.size == 0
        && end_ == end_open
        && n != 0
        && !(flag(f_swallow) && sc_.at_boundary() && candidate(p, n)))
    {
        // (relay_length() in short for one frame that fills p)
        std::size_t len = n;

        if (n > max_relay_write
            || (flag(f_swallow)
                && !(sc_.at_boundary() && frame_extent(p, n) == n)))
        {
            len = relay_length(p, n);
        }

        long w = put(io, retry_relay, p, len);

        if (w <= 0) {
            return w < 0 ? w : io_again;
        }

        feed(io, p, static_cast<std::size_t>(w));

        // (a callback may have queued a frame: the loop writes it)
        if (static_cast<std::size_t>(w) == n && !pending()) {
            return w;
        }

        done = static_cast<std::size_t>(w);
    }

    for (;;) {
        // (write_module() has nothing to do unless bytes of ours wait)
        if (pending()) {
            if (write_module(io) == io_error) {
                return io_error;
            }
        }

        if (flag(f_blocked) || done == n) {
            break;
        }

        if (discarding()) {
            feed(io, p + done, n - done);
            return static_cast<long>(n);
        }

        if (hold() == hold_absorbing) {
            done += absorb(io, p + done, n - done);
            continue;
        }

        if (retry() != retry_relay && hold() == hold_none && flag(f_swallow)
            && !passthrough() && sc_.at_boundary()
            && candidate(p + done, n - done))
        {
            set_hold(hold_absorbing);
            hold_len_ = 0;
            hold_off_ = 0;
            continue;
        }

        std::size_t len;

        if (retry() == retry_relay) {
            len = retry_len_ < n - done ? retry_len_ : n - done;
        } else {
            len = relay_length(p + done, n - done);
        }

        long w = put(io, retry_relay, p + done, len);

        if (w < 0) {
            return w;
        }

        if (w > 0) {
            feed(io, p + done, static_cast<std::size_t>(w));
            done += static_cast<std::size_t>(w);
        }
    }

    if (done > 0) {
        return static_cast<long>(done);
    }

    return flag(f_blocked) ? io_again : 0;
}

template <class Io>
long outbound::flush(Io& io) noexcept
{
    clear(f_blocked);

    long r = write_module(io);

    if (r == io_error) {
        return io_error;
    }

    return flag(f_blocked) ? io_again : 0;
}

template <class Io>
long outbound::release(Io& io) noexcept
{
    if (hold() == hold_absorbing && !discarding()) {
        forward_hold();
    }

    return flush(io);
}

} // namespace wshb

#pragma GCC visibility pop
