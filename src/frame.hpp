// ngx_ws_heartbeat: RFC 6455 frame vocabulary and the streaming frame scanner.
// No nginx types, no I/O, no heap, no exceptions.
#pragma once

#include <cstddef>
#include <cstdint>

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

constexpr std::size_t max_header_size = 14;
constexpr std::size_t max_control_payload = 125;

struct frame_header {
    opcode op = opcode::cont;
    bool fin = false;
    bool masked = false;
    std::uint8_t rsv = 0;         // the RSV bits as in byte 0 (0x70 mask)
    std::uint8_t header_size = 0; // 2 .. 14
    std::uint8_t mask[4] = {0, 0, 0, 0};
    std::uint64_t len = 0; // payload length
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

private:
    // Header bytes are decoded one at a time straight into h_ (no copy of
    // the raw header is kept). pos_ counts the header bytes of the current
    // frame consumed so far and is 0 exactly at a boundary; once the header
    // is done it stays at header_size until the payload ends. remain_ is the
    // payload still to skip. Control payloads are unmasked into cap_.
    enum : std::uint8_t {
        f_client = 0x01,      // sender is a client: frames must be masked
        f_rsv1 = 0x02,        // RSV1 allowed (permessage-deflate)
        f_in_message = 0x04,  // fragmented message unfinished
        f_header_done = 0x08, // h_ holds a complete header
        f_frame_done = 0x10   // the last advance() ended a frame
    };

    bool header_byte(std::uint8_t b) noexcept;
    bool fail(scan_error e) noexcept;
    bool in_payload() const noexcept
    {
        return pos_ != 0 && (flags_ & f_header_done) != 0;
    }

    frame_header h_;
    std::uint64_t remain_ = 0;
    std::uint8_t cap_[Capture];
    std::uint8_t pos_ = 0;
    std::uint8_t flags_ = 0;
    scan_error err_ = scan_error::none;
};

// Defined in frame.cpp for these two capture sizes.
extern template class basic_frame_scanner<16>;
extern template class basic_frame_scanner<max_control_payload>;

using frame_scanner = basic_frame_scanner<max_control_payload>;

// Fast check on a frame's first byte without a scanner.
constexpr opcode opcode_of(std::uint8_t b0) noexcept
{
    return static_cast<opcode>(b0 & 0x0f);
}

} // namespace wshb
