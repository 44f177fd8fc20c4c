// Instructions per relayed frame through outbound::send, for callgrind:
// the client role (masked frames) with swallowing on, as the module runs
// the client->upstream direction. 100k masked 64-byte binary frames, fed
// in 16 KiB chunks (as nginx hands them over under load) and one frame
// per call (an interactive connection), to an Io that accepts everything.
//
//   make bench-callgrind     (builds with -O, like the module's nginx build)
//
// Only the two extern "C" runners are counted (--toggle-collect), so the
// setup does not show up in the figures.
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "outbound.hpp"

namespace {

using bytes = std::vector<std::uint8_t>;

constexpr std::size_t frames = 100000;
constexpr std::size_t payload = 64;
constexpr std::size_t frame_size = 6 + payload;
constexpr std::size_t chunk = 16 * 1024;

struct accept_io {
    std::size_t frames = 0;
    std::size_t headers = 0;

    long write(const std::uint8_t*, std::size_t n)
    {
        return static_cast<long>(n);
    }
    // (nothing is queued here)
    const std::uint8_t* frame(const wshb::queued_frame&) { return nullptr; }
    bool match_pong(const std::uint8_t*, std::size_t) { return false; }
    void on_header(const wshb::frame_header&) { headers++; }
    void on_frame(const wshb::frame_header&, const std::uint8_t*, std::size_t)
    {
        frames++;
    }
    void on_error(wshb::scan_error) { std::abort(); }
};

bytes make_stream()
{
    bytes s;

    s.reserve(frames * frame_size);

    for (std::size_t i = 0; i < frames; i++) {
        std::uint8_t h[6] = {0x82,
                             0x80 | payload,
                             static_cast<std::uint8_t>(i),
                             0x34,
                             static_cast<std::uint8_t>(i >> 8),
                             0x78};
        s.insert(s.end(), h, h + sizeof(h));
        s.resize(s.size() + payload, static_cast<std::uint8_t>(i * 7));
    }

    return s;
}

} // namespace

extern "C" __attribute__((noinline)) std::size_t
wshb_bench_chunks(const std::uint8_t* s, std::size_t n)
{
    wshb::outbound ob(wshb::role::client, true, false);
    accept_io io;

    for (std::size_t pos = 0; pos < n;) {
        std::size_t k = n - pos < chunk ? n - pos : chunk;
        long r = ob.send(io, s + pos, k);

        if (r <= 0) {
            std::abort();
        }
        pos += static_cast<std::size_t>(r);
    }

    return io.frames + io.headers;
}

extern "C" __attribute__((noinline)) std::size_t
wshb_bench_frames(const std::uint8_t* s, std::size_t n)
{
    wshb::outbound ob(wshb::role::client, true, false);
    accept_io io;

    for (std::size_t pos = 0; pos < n;) {
        long r = ob.send(io, s + pos, frame_size);

        if (r <= 0) {
            std::abort();
        }
        pos += static_cast<std::size_t>(r);
    }

    return io.frames + io.headers;
}

int main(int argc, char** argv)
{
    bytes s = make_stream();
    bool one = argc > 1 && std::strcmp(argv[1], "frames") == 0;
    std::size_t got = one ? wshb_bench_frames(s.data(), s.size())
                          : wshb_bench_chunks(s.data(), s.size());

    if (got != 2 * frames) {
        std::fprintf(stderr, "callgrind_send: %zu events, want %zu\n", got,
                     2 * frames);
        return 1;
    }

    std::printf("%zu frames of %zu bytes\n", frames, frame_size);
    return 0;
}
