// ngx_ws_heartbeat: included first by every header of the core and of the
// glue. gcc <= 10 and clang <= 15 default to C++14: say so before anything
// of C++17 fails obscurely.
#pragma once

#if __cplusplus < 201703L
#error "ngx_ws_heartbeat needs C++17, newer than this compiler's default:"
#error "build with gcc >= 11 or clang >= 16 (./configure --with-cc=gcc-11)"
#endif

// The relay's per-frame steps (frame.hpp, outbound.hpp): inlined into
// their callers whatever gcc's size estimate says (out of line, each call
// saves and restores six registers). Measured (make bench-callgrind,
// outbound::send per 64 B frame, 16 KiB chunks / one frame a call): 149 /
// 235 instructions without, 136 / 202 with.
#define WSHB_HOT_INLINE inline __attribute__((always_inline))

// A rare path kept out of a hot caller that gcc would inline it into (a
// single call site): the caller then needs fewer register saves.
// Measured where used.
#define WSHB_OUT_OF_LINE __attribute__((noinline))
