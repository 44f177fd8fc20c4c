// ngx_ws_heartbeat: builds the control frames the module injects.
// No nginx types, no I/O, no heap, no exceptions.
#pragma once

#include "cxx17.hpp"

#include "frame.hpp"
#include "heartbeat.hpp"

// Hidden in the module's shared object: calls inside it bind directly and
// inline (no PLT, no semantic interposition); nginx finds the module
// through ngx_modules, not through these names.
#pragma GCC visibility push(hidden)

namespace wshb {

enum class build_error : std::uint8_t {
    none = 0,
    not_control,      // opcode is not close, ping or pong
    payload_too_long, // control payload over 125 bytes
    bad_close_code,   // 1005, 1006, 1015, < 1000, 1016-2999 or >= 5000
    bad_reason_utf8,  // close reason is not valid UTF-8
    reason_too_long,  // close reason over 123 bytes
    buffer_too_small  // `cap` cannot hold the frame
};

const char* to_string(build_error e) noexcept;

// RFC 6455 7.4: may an endpoint put this code in a Close frame it sends?
bool close_code_sendable(std::uint16_t code) noexcept;

// Strict UTF-8 check (no overlongs, no surrogates, <= U+10FFFF).
bool valid_utf8(const std::uint8_t* p, std::size_t n) noexcept;

// Writes one FIN control frame (RSV 0) into out[0..cap). mask == nullptr:
// unmasked (server to client); otherwise masked with those 4 bytes (client
// to server). Returns the frame size, or 0 with *err set (err may be null).
std::size_t build_control(opcode op, const std::uint8_t* payload,
                          std::size_t len, const std::uint8_t* mask,
                          std::uint8_t* out, std::size_t cap,
                          build_error* err = nullptr) noexcept;

// Close frame with a status code and a UTF-8 reason (may be empty).
std::size_t build_close(std::uint16_t code, const char* reason,
                        std::size_t reason_len, const std::uint8_t* mask,
                        std::uint8_t* out, std::size_t cap,
                        build_error* err = nullptr) noexcept;

// Size of a control frame with this payload length.
constexpr std::size_t control_frame_size(std::size_t len, bool masked) noexcept
{
    return 2 + (masked ? 4 : 0) + len;
}

// The reason texts of the module's own Close frames: a fixed set, so that a
// queued Close keeps the number of its text, not the text.
enum class close_text : std::uint8_t {
    none = 0,          // "" (no text)
    heartbeat_timeout, // "heartbeat timeout"
    read_timeout,      // "read timeout"
    send_timeout,      // "send timeout"
    upstream_timeout,  // "upstream timeout"
    max_age,           // "max age"
    shutting_down,     // "server shutting down" (the longest: 20 bytes)
    going_away,        // "going away"
    out_of_memory      // "out of memory"
};

const char* to_string(close_text t) noexcept;

// The largest frame the module queues: a masked Close, code and a 20-byte
// reason ("server shutting down").
constexpr std::size_t inject_capacity = 28;

// A control frame of the module's as outbound's queue keeps it: what makes
// its bytes, not the bytes (12 bytes instead of up to inject_capacity, in
// each side of the per-connection context). build_queued() lays the bytes
// out again, the same each time, for each write attempt (outbound.hpp:
// Io::frame()). Made by queued_ping() and queued_close().
struct queued_frame {
    std::uint32_t value = 0;   // Ping: its sequence number; Close: its code
    std::uint8_t mask[4] = {}; // the masking key, when masked
    opcode op = opcode::ping;  // ping or close
    close_text text = close_text::none; // Close: its reason
    bool masked = false;                // to a server (the upstream)
    std::uint8_t size = 0;              // the frame's bytes; 0: none (refused)
};

// A Ping of the module's: sequence number seq, the payload of
// heartbeat::make_ping() (with the connection's key, given to
// build_queued()). mask == nullptr: unmasked.
queued_frame queued_ping(std::uint32_t seq, const std::uint8_t* mask) noexcept;

// A Close of the module's; size 0 when the code may not be sent.
queued_frame queued_close(std::uint16_t code, close_text text,
                          const std::uint8_t* mask) noexcept;

// Writes f's bytes (f.size of them) into out[0..cap): a Ping's payload is
// ping_payload(f.value, key). Returns f.size, or 0 when f is none or out
// too small.
std::size_t build_queued(const queued_frame& f, std::uint32_t key,
                         std::uint8_t* out, std::size_t cap) noexcept;

} // namespace wshb

#pragma GCC visibility pop
