// libFuzzer target for the frame scanner.
//
// Input: byte 0 = bit 0 role (client/server), bit 1 allow RSV1, bits 2-7 a
// chunking seed; the rest is the stream. The stream is fed in chunks (each
// copied into its own exactly sized heap buffer, so ASan sees any read
// past a chunk), with the per-call invariants checked, and the result is
// compared with a one-shot scan of the same bytes and with the 125-byte
// capture scanner.
//
// clang++-14 -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
//     t/fuzz/fuzz_scanner.cpp src/frame.cpp -o /tmp/fuzz_scanner
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "frame.hpp"

namespace {

// scan() seeds: 0 = one call per input, this = one byte per call, else
// pseudo-random chunk sizes
constexpr std::uint32_t bytewise_seed = 0xffffffffu;

struct event {
    std::size_t end; // stream offset after the frame
    wshb::frame_header h;
    std::uint8_t ctrl[wshb::max_control_payload];
    std::size_t ctrl_n;
};

struct outcome {
    std::vector<event> frames;
    wshb::scan_error err = wshb::scan_error::none;
    std::size_t err_frame = 0; // start of the rejected frame
};

[[noreturn]] void die(const char* what)
{
    std::fprintf(stderr, "fuzz_scanner: %s\n", what);
    std::abort();
}

void check(bool ok, const char* what)
{
    if (!ok) {
        die(what);
    }
}

template <std::size_t C>
void same_state(const wshb::basic_frame_scanner<C>& a,
                const wshb::basic_frame_scanner<C>& b, const std::uint8_t* p,
                std::size_t n)
{
    const wshb::frame_header& x = a.header();
    const wshb::frame_header& y = b.header();

    check(a.error() == b.error() && a.at_boundary() == b.at_boundary()
              && a.header_complete() == b.header_complete()
              && a.frame_complete() == b.frame_complete()
              && a.in_message() == b.in_message(),
          "advance_data: another state");
    check(x.op == y.op && x.fin == y.fin && x.masked == y.masked
              && x.rsv == y.rsv && x.header_size == y.header_size
              && std::memcmp(x.mask, y.mask, 4) == 0 && x.len == y.len,
          "advance_data: another header");
    check(a.until_boundary(p, n) == b.until_boundary(p, n),
          "advance_data: another remainder");
}

template <std::size_t C>
outcome scan(wshb::role r, bool rsv1, const std::uint8_t* s, std::size_t n,
             std::uint32_t seed)
{
    wshb::basic_frame_scanner<C> sc(r, rsv1);
    outcome o;
    std::size_t pos = 0;
    std::size_t start = 0;
    std::uint32_t x = seed * 2654435761u + 1;
    std::unique_ptr<std::uint8_t[]> one(new std::uint8_t[1]);

    while (pos < n) {
        std::size_t k = n - pos;

        if (seed == bytewise_seed) {
            k = 1;
        } else if (seed != 0) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            std::size_t lim = (x & 3) == 0   ? 1
                              : (x & 3) == 1 ? (x >> 8) % 4096 + 1
                                             : (x >> 8) % 64 + 1;
            k = k < lim ? k : lim;
        }

        // one-byte chunks are common: reuse one exactly sized buffer
        std::unique_ptr<std::uint8_t[]> big;
        std::uint8_t* chunk = one.get();

        if (k > 1) {
            big.reset(new std::uint8_t[k]);
            chunk = big.get();
        }

        std::memcpy(chunk, s + pos, k);
        std::size_t off = 0;

        while (off < k) {
            const std::uint8_t* p = chunk + off;
            std::size_t m = k - off;
            bool was_boundary = sc.at_boundary();
            std::size_t ub = sc.until_boundary(p, m);
            wshb::basic_frame_scanner<C> fast(sc);
            std::size_t quick = fast.advance_data(p, m);
            std::size_t got = sc.advance(p, m);

            check(got <= m, "consumed more than given");

            // the relay's fast step, where it takes the bytes, is advance()
            if (quick != 0) {
                same_state(fast, sc, p + got, m - got);
                check(quick == got, "advance_data consumed differently");
            }

            if (sc.error() != wshb::scan_error::none) {
                check(got == 0, "error call consumed bytes");
                check(was_boundary || ub == sc.npos,
                      "until_boundary missed the error");
                check(sc.advance(p, m) == 0, "advance after error");
                check(sc.until_boundary(p, m) == sc.npos,
                      "until_boundary after error");
                check(!sc.at_boundary(), "boundary after error");
                o.err = sc.error();
                o.err_frame = start;
                return o;
            }

            check(got > 0, "no progress");
            check(got == m || sc.frame_complete(), "stopped early");
            check(!was_boundary || ub == 0, "until_boundary not 0");
            check(was_boundary || ub == (sc.frame_complete() ? got : sc.npos),
                  "until_boundary disagrees with advance");
            check(sc.frame_complete() == sc.at_boundary(),
                  "boundary bookkeeping");

            off += got;

            if (sc.frame_complete()) {
                event e;
                e.end = pos + off;
                e.h = sc.header();
                e.ctrl_n = 0;
                check(e.h.header_size >= 2 && e.h.header_size <= 14,
                      "header size");
                check(e.end - start == e.h.header_size + e.h.len, "frame size");
                if (wshb::is_control(e.h.op)) {
                    e.ctrl_n = sc.control_size();
                    check(e.ctrl_n <= C, "capture overflow");
                    std::memcpy(e.ctrl, sc.control_payload(), e.ctrl_n);
                }
                o.frames.push_back(e);
                start = e.end;
            }
        }

        pos += k;
    }

    return o;
}

bool same_header(const wshb::frame_header& a, const wshb::frame_header& b)
{
    return a.op == b.op && a.fin == b.fin && a.masked == b.masked
           && a.rsv == b.rsv && a.header_size == b.header_size
           && std::memcmp(a.mask, b.mask, 4) == 0 && a.len == b.len;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size)
{
    if (size < 1) {
        return 0;
    }

    wshb::role r = (data[0] & 1) != 0 ? wshb::role::client : wshb::role::server;
    bool rsv1 = (data[0] & 2) != 0;
    std::uint32_t seed = data[0] >> 2;
    const std::uint8_t* s = data + 1;
    std::size_t n = size - 1;

    outcome whole = scan<125>(r, rsv1, s, n, 0);
    outcome chunked = scan<16>(r, rsv1, s, n, seed + 1);
    // byte by byte too, for inputs small enough to keep the fuzzer fast
    outcome bytewise =
        n <= 4096 ? scan<16>(r, rsv1, s, n, bytewise_seed) : chunked;

    for (const outcome* o : {&chunked, &bytewise}) {
        check(o->err == whole.err, "error differs between chunkings");
        check(o->err_frame == whole.err_frame,
              "rejected frame differs between chunkings");
        check(o->frames.size() == whole.frames.size(),
              "frame count differs between chunkings");

        for (std::size_t i = 0; i < whole.frames.size(); i++) {
            const event& a = whole.frames[i];
            const event& b = o->frames[i];
            check(a.end == b.end, "frame end differs");
            check(same_header(a.h, b.h), "header differs");
            std::size_t c = a.ctrl_n < 16 ? a.ctrl_n : 16;
            check(b.ctrl_n == c, "capture size differs");
            check(std::memcmp(a.ctrl, b.ctrl, c) == 0,
                  "captured payload differs");
        }
    }

    return 0;
}
