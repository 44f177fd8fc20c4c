// Throughput of the frame scanner (and of outbound::send around it) over
// client-role (masked) streams fed in 16 KiB chunks, as nginx would hand
// them over. Standalone: g++ -std=c++17 -O2 -Isrc
// t/bench_core/bench_scanner.cpp src/*.cpp (what `make bench-core` does).
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <vector>

#include "frame.hpp"
#include "outbound.hpp"

namespace {

using bytes = std::vector<std::uint8_t>;
using clock_type = std::chrono::steady_clock;

constexpr std::size_t chunk = 16 * 1024;
constexpr std::size_t stream_size = 64 * 1024 * 1024;

bytes make_stream(std::size_t payload)
{
    bytes s;
    const std::uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};

    s.reserve(stream_size + payload + 14);

    while (s.size() < stream_size) {
        s.push_back(0x82);
        if (payload < 126) {
            s.push_back(static_cast<std::uint8_t>(0x80 | payload));
        } else if (payload < 65536) {
            s.push_back(0x80 | 126);
            s.push_back(static_cast<std::uint8_t>(payload >> 8));
            s.push_back(static_cast<std::uint8_t>(payload));
        } else {
            s.push_back(0x80 | 127);
            for (int sh = 56; sh >= 0; sh -= 8) {
                s.push_back(static_cast<std::uint8_t>(payload >> sh));
            }
        }
        s.insert(s.end(), mask, mask + 4);
        s.resize(s.size() + payload, 0x5a);
    }

    return s;
}

// An Io that accepts everything and counts frames.
struct null_io {
    std::size_t frames = 0;

    long write(const std::uint8_t*, std::size_t n)
    {
        return static_cast<long>(n);
    }
    // (nothing is queued here)
    const std::uint8_t* frame(const wshb::queued_frame&) { return nullptr; }
    bool match_pong(const std::uint8_t*, std::size_t) { return false; }
    void on_header(const wshb::frame_header&) {}
    void on_frame(const wshb::frame_header&, const std::uint8_t*,
                  std::size_t)
    {
        frames++;
    }
    void on_error(wshb::scan_error) {}
};

std::size_t scan_once(const bytes& s)
{
    wshb::basic_frame_scanner<16> sc(wshb::role::client);
    std::size_t frames = 0;

    for (std::size_t pos = 0; pos < s.size(); pos += chunk) {
        std::size_t n = s.size() - pos < chunk ? s.size() - pos : chunk;
        std::size_t off = 0;

        while (off < n) {
            off += sc.advance(s.data() + pos + off, n - off);
            frames += sc.frame_complete() ? 1 : 0;
        }
    }

    return sc.error() == wshb::scan_error::none ? frames : 0;
}

std::size_t send_once(const bytes& s, bool swallow)
{
    wshb::outbound ob(wshb::role::client, swallow, false);
    null_io io;

    for (std::size_t pos = 0; pos < s.size(); pos += chunk) {
        std::size_t n = s.size() - pos < chunk ? s.size() - pos : chunk;
        if (ob.send(io, s.data() + pos, n) != static_cast<long>(n)) {
            return 0;
        }
    }

    return io.frames;
}

template <class F>
void report(const char* name, const bytes& s, F run)
{
    double best = 1e30;
    std::size_t frames = 0;

    for (int rep = 0; rep < 5; rep++) {
        auto t0 = clock_type::now();
        frames = run(s);
        auto t1 = clock_type::now();
        double sec = std::chrono::duration<double>(t1 - t0).count();
        best = sec < best ? sec : best;
    }

    std::printf("%-34s %9.2f GB/s %12.0f frames/s  (%zu frames, "
                "%.1f ms best of 5)\n",
                name, s.size() / best / 1e9, frames / best, frames,
                best * 1e3);
}

} // namespace

int main()
{
    bytes small = make_stream(64);
    bytes big = make_stream(64 * 1024);

    std::printf("scanner, client role (masked), 16 KiB chunks, %zu MiB\n",
                stream_size >> 20);
    report("scanner 64 B frames", small, scan_once);
    report("scanner 64 KiB frames", big, scan_once);
    report("outbound::send 64 B, swallow off", small,
           [](const bytes& s) { return send_once(s, false); });
    report("outbound::send 64 B, swallow on", small,
           [](const bytes& s) { return send_once(s, true); });
    report("outbound::send 64 KiB, swallow on", big,
           [](const bytes& s) { return send_once(s, true); });

    return 0;
}
