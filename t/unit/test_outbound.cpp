// Unit tests for src/outbound.hpp: the send wrapper of one relay direction.
#include <catch2/catch.hpp>

#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <type_traits>

#include "frame_builder.hpp"
#include "outbound.hpp"
#include "relay_sim.hpp"
#include "wire.hpp"

using namespace wshb;
using wire::bytes;

namespace {

const std::uint8_t mask[4] = {0x11, 0x22, 0x33, 0x44};

// An Io whose write results follow a script: io_again, io_error, 0, a
// byte count (short if below n), or `all` (the default once the script
// is used up).
struct script_io {
    static constexpr long all = 1L << 40;

    std::deque<long> script;
    bytes out;
    struct call {
        const std::uint8_t* p;
        std::size_t n;
        long r;
    };
    std::vector<call> calls;
    std::vector<bytes> wrote; // the bytes each call was asked to write
    std::vector<bytes> asked;
    std::vector<frame_header> frames;
    std::vector<bytes> payloads;
    std::size_t headers = 0;
    std::vector<scan_error> errors;
    // the queued frames and the buffer frame() lays them out in: its own,
    // or one shared with other Ios (the connections of one worker)
    sim::frame_maker maker;
    sim::frame_maker* shared = nullptr;

    sim::frame_maker& buffer() { return shared != nullptr ? *shared : maker; }

    queued_frame queued(const bytes& b) { return buffer().queued(b); }

    const std::uint8_t* frame(const queued_frame& f)
    {
        return buffer().frame(f);
    }

    long write(const std::uint8_t* p, std::size_t n)
    {
        long r = all;
        if (!script.empty()) {
            r = script.front();
            script.pop_front();
        }
        if (r > 0) {
            std::size_t w = static_cast<std::size_t>(r) < n
                                ? static_cast<std::size_t>(r)
                                : n;
            out.insert(out.end(), p, p + w);
            r = static_cast<long>(w);
        }
        calls.push_back({p, n, r});
        wrote.emplace_back(p, p + n);
        // (the frame's bytes are laid out again before each attempt)
        buffer().scribble();
        return r;
    }

    // OpenSSL's rule: after io_again or 0 the next write repeats the same
    // bytes at the same address, at least as many (exactly as many for
    // module bytes, which are not relay bytes). Empty when kept.
    std::string retry_problem(const bytes& relay) const
    {
        for (std::size_t i = 0; i + 1 < calls.size(); i++) {
            if (calls[i].r > 0) {
                continue;
            }
            const call& a = calls[i];
            const call& b = calls[i + 1];
            bool is_relay =
                a.p >= relay.data() && a.p < relay.data() + relay.size();
            if (b.p != a.p) {
                return "retry " + std::to_string(i + 1) + ": another pointer";
            }
            if (is_relay ? b.n < a.n : b.n != a.n) {
                return "retry " + std::to_string(i + 1) + ": another length";
            }
            if (std::memcmp(wrote[i + 1].data(), wrote[i].data(), a.n) != 0) {
                return "retry " + std::to_string(i + 1) + ": other bytes";
            }
        }
        return std::string();
    }

    bool match_pong(const std::uint8_t* p, std::size_t n)
    {
        asked.emplace_back(p, p + n);
        return sim::ours(p, n);
    }

    void on_header(const frame_header&) { headers++; }

    void on_frame(const frame_header& h, const std::uint8_t* p, std::size_t n)
    {
        frames.push_back(h);
        payloads.emplace_back(p, p + n);
    }

    void on_error(scan_error e) { errors.push_back(e); }
};

bytes our_pong_payload(std::uint8_t seq)
{
    bytes p = wire::text("wshb");
    for (int i = 0; i < 12; i++) {
        p.push_back(static_cast<std::uint8_t>(seq + i));
    }
    return p;
}

bytes foreign_pong_payload()
{
    bytes p;
    for (int i = 0; i < 16; i++) {
        p.push_back(static_cast<std::uint8_t>(0xa0 + i));
    }
    return p;
}

bytes cat(std::initializer_list<bytes> parts)
{
    bytes b;
    for (const bytes& p : parts) {
        wire::append(b, p);
    }
    return b;
}

bytes ping_inject(const char* tag)
{
    bytes payload = wire::text(tag);
    std::uint8_t out[inject_capacity];
    std::size_t n = build_control(opcode::ping, payload.data(), payload.size(),
                                  nullptr, out, sizeof(out));
    return bytes(out, out + n);
}

} // namespace

TEST_CASE("outbound: plain relay", "[outbound]")
{
    bytes s = cat({wire::frame(0x81, wire::text("hello"), nullptr),
                   wire::frame(0x82, bytes(300, 7), nullptr),
                   wire::frame(0x89, wire::text("p"), nullptr)});
    outbound ob(role::server, true, false);
    script_io io;

    REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
    CHECK(io.out == s);
    CHECK(io.calls.size() == 1);
    CHECK(io.frames.size() == 3);
    CHECK(io.headers == 3);
    CHECK(io.payloads[0].empty());
    CHECK(io.payloads[2] == wire::text("p"));
    CHECK(ob.at_boundary());
    CHECK_FALSE(ob.blocked());
    CHECK(ob.last_header().op == opcode::ping);
}

TEST_CASE("outbound: a data payload is not inspected", "[outbound]")
{
    bytes s = wire::frame(0x82, bytes(1 << 20, 0x8a), mask);
    outbound ob(role::client, true, false);
    script_io io;

    REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
    CHECK(io.calls.size() == 1);
    CHECK(io.calls[0].n == s.size());
    CHECK(io.frames.size() == 1);
}

TEST_CASE("outbound: injection at boundaries", "[outbound]")
{
    bytes a = wire::frame(0x82, bytes(200, 1), nullptr);
    bytes b = wire::frame(0x81, wire::text("bee"), nullptr);
    bytes inj = ping_inject("INJ1");
    outbound ob(role::server, false, false);
    script_io io;

    SECTION("idle stream: flush writes it at once")
    {
        REQUIRE(ob.queue(io.queued(inj)));
        CHECK(ob.queued());
        CHECK(ob.flush(io) == 0);
        CHECK(io.out == inj);
        CHECK_FALSE(ob.queued());
    }

    SECTION("in the middle of a frame it waits for the end")
    {
        REQUIRE(ob.send(io, a.data(), 100) == 100);
        REQUIRE(ob.queue(io.queued(inj)));
        CHECK(ob.flush(io) == 0);
        CHECK(io.out.size() == 100);
        CHECK_FALSE(ob.at_boundary());

        bytes rest = cat({bytes(a.begin() + 100, a.end()), b});
        REQUIRE(ob.send(io, rest.data(), rest.size()) == long(rest.size()));
        CHECK(io.out == cat({a, inj, b}));
        CHECK(io.calls.size() == 4); // 100, rest of a, inj, b
    }

    SECTION("queued first, the relay write is cut at the boundary")
    {
        bytes s = cat({a, b});
        REQUIRE(ob.send(io, s.data(), 10) == 10);
        REQUIRE(ob.queue(io.queued(inj)));
        REQUIRE(ob.send(io, s.data() + 10, s.size() - 10)
                == long(s.size() - 10));
        CHECK(io.out == cat({a, inj, b}));
    }

    SECTION("one at a time, whole, not too big")
    {
        REQUIRE(ob.queue(io.queued(inj)));
        CHECK_FALSE(ob.queue(io.queued(inj)));
        ob.drop_queued();
        CHECK_FALSE(ob.queued());
        bytes big(inject_capacity + 1, 0x89);
        CHECK_FALSE(ob.queue(io.queued(big)));
        CHECK_FALSE(ob.queue(queued_frame()));
    }

    SECTION("a started injection cannot be dropped")
    {
        REQUIRE(ob.queue(io.queued(inj)));
        io.script = {2};
        CHECK(ob.flush(io) == io_again);
        CHECK(ob.blocked());
        ob.drop_queued();
        CHECK(ob.queued());
        CHECK_FALSE(ob.at_boundary());

        // and nothing relayed may come before its rest
        REQUIRE(ob.send(io, b.data(), b.size()) == long(b.size()));
        CHECK(io.out == cat({inj, b}));
    }
}

TEST_CASE("outbound: Pong swallowing", "[outbound]")
{
    bytes data = wire::frame(0x82, bytes(40, 2), mask);
    bytes ours = wire::frame(0x8a, our_pong_payload(1), mask);
    bytes foreign = wire::frame(0x8a, foreign_pong_payload(), mask);
    bytes short_pong = wire::frame(0x8a, wire::text("abc"), mask);
    outbound ob(role::client, true, false);
    script_io io;

    SECTION("ours is swallowed, the rest goes out byte-exact")
    {
        bytes s = cat({data, ours, foreign, short_pong, data});
        REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
        CHECK(io.out == cat({data, foreign, short_pong, data}));
        REQUIRE(io.asked.size() == 2);
        CHECK(io.asked[0] == our_pong_payload(1));
        CHECK(io.asked[1] == foreign_pong_payload());
        CHECK(io.frames.size() == 5);
    }

    SECTION("held bytes count as consumed")
    {
        REQUIRE(ob.send(io, ours.data(), 5) == 5);
        CHECK(io.out.empty());
        CHECK(io.calls.empty());
        CHECK(ob.at_boundary());
        REQUIRE(ob.send(io, ours.data() + 5, ours.size() - 5)
                == long(ours.size() - 5));
        CHECK(io.out.empty());
        CHECK(io.asked.size() == 1);
    }

    SECTION("the stream ends inside a held Pong: release() forwards it")
    {
        REQUIRE(ob.send(io, ours.data(), 9) == 9);
        CHECK(io.out.empty());
        CHECK(ob.release(io) == 0);
        CHECK(io.out == bytes(ours.begin(), ours.begin() + 9));
        CHECK(io.asked.empty());
        CHECK(ob.release(io) == 0); // once only
        CHECK(io.out.size() == 9);
    }

    SECTION("split after its first byte, then not a candidate")
    {
        bytes s = cat({short_pong, data});
        REQUIRE(ob.send(io, s.data(), 1) == 1);
        CHECK(io.out.empty());
        REQUIRE(ob.send(io, s.data() + 1, s.size() - 1) == long(s.size() - 1));
        CHECK(io.out == s);
        CHECK(io.asked.empty());
    }

    SECTION("an injection may go before a held Pong")
    {
        bytes inj = sim::inject_frame(role::client, 7, 1);
        REQUIRE(ob.send(io, foreign.data(), 3) == 3);
        REQUIRE(ob.queue(io.queued(inj)));
        CHECK(ob.flush(io) == 0);
        CHECK(io.out == inj);
        REQUIRE(ob.send(io, foreign.data() + 3, foreign.size() - 3)
                == long(foreign.size() - 3));
        CHECK(io.out == cat({inj, foreign}));
    }

    SECTION("a Pong inside a relay chunk is cut out")
    {
        bytes s = cat({data, data, ours, data});
        REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
        CHECK(io.out == cat({data, data, data}));
        CHECK(io.calls.size() == 2);
    }

    SECTION("swallowing off: everything is relayed")
    {
        outbound plain(role::client, false, false);
        bytes s = cat({ours, data});
        REQUIRE(plain.send(io, s.data(), s.size()) == long(s.size()));
        CHECK(io.out == s);
        CHECK(io.asked.empty());
    }

    SECTION("server role: unmasked candidates")
    {
        outbound srv(role::server, true, false);
        bytes s = cat({wire::frame(0x8a, our_pong_payload(3), nullptr),
                       wire::frame(0x81, wire::text("x"), nullptr)});
        REQUIRE(srv.send(io, s.data(), s.size()) == long(s.size()));
        CHECK(io.out == wire::frame(0x81, wire::text("x"), nullptr));
    }
}

TEST_CASE("outbound: retries and short writes", "[outbound]")
{
    bytes a = wire::frame(0x82, bytes(100, 1), nullptr);
    bytes b = wire::frame(0x81, wire::text("bee"), nullptr);
    bytes s = cat({a, b});
    bytes inj = ping_inject("INJ2");
    outbound ob(role::server, true, false);
    script_io io;

    SECTION("io_again on relay bytes: same pointer, same length next")
    {
        io.script = {io_again};
        CHECK(ob.send(io, s.data(), 50) == io_again);
        CHECK(ob.blocked());

        // an injection queued meanwhile must wait for the owed bytes
        REQUIRE(ob.queue(io.queued(inj)));
        CHECK(ob.flush(io) == 0);
        REQUIRE(io.calls.size() == 1);

        REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
        REQUIRE(io.calls.size() >= 2);
        CHECK(io.calls[1].p == s.data());
        CHECK(io.calls[1].n == 50);
        CHECK(io.out == cat({a, inj, b}));
    }

    SECTION("a 0 write counts as again")
    {
        io.script = {0};
        CHECK(ob.send(io, s.data(), s.size()) == io_again);
        REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
        CHECK(io.calls[1].p == io.calls[0].p);
        CHECK(io.calls[1].n == io.calls[0].n);
        CHECK(io.out == s);
    }

    SECTION("io_again on injected bytes: the same bytes next")
    {
        REQUIRE(ob.queue(io.queued(inj)));
        io.script = {3, io_again};
        CHECK(ob.flush(io) == io_again); // short: blocked
        CHECK(ob.flush(io) == io_again); // again
        REQUIRE(io.calls.size() == 2);
        CHECK(io.calls[1].p == io.calls[0].p + 3);

        REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
        CHECK(io.calls[2].p == io.calls[1].p);
        CHECK(io.calls[2].n == io.calls[1].n);
        CHECK(io.out == cat({inj, s}));
    }

    SECTION("io_again on held bytes: the same bytes next")
    {
        bytes foreign = wire::frame(0x8a, foreign_pong_payload(), nullptr);
        bytes t = cat({foreign, b});
        io.script = {io_again};
        CHECK(ob.send(io, t.data(), t.size()) == long(foreign.size()));
        REQUIRE(io.calls.size() == 1);
        CHECK(io.calls[0].n == foreign.size());

        // the rest of the caller's bytes wait behind the held ones
        REQUIRE(ob.send(io, t.data() + foreign.size(), b.size())
                == long(b.size()));
        CHECK(io.calls[1].p == io.calls[0].p);
        CHECK(io.calls[1].n == io.calls[0].n);
        CHECK(io.out == t);
    }

    SECTION("short write: progress returned, blocked")
    {
        io.script = {30};
        CHECK(ob.send(io, s.data(), s.size()) == 30);
        CHECK(ob.blocked());
        REQUIRE(ob.send(io, s.data() + 30, s.size() - 30)
                == long(s.size() - 30));
        CHECK_FALSE(ob.blocked());
        CHECK(io.out == s);
    }

    SECTION("io_error is returned at once")
    {
        io.script = {io_error};
        CHECK(ob.send(io, s.data(), s.size()) == io_error);
        REQUIRE(ob.queue(io.queued(inj)));
        io.script = {io_error};
        CHECK(ob.flush(io) == io_error);
    }
}

TEST_CASE("outbound: rejected stream turns to passthrough", "[outbound]")
{
    bytes good = wire::frame(0x81, wire::text("ok"), nullptr);
    bytes bad = wire::frame(0x83, wire::text("no"), nullptr);
    bytes pong = wire::frame(0x8a, our_pong_payload(1), nullptr);
    bytes inj = ping_inject("INJ3");
    outbound ob(role::server, true, false);
    script_io io;

    SECTION("raw forwarding, on_error once, queue refused")
    {
        bytes s = cat({good, bad, pong, good});
        REQUIRE(ob.send(io, s.data(), good.size() + 1)
                == long(good.size() + 1));
        CHECK(ob.passthrough());
        REQUIRE(io.errors.size() == 1);
        CHECK(io.errors[0] == scan_error::bad_opcode);
        CHECK_FALSE(ob.queue(io.queued(inj)));

        // our Pong too goes out as it is now
        REQUIRE(
            ob.send(io, s.data() + good.size() + 1, s.size() - good.size() - 1)
            == long(s.size() - good.size() - 1));
        CHECK(io.out == s);
        CHECK(io.asked.empty());
        CHECK(io.errors.size() == 1);
        CHECK(io.frames.size() == 1);
    }

    SECTION("a queued frame waits for the boundary before the bad frame")
    {
        bytes s = cat({good, bad, pong});
        REQUIRE(ob.send(io, s.data(), 1) == 1);
        REQUIRE(ob.queue(io.queued(inj)));
        REQUIRE(ob.send(io, s.data() + 1, s.size() - 1) == long(s.size() - 1));
        CHECK(io.out == cat({good, inj, bad, pong}));
        CHECK(ob.passthrough());
    }

    SECTION("a queued frame not started is dropped")
    {
        bytes bad64 = wire::header(0x82, std::uint64_t(1) << 63, nullptr);
        bytes s = cat({bad64, good});
        REQUIRE(ob.send(io, s.data(), 2) == 2);
        REQUIRE(ob.queue(io.queued(inj)));
        REQUIRE(ob.send(io, s.data() + 2, s.size() - 2) == long(s.size() - 2));
        CHECK(io.out == s);
        CHECK_FALSE(ob.queued());
        REQUIRE(io.errors.size() == 1);
        CHECK(io.errors[0] == scan_error::bad_size_64);
    }

    SECTION("passthrough forwards everything raw")
    {
        bytes s = cat({bad, pong, good});
        REQUIRE(ob.queue(io.queued(inj)));
        io.script = {io_again};
        CHECK(ob.flush(io) == io_again);
        REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
        CHECK(io.out == cat({inj, s}));
        CHECK(ob.passthrough());
        CHECK(io.errors.size() == 1);
        CHECK(io.asked.empty());
    }
}

namespace {

struct mt_chooser {
    std::mt19937 rng;

    explicit mt_chooser(std::uint32_t seed) : rng(seed) {}

    std::uint32_t pick(std::uint32_t n)
    {
        return n <= 1 ? 0 : static_cast<std::uint32_t>(rng() % n);
    }
};

struct generated {
    bytes s;
    std::size_t frames = 0;
    std::size_t our_pongs = 0;
    std::size_t foreign_pongs = 0; // 16-byte Pongs the Io will not claim
};

std::size_t random_len(std::mt19937& rng)
{
    std::uint32_t k = rng() % 100;

    if (k < 60) {
        return rng() % 126;
    }
    if (k < 85) {
        return 126 + rng() % 1000;
    }
    if (k < 97) {
        return 1126 + rng() % (65536 - 1126);
    }
    return 65536 + rng() % (70000 - 65536 + 1);
}

// Random valid stream for one direction: messages of 1-4 fragments with
// control frames between fragments, our Pongs, foreign 16-byte Pongs,
// other Pongs, Pings and Closes; masked when the sender is a client.
generated gen_stream(std::mt19937& rng, role r, bool rsv1, std::size_t count)
{
    generated g;
    bool client = r == role::client;

    auto add = [&](std::uint8_t b0, const bytes& payload) {
        std::uint8_t m[4] = {std::uint8_t(rng()), std::uint8_t(rng()),
                             std::uint8_t(rng()), std::uint8_t(rng())};
        wire::append(g.s, wire::frame(b0, payload, client ? m : nullptr));
        g.frames++;
    };

    auto control = [&]() {
        std::uint32_t k = rng() % 10;
        bytes p;

        if (k < 3) {
            p = our_pong_payload(static_cast<std::uint8_t>(rng()));
            add(0x8a, p);
            g.our_pongs++;
        } else if (k < 5) {
            for (int i = 0; i < 16; i++) {
                p.push_back(static_cast<std::uint8_t>(rng()));
            }
            p[0] = static_cast<std::uint8_t>('a' + rng() % 20); // not 'w'
            add(0x8a, p);
            g.foreign_pongs++;
        } else if (k < 7) {
            std::size_t n = rng() % 126;
            if (n == 16) {
                n = 17;
            }
            p.assign(n, static_cast<std::uint8_t>(rng()));
            add(0x8a, p);
        } else if (k < 9) {
            p.assign(rng() % 126, 'p');
            add(0x89, p);
        } else {
            p = {0x03, 0xe8, 'b', 'y', 'e'};
            add(0x88, p);
        }
    };

    while (g.frames < count) {
        if (rng() % 3 == 0) {
            control();
            continue;
        }

        std::size_t frags = 1 + rng() % 4;
        std::uint8_t op = rng() % 2 == 0 ? 0x1 : 0x2;

        for (std::size_t f = 0; f < frags; f++) {
            std::uint8_t b0 = f == 0 ? op : 0x0;
            if (f + 1 == frags) {
                b0 |= 0x80;
            }
            if (f == 0 && rsv1 && rng() % 2 == 0) {
                b0 |= 0x40;
            }

            bytes p(random_len(rng));
            for (std::size_t i = 0; i < p.size() && i < 64; i++) {
                p[i] = static_cast<std::uint8_t>(rng());
            }
            add(b0, p);

            // control frames between fragments
            while (f + 1 < frags && rng() % 3 == 0) {
                control();
            }
        }
    }

    return g;
}

struct io_mode {
    const char* name;
    sim::options opt;
};

std::vector<io_mode> io_modes()
{
    std::vector<io_mode> v;
    sim::options o;

    o.queue_odds = 4;
    v.push_back({"full writes", o});

    o.short_odds = 3;
    v.push_back({"short writes", o});

    o.short_odds = 0;
    o.again_odds = 3;
    v.push_back({"io_again", o});

    o.short_odds = 4;
    o.again_odds = 4;
    o.zero_odds = 9;
    o.queue_odds = 2;
    o.grow_max = 300;
    o.flush_odds = 3;
    v.push_back({"mixed, small chunks", o});

    return v;
}

// Every role, swallowing on and off, every Io mode with 1 in last_odds
// queued frames the last (0: none), 12 seeds each: a run must report no
// problem, then check(g, swallow, res). Returns the number of runs.
template <class Check>
std::size_t for_each_run(std::uint32_t last_odds, Check check)
{
    std::size_t runs = 0;

    for (role r : {role::client, role::server}) {
        for (bool swallow : {true, false}) {
            for (io_mode m : io_modes()) {
                m.opt.last_odds = last_odds;
                for (std::uint32_t seed = 1; seed <= 12; seed++) {
                    std::mt19937 rng(seed * 7919 + (r == role::client));
                    bool rsv1 = seed % 2 == 0;
                    generated g = gen_stream(rng, r, rsv1, 10 + seed * 4);
                    mt_chooser ch(seed * 31 + swallow);
                    sim::result res =
                        sim::run(g.s, r, swallow, rsv1, ch, m.opt);

                    INFO("role " << (r == role::client ? "client" : "server")
                                 << " swallow " << swallow << " mode " << m.name
                                 << " seed " << seed << " size " << g.s.size());
                    if (!res.problem.empty()) {
                        FAIL(res.problem);
                    }
                    check(g, swallow, res);
                    runs++;
                }
            }
        }
    }

    return runs;
}

} // namespace

TEST_CASE("outbound: property: output is input minus swallowed Pongs plus "
          "injections at boundaries",
          "[outbound][property]")
{
    std::size_t injected = 0;
    std::size_t swallowed = 0;
    std::size_t agains = 0;

    std::size_t runs = for_each_run(
        0, [&](const generated& g, bool swallow, const sim::result& res) {
            CHECK(res.frames == g.frames);
            CHECK(res.swallowed == (swallow ? g.our_pongs : 0));
            CHECK_FALSE(res.passthrough);
            injected += res.injected;
            swallowed += res.swallowed;
            agains += res.agains;
        });

    CHECK(runs == 2 * 2 * 4 * 12);
    CHECK(injected > 100);
    CHECK(swallowed > 50);
    CHECK(agains > 100);
}

TEST_CASE("outbound: property: a last frame ends the written stream",
          "[outbound][property]")
{
    std::size_t ended = 0;

    std::size_t runs =
        for_each_run(3, [&](const generated& g, bool, const sim::result& res) {
            // the Io hears of every frame, written or discarded
            CHECK(res.frames == g.frames);
            ended += res.ended ? 1 : 0;
        });

    CHECK(runs == 2 * 2 * 4 * 12);
    CHECK(ended > runs / 2);
}

TEST_CASE("outbound: property: a stream rejected midway is forwarded raw",
          "[outbound][property]")
{
    for (std::uint32_t seed = 1; seed <= 40; seed++) {
        std::mt19937 rng(seed);
        role r = seed % 2 == 0 ? role::client : role::server;
        generated g = gen_stream(rng, r, false, 12);

        // corrupt a frame start: a reserved opcode, RSV2 or a wrong mask
        sim::reference ref = sim::reference_of(g.s, r, true, false);
        REQUIRE(ref.end == sim::reference::clean);
        const sim::reference::frame& f = ref.frames[rng() % ref.frames.size()];
        switch (seed % 3) {
        case 0:
            g.s[f.off] = static_cast<std::uint8_t>((g.s[f.off] & 0xf0) | 0x3);
            break;
        case 1:
            g.s[f.off] |= 0x20;
            break;
        default:
            g.s[f.off + 1] ^= 0x80;
            break;
        }

        sim::options o = io_modes()[seed % 4].opt;
        mt_chooser ch(seed);
        sim::result res = sim::run(g.s, r, true, false, ch, o);

        INFO("seed " << seed);
        if (!res.problem.empty()) {
            FAIL(res.problem);
        }
        CHECK(res.passthrough);
    }
}

TEST_CASE("outbound: property: truncated streams", "[outbound][property]")
{
    for (std::uint32_t seed = 1; seed <= 40; seed++) {
        std::mt19937 rng(seed + 1000);
        role r = seed % 2 == 0 ? role::client : role::server;
        generated g = gen_stream(rng, r, false, 8);

        g.s.resize(1 + rng() % g.s.size());

        sim::options o = io_modes()[seed % 4].opt;
        mt_chooser ch(seed);
        sim::result res = sim::run(g.s, r, true, false, ch, o);

        INFO("seed " << seed << " size " << g.s.size());
        if (!res.problem.empty()) {
            FAIL(res.problem);
        }
    }
}

TEST_CASE("outbound: the cut search over a chunk with a bad frame in it",
          "[outbound]")
{
    bytes good = wire::frame(0x81, wire::text("ok"), nullptr);
    bytes bad = wire::frame(0x83, wire::text("no"), nullptr);
    bytes pong = wire::frame(0x8a, our_pong_payload(1), nullptr);
    bytes inj = ping_inject("INJ4");
    outbound ob(role::server, true, false);
    script_io io;

    SECTION("a candidate Pong behind the bad frame goes out as it is")
    {
        bytes s = cat({good, bad, pong, good});
        REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
        CHECK(io.out == s);
        CHECK(ob.passthrough());
        CHECK(io.errors.size() == 1);
        CHECK(io.asked.empty());
        CHECK(io.frames.size() == 1);
    }

    SECTION("the same after a short write inside the bad frame")
    {
        bytes s = cat({good, bad, pong, good});
        io.script = {long(good.size() + 1)};
        REQUIRE(ob.send(io, s.data(), s.size()) == long(good.size() + 1));
        CHECK(ob.passthrough());
        CHECK(io.frames.size() == 1);
        std::size_t done = good.size() + 1;
        REQUIRE(ob.send(io, s.data() + done, s.size() - done)
                == long(s.size() - done));
        CHECK(io.out == s);
        CHECK(io.asked.empty());
        CHECK(io.errors.size() == 1);
    }

    SECTION("a queued frame and a bad frame in progress")
    {
        // rejected at its fourth byte: 125 in the 16-bit form
        bytes bad16 =
            wire::frame(0x82, bytes(125, 3), nullptr, wire::len_form::f16);
        bytes s = cat({bad16, pong, good});
        REQUIRE(ob.send(io, s.data(), 1) == 1);
        CHECK_FALSE(ob.passthrough());
        REQUIRE(ob.queue(io.queued(inj)));
        REQUIRE(ob.send(io, s.data() + 1, s.size() - 1) == long(s.size() - 1));
        CHECK(io.out == s);
        CHECK_FALSE(ob.queued());
        CHECK(io.errors.size() == 1);
        CHECK(io.asked.empty());
    }
}

TEST_CASE("outbound: frames are heard of only once written", "[outbound]")
{
    bytes data = wire::frame(0x82, bytes(40, 2), mask);
    bytes ours = wire::frame(0x8a, our_pong_payload(1), mask);
    bytes s = cat({data, data, data, ours, data});
    outbound ob(role::client, true, false);
    script_io io;

    // a short write ends inside the second frame's payload
    io.script = {long(data.size() + 8)};
    REQUIRE(ob.send(io, s.data(), s.size()) == long(data.size() + 8));
    CHECK(io.frames.size() == 1);
    CHECK(io.headers == 2);

    // io_again on the rest: nothing more heard of
    std::size_t done = data.size() + 8;
    io.script = {io_again};
    REQUIRE(ob.send(io, s.data() + done, s.size() - done) == io_again);
    CHECK(io.frames.size() == 1);
    CHECK(io.headers == 2);

    // then all of it: the Pong is swallowed, every frame heard of once
    REQUIRE(ob.send(io, s.data() + done, s.size() - done)
            == long(s.size() - done));
    CHECK(io.out == cat({data, data, data, data}));
    CHECK(io.frames.size() == 5);
    CHECK(io.headers == 5);
    CHECK(io.asked.size() == 1);
    CHECK(io.calls.size() == 4); // short, again, to the Pong, after it
}

TEST_CASE("outbound: a held Pong that is not ours goes out as it came",
          "[outbound][hold]")
{
    // the hold keeps no copy: its bytes are laid out again from the
    // scanner's state; split at every byte, and fed a byte at a time
    for (role r : {role::client, role::server}) {
        const std::uint8_t* mk = r == role::client ? mask : nullptr;
        bytes data = wire::frame(0x82, bytes(40, 2), mk);
        bytes foreign = wire::frame(0x8a, foreign_pong_payload(), mk);
        bytes ours = wire::frame(0x8a, our_pong_payload(4), mk);
        bytes s = cat({data, foreign, data, ours, foreign});
        bytes want = cat({data, foreign, data, foreign});

        for (std::size_t at = 1; at < s.size(); at++) {
            outbound ob(r, true, false);
            script_io io;
            INFO("role " << int(r) << " split at " << at);
            REQUIRE(ob.send(io, s.data(), at) == long(at));
            REQUIRE(ob.send(io, s.data() + at, s.size() - at)
                    == long(s.size() - at));
            CHECK(io.out == want);
            CHECK(io.asked.size() == 3);
            CHECK(io.payloads.size() == 5);
            CHECK(io.payloads[1] == foreign_pong_payload());
            CHECK(io.payloads[4] == foreign_pong_payload());
            CHECK(ob.at_boundary());
            CHECK_FALSE(ob.pending());
        }

        outbound ob(r, true, false);
        script_io io;
        for (std::size_t i = 0; i < s.size(); i++) {
            REQUIRE(ob.send(io, s.data() + i, 1) == 1);
        }
        CHECK(io.out == want);
        // a held Pong is one write, as it came
        std::size_t held_writes = 0;
        for (const bytes& w : io.wrote) {
            held_writes += w == foreign ? 1 : 0;
        }
        CHECK(held_writes == 2);
    }
}

TEST_CASE("outbound: the stream ends inside a held Pong, at every length",
          "[outbound][hold]")
{
    for (role r : {role::client, role::server}) {
        const std::uint8_t* mk = r == role::client ? mask : nullptr;
        bytes data = wire::frame(0x81, wire::text("before"), mk);

        for (bool mine : {true, false}) {
            bytes pong = wire::frame(
                0x8a, mine ? our_pong_payload(9) : foreign_pong_payload(), mk);

            for (std::size_t k = 1; k < pong.size(); k++) {
                for (bool bytewise : {false, true}) {
                    outbound ob(r, true, false);
                    script_io io;
                    bytes s =
                        cat({data, bytes(pong.begin(), pong.begin() + k)});
                    INFO("role " << int(r) << " ours " << mine << " k " << k
                                 << " bytewise " << bytewise);

                    REQUIRE(ob.send(io, s.data(), data.size())
                            == long(data.size()));
                    if (bytewise) {
                        for (std::size_t i = data.size(); i < s.size(); i++) {
                            REQUIRE(ob.send(io, s.data() + i, 1) == 1);
                        }
                    } else {
                        REQUIRE(ob.send(io, s.data() + data.size(), k)
                                == long(k));
                    }
                    CHECK(io.out == data);
                    CHECK(ob.at_boundary());

                    CHECK(ob.release(io) == 0);
                    CHECK(io.out == s);
                    CHECK(io.wrote.back()
                          == bytes(pong.begin(), pong.begin() + k));
                    CHECK(io.asked.empty());
                    CHECK_FALSE(ob.pending());
                    CHECK(ob.release(io) == 0); // once only
                    CHECK(io.out == s);
                }
            }
        }
    }
}

TEST_CASE("outbound: short writes and io_again while a hold goes out",
          "[outbound][hold]")
{
    // every first result on the held bytes, then more trouble, with a
    // frame queued meanwhile: the retry rule holds, the output is exact
    const long again_script[] = {io_again, 0, 1, io_again, 2};

    for (role r : {role::client, role::server}) {
        const std::uint8_t* mk = r == role::client ? mask : nullptr;
        bytes foreign = wire::frame(0x8a, foreign_pong_payload(), mk);
        bytes after = wire::frame(0x82, bytes(30, 5), mk);
        bytes inj = sim::inject_frame(r, 3, 2);
        bytes s = cat({foreign, after});

        for (long first = 0; first < long(foreign.size()); first++) {
            for (bool released : {false, true}) {
                outbound ob(r, true, false);
                script_io io;
                std::size_t k = released ? foreign.size() - 3 : foreign.size();
                bytes held(foreign.begin(), foreign.begin() + k);
                if (first >= long(k)) {
                    continue; // not short
                }
                INFO("role " << int(r) << " first " << first << " released "
                             << released);

                io.script.push_back(first == 0 ? io_again : first);
                for (long v : again_script) {
                    io.script.push_back(v);
                }

                std::size_t done = 0;
                if (released) {
                    REQUIRE(ob.send(io, s.data(), k) == long(k));
                    CHECK(io.calls.empty());
                    CHECK(ob.release(io) == io_again);
                    done = k;
                } else {
                    // all of it is taken in; the hold waits, blocked
                    long n = ob.send(io, s.data(), s.size());
                    REQUIRE(n == long(foreign.size()));
                    done = foreign.size();
                }
                CHECK(ob.blocked());
                CHECK(ob.pending());
                REQUIRE(ob.queue(io.queued(inj)));

                long rc = io_again;
                for (int i = 0; i < 40 && rc == io_again; i++) {
                    rc = ob.flush(io);
                }
                CHECK(rc == 0);

                if (!released) {
                    CHECK_FALSE(ob.pending());
                    REQUIRE(ob.send(io, s.data() + done, s.size() - done)
                            == long(s.size() - done));
                    CHECK(io.out == cat({foreign, inj, after}));
                } else {
                    // the stream ends inside a frame: no boundary for it
                    CHECK(io.out == held);
                    CHECK(ob.queued());
                }
                CHECK(io.retry_problem(s) == "");
                // every write of held bytes is from one stable place
                CHECK(io.calls[0].n == k);
                CHECK(io.wrote[0] == held);
            }
        }
    }
}

TEST_CASE("outbound: the sender it was made for", "[outbound]")
{
    // the glue tells its two directions apart by this alone
    CHECK(outbound(role::client, true, false).sender() == role::client);
    CHECK(outbound(role::server, false, true).sender() == role::server);
}

TEST_CASE("outbound: the largest frame the module queues fits", "[outbound]")
{
    // the glue: a masked Close, 1001 "server shutting down", laid out in
    // the worker's inject_capacity bytes
    queued_frame f = queued_close(1001, close_text::shutting_down, mask);
    CHECK(f.size == inject_capacity);
    outbound ob(role::client, true, false);
    CHECK(ob.queue(f));
    queued_frame big = f;
    big.size = inject_capacity + 1;
    ob.drop_queued();
    CHECK_FALSE(ob.queue(big));
}

TEST_CASE("outbound: a queued frame is laid out again for each attempt",
          "[outbound]")
{
    bytes inj = sim::inject_frame(role::client, 9, 5);
    bytes b = wire::frame(0x81, wire::text("bee"), nullptr);

    SECTION("the retry: same address, same bytes, though the buffer was "
            "overwritten in between")
    {
        outbound ob(role::server, false, false);
        script_io io;
        REQUIRE(ob.queue(io.queued(inj)));
        io.script = {2, io_again, 0, 3, io_again};
        for (int i = 0; i < 6 && ob.queued(); i++) {
            (void)ob.flush(io);
        }
        CHECK_FALSE(ob.queued());
        CHECK(io.out == inj);
        CHECK(io.retry_problem(b) == "");
        // each attempt from the buffer, at the frame's written offset
        REQUIRE(io.calls.size() == 6);
        CHECK(io.maker.calls == 6);
        CHECK(io.calls[0].p == io.maker.buf);
        CHECK(io.calls[1].p == io.maker.buf + 2);
        CHECK(io.calls[5].p == io.maker.buf + 5);
    }

    SECTION("two directions (connections) of one worker share the buffer")
    {
        sim::frame_maker worker;
        bytes other = sim::inject_frame(role::server, 4, 1);
        outbound ob1(role::server, false, false);
        outbound ob2(role::server, false, false);
        script_io io1;
        script_io io2;
        io1.shared = &worker;
        io2.shared = &worker;
        REQUIRE(ob1.queue(io1.queued(inj)));
        REQUIRE(ob2.queue(io2.queued(other)));
        io1.script = {io_again};
        CHECK(ob1.flush(io1) == io_again);
        CHECK(ob2.flush(io2) == 0); // the buffer now holds the other frame
        REQUIRE(ob1.send(io1, b.data(), b.size()) == long(b.size()));
        CHECK(io1.out == cat({inj, b}));
        CHECK(io2.out == other);
        CHECK(io1.retry_problem(b) == "");
    }
}

// The per-connection state budget: one outbound per direction.
static_assert(sizeof(frame_header) == 16, "frame_header grew");
static_assert(sizeof(basic_frame_scanner<16>) <= 48, "scanner grew");
static_assert(sizeof(queued_frame) == 12, "queued_frame grew");
static_assert(sizeof(outbound) <= 72, "outbound grew");
static_assert(std::is_standard_layout<outbound>::value,
              "offsetof on what holds an outbound");

TEST_CASE("outbound: a last frame ends the stream", "[outbound]")
{
    // client frames to the upstream: masked
    bytes a = wire::frame(0x82, bytes(60, 3), mask);
    bytes b = wire::frame(0x81, wire::text("more"), mask);
    bytes client_close = wire::frame(0x88, bytes{0x03, 0xe8}, mask);
    std::uint8_t key[4] = {1, 2, 3, 4};
    std::uint8_t close[inject_capacity];
    std::size_t cn = build_close(1001, "going", 5, key, close, sizeof(close));
    bytes ours(close, close + cn);
    outbound ob(role::client, true, false);
    script_io io;
    queued_frame qclose = io.queued(ours);

    SECTION("nothing of the sender goes after it, all is consumed")
    {
        REQUIRE(ob.queue(qclose, true));
        CHECK_FALSE(ob.discarding());
        bytes s = cat({a, b, client_close});
        REQUIRE(ob.send(io, s.data(), s.size()) == long(s.size()));
        CHECK(io.out == ours);
        CHECK(ob.discarding());
        // the Io still hears of every frame, the sender's Close too
        CHECK(io.headers == 3);
        REQUIRE(io.frames.size() == 3);
        CHECK(io.frames[2].op == opcode::close);
        // and nothing more may be queued
        CHECK_FALSE(ob.queue(qclose, false));
        ob.drop_queued();
        CHECK(ob.discarding());
    }

    SECTION("inside a fragmented frame it waits for the frame's end")
    {
        REQUIRE(ob.send(io, a.data(), 10) == 10);
        REQUIRE(ob.queue(qclose, true));
        bytes rest = cat({bytes(a.begin() + 10, a.end()), b});
        REQUIRE(ob.send(io, rest.data(), rest.size()) == long(rest.size()));
        CHECK(io.out == cat({a, ours}));
        CHECK(ob.discarding());
    }

    SECTION("blocked while it goes out: the rest, then nothing")
    {
        REQUIRE(ob.queue(qclose, true));
        io.script = {3, io_again};
        CHECK(ob.flush(io) == io_again);
        CHECK_FALSE(ob.discarding());
        CHECK(ob.send(io, b.data(), b.size()) == io_again);
        CHECK_FALSE(ob.discarding());
        REQUIRE(ob.send(io, b.data(), b.size()) == long(b.size()));
        CHECK(io.out == ours);
        CHECK(ob.discarding());
        CHECK(io.retry_problem(b).empty());
    }

    SECTION("a Pong being absorbed is never written after it")
    {
        bytes pong = wire::frame(0x8a, foreign_pong_payload(), mask);
        REQUIRE(ob.send(io, pong.data(), 4) == 4); // held, not written
        CHECK(io.out.empty());
        REQUIRE(ob.queue(qclose, true));
        CHECK(ob.flush(io) == 0);
        CHECK(ob.discarding());
        CHECK(ob.release(io) == 0);
        bytes rest = cat({bytes(pong.begin() + 4, pong.end()), b});
        REQUIRE(ob.send(io, rest.data(), rest.size()) == long(rest.size()));
        CHECK(io.out == ours);
    }

    SECTION("dropped before it started, the stream goes on")
    {
        REQUIRE(ob.queue(qclose, true));
        ob.drop_queued();
        REQUIRE(ob.send(io, b.data(), b.size()) == long(b.size()));
        CHECK(io.out == b);
        CHECK_FALSE(ob.discarding());
    }
}
