// ngx_ws_heartbeat: the streaming RFC 6455 frame scanner.
#include "frame.hpp"

namespace wshb {

const char* to_string(scan_error e) noexcept
{
    switch (e) {
    case scan_error::none:
        return "no error";
    case scan_error::bad_opcode:
        return "reserved opcode";
    case scan_error::bad_rsv:
        return "bad RSV bits";
    case scan_error::bad_control_size:
        return "control frame too long";
    case scan_error::bad_control_fragment:
        return "fragmented control frame";
    case scan_error::bad_size:
        return "non-minimal length";
    case scan_error::bad_size_64:
        return "64-bit length with top bit set";
    case scan_error::bad_mask:
        return "wrong mask bit";
    case scan_error::bad_continuation:
        return "continuation without message";
    case scan_error::bad_data_frame:
        return "data frame inside message";
    }
    return "unknown error";
}

template <std::size_t Capture>
basic_frame_scanner<Capture>::basic_frame_scanner(role sender,
                                                  bool allow_rsv1) noexcept
    : cap_{}
{
    flags_ = static_cast<std::uint8_t>((sender == role::client ? f_client : 0)
                                       | (allow_rsv1 ? f_rsv1 : 0));
}

template <std::size_t Capture>
bool basic_frame_scanner<Capture>::fail(scan_error e) noexcept
{
    err_ = e;
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

template <std::size_t Capture>
std::size_t basic_frame_scanner<Capture>::advance(const std::uint8_t* p,
                                                  std::size_t n) noexcept
{
    flags_ &= static_cast<std::uint8_t>(~f_frame_done);

    if (err_ != scan_error::none || n == 0) {
        return 0;
    }

    std::size_t i = 0;

    if (!in_payload()) {
        while (i < n) {
            if (!header_byte(p[i++])) {
                return 0;
            }

            if (in_payload()) {
                break;
            }
        }

        if (!in_payload()) {
            return i;
        }
    }

    std::size_t k = n - i;

    if (remain_ < k) {
        k = static_cast<std::size_t>(remain_);
    }

    if (is_control(h_.op)) {
        // control payloads are short (<= 125): unmask what fits the capture
        std::size_t off = static_cast<std::size_t>(h_.len - remain_);

        for (std::size_t j = 0; j < k && off + j < Capture; j++) {
            std::uint8_t m = h_.masked ? h_.mask[(off + j) & 3] : 0;
            cap_[off + j] = static_cast<std::uint8_t>(p[i + j] ^ m);
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

template <std::size_t Capture>
std::size_t
basic_frame_scanner<Capture>::until_boundary(const std::uint8_t* p,
                                             std::size_t n) const noexcept
{
    if (err_ != scan_error::none) {
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
bool basic_frame_scanner<Capture>::at_boundary() const noexcept
{
    return pos_ == 0 && err_ == scan_error::none;
}

template <std::size_t Capture>
bool basic_frame_scanner<Capture>::header_complete() const noexcept
{
    return (flags_ & f_header_done) != 0;
}

template <std::size_t Capture>
bool basic_frame_scanner<Capture>::frame_complete() const noexcept
{
    return (flags_ & f_frame_done) != 0;
}

template <std::size_t Capture>
bool basic_frame_scanner<Capture>::in_message() const noexcept
{
    return (flags_ & f_in_message) != 0;
}

template <std::size_t Capture>
scan_error basic_frame_scanner<Capture>::error() const noexcept
{
    return err_;
}

template <std::size_t Capture>
const frame_header& basic_frame_scanner<Capture>::header() const noexcept
{
    return h_;
}

template <std::size_t Capture>
const std::uint8_t*
basic_frame_scanner<Capture>::control_payload() const noexcept
{
    return cap_;
}

template <std::size_t Capture>
std::size_t basic_frame_scanner<Capture>::control_size() const noexcept
{
    return h_.len < Capture ? static_cast<std::size_t>(h_.len) : Capture;
}

template class basic_frame_scanner<16>;
template class basic_frame_scanner<max_control_payload>;

} // namespace wshb
