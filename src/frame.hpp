// ngx_ws_heartbeat: RFC 6455 frame vocabulary and the streaming frame scanner.
// No nginx types, no I/O, no heap, no exceptions.
#pragma once

#include "cxx17.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>

// Hidden in the module's shared object: calls inside it bind directly and
// inline (no PLT, no semantic interposition); nginx finds the module
// through ngx_modules, not through these names.
#pragma GCC visibility push(hidden)

namespace wshb {

enum class opcode : std::uint8_t {
    cont = 0x0,
    text = 0x1,
    binary = 0x2,
    rsv3 = 0x3,
    rsv4 = 0x4,
    rsv5 = 0x5,
    rsv6 = 0x6,
    rsv7 = 0x7,
    close = 0x8,
    ping = 0x9,
    pong = 0xa,
    crsvb = 0xb,
    crsvc = 0xc,
    crsvd = 0xd,
    crsve = 0xe,
    crsvf = 0xf
};

constexpr bool is_control(opcode op) noexcept
{
    return (static_cast<std::uint8_t>(op) & 0x8) != 0;
}

constexpr bool is_reserved(opcode op) noexcept
{
    return (op >= opcode::rsv3 && op <= opcode::rsv7) || op >= opcode::crsvb;
}

constexpr bool is_data(opcode op) noexcept
{
    return op <= opcode::binary;
}

// Who sent the bytes being scanned: frames from a client are masked,
// frames from a server are not (RFC 6455 5.1).
enum class role : std::uint8_t { client, server };

// Why a stream was rejected. After an error the scanner stays in a terminal
// "gave up" state and consumes nothing more.
enum class scan_error : std::uint8_t {
    none = 0,
    bad_opcode,           // reserved opcode 3-7 or 0xb-0xf
    bad_rsv,              // RSV bit set that no extension allows
    bad_control_size,     // control frame payload longer than 125 bytes
    bad_control_fragment, // control frame without FIN
    bad_size,             // length not in its minimal encoding
    bad_size_64,          // 64-bit length with the most significant bit set
    bad_mask,             // mask bit wrong for the sender's role
    bad_continuation,     // continuation frame with no message started
    bad_data_frame        // new data frame inside an unfinished message
};

const char* to_string(scan_error e) noexcept;

// the scanner keeps the error in 4 bits
static_assert(static_cast<int>(scan_error::bad_data_frame) < 16,
              "scan_error fits a nibble");

constexpr std::size_t max_header_size = 14;
constexpr std::size_t max_control_payload = 125;

// 16 bytes: fin and masked are one-bit fields of one byte (read them as
// bools; they have no address).
struct frame_header {
    opcode op = opcode::cont;
    bool fin : 1;
    bool masked : 1;
    std::uint8_t rsv = 0;         // the RSV bits as in byte 0 (0x70 mask)
    std::uint8_t header_size = 0; // 2 .. 14
    std::uint8_t mask[4] = {0, 0, 0, 0};
    std::uint64_t len = 0; // payload length

    // (C++17 has no default member initializers for bit-fields)
    frame_header() noexcept : fin(false), masked(false) {}
};

// Incremental scanner over one direction of a WebSocket stream. It parses
// headers (split headers are kept in a fixed 14-byte buffer), skips data
// payloads without touching them, and captures the first `Capture` bytes of
// each control frame's payload, unmasked. sizeof stays small for Capture 16.
template <std::size_t Capture>
class basic_frame_scanner {
    static_assert(Capture > 0 && Capture <= max_control_payload,
                  "capture at most a whole control payload");

public:
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);

    explicit basic_frame_scanner(role sender, bool allow_rsv1 = false) noexcept;

    // Consume bytes p[0..n), stopping right after the end of the current
    // frame (so at most one frame completes per call). Returns the number of
    // bytes consumed: < n only when a frame completed or on error; 0 on
    // error or when n == 0.
    std::size_t advance(const std::uint8_t* p, std::size_t n) noexcept;

    // advance() for the relay's common case only: the payload of a data
    // frame in progress, or at a boundary a data frame whose header is
    // whole in p[0..n) and accepted as it is. Returns what advance() would
    // and leaves the same state; 0 when it is not that case (nothing
    // consumed: advance() takes it and names any error).
    std::size_t advance_data(const std::uint8_t* p, std::size_t n) noexcept;

    // Look-ahead, consumes nothing: how many bytes of p[0..n) finish the frame
    // in progress (0 when at_boundary()); npos when that frame does not end
    // within p[0..n) or when those bytes would be rejected (or after error).
    std::size_t until_boundary(const std::uint8_t* p,
                               std::size_t n) const noexcept;

    bool at_boundary() const noexcept;     // no frame partially consumed
    bool header_complete() const noexcept; // header of current frame parsed
    bool frame_complete() const noexcept;  // the last advance() ended a frame
    bool in_message() const noexcept;      // fragmented message unfinished
    scan_error error() const noexcept;

    // The current frame's header (valid once header_complete(), and still
    // after frame_complete() until the next frame's first byte).
    const frame_header& header() const noexcept;

    // Control frames: the first min(len, Capture) payload bytes, unmasked.
    // Valid when frame_complete() and the frame is a control frame.
    const std::uint8_t* control_payload() const noexcept;
    std::size_t control_size() const noexcept;

    // For a caller that took in the first n >= 1 bytes of a control frame
    // (fed here, and a prefix of a frame whose header has a 7-bit length
    // and whose payload so far lies within the capture) and now passes
    // them on without having kept a copy: lays those n bytes out again as
    // they were on the wire, contiguous, at wire(). The captured payload is
    // masked again in place, so control_payload() is not valid after this.
    // Call it once; the bytes stay put until the next byte is fed.
    void rewire(std::size_t n) noexcept;
    const std::uint8_t* wire() const noexcept;

private:
    // A header found whole in the buffer at a boundary is decoded in one
    // go (header_whole); one split across calls is decoded a byte at a time
    // straight into h_ (header_byte; no copy of the raw header is kept).
    // Both leave the same state. The low nibble of pos_ counts the header
    // bytes of the current frame consumed so far and is 0 exactly at a
    // boundary; once the header is done it stays at header_size until the
    // payload ends. Its high nibble is the scan_error: pos_ is read as a
    // count only while there is none (so there it is pos_ itself), and
    // pos_ == 0 is "at a boundary, no error". remain_ is the payload still
    // to skip. Control payloads are unmasked into cap(), the tail of buf_;
    // the wire_room bytes before it are where rewire() puts a header.
    enum : std::uint8_t {
        f_client = 0x01,      // sender is a client: frames must be masked
        f_rsv1 = 0x02,        // RSV1 allowed (permessage-deflate)
        f_in_message = 0x04,  // fragmented message unfinished
        f_header_done = 0x08, // h_ holds a complete header
        f_frame_done = 0x10   // the last advance() ended a frame
    };

    std::size_t header_whole(const std::uint8_t* p, std::size_t n) noexcept;
    void unmask(std::uint8_t* out, const std::uint8_t* in, std::size_t n,
                std::size_t off) const noexcept;
    std::size_t header_bytes(const std::uint8_t* p, std::size_t n) noexcept;
    bool header_byte(std::uint8_t b) noexcept;
    bool fail(scan_error e) noexcept;
    bool in_payload() const noexcept
    {
        return pos_ != 0 && (flags_ & f_header_done) != 0;
    }
    std::uint8_t* cap() noexcept { return buf_ + wire_room; }
    const std::uint8_t* cap() const noexcept { return buf_ + wire_room; }

    static constexpr std::size_t wire_room = 6; // a masked 7-bit header

    frame_header h_;
    std::uint64_t remain_ = 0;
    std::uint8_t pos_ = 0;
    std::uint8_t flags_ = 0;
    std::uint8_t buf_[wire_room + Capture];
};

using frame_scanner = basic_frame_scanner<max_control_payload>;

// Fast check on a frame's first byte without a scanner.
constexpr opcode opcode_of(std::uint8_t b0) noexcept
{
    return static_cast<opcode>(b0 & 0x0f);
}

constexpr std::size_t no_extent = static_cast<std::size_t>(-1);

// The size of the frame that starts at p (header and payload), when all of
// it lies in p[0..n); no_extent when it does not. Reads the length fields
// only and judges nothing: it finds where frames end in bytes that a
// scanner will check when they are fed to it.
inline std::size_t frame_extent(const std::uint8_t* p, std::size_t n) noexcept
{
    if (n < 2) {
        return no_extent;
    }

    std::uint8_t len7 = static_cast<std::uint8_t>(p[1] & 0x7f);
    std::size_t size = (p[1] & 0x80) != 0 ? 6 : 2;
    std::uint64_t len = len7;

    if (len7 == 126) {
        size += 2;

        if (n < 4) {
            return no_extent;
        }

        len = (std::uint64_t(p[2]) << 8) | p[3];

    } else if (len7 == 127) {
        size += 8;

        if (n < 10) {
            return no_extent;
        }

        len = 0;
        for (std::size_t i = 2; i < 10; i++) {
            len = (len << 8) | p[i];
        }
    }

    if (n < size || len > n - size) {
        return no_extent;
    }

    return size + static_cast<std::size_t>(len);
}

// The scanner's definitions are here, not in frame.cpp, so that the relay
// loops around it (outbound.hpp) inline its fast path.

template <std::size_t Capture>
inline basic_frame_scanner<Capture>::basic_frame_scanner(
    role sender, bool allow_rsv1) noexcept
    : buf_{}
{
    flags_ = static_cast<std::uint8_t>((sender == role::client ? f_client : 0)
                                       | (allow_rsv1 ? f_rsv1 : 0));
}

template <std::size_t Capture>
inline bool basic_frame_scanner<Capture>::fail(scan_error e) noexcept
{
    pos_ = static_cast<std::uint8_t>((pos_ & 0x0f)
                                     | (static_cast<std::uint8_t>(e) << 4));
    flags_ &= static_cast<std::uint8_t>(~(f_header_done | f_frame_done));
    return false;
}

// Decodes header byte number pos_ into h_. Returns false on a rejection.
template <std::size_t Capture>
bool basic_frame_scanner<Capture>::header_byte(std::uint8_t b) noexcept
{
    if (pos_ == 0) {
        h_.fin = (b & 0x80) != 0;
        h_.rsv = static_cast<std::uint8_t>(b & 0x70);
        h_.op = opcode_of(b);
        h_.masked = false;
        h_.header_size = 0;
        h_.mask[0] = h_.mask[1] = h_.mask[2] = h_.mask[3] = 0;
        h_.len = 0;
        flags_ &= static_cast<std::uint8_t>(~f_header_done);

        // opcodes 3-7 and 0xb-0xf are reserved for future use (5.2)
        if (is_reserved(h_.op)) {
            return fail(scan_error::bad_opcode);
        }

        // RSV2 and RSV3 have no meaning without an extension (5.2)
        if ((h_.rsv & 0x30) != 0) {
            return fail(scan_error::bad_rsv);
        }

        // RSV1 is permessage-deflate's, set only on a message's first frame
        if ((h_.rsv & 0x40) != 0
            && ((flags_ & f_rsv1) == 0 || !is_data(h_.op)
                || h_.op == opcode::cont))
        {
            return fail(scan_error::bad_rsv);
        }

        if (is_control(h_.op)) {
            // control frames must not be fragmented (5.5)
            if (!h_.fin) {
                return fail(scan_error::bad_control_fragment);
            }

        } else if (h_.op == opcode::cont) {
            // a continuation frame needs a message to continue (5.4)
            if ((flags_ & f_in_message) == 0) {
                return fail(scan_error::bad_continuation);
            }

        } else {
            // a new message cannot start inside an unfinished one (5.4)
            if ((flags_ & f_in_message) != 0) {
                return fail(scan_error::bad_data_frame);
            }
        }

        if (!is_control(h_.op)) {
            if (h_.fin) {
                flags_ &= static_cast<std::uint8_t>(~f_in_message);
            } else {
                flags_ |= f_in_message;
            }
        }

        pos_ = 1;
        return true;
    }

    if (pos_ == 1) {
        bool client = (flags_ & f_client) != 0;
        std::uint8_t len7 = static_cast<std::uint8_t>(b & 0x7f);

        h_.masked = (b & 0x80) != 0;

        // a client masks every frame, a server masks none (5.1)
        if (h_.masked != client) {
            return fail(scan_error::bad_mask);
        }

        // a control payload is at most 125 bytes (5.5)
        if (is_control(h_.op) && len7 > max_control_payload) {
            return fail(scan_error::bad_control_size);
        }

        std::uint8_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
        h_.header_size =
            static_cast<std::uint8_t>(2 + ext + (h_.masked ? 4 : 0));
        h_.len = ext == 0 ? len7 : 0;

    } else {
        std::uint8_t ext =
            static_cast<std::uint8_t>(h_.header_size - 2 - (h_.masked ? 4 : 0));

        if (pos_ < 2 + ext) {
            h_.len = (h_.len << 8) | b;

            if (pos_ == 1 + ext) {
                // the 16-bit form is for lengths 126 .. 65535 (5.2)
                if (ext == 2 && h_.len < 126) {
                    return fail(scan_error::bad_size);
                }

                // the most significant bit of a 64-bit length is 0 (5.2)
                if (ext == 8 && (h_.len >> 63) != 0) {
                    return fail(scan_error::bad_size_64);
                }

                // the 64-bit form is for lengths of 65536 and more (5.2)
                if (ext == 8 && h_.len < 65536) {
                    return fail(scan_error::bad_size);
                }
            }

        } else {
            h_.mask[pos_ - 2 - ext] = b;
        }
    }

    pos_++;

    if (pos_ == h_.header_size) {
        flags_ |= f_header_done;
        remain_ = h_.len;
    }

    return true;
}

// At a boundary, with the whole header in p[0..n): decodes it in one go
// into the state header_byte() would leave after its last byte. Returns
// the header size, or 0 when the header is not all there or would be
// rejected: the byte-by-byte path then takes it and names the error, so
// that errors and the state they leave come from one place.
template <std::size_t Capture>
inline std::size_t
basic_frame_scanner<Capture>::header_whole(const std::uint8_t* p,
                                           std::size_t n) noexcept
{
    if (n < 2) {
        return 0;
    }

    std::uint8_t b0 = p[0];
    std::uint8_t b1 = p[1];
    opcode op = opcode_of(b0);
    bool fin = (b0 & 0x80) != 0;
    bool masked = (b1 & 0x80) != 0;
    std::uint8_t len7 = static_cast<std::uint8_t>(b1 & 0x7f);
    // in locals: the byte stores into h_ below may alias anything
    std::uint8_t flags = flags_;

    // the checks of header_byte() on bytes 0 and 1, in short
    if (is_reserved(op) || masked != ((flags & f_client) != 0)) {
        return 0;
    }

    if ((b0 & 0x70) != 0
        && ((b0 & 0x30) != 0 || (flags & f_rsv1) == 0 || !is_data(op)
            || op == opcode::cont))
    {
        return 0;
    }

    if (is_control(op)) {
        if (!fin || len7 > max_control_payload) {
            return 0;
        }

    } else if ((op == opcode::cont) != ((flags & f_in_message) != 0)) {
        return 0;
    }

    std::size_t ext = len7 < 126 ? 0 : len7 == 126 ? 2 : 8;
    std::size_t size = 2 + ext + (masked ? 4 : 0);

    if (n < size) {
        return 0;
    }

    std::uint64_t len = len7;
    std::uint8_t m[4] = {0, 0, 0, 0};

    if (ext == 2) {
        len = (std::uint64_t(p[2]) << 8) | p[3];

        if (len < 126) {
            return 0;
        }

    } else if (ext == 8) {
        len = 0;
        for (std::size_t i = 2; i < 10; i++) {
            len = (len << 8) | p[i];
        }

        if ((len >> 63) != 0 || len < 65536) {
            return 0;
        }
    }

    if (masked) {
        m[0] = p[2 + ext];
        m[1] = p[3 + ext];
        m[2] = p[4 + ext];
        m[3] = p[5 + ext];
    }

    if (!is_control(op)) {
        flags = static_cast<std::uint8_t>(fin ? flags & ~f_in_message
                                              : flags | f_in_message);
    }

    h_.op = op;
    h_.fin = fin; // fin and masked share a byte
    h_.masked = masked;
    h_.rsv = static_cast<std::uint8_t>(b0 & 0x70);
    h_.header_size = static_cast<std::uint8_t>(size);
    h_.len = len;

    h_.mask[0] = m[0];
    h_.mask[1] = m[1];
    h_.mask[2] = m[2];
    h_.mask[3] = m[3];
    flags_ = static_cast<std::uint8_t>(flags | f_header_done);
    pos_ = static_cast<std::uint8_t>(size);
    remain_ = len;

    return size;
}

// Copies n payload bytes that start at payload offset off, unmasked (the
// mask rotated to off), four at a time. Measured (callgrind, idle
// Ping/Pong): advance() on a masked 16-byte Pong 353 -> 222 instructions
// (a byte at a time before).
template <std::size_t Capture>
inline void basic_frame_scanner<Capture>::unmask(std::uint8_t* out,
                                                 const std::uint8_t* in,
                                                 std::size_t n,
                                                 std::size_t off) const noexcept
{
    std::uint8_t m[4] = {0, 0, 0, 0};

    if (h_.masked) {
        for (std::size_t j = 0; j < 4; j++) {
            m[j] = h_.mask[(off + j) & 3];
        }
    }

    std::uint32_t m32;
    std::memcpy(&m32, m, 4);

    std::size_t j = 0;

    for (; j + 4 <= n; j += 4) {
        std::uint32_t w;
        std::memcpy(&w, in + j, 4);
        w ^= m32;
        std::memcpy(out + j, &w, 4);
    }

    for (; j < n; j++) {
        out[j] = static_cast<std::uint8_t>(in[j] ^ m[j & 3]);
    }
}

// The header a byte at a time, from where pos_ says, until it is complete
// or p[0..n) runs out. Returns the bytes consumed, npos on a rejection.
template <std::size_t Capture>
std::size_t basic_frame_scanner<Capture>::header_bytes(const std::uint8_t* p,
                                                       std::size_t n) noexcept
{
    std::size_t i = 0;

    while (i < n) {
        if (!header_byte(p[i++])) {
            return npos;
        }

        if (in_payload()) {
            break;
        }
    }

    return i;
}

template <std::size_t Capture>
inline std::size_t basic_frame_scanner<Capture>::advance(const std::uint8_t* p,
                                                         std::size_t n) noexcept
{
    flags_ &= static_cast<std::uint8_t>(~f_frame_done);

    if (pos_ >= 0x10 || n == 0) { // an error, or nothing
        return 0;
    }

    std::size_t i = 0;

    if (!in_payload()) {
        i = pos_ == 0 ? header_whole(p, n) : 0;

        if (i == 0) {
            i = header_bytes(p, n);

            if (i == npos) {
                return 0;
            }

            if (!in_payload()) {
                return i;
            }
        }
    }

    std::size_t k = n - i;

    if (remain_ < k) {
        k = static_cast<std::size_t>(remain_);
    }

    if (is_control(h_.op)) {
        // control payloads are short (<= 125): unmask what fits the capture
        std::size_t off = static_cast<std::size_t>(h_.len - remain_);
        std::size_t end = off + k < Capture ? off + k : Capture;

        if (off < end) {
            unmask(cap() + off, p + i, end - off, off);
        }
    }

    // data payloads are skipped, never read
    remain_ -= k;
    i += k;

    if (remain_ == 0) {
        pos_ = 0;
        flags_ |= f_frame_done;
    }

    return i;
}

// The checks of header_byte() that a data frame can fail, in short, and
// the header decoded straight into h_; the payload skipped by its length.
// The 64-bit length form (messages of 64 KiB and more, one header per 64
// KiB at least) is left to advance(). Measured (make bench-callgrind,
// outbound::send per 64 B frame, 16 KiB chunks / one frame a call): 200 /
// 260 instructions with advance() alone, 136 / 202 with this first.
template <std::size_t Capture>
WSHB_HOT_INLINE std::size_t
basic_frame_scanner<Capture>::advance_data(const std::uint8_t* p,
                                           std::size_t n) noexcept
{
    std::uint8_t flags = static_cast<std::uint8_t>(flags_ & ~f_frame_done);
    std::size_t i = 0;

    if (pos_ == 0) {
        if (n < 2) {
            return 0;
        }

        unsigned b0 = p[0];
        unsigned b1 = p[1];
        unsigned op = b0 & 0x0f;
        unsigned rsv = b0 & 0x70;
        bool masked = (b1 & 0x80) != 0;

        // text or binary outside a message, a continuation inside one
        if (op > 2 || (op == 0) != ((flags & f_in_message) != 0)) {
            return 0;
        }

        // the sender's mask bit; no RSV bit, or RSV1 on a first frame
        if (masked != ((flags & f_client) != 0)
            || (rsv != 0 && (rsv != 0x40 || (flags & f_rsv1) == 0 || op == 0)))
        {
            return 0;
        }

        std::size_t size = masked ? 6 : 2;
        std::size_t len = b1 & 0x7f;

        if (len >= 126) {
            if (len == 127 || n < 4) {
                return 0;
            }

            len = (std::size_t(p[2]) << 8) | p[3];
            size += 2;

            if (len < 126) {
                return 0;
            }
        }

        if (n < size) {
            return 0;
        }

        std::uint8_t m[4] = {0, 0, 0, 0};

        if (masked) {
            std::memcpy(m, p + size - 4, 4);
        }

        h_.op = static_cast<opcode>(op);
        h_.fin = (b0 & 0x80) != 0;
        h_.masked = masked;
        h_.rsv = static_cast<std::uint8_t>(rsv);
        h_.header_size = static_cast<std::uint8_t>(size);
        std::memcpy(h_.mask, m, 4);
        h_.len = len;

        flags = static_cast<std::uint8_t>(
            ((b0 & 0x80) != 0 ? flags & ~f_in_message : flags | f_in_message)
            | f_header_done);
        pos_ = static_cast<std::uint8_t>(size);
        remain_ = len;
        i = size;

    } else if (pos_ >= 0x10 || (flags & f_header_done) == 0
               || is_control(h_.op))
    {
        return 0; // an error, a header in pieces, a control payload
    }

    std::size_t k = n - i;

    if (remain_ < k) {
        k = static_cast<std::size_t>(remain_);
    }

    remain_ -= k;
    i += k;

    if (remain_ == 0) {
        pos_ = 0;
        flags |= f_frame_done;
    }

    flags_ = flags;

    return i;
}

template <std::size_t Capture>
std::size_t
basic_frame_scanner<Capture>::until_boundary(const std::uint8_t* p,
                                             std::size_t n) const noexcept
{
    if (pos_ >= 0x10) { // an error
        return npos;
    }

    if (pos_ == 0) {
        return 0;
    }

    if (in_payload() && !is_control(h_.op)) {
        return remain_ <= n ? static_cast<std::size_t>(remain_) : npos;
    }

    basic_frame_scanner copy(*this);
    std::size_t k = copy.advance(p, n);

    return copy.frame_complete() ? k : npos;
}

template <std::size_t Capture>
inline bool basic_frame_scanner<Capture>::at_boundary() const noexcept
{
    return pos_ == 0; // and no error
}

template <std::size_t Capture>
inline bool basic_frame_scanner<Capture>::header_complete() const noexcept
{
    return (flags_ & f_header_done) != 0;
}

template <std::size_t Capture>
inline bool basic_frame_scanner<Capture>::frame_complete() const noexcept
{
    return (flags_ & f_frame_done) != 0;
}

template <std::size_t Capture>
inline bool basic_frame_scanner<Capture>::in_message() const noexcept
{
    return (flags_ & f_in_message) != 0;
}

template <std::size_t Capture>
inline scan_error basic_frame_scanner<Capture>::error() const noexcept
{
    // (so that error() != none is one compare of pos_)
    return pos_ < 0x10 ? scan_error::none : static_cast<scan_error>(pos_ >> 4);
}

template <std::size_t Capture>
inline const frame_header& basic_frame_scanner<Capture>::header() const noexcept
{
    return h_;
}

template <std::size_t Capture>
inline const std::uint8_t*
basic_frame_scanner<Capture>::control_payload() const noexcept
{
    return cap();
}

template <std::size_t Capture>
inline std::size_t basic_frame_scanner<Capture>::control_size() const noexcept
{
    return h_.len < Capture ? static_cast<std::size_t>(h_.len) : Capture;
}

// The header goes right before the capture: 2 bytes, or 6 with the mask.
// Before byte 1 is in, masked is false and only byte 0 is asked for.
template <std::size_t Capture>
inline const std::uint8_t* basic_frame_scanner<Capture>::wire() const noexcept
{
    return cap() - (h_.masked ? 6 : 2);
}

template <std::size_t Capture>
void basic_frame_scanner<Capture>::rewire(std::size_t n) noexcept
{
    std::size_t hs = h_.masked ? 6 : 2;
    std::uint8_t* w = cap() - hs;

    w[0] = static_cast<std::uint8_t>((h_.fin ? 0x80 : 0) | h_.rsv
                                     | static_cast<std::uint8_t>(h_.op));
    // only a 7-bit length is asked for: len is the length byte
    w[1] = static_cast<std::uint8_t>((h_.masked ? 0x80 : 0) | (h_.len & 0x7f));

    if (h_.masked) {
        for (std::size_t i = 0; i < 4; i++) {
            w[2 + i] = h_.mask[i];
        }
    }

    std::size_t k = n > hs ? n - hs : 0;

    if (k > Capture) {
        k = Capture;
    }

    if (h_.masked) {
        for (std::size_t j = 0; j < k; j++) {
            cap()[j] = static_cast<std::uint8_t>(cap()[j] ^ h_.mask[j & 3]);
        }
    }
}

} // namespace wshb

#pragma GCC visibility pop
