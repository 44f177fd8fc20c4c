// ngx_ws_heartbeat: builds the control frames the module injects.
// No nginx types, no I/O, no heap, no exceptions.
#pragma once

#include "cxx17.hpp"

#include "frame.hpp"

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

} // namespace wshb

#pragma GCC visibility pop
