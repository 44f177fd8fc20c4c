// Unit tests for src/heartbeat.hpp, on a fake clock (no sleeps).
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>

#include "heartbeat.hpp"

using namespace wshb;

namespace {

heartbeat_config config(std::uint32_t interval, std::uint32_t timeout,
                        std::uint32_t read = 0, std::uint32_t send = 0,
                        bool ping = true)
{
    heartbeat_config cf;
    cf.interval_ms = interval;
    cf.timeout_ms = timeout;
    cf.read_timeout_ms = read;
    cf.send_timeout_ms = send;
    cf.ping = ping;
    return cf;
}

// The machine with its configuration at hand, as the glue keeps it, and
// the test's clock: the latest ms time given to it (next_deadline() takes
// the caller's now).
struct machine : heartbeat {
    heartbeat_config cf;
    std::uint64_t now = 0;

    void tick(std::uint64_t now_ms) { now = now_ms > now ? now_ms : now; }

    void start(const heartbeat_config& c, std::uint64_t now_ms)
    {
        cf = c;
        tick(now_ms);
        heartbeat::start(c, now_ms);
    }

    action on_timer(std::uint64_t now_ms)
    {
        tick(now_ms);
        return heartbeat::on_timer(cf, now_ms);
    }

    void on_receive(std::uint64_t now_ms)
    {
        tick(now_ms);
        heartbeat::on_receive(now_ms);
    }

    void on_data(std::uint64_t now_ms)
    {
        tick(now_ms);
        heartbeat::on_data(now_ms);
    }

    void on_write_blocked(std::uint64_t now_ms)
    {
        tick(now_ms);
        heartbeat::on_write_blocked(now_ms);
    }

    void on_ping_not_sent(std::uint64_t now_ms)
    {
        tick(now_ms);
        heartbeat::on_ping_not_sent(now_ms);
    }

    std::uint64_t next_deadline() const
    {
        return heartbeat::next_deadline(cf, now);
    }

    std::uint32_t ping_slack() const { return heartbeat::ping_slack(cf); }

    // the us clock in step with the ms one (tests of timing, not of RTT)
    void on_ping_written(std::uint64_t now_ms)
    {
        on_ping_written(now_ms, now_ms * 1000);
    }

    void on_ping_written(std::uint64_t now_ms, std::uint64_t now_us)
    {
        tick(now_ms);
        heartbeat::on_ping_written(now_ms, now_us);
    }
};

bool is(action a, action::kind_t k, close_reason r = close_reason::none)
{
    return a.kind == k && a.reason == r;
}

// The connection's key, as the glue draws it.
constexpr std::uint32_t key = 0x5eed1e55u;

// Pong payload as a peer echoes it back.
struct pong_payload {
    std::uint8_t b[ping_payload_size];

    bool operator==(const pong_payload& o) const
    {
        return std::equal(b, b + sizeof(b), o.b);
    }
};

pong_payload made(heartbeat& hb, std::uint32_t k = key)
{
    pong_payload p;
    if (hb.make_ping(p.b, k) != ping_payload_size) {
        FAIL("make_ping size");
    }
    return p;
}

// A Ping made and written at now_us (now_ms = now_us / 1000).
pong_payload sent(machine& hb, std::uint64_t now_us)
{
    pong_payload p = made(hb);
    hb.on_ping_written(now_us / 1000, now_us);
    return p;
}

} // namespace

TEST_CASE("heartbeat: Ping scheduling", "[heartbeat]")
{
    machine hb;
    std::uint64_t t = 1000;

    CHECK(hb.next_deadline() == 0);
    CHECK(is(hb.on_timer(t), action::none));

    hb.start(config(100, 30), t);

    SECTION("a Ping is due an interval after the last receive")
    {
        CHECK(hb.ping_slack() == 6);
        CHECK(hb.next_deadline() == 1100);
        CHECK(is(hb.on_timer(1093), action::none));

        hb.on_receive(1050);
        CHECK(hb.next_deadline() == 1150);
        CHECK(is(hb.on_timer(1100), action::none));
        CHECK(is(hb.on_timer(1143), action::none));
        CHECK(is(hb.on_timer(1150), action::send_ping));

        // once: queued until written, and no deadline meanwhile (but the
        // refresh of the machine's times)
        CHECK(is(hb.on_timer(1200), action::none));
        CHECK(hb.next_deadline() == 1200 + refresh_ms);
    }

    SECTION("a timer up to 1/16 interval early sends the Ping")
    {
        // the Pong moved the due time 1 ms past the timeout deadline the
        // timer was armed for: no second wake-up for that millisecond
        REQUIRE(is(hb.on_timer(1100), action::send_ping));
        hb.on_ping_written(1100);
        hb.on_receive(1101);
        CHECK(hb.next_deadline() == 1201);
        CHECK(is(hb.on_timer(1194), action::none));
        CHECK(is(hb.on_timer(1195), action::send_ping));
    }

    SECTION("a late timer still sends one Ping")
    {
        CHECK(is(hb.on_timer(5000), action::send_ping));
        CHECK(is(hb.on_timer(5001), action::none));
    }

    SECTION("dead when nothing arrives within timeout of the write")
    {
        REQUIRE(is(hb.on_timer(1100), action::send_ping));
        hb.on_ping_written(1105);
        CHECK(hb.next_deadline() == 1135);
        CHECK(is(hb.on_timer(1134), action::none));
        CHECK(is(hb.on_timer(1135), action::close,
                 close_reason::heartbeat_timeout));

        // stopped
        CHECK(hb.next_deadline() == 0);
        CHECK(is(hb.on_timer(9999), action::none));
    }

    SECTION("a receive before the write does not answer the Ping")
    {
        REQUIRE(is(hb.on_timer(1100), action::send_ping));
        hb.on_receive(1102);
        hb.on_ping_written(1105);
        CHECK(is(hb.on_timer(1135), action::close,
                 close_reason::heartbeat_timeout));
    }

    SECTION("any receive after the write answers it")
    {
        REQUIRE(is(hb.on_timer(1100), action::send_ping));
        hb.on_ping_written(1105);
        hb.on_receive(1120);
        CHECK(hb.next_deadline() == 1220);
        CHECK(is(hb.on_timer(1135), action::none));
        CHECK(is(hb.on_timer(1213), action::none));
        CHECK(is(hb.on_timer(1220), action::send_ping));
    }

    SECTION("a receive in the write's millisecond answers it")
    {
        REQUIRE(is(hb.on_timer(1100), action::send_ping));
        hb.on_ping_written(1105);
        hb.on_receive(1105);
        CHECK(is(hb.on_timer(1135), action::none));
        CHECK(hb.next_deadline() == 1205);
    }

    SECTION("the next Ping after an answer can be due at once")
    {
        REQUIRE(is(hb.on_timer(1100), action::send_ping));
        hb.on_ping_written(1100);
        hb.on_receive(1101);
        CHECK(is(hb.on_timer(1300), action::send_ping));
    }

    SECTION("stop() ends everything")
    {
        hb.stop();
        CHECK(hb.next_deadline() == 0);
        CHECK(is(hb.on_timer(5000), action::none));
    }
}

TEST_CASE("heartbeat: read timeout", "[heartbeat]")
{
    machine hb;

    SECTION("no data frame for read_timeout closes")
    {
        hb.start(config(100, 30, 250), 0);
        hb.on_receive(90); // bytes without data do not count
        CHECK(hb.next_deadline() == 190);
        REQUIRE(is(hb.on_timer(190), action::send_ping));
        hb.on_ping_written(190);
        hb.on_receive(200);
        CHECK(hb.next_deadline() == 250);
        CHECK(is(hb.on_timer(249), action::none));
        CHECK(is(hb.on_timer(250), action::close, close_reason::read_timeout));
        CHECK(hb.next_deadline() == 0);
    }

    SECTION("on_data pushes it")
    {
        hb.start(config(1000, 30, 250), 0);
        hb.on_data(200);
        CHECK(hb.next_deadline() == 450);
        CHECK(is(hb.on_timer(449), action::none));
        CHECK(is(hb.on_timer(450), action::close, close_reason::read_timeout));
    }

    SECTION("works with Pings off")
    {
        hb.start(config(100, 30, 250, 0, false), 0);
        CHECK(hb.next_deadline() == 250);
        CHECK(is(hb.on_timer(200), action::none));
        CHECK(is(hb.on_timer(250), action::close, close_reason::read_timeout));
    }
}

TEST_CASE("heartbeat: send timeout", "[heartbeat]")
{
    machine hb;
    hb.start(config(1000, 30, 0, 50), 0);

    SECTION("blocked for send_timeout closes")
    {
        hb.on_write_blocked(10);
        hb.on_write_blocked(30); // still the same blocked period
        CHECK(hb.next_deadline() == 60);
        CHECK(is(hb.on_timer(59), action::none));
        CHECK(is(hb.on_timer(60), action::close, close_reason::send_timeout));
    }

    SECTION("progress clears it")
    {
        hb.on_write_blocked(10);
        hb.on_write_progress();
        CHECK(hb.next_deadline() == 1000);
        CHECK(is(hb.on_timer(60), action::none));
        hb.on_write_blocked(70);
        CHECK(hb.next_deadline() == 120);
        CHECK(is(hb.on_timer(119), action::none));
        CHECK(is(hb.on_timer(120), action::close, close_reason::send_timeout));
    }

    SECTION("off when send_timeout is 0")
    {
        hb.start(config(1000, 30, 0, 0), 0);
        hb.on_write_blocked(10);
        CHECK(hb.next_deadline() == 1000);
        CHECK(is(hb.on_timer(937), action::none));
    }
}

TEST_CASE("heartbeat: priorities and deadlines", "[heartbeat]")
{
    machine hb;

    SECTION("send timeout first when all are due")
    {
        hb.start(config(50, 10, 100, 100), 0);
        REQUIRE(is(hb.on_timer(50), action::send_ping));
        hb.on_ping_written(50);
        hb.on_write_blocked(0);
        CHECK(is(hb.on_timer(500), action::close, close_reason::send_timeout));
    }

    SECTION("read timeout before heartbeat timeout")
    {
        hb.start(config(50, 10, 100, 100), 0);
        REQUIRE(is(hb.on_timer(50), action::send_ping));
        hb.on_ping_written(50);
        CHECK(is(hb.on_timer(500), action::close, close_reason::read_timeout));
    }

    SECTION("read timeout before a Ping")
    {
        hb.start(config(100, 10, 100, 100), 0);
        CHECK(is(hb.on_timer(100), action::close, close_reason::read_timeout));
    }

    SECTION("heartbeat timeout before a Ping")
    {
        hb.start(config(50, 10), 0);
        REQUIRE(is(hb.on_timer(50), action::send_ping));
        hb.on_ping_written(50);
        CHECK(is(hb.on_timer(500), action::close,
                 close_reason::heartbeat_timeout));
    }

    SECTION("next_deadline is the earliest applicable")
    {
        hb.start(config(100, 10, 300, 40), 0);
        CHECK(hb.next_deadline() == 100);
        hb.on_write_blocked(20);
        CHECK(hb.next_deadline() == 60);
        hb.on_write_progress();
        REQUIRE(is(hb.on_timer(100), action::send_ping));
        CHECK(hb.next_deadline() == 300);
        hb.on_ping_written(105);
        CHECK(hb.next_deadline() == 115);
        hb.on_receive(110);
        CHECK(hb.next_deadline() == 210);
    }

    SECTION("nothing enabled: only the clock's refresh")
    {
        hb.start(config(100, 10, 0, 0, false), 0);
        CHECK(hb.next_deadline() == refresh_ms);
        CHECK(is(hb.on_timer(100000), action::none));
        CHECK(hb.next_deadline() == 100000 + refresh_ms);
    }

    SECTION("a deadline at time 0 is still a timer")
    {
        hb.start(config(0, 10), 0);
        CHECK(hb.next_deadline() == 1);
        CHECK(is(hb.on_timer(0), action::send_ping));
    }
}

TEST_CASE("heartbeat: Ping payload", "[heartbeat]")
{
    machine hb;
    hb.start(config(100, 30), 0);

    SECTION("layout: tag, sequence, key, zeros")
    {
        pong_payload p = made(hb, 0x01020304u);
        const std::uint8_t want[16] = {'w', 's', 'h', 'b', 0, 0, 0, 0,
                                       1,   2,   3,   4,   0, 0, 0, 0};
        CHECK(std::equal(p.b, p.b + 16, want));
        CHECK(hb.pings() == 1);
        hb.on_ping_written(10);

        p = made(hb, 0x01020304u);
        CHECK(p.b[7] == 1);
        CHECK(hb.pings() == 2);
    }

    SECTION("made again before it is written: the same Ping")
    {
        pong_payload p = made(hb);
        CHECK(made(hb) == p);
        CHECK(hb.pings() == 1);
        hb.on_ping_written(10);
        CHECK(made(hb).b[7] == 1);
    }

    SECTION("no clock: Pings at very different times differ only in the "
            "sequence")
    {
        machine other;
        other.start(config(100, 30), 5000000000ull); // 58 days later

        REQUIRE(is(hb.on_timer(100), action::send_ping));
        REQUIRE(is(other.on_timer(5000000100ull), action::send_ping));
        pong_payload a = made(hb);
        CHECK(made(other) == a); // nothing of the time in it

        // one Ping a day later: the sequence is all that changes
        hb.on_ping_written(100, 100123);
        hb.on_receive(101);
        REQUIRE(is(hb.on_timer(86400000), action::send_ping));
        pong_payload b = made(hb);
        hb.on_ping_written(86400000, 86400000987ull);

        for (std::size_t i = 0; i < ping_payload_size; i++) {
            if (i < 4 || i >= 8) {
                CHECK(a.b[i] == b.b[i]);
            }
        }
        CHECK(a.b[7] == 0);
        CHECK(b.b[7] == 1);
    }
}

TEST_CASE("heartbeat: Pong matching", "[heartbeat]")
{
    machine hb;
    bool sampled = true;
    hb.start(config(100, 30), 0);

    SECTION("nothing is ours before the first Ping")
    {
        std::uint8_t p[16] = {'w', 's', 'h',  'b',  0,    0,
                              0,   0,   0x5e, 0xed, 0x1e, 0x55};
        CHECK_FALSE(hb.on_pong(p, 16, key, 10));
        CHECK(hb.pongs() == 0);
    }

    SECTION("foreign Pongs are not ours: the caller relays them")
    {
        pong_payload p = sent(hb, 1000);

        CHECK_FALSE(hb.on_pong(p.b, 15, key, 2000));
        CHECK_FALSE(hb.on_pong(nullptr, 0, key, 2000));

        pong_payload q = p;
        q.b[0] = 'W';
        CHECK_FALSE(hb.on_pong(q.b, 16, key, 2000));

        q = p;
        q.b[7] = 1; // sequence 1 was never made
        CHECK_FALSE(hb.on_pong(q.b, 16, key, 2000));

        q = p;
        q.b[15] = 1; // the zeros are part of it
        CHECK_FALSE(hb.on_pong(q.b, 16, key, 2000));

        CHECK(hb.pongs() == 0);
        CHECK(hb.rtt_samples() == 0);
        CHECK(hb.on_pong(p.b, 16, key, 2000, &sampled));
        CHECK(sampled);
        CHECK(hb.pongs() == 1);
    }

    SECTION("a wrong key: another heartbeat's Pong, relayed")
    {
        pong_payload p = sent(hb, 1000);

        // the same tag and sequence from another nginx's heartbeat
        for (std::size_t i = 8; i < 12; i++) {
            pong_payload q = p;
            q.b[i] ^= 0x80;
            CHECK_FALSE(hb.on_pong(q.b, 16, key, 2000, &sampled));
            CHECK_FALSE(sampled);
        }

        CHECK_FALSE(hb.on_pong(p.b, 16, key + 1, 2000));
        CHECK(hb.pongs() == 0);
        CHECK(hb.rtt_samples() == 0);

        // its own Ping answered by its own key
        pong_payload o = made(hb, 0);
        hb.on_ping_written(3, 3000);
        CHECK_FALSE(hb.on_pong(o.b, 16, key, 3500));
        CHECK(hb.on_pong(o.b, 16, 0, 3500, &sampled));
        CHECK(sampled);
    }

    SECTION("forged send time: the RTT is from our own record")
    {
        pong_payload p = sent(hb, 1000000);

        // the old payload's send-time field, or any change to the bytes
        // after the sequence: not ours, nothing measured
        for (std::size_t i = 8; i < 16; i++) {
            for (unsigned v = 0; v < 256; v++) {
                pong_payload q = p;
                if (q.b[i] == v) {
                    continue;
                }
                q.b[i] = static_cast<std::uint8_t>(v);
                CHECK_FALSE(hb.on_pong(q.b, 16, key, 1000500, &sampled));
            }
        }

        // 8 bytes of a send time after a genuine payload: not ours either
        std::uint8_t longer[24] = {};
        std::copy(p.b, p.b + 16, longer);
        longer[23] = 1;
        CHECK_FALSE(hb.on_pong(longer, 24, key, 1000500));

        CHECK(hb.pongs() == 0);
        CHECK(hb.rtt_samples() == 0);

        // the answer: now minus the write, whatever the peer echoes
        CHECK(hb.on_pong(p.b, 16, key, 1000800, &sampled));
        CHECK(sampled);
        CHECK(hb.rtt_last_us() == 800);
        CHECK(hb.rtt_min_us() == 800);
        CHECK(hb.rtt_smoothed_us() == 800);
    }

    SECTION("a replayed Pong is swallowed, counted once")
    {
        pong_payload p = sent(hb, 1000);
        CHECK(hb.on_pong(p.b, 16, key, 1500, &sampled));
        CHECK(sampled);

        for (int i = 0; i < 2000; i++) {
            sampled = true;
            CHECK(hb.on_pong(p.b, 16, key, 1600 + i, &sampled));
            CHECK_FALSE(sampled);
        }

        CHECK(hb.pongs() == 1);
        CHECK(hb.rtt_samples() == 1);
        CHECK(hb.rtt_last_us() == 500);
        CHECK(hb.rtt_smoothed_us() == 500);
    }

    SECTION("a late Pong to an older Ping: swallowed, not counted")
    {
        pong_payload p0 = sent(hb, 1000);
        hb.on_receive(2); // other bytes answered it
        pong_payload p1 = sent(hb, 5000);

        CHECK(hb.on_pong(p0.b, 16, key, 9000, &sampled));
        CHECK_FALSE(sampled);
        CHECK(hb.pongs() == 0);
        CHECK(hb.rtt_samples() == 0);
        CHECK(hb.rtt_last_us() == 0);

        CHECK(hb.on_pong(p1.b, 16, key, 5800, &sampled));
        CHECK(sampled);
        CHECK(hb.pongs() == 1);
        CHECK(hb.rtt_last_us() == 800);
    }

    SECTION("a Pong to a Ping made but not written: no answer")
    {
        pong_payload p = made(hb);

        CHECK(hb.on_pong(p.b, 16, key, 1000, &sampled));
        CHECK_FALSE(sampled);
        CHECK(hb.pongs() == 0);

        hb.on_ping_written(2, 2000);
        CHECK(hb.on_pong(p.b, 16, key, 2300, &sampled));
        CHECK(sampled);
        CHECK(hb.rtt_last_us() == 300);
    }

    SECTION("the latest written Ping answered while the next is made")
    {
        pong_payload p0 = sent(hb, 1000);
        pong_payload p1 = made(hb);

        CHECK(hb.on_pong(p0.b, 16, key, 1400, &sampled));
        CHECK(sampled);
        CHECK(hb.rtt_last_us() == 400);

        CHECK(hb.on_pong(p1.b, 16, key, 1500, &sampled));
        CHECK_FALSE(sampled);
        CHECK(hb.pongs() == 1);
    }

    SECTION("RTT: last, min, smoothed")
    {
        pong_payload p0 = sent(hb, 5000);
        CHECK(hb.on_pong(p0.b, 16, key, 5800));
        CHECK(hb.rtt_samples() == 1);
        CHECK(hb.rtt_last_us() == 800);

        pong_payload p1 = sent(hb, 10000);
        CHECK(hb.on_pong(p1.b, 16, key, 10400));
        CHECK(hb.rtt_last_us() == 400);
        CHECK(hb.rtt_min_us() == 400);
        CHECK(hb.rtt_smoothed_us() == 800 + (400 - 800) / 8);

        pong_payload p2 = sent(hb, 20000);
        CHECK(hb.on_pong(p2.b, 16, key, 22000));
        CHECK(hb.rtt_last_us() == 2000);
        CHECK(hb.rtt_min_us() == 400);
        CHECK(hb.rtt_smoothed_us() == 750 + (2000 - 750) / 8);
        CHECK(hb.rtt_samples() == 3);
        CHECK(hb.pongs() == 3);
        CHECK(hb.pings() == 3);
    }

    SECTION("a clock going backwards gives 0, not a wrap")
    {
        pong_payload p = sent(hb, 5000);
        CHECK(hb.on_pong(p.b, 16, key, 4000));
        CHECK(hb.rtt_samples() == 1);
        CHECK(hb.rtt_last_us() == 0);
        CHECK(hb.rtt_min_us() == 0);
    }

    SECTION("a Ping written after stop() is still answered")
    {
        pong_payload p = made(hb);
        hb.stop();
        hb.on_ping_written(1, 1000);
        CHECK(hb.next_deadline() == 0);
        CHECK(hb.on_pong(p.b, 16, key, 1250, &sampled));
        CHECK(sampled);
        CHECK(hb.rtt_last_us() == 250);
    }

    SECTION("sequence window of 2^16")
    {
        pong_payload first = sent(hb, 0);
        pong_payload p = first;

        for (int i = 1; i < 65536; i++) {
            p = sent(hb, 0);
        }

        // 65536 sent: the first is still the 65536th latest
        CHECK(hb.on_pong(first.b, 16, key, 0));
        pong_payload second = first;
        second.b[7] = 1;

        (void)sent(hb, 0);
        CHECK_FALSE(hb.on_pong(first.b, 16, key, 0));
        CHECK(hb.on_pong(second.b, 16, key, 0));
        CHECK(hb.pings() == 65537);
        CHECK(hb.pongs() == 0);
    }
}

TEST_CASE("heartbeat: the write time on two clocks", "[heartbeat]")
{
    machine hb;
    hb.start(config(100, 30), 1000);
    REQUIRE(is(hb.on_timer(1100), action::send_ping));
    pong_payload p = made(hb);

    SECTION("a cached ms clock behind the us one: deadlines from the ms")
    {
        // nginx's ms clock is a cached (coarse) reading of the same clock
        hb.on_ping_written(1100, 1103700);
        CHECK(hb.next_deadline() == 1130);
        hb.on_receive(1100); // in the write's millisecond: answers it
        CHECK(hb.next_deadline() == 1200);
        CHECK(hb.on_pong(p.b, 16, key, 1104000));
        CHECK(hb.rtt_last_us() == 300);
    }

    SECTION("more than 255 ms behind: taken as 255")
    {
        hb.on_ping_written(1100, 2000000);
        CHECK(hb.next_deadline() == 2000 - 255 + 30);
        hb.on_receive(1744);
        CHECK(hb.next_deadline() == 2000 - 255 + 30);
        hb.on_receive(1745);
        CHECK(hb.next_deadline() == 1845);
    }
}

TEST_CASE("heartbeat: a Ping that could not be queued", "[heartbeat]")
{
    machine hb;
    hb.start(config(100, 30, 1000, 500), 1000);
    hb.on_receive(1010);
    REQUIRE(is(hb.on_timer(1110), action::send_ping));
    CHECK(hb.next_deadline() == 2000); // read timeout only

    SECTION("back to idle: the next Ping an interval later")
    {
        hb.on_ping_not_sent(1110);
        CHECK(hb.next_deadline() == 1210);
        CHECK(is(hb.on_timer(1150), action::none));
        CHECK(is(hb.on_timer(1204), action::send_ping));
        hb.on_ping_written(1204);
        CHECK(hb.next_deadline() == 1234);
        CHECK(is(hb.on_timer(1234), action::close,
                 close_reason::heartbeat_timeout));
    }

    SECTION("the sequence number goes to the next Ping")
    {
        pong_payload p = made(hb);
        CHECK(hb.pings() == 1);
        hb.on_ping_not_sent(1110);
        CHECK(hb.pings() == 0);

        // never sent: its Pong is no one's
        CHECK_FALSE(hb.on_pong(p.b, 16, key, 1200000));

        REQUIRE(is(hb.on_timer(1210), action::send_ping));
        CHECK(made(hb) == p);
        CHECK(hb.pings() == 1);
    }

    SECTION("the read and send timeouts keep holding")
    {
        hb.on_ping_not_sent(1110);
        hb.on_write_blocked(1150);
        CHECK(hb.next_deadline() == 1210);
        REQUIRE(is(hb.on_timer(1210), action::send_ping));
        hb.on_ping_not_sent(1210);
        CHECK(hb.next_deadline() == 1310);
        REQUIRE(is(hb.on_timer(1310), action::send_ping));
        hb.on_ping_not_sent(1310);
        hb.on_receive(1400);
        hb.on_data(1400);
        REQUIRE(is(hb.on_timer(1500), action::send_ping));
        hb.on_ping_not_sent(1500);
        CHECK(hb.next_deadline() == 1600);
        CHECK(is(hb.on_timer(1650), action::close, close_reason::send_timeout));
    }

    SECTION("the read timeout too")
    {
        // Pings that never go out, the peer silent: no heartbeat
        // timeout, but no data frame either
        for (std::uint64_t t = 1110; t < 1900; t += 100) {
            hb.on_ping_not_sent(t);
            REQUIRE(is(hb.on_timer(t + 100), action::send_ping));
        }
        hb.on_ping_not_sent(1910);
        CHECK(hb.next_deadline() == 2000);
        CHECK(is(hb.on_timer(1999), action::none));
        CHECK(is(hb.on_timer(2000), action::close, close_reason::read_timeout));
    }

    SECTION("the latest written Ping can still be answered")
    {
        machine m;
        m.start(config(100, 30), 0);
        REQUIRE(is(m.on_timer(100), action::send_ping));
        pong_payload p0 = sent(m, 100000);
        m.on_receive(101);
        REQUIRE(is(m.on_timer(201), action::send_ping));
        (void)made(m);
        m.on_ping_not_sent(201);

        bool sampled = false;
        CHECK(m.on_pong(p0.b, 16, key, 250000, &sampled));
        CHECK(sampled);
        CHECK(m.rtt_last_us() == 150000);
        CHECK(m.pings() == 1);
        CHECK(m.pongs() == 1);
    }

    SECTION("no effect unless a Ping was asked for and not written")
    {
        hb.on_ping_written(1115);
        hb.on_ping_not_sent(1116);
        CHECK(hb.next_deadline() == 1145);

        machine m;
        m.start(config(100, 30), 0);
        m.on_ping_not_sent(50);
        CHECK(m.next_deadline() == 100);
    }
}

TEST_CASE("heartbeat: close reason words", "[heartbeat]")
{
    CHECK(std::string(to_string(close_reason::heartbeat_timeout))
          == "heartbeat timeout");
    CHECK(std::string(to_string(close_reason::read_timeout)) == "read timeout");
    CHECK(std::string(to_string(close_reason::send_timeout)) == "send timeout");
}

TEST_CASE("heartbeat: a Ping stuck behind a peer that does not read",
          "[heartbeat]")
{
    machine hb;
    hb.start(config(100, 30), 0);

    // the Ping is due and asked for, but the writes to the peer block
    REQUIRE(is(hb.on_timer(100), action::send_ping));
    hb.on_write_blocked(105);

    SECTION("silent and not reading: dead a timeout after both began")
    {
        CHECK(hb.next_deadline() == 135);
        CHECK(is(hb.on_timer(134), action::none));
        CHECK(is(hb.on_timer(135), action::close,
                 close_reason::heartbeat_timeout));
    }

    SECTION("bytes from the peer move the deadline")
    {
        hb.on_receive(120);
        CHECK(hb.next_deadline() == 150);
        CHECK(is(hb.on_timer(149), action::none));
        CHECK(is(hb.on_timer(150), action::close,
                 close_reason::heartbeat_timeout));
    }

    SECTION("write progress clears it")
    {
        hb.on_write_progress();
        CHECK(is(hb.on_timer(200), action::none));
        hb.on_write_blocked(210);
        CHECK(hb.next_deadline() == 240);
    }

    SECTION("written at last: the Pong deadline takes over")
    {
        hb.on_write_progress();
        hb.on_ping_written(120);
        CHECK(hb.next_deadline() == 150);
        CHECK(is(hb.on_timer(150), action::close,
                 close_reason::heartbeat_timeout));
    }
}

// Per-connection state is budgeted: the machine keeps only its own state.
static_assert(sizeof(heartbeat) <= 44, "heartbeat grew past 44 bytes");

// The machine's past moments in 32 bits (heartbeat_times in heartbeat.hpp):
// ages read exactly across the wrap of the low 32 bits, and kept within
// them by the refresh at timer ticks for every configuration the glue
// accepts (times up to max_config_ms, 30 days).
namespace {

constexpr std::uint64_t day = 24ull * 60 * 60 * 1000;
constexpr std::uint64_t wrap = std::uint64_t(1) << 32;

// The glue's timer: on_timer() at each deadline (late by `late` ms), a
// Ping asked for written at once, the peer's bytes from `alive`; until the
// machine closes or `until`. Returns the close (or none) and its time.
struct run_result {
    action a;
    std::uint64_t at = 0;
    std::size_t ticks = 0;
};

template <class Alive>
run_result run(machine& hb, std::uint64_t until, Alive alive,
               std::uint64_t late = 0)
{
    run_result r;

    for (;;) {
        std::uint64_t d = hb.next_deadline();
        REQUIRE(d != 0);
        // the refresh: never more than 2^30 ms ahead
        REQUIRE(d <= hb.now + refresh_ms);
        std::uint64_t t = (d > hb.now ? d : hb.now) + late;

        if (t > until) {
            return r;
        }

        alive(hb, t);
        r.a = hb.on_timer(t);
        r.at = t;
        r.ticks++;

        if (r.a.kind == action::close) {
            return r;
        }

        if (r.a.kind == action::send_ping) {
            (void)made(hb);
            hb.on_ping_written(t);
        }
    }
}

void silent(machine&, std::uint64_t) {}

} // namespace

TEST_CASE("heartbeat: 32-bit times", "[heartbeat]")
{
    machine hb;

    SECTION("deadlines across the wrap of the low 32 bits")
    {
        for (std::uint64_t t0 : {wrap - 50, 7 * wrap - 1, 3 * wrap}) {
            machine m;
            m.start(config(100, 30, 1000, 40), t0);
            CHECK(m.next_deadline() == t0 + 100);
            m.on_receive(t0 + 60);
            m.on_write_blocked(t0 + 70);
            CHECK(m.next_deadline() == t0 + 110);
            REQUIRE(is(m.on_timer(t0 + 105), action::none));
            m.on_write_progress();
            CHECK(m.next_deadline() == t0 + 160);
            REQUIRE(is(m.on_timer(t0 + 160), action::send_ping));
            m.on_ping_written(t0 + 161);
            CHECK(m.next_deadline() == t0 + 191);
            m.on_data(t0 + 170);
            CHECK(is(m.on_timer(t0 + 191), action::close,
                     close_reason::heartbeat_timeout));
        }
    }

    SECTION("60 days of silence (interval and timeout 30 days): closed "
            "a timeout after the Ping, not taken for an answer")
    {
        std::uint64_t t0 = wrap - 1000;
        hb.start(config(std::uint32_t(30 * day), std::uint32_t(30 * day)), t0);
        run_result r = run(hb, t0 + 100 * day, silent);
        CHECK(is(r.a, action::close, close_reason::heartbeat_timeout));
        // the Ping at 30 days, its timeout 30 days later: 60 days of
        // silence, read through 2^30 ms refresh ticks (unsaturated, the
        // last receive's age would read as 60 - 49.7 days: an answer)
        CHECK(r.at == t0 + 60 * day);
        CHECK(r.ticks == 6);
        CHECK(hb.pings() == 1);
        CHECK(hb.pongs() == 0);
    }

    SECTION("the same, each tick ~an hour late: still exact")
    {
        std::uint64_t late = 3600 * 1000;
        hb.start(config(std::uint32_t(30 * day), std::uint32_t(30 * day)), 0);
        run_result r = run(hb, 200 * day, silent, late);
        CHECK(is(r.a, action::close, close_reason::heartbeat_timeout));
        CHECK(r.at == 60 * day + 2 * late);
    }

    SECTION("an answer after 30 days of silence still answers")
    {
        hb.start(config(std::uint32_t(30 * day), std::uint32_t(30 * day)), 0);
        run_result r = run(hb, 31 * day, silent);
        REQUIRE(hb.pings() == 1);
        REQUIRE(hb.now == 30 * day);
        hb.on_receive(hb.now + 10 * day);
        CHECK(is(hb.on_timer(hb.now), action::none));
        // the next Ping an interval after that answer
        CHECK(hb.next_deadline() == hb.now + refresh_ms);
        r = run(hb, hb.now + 30 * day, silent);
        CHECK(hb.pings() == 2);
    }

    SECTION("a read timeout of 30 days through the refresh ticks")
    {
        std::uint64_t t0 = 5 * wrap + 17;
        hb.start(config(std::uint32_t(30 * day), std::uint32_t(30 * day),
                        std::uint32_t(30 * day)),
                 t0);
        // bytes (Pongs) all along, no data frame
        run_result r = run(hb, t0 + 100 * day, [](machine& m, std::uint64_t t) {
            m.on_receive(t);
        });
        CHECK(is(r.a, action::close, close_reason::read_timeout));
        CHECK(r.at == t0 + 30 * day);
        CHECK(r.ticks >= 3);
    }

    SECTION("blocked for 100 days behind a slow reader, then silence: the "
            "stuck Ping closes a timeout after the last sign of life")
    {
        // send_timeout off; the peer takes bytes (the glue's on_receive)
        // at each tick until day 100, while blocked_since ages past 2^32
        std::uint32_t timeout = std::uint32_t(20 * day);
        hb.start(config(std::uint32_t(30 * day), timeout), 0);
        REQUIRE(is(hb.on_timer(30 * day), action::send_ping));
        (void)made(hb); // queued, never written: stuck
        hb.on_write_blocked(30 * day);
        std::uint64_t last = 0;
        run_result r = run(hb, 500 * day, [&](machine& m, std::uint64_t t) {
            if (t <= 130 * day) {
                m.on_receive(t);
                last = t;
            }
        });
        REQUIRE(last > 30 * day + 100 * day - refresh_ms);
        CHECK(hb.pings() == 1);
        CHECK(is(r.a, action::close, close_reason::heartbeat_timeout));
        CHECK(r.at == last + timeout);
    }

    SECTION("a send timeout of 30 days")
    {
        std::uint64_t t0 = wrap - 3;
        hb.start(config(std::uint32_t(30 * day), std::uint32_t(30 * day), 0,
                        std::uint32_t(30 * day)),
                 t0);
        hb.on_write_blocked(t0 + 5);
        run_result r = run(hb, t0 + 100 * day, [](machine& m, std::uint64_t t) {
            m.on_receive(t);
        });
        CHECK(is(r.a, action::close, close_reason::send_timeout));
        CHECK(r.at == t0 + 5 + 30 * day);
    }

    SECTION("a saturated last receive stays before the Ping's write")
    {
        // silent for 30 days, the Ping late (a late tick), a short timeout
        hb.start(config(std::uint32_t(30 * day), 1000), 0);
        REQUIRE(is(hb.on_timer(31 * day), action::send_ping));
        hb.on_ping_written(31 * day);
        // saturates last_receive at 30 days ago: 1 day after its truth
        CHECK(is(hb.on_timer(31 * day + 500), action::none));
        CHECK(hb.next_deadline() == 31 * day + 1000);
        CHECK(is(hb.on_timer(31 * day + 1000), action::close,
                 close_reason::heartbeat_timeout));
    }
}

TEST_CASE("heartbeat: RTT from the 64-bit write time", "[heartbeat]")
{
    machine hb;
    hb.start(config(100, 30), 0);
    bool sampled = false;

    SECTION("a write time above 2^32 us")
    {
        std::uint64_t w = 5 * wrap + 123;
        pong_payload p = sent(hb, w);
        CHECK(hb.on_pong(p.b, 16, key, w + 4567, &sampled));
        CHECK(sampled);
        CHECK(hb.rtt_last_us() == 4567);
    }

    SECTION("the latest 32-bit us figure, then the clamp")
    {
        pong_payload p0 = sent(hb, wrap - 10);
        CHECK(hb.on_pong(p0.b, 16, key, 2 * wrap - 11, &sampled));
        CHECK(sampled);
        CHECK(hb.rtt_last_us() == 0xffffffffu);
        pong_payload p1 = sent(hb, 3 * wrap);
        CHECK(hb.on_pong(p1.b, 16, key, 4 * wrap + 5, &sampled));
        CHECK(sampled);
        CHECK(hb.rtt_last_us() == 0xffffffffu); // 2^32 + 5 us: clamped
        pong_payload p2 = sent(hb, 5 * wrap);
        CHECK(hb.on_pong(p2.b, 16, key, 5 * wrap + 60ull * day * 1000));
        CHECK(hb.rtt_last_us() == 0xffffffffu); // 60 days: clamped
        CHECK(hb.rtt_samples() == 3);
    }
}
