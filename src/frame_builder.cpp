// ngx_ws_heartbeat: builds the control frames the module injects.
#include "frame_builder.hpp"

namespace wshb {

const char* to_string(build_error e) noexcept
{
    switch (e) {
    case build_error::none:
        return "no error";
    case build_error::not_control:
        return "not a control opcode";
    case build_error::payload_too_long:
        return "control payload too long";
    case build_error::bad_close_code:
        return "close code not sendable";
    case build_error::bad_reason_utf8:
        return "close reason not UTF-8";
    case build_error::reason_too_long:
        return "close reason too long";
    case build_error::buffer_too_small:
        return "buffer too small";
    }
    return "unknown error";
}

bool close_code_sendable(std::uint16_t code) noexcept
{
    // 1004 is reserved; 1005, 1006 and 1015 must never be sent (7.4.1);
    // 1016-2999 are for future RFCs, 3000-4999 for libraries and apps
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014)
           || (code >= 3000 && code <= 4999);
}

bool valid_utf8(const std::uint8_t* p, std::size_t n) noexcept
{
    std::size_t i = 0;

    while (i < n) {
        std::uint8_t b = p[i];

        if (b < 0x80) {
            i++;
            continue;
        }

        std::size_t k;
        std::uint8_t lo = 0x80;
        std::uint8_t hi = 0xbf;

        // C0, C1 would be overlong; F5-FF are beyond U+10FFFF
        if (b < 0xc2 || b > 0xf4) {
            return false;
        }

        if (b < 0xe0) {
            k = 1;

        } else if (b < 0xf0) {
            k = 2;
            // E0: no overlong; ED: no surrogates U+D800-DFFF
            if (b == 0xe0) {
                lo = 0xa0;
            } else if (b == 0xed) {
                hi = 0x9f;
            }

        } else {
            k = 3;
            // F0: no overlong; F4: nothing above U+10FFFF
            if (b == 0xf0) {
                lo = 0x90;
            } else if (b == 0xf4) {
                hi = 0x8f;
            }
        }

        // the sequence must not be cut short
        if (n - i - 1 < k) {
            return false;
        }

        // the second byte has the tightened range, the rest 80-BF
        if (p[i + 1] < lo || p[i + 1] > hi) {
            return false;
        }

        for (std::size_t j = 2; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80) {
                return false;
            }
        }

        i += k + 1;
    }

    return true;
}

static std::size_t failed(build_error* err, build_error e) noexcept
{
    if (err != nullptr) {
        *err = e;
    }

    return 0;
}

std::size_t build_control(opcode op, const std::uint8_t* payload,
                          std::size_t len, const std::uint8_t* mask,
                          std::uint8_t* out, std::size_t cap,
                          build_error* err) noexcept
{
    // only close, ping and pong are built here
    if (op != opcode::close && op != opcode::ping && op != opcode::pong) {
        return failed(err, build_error::not_control);
    }

    // a control payload is at most 125 bytes (5.5)
    if (len > max_control_payload) {
        return failed(err, build_error::payload_too_long);
    }

    std::size_t size = control_frame_size(len, mask != nullptr);

    // the whole frame is written or nothing
    if (out == nullptr || cap < size) {
        return failed(err, build_error::buffer_too_small);
    }

    out[0] = static_cast<std::uint8_t>(0x80 | static_cast<std::uint8_t>(op));
    out[1] = static_cast<std::uint8_t>((mask != nullptr ? 0x80 : 0) | len);

    std::size_t h = 2;

    if (mask != nullptr) {
        for (std::size_t j = 0; j < 4; j++) {
            out[h + j] = mask[j];
        }
        h += 4;
    }

    for (std::size_t j = 0; j < len; j++) {
        std::uint8_t m = mask != nullptr ? mask[j & 3] : 0;
        out[h + j] = static_cast<std::uint8_t>(payload[j] ^ m);
    }

    if (err != nullptr) {
        *err = build_error::none;
    }

    return size;
}

std::size_t build_close(std::uint16_t code, const char* reason,
                        std::size_t reason_len, const std::uint8_t* mask,
                        std::uint8_t* out, std::size_t cap,
                        build_error* err) noexcept
{
    constexpr std::size_t max_reason = max_control_payload - 2;

    // the code must be one an endpoint may send (7.4)
    if (!close_code_sendable(code)) {
        return failed(err, build_error::bad_close_code);
    }

    // the reason and the 2-byte code share the 125-byte payload (5.5.1)
    if (reason_len > max_reason) {
        return failed(err, build_error::reason_too_long);
    }

    const std::uint8_t* r = reinterpret_cast<const std::uint8_t*>(reason);

    // the reason is UTF-8 text (5.5.1)
    if (reason_len != 0 && (r == nullptr || !valid_utf8(r, reason_len))) {
        return failed(err, build_error::bad_reason_utf8);
    }

    std::uint8_t payload[max_control_payload];

    payload[0] = static_cast<std::uint8_t>(code >> 8);
    payload[1] = static_cast<std::uint8_t>(code & 0xff);

    for (std::size_t j = 0; j < reason_len; j++) {
        payload[2 + j] = r[j];
    }

    return build_control(opcode::close, payload, 2 + reason_len, mask, out, cap,
                         err);
}

const char* to_string(close_text t) noexcept
{
    switch (t) {
    case close_text::none:
        return "";
    case close_text::heartbeat_timeout:
        return "heartbeat timeout";
    case close_text::read_timeout:
        return "read timeout";
    case close_text::send_timeout:
        return "send timeout";
    case close_text::upstream_timeout:
        return "upstream timeout";
    case close_text::max_age:
        return "max age";
    case close_text::shutting_down:
        return "server shutting down";
    case close_text::going_away:
        return "going away";
    case close_text::out_of_memory:
        return "out of memory";
    }
    return "";
}

static void set_mask(queued_frame& f, const std::uint8_t* mask) noexcept
{
    f.masked = mask != nullptr;

    for (std::size_t j = 0; f.masked && j < 4; j++) {
        f.mask[j] = mask[j];
    }
}

queued_frame queued_ping(std::uint32_t seq, const std::uint8_t* mask) noexcept
{
    queued_frame f;

    f.value = seq;
    f.op = opcode::ping;
    set_mask(f, mask);
    f.size = static_cast<std::uint8_t>(
        control_frame_size(ping_payload_size, f.masked));

    return f;
}

queued_frame queued_close(std::uint16_t code, close_text text,
                          const std::uint8_t* mask) noexcept
{
    queued_frame f;

    if (!close_code_sendable(code)) {
        return f;
    }

    f.value = code;
    f.op = opcode::close;
    f.text = text;
    set_mask(f, mask);
    f.size = static_cast<std::uint8_t>(
        control_frame_size(2 + std::strlen(to_string(text)), f.masked));

    return f;
}

std::size_t build_queued(const queued_frame& f, std::uint32_t key,
                         std::uint8_t* out, std::size_t cap) noexcept
{
    const std::uint8_t* mask = f.masked ? f.mask : nullptr;

    if (f.size == 0) {
        return 0;
    }

    if (f.op == opcode::ping) {
        std::uint8_t payload[ping_payload_size];

        ping_payload(payload, f.value, key);

        return build_control(opcode::ping, payload, sizeof(payload), mask, out,
                             cap);
    }

    const char* text = to_string(f.text);

    return build_close(static_cast<std::uint16_t>(f.value), text,
                       std::strlen(text), mask, out, cap);
}

} // namespace wshb
