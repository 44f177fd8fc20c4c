// Unit tests for src/heartbeat.hpp, on a fake clock (no sleeps).
#include <catch2/catch.hpp>

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

// The machine with its configuration at hand, as the glue keeps it.
struct machine : heartbeat {
    heartbeat_config cf;

    void start(const heartbeat_config& c, std::uint64_t now_ms)
    {
        cf = c;
        heartbeat::start(c, now_ms);
    }

    action on_timer(std::uint64_t now_ms)
    {
        return heartbeat::on_timer(cf, now_ms);
    }

    std::uint64_t next_deadline() const { return heartbeat::next_deadline(cf); }

    std::uint32_t ping_slack() const { return heartbeat::ping_slack(cf); }
};

bool is(action a, action::kind_t k, close_reason r = close_reason::none)
{
    return a.kind == k && a.reason == r;
}

// Pong payload as a peer echoes it back.
struct pong_payload {
    std::uint8_t b[ping_payload_size];
};

pong_payload ping_of(heartbeat& hb, std::uint64_t now_us)
{
    pong_payload p;
    if (hb.make_ping(p.b, now_us) != ping_payload_size) {
        FAIL("make_ping size");
    }
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

        // once: queued until written, and no deadline meanwhile
        CHECK(is(hb.on_timer(1200), action::none));
        CHECK(hb.next_deadline() == 0);
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

    SECTION("nothing enabled: no timer")
    {
        hb.start(config(100, 10, 0, 0, false), 0);
        CHECK(hb.next_deadline() == 0);
        CHECK(is(hb.on_timer(100000), action::none));
    }

    SECTION("a deadline at time 0 is still a timer")
    {
        hb.start(config(0, 10), 0);
        CHECK(hb.next_deadline() == 1);
        CHECK(is(hb.on_timer(0), action::send_ping));
    }
}

TEST_CASE("heartbeat: Ping payload and Pong matching", "[heartbeat]")
{
    machine hb;
    hb.start(config(100, 30), 0);

    SECTION("payload layout")
    {
        pong_payload p = ping_of(hb, 0x0102030405060708ull);
        const std::uint8_t want[16] = {'w', 's', 'h', 'b', 0, 0, 0, 0,
                                       1,   2,   3,   4,   5, 6, 7, 8};
        CHECK(std::equal(p.b, p.b + 16, want));
        CHECK(hb.pings() == 1);

        p = ping_of(hb, 0);
        CHECK(p.b[7] == 1);
        CHECK(hb.pings() == 2);
    }

    SECTION("nothing is ours before the first Ping")
    {
        std::uint8_t p[16] = {'w', 's', 'h', 'b'};
        CHECK_FALSE(hb.on_pong(p, 16, 10));
        CHECK(hb.pongs() == 0);
    }

    SECTION("foreign Pongs")
    {
        pong_payload p = ping_of(hb, 1000);

        CHECK_FALSE(hb.on_pong(p.b, 15, 2000));
        CHECK_FALSE(hb.on_pong(nullptr, 0, 2000));

        pong_payload q = p;
        q.b[0] = 'W';
        CHECK_FALSE(hb.on_pong(q.b, 16, 2000));

        q = p;
        q.b[7] = 1; // sequence 1 was never sent
        CHECK_FALSE(hb.on_pong(q.b, 16, 2000));

        CHECK(hb.pongs() == 0);
        CHECK(hb.rtt_samples() == 0);
        CHECK(hb.on_pong(p.b, 16, 2000));
        CHECK(hb.pongs() == 1);
    }

    SECTION("RTT from the latest Ping only")
    {
        pong_payload p0 = ping_of(hb, 1000);
        pong_payload p1 = ping_of(hb, 5000);

        CHECK(hb.on_pong(p0.b, 16, 9000)); // old one: ours, no sample
        CHECK(hb.rtt_samples() == 0);
        CHECK(hb.rtt_last_us() == 0);

        CHECK(hb.on_pong(p1.b, 16, 5800));
        CHECK(hb.rtt_samples() == 1);
        CHECK(hb.rtt_last_us() == 800);
        CHECK(hb.rtt_min_us() == 800);
        CHECK(hb.rtt_smoothed_us() == 800);

        // a duplicate answer gives no second sample
        CHECK(hb.on_pong(p1.b, 16, 7000));
        CHECK(hb.rtt_samples() == 1);
        CHECK(hb.pongs() == 3);

        pong_payload p2 = ping_of(hb, 10000);
        CHECK(hb.on_pong(p2.b, 16, 10400));
        CHECK(hb.rtt_last_us() == 400);
        CHECK(hb.rtt_min_us() == 400);
        CHECK(hb.rtt_smoothed_us() == 800 + (400 - 800) / 8);

        pong_payload p3 = ping_of(hb, 20000);
        CHECK(hb.on_pong(p3.b, 16, 22000));
        CHECK(hb.rtt_last_us() == 2000);
        CHECK(hb.rtt_min_us() == 400);
        CHECK(hb.rtt_smoothed_us() == 750 + (2000 - 750) / 8);
        CHECK(hb.rtt_samples() == 3);
    }

    SECTION("a clock going backwards gives 0, not a wrap")
    {
        pong_payload p = ping_of(hb, 5000);
        CHECK(hb.on_pong(p.b, 16, 4000));
        CHECK(hb.rtt_samples() == 1);
        CHECK(hb.rtt_last_us() == 0);
        CHECK(hb.rtt_min_us() == 0);
    }

    SECTION("sequence window of 2^16")
    {
        pong_payload first = ping_of(hb, 0);
        pong_payload p = first;

        for (int i = 1; i < 65536; i++) {
            p = ping_of(hb, 0);
        }

        // 65536 sent: the first is still the 65536th latest
        CHECK(hb.on_pong(first.b, 16, 0));
        pong_payload second = first;
        second.b[7] = 1;

        (void)ping_of(hb, 0);
        CHECK_FALSE(hb.on_pong(first.b, 16, 0));
        CHECK(hb.on_pong(second.b, 16, 0));
        CHECK(hb.pings() == 65537);
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
static_assert(sizeof(heartbeat) <= 56, "heartbeat grew past 56 bytes");

TEST_CASE("heartbeat: on_pong says when it took an RTT sample", "[heartbeat]")
{
    machine hb;
    bool sampled = true;

    hb.start(config(100, 30), 0);

    pong_payload p0 = ping_of(hb, 1000);
    pong_payload p1 = ping_of(hb, 2000);

    // ours but not the latest: swallowed, no sample
    CHECK(hb.on_pong(p0.b, 16, 3000, &sampled));
    CHECK_FALSE(sampled);

    CHECK(hb.on_pong(p1.b, 16, 2500, &sampled));
    CHECK(sampled);
    CHECK(hb.rtt_last_us() == 500);

    // the same answer again: no second sample
    CHECK(hb.on_pong(p1.b, 16, 2600, &sampled));
    CHECK_FALSE(sampled);

    // not ours
    pong_payload q = p1;
    q.b[0] = 'x';
    sampled = true;
    CHECK_FALSE(hb.on_pong(q.b, 16, 2700, &sampled));
    CHECK_FALSE(sampled);
}
