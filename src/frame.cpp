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

} // namespace wshb
