// libFuzzer target for the outbound send wrapper.
//
// Input: byte 0 = bit 0 role, bit 1 swallow, bit 2 allow RSV1, bits 3-5
// Io behaviour (how often writes are short, io_again or 0), bits 6-7 how
// often a frame is queued (1 in 8 of them the last: a Close of the
// module's, after which relay bytes are discarded); bytes 1-2 = stream
// length L (little endian,
// capped to what is left); then L stream bytes; the rest drives every
// choice (buffer growth, write results, queue and flush points). The
// output is checked against the reference as in the unit property test
// (t/unit/relay_sim.hpp); any mismatch aborts.
//
// clang++-14 -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
//     t/fuzz/fuzz_outbound.cpp src/frame.cpp src/frame_builder.cpp \
//     -o /tmp/fuzz_outbound
#include <cstdio>
#include <cstdlib>

#include "../unit/relay_sim.hpp"

namespace {

// Choices read from the input; 0 (the plain choice) once it runs out.
struct byte_chooser {
    const std::uint8_t* p;
    std::size_t n;

    std::uint32_t pick(std::uint32_t bound)
    {
        if (bound <= 1 || n == 0) {
            return 0;
        }

        std::uint32_t v = *p++;
        n--;

        if (bound > 256 && n > 0) {
            v = (v << 8) | *p++;
            n--;
        }

        return v % bound;
    }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size)
{
    if (size < 3) {
        return 0;
    }

    std::uint8_t cf = data[0];
    wshb::role r = (cf & 1) != 0 ? wshb::role::client : wshb::role::server;
    bool swallow = (cf & 2) != 0;
    bool rsv1 = (cf & 4) != 0;
    std::size_t len = data[1] | (std::size_t(data[2]) << 8);

    data += 3;
    size -= 3;
    len = len < size ? len : size;

    sim::bytes s(data, data + len);
    byte_chooser ch{data + len, size - len};
    sim::options opt;
    std::uint32_t io = (cf >> 3) & 7;

    opt.short_odds = (io & 1) != 0 ? 3 : 0;
    opt.again_odds = (io & 2) != 0 ? 3 : 0;
    opt.zero_odds = (io & 4) != 0 ? 5 : 0;
    opt.queue_odds = (cf >> 6) == 0 ? 0 : 1u + (cf >> 6) * 2;
    opt.last_odds = 8; // a queued frame is the last one (a module Close)
    opt.grow_max = 512;
    opt.flush_odds = 4;

    sim::result res = sim::run(s, r, swallow, rsv1, ch, opt);

    if (!res.problem.empty()) {
        std::fprintf(stderr, "fuzz_outbound: %s\n", res.problem.c_str());
        std::abort();
    }

    return 0;
}
