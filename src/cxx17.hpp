// ngx_ws_heartbeat: included first by every header of the core and of the
// glue. gcc <= 10 and clang <= 15 default to C++14: say so before anything
// of C++17 fails obscurely.
#pragma once

#if __cplusplus < 201703L
#error "ngx_ws_heartbeat needs C++17, newer than this compiler's default:"
#error "build with gcc >= 11 or clang >= 16 (./configure --with-cc=gcc-11)"
#endif

// The relay's per-frame steps (frame.hpp, outbound.hpp): inlined into
// their callers whatever gcc's size estimate says. Measured (callgrind,
// the module relaying 64 B messages): each call kept out of line saved
// and restored six registers, ~15 instructions a frame.
#define WSHB_HOT_INLINE inline __attribute__((always_inline))
