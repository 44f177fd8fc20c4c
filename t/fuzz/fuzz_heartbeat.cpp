// libFuzzer target for the heartbeat's Pong matching and figures.
//
// Input: bytes 0-3 = the connection's key; then operations, one byte each
// (low 3 bits the event, the rest an argument, more bytes where said):
// time passes, on_timer, make_ping, on_ping_written, on_ping_not_sent,
// on_receive, a Pong echoing one of the Pings made (maybe with one byte
// changed, maybe with another key), a Pong of raw input bytes. A model
// kept next to the machine checks what a peer must never achieve: a Pong
// is ours only when it is exactly a payload we made; it answers (counted,
// sampled) only as the first Pong to the latest Ping written; the RTT is
// now minus that Ping's write, whatever the payload says; pongs() counts
// answers only. Any mismatch aborts.
//
// clang++-14 -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
//     t/fuzz/fuzz_heartbeat.cpp src/heartbeat.cpp -o /tmp/fuzz_heartbeat
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "heartbeat.hpp"

namespace {

[[noreturn]] void die(const char* what)
{
    std::fprintf(stderr, "fuzz_heartbeat: %s\n", what);
    std::abort();
}

void check(bool ok, const char* what)
{
    if (!ok) {
        die(what);
    }
}

std::uint32_t load_be32(const std::uint8_t* p)
{
    return std::uint32_t(p[0]) << 24 | std::uint32_t(p[1]) << 16
           | std::uint32_t(p[2]) << 8 | p[3];
}

struct input {
    const std::uint8_t* p;
    std::size_t n;

    std::uint8_t byte()
    {
        if (n == 0) {
            return 0;
        }
        n--;
        return *p++;
    }
};

// What the caller knows: every payload made (by sequence number), and
// which Ping was written last, when, and whether it had its answer.
struct model {
    std::vector<std::vector<std::uint8_t>> made; // index = sequence
    bool unwritten = false;
    bool any_written = false;
    std::uint32_t written_seq = 0;
    std::uint64_t written_us = 0;
    bool answered = true;
    std::uint32_t answers = 0;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size)
{
    if (size < 4) {
        return 0;
    }

    const std::uint32_t key = load_be32(data);
    input in{data + 4, size - 4};
    wshb::heartbeat_config cf;
    wshb::heartbeat hb;
    model m;
    std::uint64_t now_us = 1000000;
    std::uint64_t lag_ms = 0; // the ms clock, cached behind the us one
    std::uint8_t buf[wshb::ping_payload_size];

    cf.interval_ms = 100;
    cf.timeout_ms = 50;
    hb.start(cf, now_us / 1000);

    while (in.n > 0) {
        std::uint8_t op = in.byte();
        std::uint8_t arg = op >> 3;
        std::uint64_t now_ms = now_us / 1000 - lag_ms;

        switch (op & 7) {
        case 0: // time passes; the ms clock catches up or lags
            now_us += std::uint64_t(in.byte()) << (arg & 15);
            lag_ms = (arg & 16) != 0 ? in.byte() : 0;
            if (lag_ms > now_us / 1000) {
                lag_ms = 0;
            }
            break;

        case 1:
            (void)hb.on_timer(cf, now_ms);
            break;

        case 2: {
            std::uint32_t before = hb.pings();
            check(hb.make_ping(buf, key) == wshb::ping_payload_size,
                  "make_ping size");
            std::uint32_t seq = load_be32(buf + 4);
            check(seq + 1 == hb.pings(), "make_ping sequence");
            check(m.unwritten ? hb.pings() == before : hb.pings() == before + 1,
                  "make_ping count");
            check(std::memcmp(buf, "wshb", 4) == 0, "make_ping tag");
            check(load_be32(buf + 8) == key, "make_ping key");
            check(load_be32(buf + 12) == 0, "make_ping zeros");
            m.made.resize(seq + 1);
            m.made[seq].assign(buf, buf + sizeof(buf));
            m.unwritten = true;
            break;
        }

        case 3:
            hb.on_ping_written(now_ms, now_us);
            if (m.unwritten) {
                m.any_written = true;
                m.written_seq = hb.pings() - 1;
                m.answered = false;
            } else {
                m.answered = true;
            }
            m.written_us = now_us;
            m.unwritten = false;
            break;

        case 4:
            hb.on_ping_not_sent(now_ms);
            if (m.unwritten) {
                m.made.pop_back();
                m.unwritten = false;
            }
            check(hb.pings() == m.made.size(), "not sent: count");
            break;

        case 5:
            hb.on_receive(now_ms);
            break;

        case 6:
        case 7: {
            std::uint8_t p[32];
            std::size_t len;
            std::uint32_t k = key;

            if ((op & 7) == 6) {
                // an echo of a Ping made, perhaps altered or late
                if (m.made.empty()) {
                    break;
                }
                std::size_t i = m.made.size() - 1 - (arg % m.made.size());
                std::memcpy(p, m.made[i].data(), 16);
                len = 16;
                std::uint8_t change = in.byte();
                if ((change & 0xf0) == 0x10) {
                    p[change & 15] ^= in.byte() | 1;
                } else if (change == 0x20) {
                    k = key ^ 0x80000000u; // another heartbeat's key
                }
            } else {
                len = arg;
                for (std::size_t i = 0; i < len; i++) {
                    p[i] = in.byte();
                }
            }

            bool sampled = false;
            std::uint32_t pongs = hb.pongs();
            bool ours = hb.on_pong(p, len, k, now_us, &sampled);

            // ours only when exactly a payload we made, in the window
            bool made_it = false;
            std::uint32_t seq = 0;
            if (len == 16 && k == key) {
                seq = load_be32(p + 4);
                made_it = seq < m.made.size() && m.made.size() - seq <= 65536
                          && std::memcmp(p, m.made[seq].data(), 16) == 0;
            }
            check(ours == made_it, "ours differs from made");

            // an answer: the first to the latest Ping written, measured
            // from its write
            bool answer =
                made_it && m.any_written && !m.answered && seq == m.written_seq;
            check(sampled == answer, "answer differs");
            check(hb.pongs() == pongs + (answer ? 1 : 0), "pongs count");

            if (answer) {
                std::uint64_t rtt =
                    now_us > m.written_us ? now_us - m.written_us : 0;
                rtt = rtt > 0xffffffffu ? 0xffffffffu : rtt;
                check(hb.rtt_last_us() == rtt, "RTT not from the write");
                check(hb.rtt_min_us() <= rtt, "RTT min");
                m.answered = true;
                m.answers++;
            }
            break;
        }
        }

        check(hb.pongs() == m.answers, "pongs total");
        check(hb.pongs() <= hb.pings(), "more answers than Pings");
        check(hb.pings() == m.made.size(), "pings total");
    }

    return 0;
}
