// Unit tests for src/frame.hpp: the streaming frame scanner.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>

#include <sys/mman.h>

#include "frame.hpp"
#include "wire.hpp"

using namespace wshb;
using wire::bytes;

namespace {

const std::uint8_t rfc_mask[4] = {0x37, 0xfa, 0x21, 0x3d};
const std::uint8_t mask2[4] = {0xde, 0xad, 0xbe, 0xef};

struct frame_event {
    frame_header h;
    std::size_t end = 0; // stream offset right after the frame
    bytes ctrl;          // captured control payload

    bool operator==(const frame_event& o) const
    {
        return h.op == o.h.op && h.fin == o.h.fin && h.masked == o.h.masked
               && h.rsv == o.h.rsv && h.header_size == o.h.header_size
               && std::memcmp(h.mask, o.h.mask, 4) == 0 && h.len == o.h.len
               && end == o.end && ctrl == o.ctrl;
    }
};

struct scan_log {
    std::vector<frame_event> frames;
    std::vector<std::size_t> header_ends; // header sizes, as completed
    scan_error err = scan_error::none;
    std::string broken; // first invariant violated, if any
};

// Feeds s in the given chunks and records what the scanner reports. Also
// checks the per-call invariants (consumed <= n, at most one frame per
// call, until_boundary agrees with advance).
template <std::size_t C>
scan_log scan(role r, bool rsv1, const bytes& s, const wire::chunking& c)
{
    basic_frame_scanner<C> sc(r, rsv1);
    scan_log log;
    std::size_t pos = 0;

    auto broken = [&](const char* what) {
        if (log.broken.empty()) {
            log.broken = std::string(what) + " at " + std::to_string(pos);
        }
    };

    for (std::size_t k : c) {
        std::size_t end = pos + k;

        while (pos < end) {
            std::size_t n = end - pos;
            const std::uint8_t* p = s.data() + pos;
            bool was_boundary = sc.at_boundary();
            bool had_header = sc.header_complete() && !was_boundary;
            std::size_t ub = sc.until_boundary(p, n);
            std::size_t got = sc.advance(p, n);

            if (got > n) {
                broken("consumed more than given");
            }

            if (sc.error() != scan_error::none) {
                log.err = sc.error();
                if (got != 0) {
                    broken("error call consumed bytes");
                }
                if (!was_boundary && ub != sc.npos) {
                    broken("until_boundary missed the error");
                }
                if (sc.advance(p, n) != 0 || sc.until_boundary(p, n) != sc.npos
                    || sc.error() != log.err)
                {
                    broken("error state not terminal");
                }
                return log;
            }

            if (got == 0) {
                broken("no progress without error");
                return log;
            }

            if (got < n && !sc.frame_complete()) {
                broken("stopped early without a frame end");
            }

            if (was_boundary && ub != 0) {
                broken("until_boundary at a boundary is not 0");
            }

            if (!was_boundary) {
                std::size_t want = sc.frame_complete() ? got : sc.npos;
                if (ub != want) {
                    broken("until_boundary disagrees with advance");
                }
            }

            if (sc.header_complete() && !had_header) {
                log.header_ends.push_back(sc.header().header_size);
            }

            pos += got;

            if (sc.frame_complete()) {
                frame_event e;
                e.h = sc.header();
                e.end = pos;
                if (is_control(e.h.op)) {
                    e.ctrl.assign(sc.control_payload(),
                                  sc.control_payload() + sc.control_size());
                }
                log.frames.push_back(e);

                if (!sc.at_boundary() || !sc.header_complete()) {
                    broken("frame end is not a boundary");
                }
            } else if (sc.at_boundary()) {
                broken("boundary without frame end");
            }
        }
    }

    return log;
}

// Scans s under every chunking and requires the same log each time.
template <std::size_t C = 16>
scan_log scan_all_ways(role r, bool rsv1, const bytes& s)
{
    scan_log ref = scan<C>(r, rsv1, s, wire::whole(s.size()));
    INFO("broken: " << ref.broken);
    REQUIRE(ref.broken.empty());

    for (const wire::chunking& c : wire::all_chunkings(s.size())) {
        scan_log log = scan<C>(r, rsv1, s, c);

        if (!log.broken.empty() || log.err != ref.err
            || !(log.frames == ref.frames)
            || log.header_ends.size() != ref.header_ends.size())
        {
            INFO("chunks: " << c.size() << " first " << c[0]);
            INFO("broken: " << log.broken);
            FAIL("chunked scan differs from the whole scan");
        }
    }

    return ref;
}

// Index of the byte at which the scanner rejects s, fed byte by byte.
std::size_t error_index(role r, bool rsv1, const bytes& s)
{
    frame_scanner sc(r, rsv1);

    for (std::size_t i = 0; i < s.size(); i++) {
        sc.advance(&s[i], 1);
        if (sc.error() != scan_error::none) {
            return i;
        }
    }

    return s.size();
}

bytes filler(std::size_t n, std::uint8_t seed = 1)
{
    bytes b(n);
    for (std::size_t i = 0; i < n; i++) {
        b[i] = static_cast<std::uint8_t>(seed + i * 7);
    }
    return b;
}

} // namespace

TEST_CASE("scanner: RFC 6455 5.7 examples", "[frame]")
{
    SECTION("single-frame unmasked text")
    {
        bytes s = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
        scan_log log = scan_all_ways(role::server, false, s);

        REQUIRE(log.err == scan_error::none);
        REQUIRE(log.frames.size() == 1);
        CHECK(log.frames[0].h.op == opcode::text);
        CHECK(log.frames[0].h.fin);
        CHECK_FALSE(log.frames[0].h.masked);
        CHECK(log.frames[0].h.len == 5);
        CHECK(log.frames[0].h.header_size == 2);
        CHECK(log.frames[0].end == 7);
    }

    SECTION("single-frame masked text")
    {
        bytes s = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                   0x7f, 0x9f, 0x4d, 0x51, 0x58};
        scan_log log = scan_all_ways(role::client, false, s);

        REQUIRE(log.err == scan_error::none);
        REQUIRE(log.frames.size() == 1);
        CHECK(log.frames[0].h.masked);
        CHECK(log.frames[0].h.header_size == 6);
        CHECK(std::memcmp(log.frames[0].h.mask, rfc_mask, 4) == 0);
        CHECK(log.frames[0].end == 11);
    }

    SECTION("fragmented unmasked text")
    {
        bytes s = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
        scan_log log = scan_all_ways(role::server, false, s);

        REQUIRE(log.err == scan_error::none);
        REQUIRE(log.frames.size() == 2);
        CHECK(log.frames[0].h.op == opcode::text);
        CHECK_FALSE(log.frames[0].h.fin);
        CHECK(log.frames[0].end == 5);
        CHECK(log.frames[1].h.op == opcode::cont);
        CHECK(log.frames[1].h.fin);
        CHECK(log.frames[1].end == 9);
    }

    SECTION("unmasked ping and masked pong")
    {
        bytes ping = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
        scan_log log = scan_all_ways(role::server, false, ping);

        REQUIRE(log.frames.size() == 1);
        CHECK(log.frames[0].h.op == opcode::ping);
        CHECK(log.frames[0].ctrl == wire::text("Hello"));

        bytes pong = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                      0x7f, 0x9f, 0x4d, 0x51, 0x58};
        log = scan_all_ways(role::client, false, pong);

        REQUIRE(log.frames.size() == 1);
        CHECK(log.frames[0].h.op == opcode::pong);
        CHECK(log.frames[0].ctrl == wire::text("Hello"));
    }

    SECTION("256 bytes binary, 16-bit length")
    {
        bytes s = wire::frame(0x82, filler(256), nullptr);
        REQUIRE(s[1] == 126);
        REQUIRE(s[2] == 0x01);
        REQUIRE(s[3] == 0x00);
        scan_log log = scan_all_ways(role::server, false, s);

        REQUIRE(log.frames.size() == 1);
        CHECK(log.frames[0].h.len == 256);
        CHECK(log.frames[0].h.header_size == 4);
        CHECK(log.frames[0].end == 260);
    }

    SECTION("64 KiB binary, 64-bit length")
    {
        bytes s = wire::frame(0x82, filler(65536), nullptr);
        REQUIRE(s[1] == 127);
        scan_log log = scan_all_ways(role::server, false, s);

        REQUIRE(log.frames.size() == 1);
        CHECK(log.frames[0].h.len == 65536);
        CHECK(log.frames[0].h.header_size == 10);
        CHECK(log.frames[0].end == 65546);
    }
}

TEST_CASE("scanner: valid streams", "[frame]")
{
    SECTION("length encodings at their edges, masked")
    {
        bytes s;
        std::vector<std::size_t> lens = {0,   1,     125,   126,  127,
                                         128, 65535, 65536, 65537};
        for (std::size_t len : lens) {
            wire::append(s, wire::frame(0x82, filler(len), mask2));
        }

        scan_log log = scan_all_ways(role::client, false, s);

        REQUIRE(log.err == scan_error::none);
        REQUIRE(log.frames.size() == lens.size());
        for (std::size_t i = 0; i < lens.size(); i++) {
            CHECK(log.frames[i].h.len == lens[i]);
        }
        CHECK(log.frames.back().end == s.size());
    }

    SECTION("control frames between fragments")
    {
        bytes s;
        wire::append(s, wire::frame(0x01, wire::text("He"), mask2));
        wire::append(s, wire::frame(0x89, wire::text("p1"), mask2));
        wire::append(s, wire::frame(0x00, wire::text("ll"), mask2));
        wire::append(s, wire::frame(0x8a, bytes(), mask2));
        wire::append(s, wire::frame(0x88, bytes{0x03, 0xe8}, mask2));
        wire::append(s, wire::frame(0x80, wire::text("o"), mask2));
        wire::append(s, wire::frame(0x82, bytes(), mask2));

        scan_log log = scan_all_ways(role::client, false, s);

        REQUIRE(log.err == scan_error::none);
        REQUIRE(log.frames.size() == 7);
        CHECK(log.frames[1].ctrl == wire::text("p1"));
        CHECK(log.frames[3].ctrl.empty());
        CHECK(log.frames[4].ctrl == (bytes{0x03, 0xe8}));
        CHECK(log.frames[6].h.op == opcode::binary);
    }

    SECTION("RSV1 on a message's first frame with permessage-deflate")
    {
        bytes s;
        wire::append(s, wire::frame(0x41, wire::text("ab"), nullptr));
        wire::append(s, wire::frame(0x89, bytes(), nullptr));
        wire::append(s, wire::frame(0x80, wire::text("c"), nullptr));
        wire::append(s, wire::frame(0xc2, wire::text("d"), nullptr));

        scan_log log = scan_all_ways(role::server, true, s);

        REQUIRE(log.err == scan_error::none);
        REQUIRE(log.frames.size() == 4);
        CHECK(log.frames[0].h.rsv == 0x40);
        CHECK(log.frames[3].h.rsv == 0x40);
    }

    SECTION("a close frame's payload is not judged")
    {
        bytes s;
        // code 1005 and a reason that is not UTF-8: the relay passes it
        wire::append(s, wire::frame(0x88, bytes{0x03, 0xed, 0xff}, nullptr));
        wire::append(s, wire::frame(0x88, bytes{0x01}, nullptr));

        scan_log log = scan_all_ways(role::server, false, s);

        REQUIRE(log.err == scan_error::none);
        REQUIRE(log.frames.size() == 2);
        CHECK(log.frames[0].ctrl == (bytes{0x03, 0xed, 0xff}));
    }

    SECTION("zero-length frames complete with their header")
    {
        bytes s = wire::frame(0x89, bytes(), mask2);
        frame_scanner sc(role::client);

        REQUIRE(sc.advance(s.data(), 5) == 5);
        CHECK_FALSE(sc.header_complete());
        CHECK_FALSE(sc.frame_complete());
        REQUIRE(sc.advance(s.data() + 5, 1) == 1);
        CHECK(sc.header_complete());
        CHECK(sc.frame_complete());
        CHECK(sc.at_boundary());
        CHECK(sc.control_size() == 0);
    }
}

TEST_CASE("scanner: capture", "[frame]")
{
    SECTION("only the first Capture bytes, unmasked")
    {
        bytes payload = filler(125, 9);
        bytes s = wire::frame(0x89, payload, rfc_mask);
        scan_log log = scan_all_ways<16>(role::client, false, s);

        REQUIRE(log.frames.size() == 1);
        CHECK(log.frames[0].ctrl
              == bytes(payload.begin(), payload.begin() + 16));

        log = scan_all_ways<125>(role::client, false, s);
        REQUIRE(log.frames.size() == 1);
        CHECK(log.frames[0].ctrl == payload);
    }

    SECTION("a data frame's payload is never captured")
    {
        basic_frame_scanner<16> sc(role::server);
        bytes s = wire::frame(0x81, wire::text("hello"), nullptr);

        REQUIRE(sc.advance(s.data(), s.size()) == s.size());
        CHECK(sc.frame_complete());
        CHECK(sc.header().op == opcode::text);
    }
}

TEST_CASE("scanner: data payloads are skipped, not read", "[frame]")
{
    SECTION("1 MiB frame in one advance call")
    {
        bytes s = wire::frame(0x82, bytes(1 << 20, 0x55), mask2);
        basic_frame_scanner<16> sc(role::client);

        REQUIRE(sc.advance(s.data(), s.size()) == s.size());
        CHECK(sc.frame_complete());
        CHECK(sc.header().len == (1u << 20));
    }

    SECTION("huge declared length: only the header is looked at")
    {
        // the payload is never provided: a skip must not need the bytes
        bytes h = wire::header(0x82, std::uint64_t(1) << 40, mask2);
        basic_frame_scanner<16> sc(role::client);

        REQUIRE(sc.advance(h.data(), h.size()) == h.size());
        CHECK(sc.header_complete());
        CHECK_FALSE(sc.frame_complete());
        CHECK(sc.header().len == (std::uint64_t(1) << 40));

        // 1 MiB of payload, in one call, is skipped whole
        bytes chunk(1 << 20, 0xaa);
        CHECK(sc.advance(chunk.data(), chunk.size()) == chunk.size());
        CHECK(sc.until_boundary(chunk.data(), chunk.size()) == sc.npos);
        CHECK_FALSE(sc.at_boundary());
    }

    SECTION("payload in memory that cannot be read")
    {
        // the payload pointer aims at a PROT_NONE mapping: any read of a
        // data payload byte would fault
        const std::size_t size = 1 << 20;
        void* m =
            mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        REQUIRE(m != MAP_FAILED);
        const std::uint8_t* payload = static_cast<const std::uint8_t*>(m);

        bytes h = wire::header(0x82, size, mask2);
        basic_frame_scanner<16> sc(role::client);

        REQUIRE(sc.advance(h.data(), h.size()) == h.size());
        CHECK(sc.until_boundary(payload, size - 1) == sc.npos);
        CHECK(sc.until_boundary(payload, size) == size);
        CHECK(sc.advance(payload, size / 2) == size / 2);
        CHECK(sc.advance(payload + size / 2, size / 2) == size / 2);
        CHECK(sc.frame_complete());
        munmap(m, size);
    }
}

TEST_CASE("scanner: advance stops at the end of each frame", "[frame]")
{
    bytes s;
    wire::append(s, wire::frame(0x81, wire::text("abc"), nullptr));
    wire::append(s, wire::frame(0x89, bytes(), nullptr));
    wire::append(s, wire::frame(0x82, filler(300), nullptr));
    frame_scanner sc(role::server);

    REQUIRE(sc.until_boundary(s.data(), s.size()) == 0);
    CHECK(sc.advance(s.data(), s.size()) == 5);
    CHECK(sc.frame_complete());
    CHECK(sc.advance(s.data() + 5, s.size() - 5) == 2);
    CHECK(sc.frame_complete());
    CHECK(sc.advance(s.data() + 7, 10) == 10);
    CHECK_FALSE(sc.frame_complete());
    CHECK(sc.header_complete());
    CHECK(sc.until_boundary(s.data() + 17, 100) == sc.npos);
    CHECK(sc.until_boundary(s.data() + 17, s.size() - 17) == s.size() - 17);
    CHECK(sc.advance(s.data() + 17, s.size() - 17) == s.size() - 17);
    CHECK(sc.frame_complete());
    CHECK(sc.advance(s.data(), 0) == 0);
    CHECK_FALSE(sc.frame_complete());
}

TEST_CASE("scanner: until_boundary looks ahead without consuming", "[frame]")
{
    bytes s = wire::frame(0x89, filler(20), mask2);
    frame_scanner sc(role::client);

    REQUIRE(sc.advance(s.data(), 3) == 3);
    CHECK(sc.until_boundary(s.data() + 3, s.size() - 3) == s.size() - 3);
    CHECK(sc.until_boundary(s.data() + 3, 4) == sc.npos);
    CHECK(sc.advance(s.data() + 3, s.size() - 3) == s.size() - 3);
    CHECK(sc.control_size() == 20);
    CHECK(bytes(sc.control_payload(), sc.control_payload() + 20) == filler(20));

    // a look-ahead over bytes that will be rejected says npos
    frame_scanner sc2(role::client);
    bytes bad = wire::frame(0x89, filler(2), nullptr);
    REQUIRE(sc2.advance(bad.data(), 1) == 1);
    CHECK(sc2.until_boundary(bad.data() + 1, bad.size() - 1) == sc2.npos);
    CHECK(sc2.error() == scan_error::none);
}

namespace {

struct negative {
    role r;
    bool rsv1;
    bytes s;
    scan_error err;
    std::size_t at; // index of the byte that gives it away
};

void check_negative(const negative& n)
{
    scan_log log = scan_all_ways(n.r, n.rsv1, n.s);

    CHECK(log.err == n.err);
    CHECK(error_index(n.r, n.rsv1, n.s) == n.at);
}

bytes two(std::uint8_t b0, std::uint8_t b1)
{
    return bytes{b0, b1};
}

} // namespace

TEST_CASE("scanner: RFC 6455 negative cases", "[frame]")
{
    bytes msg_start = wire::frame(0x01, wire::text("a"), nullptr);

    SECTION("reserved data opcodes 3-7")
    {
        for (std::uint8_t op = 3; op <= 7; op++) {
            check_negative({role::server, false, two(0x80 | op, 0),
                            scan_error::bad_opcode, 0});
        }
    }

    SECTION("reserved control opcodes 0xb-0xf")
    {
        for (std::uint8_t op = 0xb; op <= 0xf; op++) {
            check_negative({role::server, false, two(0x80 | op, 0),
                            scan_error::bad_opcode, 0});
        }
    }

    SECTION("RSV1 without permessage-deflate")
    {
        check_negative(
            {role::server, false, two(0xc1, 0), scan_error::bad_rsv, 0});
    }

    SECTION("RSV1 on a control frame")
    {
        check_negative(
            {role::server, true, two(0xc9, 0), scan_error::bad_rsv, 0});
    }

    SECTION("RSV1 on a continuation frame")
    {
        bytes s = msg_start;
        wire::append(s, two(0xc0, 0));
        check_negative({role::server, true, s, scan_error::bad_rsv, 3});
    }

    SECTION("RSV2")
    {
        check_negative(
            {role::server, true, two(0xa2, 0), scan_error::bad_rsv, 0});
    }

    SECTION("RSV3")
    {
        check_negative(
            {role::server, true, two(0x92, 0), scan_error::bad_rsv, 0});
    }

    SECTION("control frame over 125 bytes")
    {
        bytes s = wire::header(0x89, 126, nullptr);
        wire::append(s, filler(126));
        check_negative(
            {role::server, false, s, scan_error::bad_control_size, 1});

        s = wire::header(0x88, 70000, mask2);
        check_negative(
            {role::client, false, s, scan_error::bad_control_size, 1});
    }

    SECTION("control frame without FIN")
    {
        check_negative({role::server, false, two(0x09, 0),
                        scan_error::bad_control_fragment, 0});
    }

    SECTION("16-bit length under 126")
    {
        bytes s = wire::header(0x82, 125, nullptr, wire::len_form::f16);
        check_negative({role::server, false, s, scan_error::bad_size, 3});
    }

    SECTION("64-bit length under 65536")
    {
        bytes s = wire::header(0x82, 65535, mask2, wire::len_form::f64);
        check_negative({role::client, false, s, scan_error::bad_size, 9});
    }

    SECTION("64-bit length with the top bit set")
    {
        bytes s = wire::header(0x82, std::uint64_t(1) << 63, nullptr);
        check_negative({role::server, false, s, scan_error::bad_size_64, 9});
    }

    SECTION("masked frame from a server")
    {
        bytes s = wire::frame(0x81, wire::text("x"), mask2);
        check_negative({role::server, false, s, scan_error::bad_mask, 1});
    }

    SECTION("unmasked frame from a client")
    {
        bytes s = wire::frame(0x81, wire::text("x"), nullptr);
        check_negative({role::client, false, s, scan_error::bad_mask, 1});
    }

    SECTION("continuation with no message started")
    {
        check_negative({role::server, false, two(0x80, 0),
                        scan_error::bad_continuation, 0});
    }

    SECTION("continuation after a finished message")
    {
        bytes s = wire::frame(0x81, wire::text("a"), nullptr);
        wire::append(s, two(0x00, 0));
        check_negative(
            {role::server, false, s, scan_error::bad_continuation, 3});
    }

    SECTION("text frame inside an unfinished message")
    {
        bytes s = msg_start;
        wire::append(s, wire::frame(0x89, bytes(), nullptr));
        wire::append(s, two(0x81, 0));
        check_negative({role::server, false, s, scan_error::bad_data_frame, 5});
    }

    SECTION("binary frame inside an unfinished message")
    {
        bytes s = msg_start;
        wire::append(s, two(0x02, 0));
        check_negative({role::server, false, s, scan_error::bad_data_frame, 3});
    }
}

TEST_CASE("scanner: error state is terminal", "[frame]")
{
    frame_scanner sc(role::server);
    bytes bad = two(0x83, 0);
    bytes good = wire::frame(0x81, wire::text("ok"), nullptr);

    CHECK(sc.advance(bad.data(), bad.size()) == 0);
    CHECK(sc.error() == scan_error::bad_opcode);
    CHECK_FALSE(sc.at_boundary());
    CHECK(sc.advance(good.data(), good.size()) == 0);
    CHECK(sc.until_boundary(good.data(), good.size()) == sc.npos);
    CHECK_FALSE(sc.frame_complete());
    CHECK(sc.error() == scan_error::bad_opcode);
}

TEST_CASE("scanner: opcode helpers and error words", "[frame]")
{
    CHECK(is_control(opcode::close));
    CHECK_FALSE(is_control(opcode::binary));
    CHECK(is_reserved(opcode::rsv3));
    CHECK(is_reserved(opcode::crsvf));
    CHECK_FALSE(is_reserved(opcode::pong));
    CHECK(opcode_of(0x8a) == opcode::pong);

    CHECK(std::string(to_string(scan_error::bad_opcode)) == "reserved opcode");
    CHECK(std::string(to_string(scan_error::bad_rsv)) == "bad RSV bits");
    CHECK(std::string(to_string(scan_error::bad_control_size))
          == "control frame too long");
    CHECK(std::string(to_string(scan_error::bad_control_fragment))
          == "fragmented control frame");
    CHECK(std::string(to_string(scan_error::bad_size)) == "non-minimal length");
    CHECK(std::string(to_string(scan_error::bad_size_64))
          == "64-bit length with top bit set");
    CHECK(std::string(to_string(scan_error::bad_mask)) == "wrong mask bit");
    CHECK(std::string(to_string(scan_error::bad_continuation))
          == "continuation without message");
    CHECK(std::string(to_string(scan_error::bad_data_frame))
          == "data frame inside message");
}

namespace {

// What the scanner shows after a call, for comparing two of them.
struct observed {
    std::size_t got;
    bool boundary, header_done, frame_done, in_message;
    scan_error err;
    frame_header h;

    bool operator==(const observed& o) const
    {
        return got == o.got && boundary == o.boundary
               && header_done == o.header_done && frame_done == o.frame_done
               && in_message == o.in_message && err == o.err && h.op == o.h.op
               && h.fin == o.h.fin && h.masked == o.h.masked && h.rsv == o.h.rsv
               && h.header_size == o.h.header_size
               && std::memcmp(h.mask, o.h.mask, 4) == 0 && h.len == o.h.len;
    }
};

template <std::size_t C>
observed observe(const basic_frame_scanner<C>& sc, std::size_t got)
{
    return {got,
            sc.at_boundary(),
            sc.header_complete(),
            sc.frame_complete(),
            sc.in_message(),
            sc.error(),
            sc.header()};
}

// Feeds s in the given chunks; the state after the call that ends at
// stream offset `at` (or the error), with the total consumed by then.
observed state_at(role r, bool rsv1, const bytes& prefix, const bytes& s,
                  const wire::chunking& c, std::size_t at)
{
    basic_frame_scanner<16> sc(r, rsv1);
    std::size_t pos = 0;

    // the prefix (a frame that leaves a message open, or none) first
    while (pos < prefix.size()) {
        pos += sc.advance(prefix.data() + pos, prefix.size() - pos);
    }

    pos = 0;

    for (std::size_t k : c) {
        std::size_t end = pos + k;

        while (pos < end) {
            std::size_t got = sc.advance(s.data() + pos, end - pos);
            pos += got;

            if (sc.error() != scan_error::none || pos >= at) {
                return observe(sc, pos);
            }
        }
    }

    return observe(sc, pos);
}

// Every first byte, and second bytes that cover each length form with
// and without the mask bit; then extended lengths at and around their
// edges, the bad ones too.
std::vector<bytes> header_forms()
{
    std::vector<bytes> v;
    const std::uint8_t m[4] = {0x01, 0x80, 0xfe, 0x7f};
    const std::uint64_t lens[] = {
        0,         1,     16,    125,   126,        127,
        255,       65535, 65536, 70000, 1ull << 32, (1ull << 63) - 1,
        1ull << 63};

    for (unsigned b0 = 0; b0 < 256; b0++) {
        for (std::uint64_t len : lens) {
            for (const std::uint8_t* mask : {(const std::uint8_t*)nullptr, m}) {
                std::uint8_t a = static_cast<std::uint8_t>(b0);

                v.push_back(wire::header(a, len, mask));

                // the non-minimal forms the scanner rejects
                if (len < 65536) {
                    v.push_back(
                        wire::header(a, len, mask, wire::len_form::f64));
                }
                if (len < 126) {
                    v.push_back(
                        wire::header(a, len, mask, wire::len_form::f16));
                }
            }
        }
    }

    return v;
}

} // namespace

TEST_CASE("scanner: a whole header decodes as it does byte by byte", "[frame]")
{
    std::size_t cases = 0;
    std::size_t fast = 0;
    std::size_t differ = 0;
    bytes open_msg = wire::frame(0x01, wire::text("a"), nullptr);
    bytes open_msg_masked = wire::frame(0x01, wire::text("a"), mask2);

    for (const bytes& hd : header_forms()) {
        // a short payload and the first byte of a next frame behind it,
        // so that a whole header also has bytes after it
        bytes s = hd;
        s.push_back(0x42);
        s.push_back(0x82);

        for (role r : {role::client, role::server}) {
            for (bool rsv1 : {false, true}) {
                for (bool in_msg : {false, true}) {
                    const bytes& prefix = !in_msg             ? bytes()
                                          : r == role::client ? open_msg_masked
                                                              : open_msg;

                    // whole, and split at every byte of the header, against
                    // one byte per call (never the fast path) up to the
                    // same stream offset
                    for (std::size_t at = 0; at <= hd.size(); at++) {
                        wire::chunking c = wire::split_at(s.size(), at);
                        observed o = state_at(r, rsv1, prefix, s, c, hd.size());
                        std::size_t until =
                            o.err == scan_error::none ? o.got : s.size() + 1;
                        observed ref =
                            state_at(r, rsv1, prefix, s,
                                     wire::chunking(s.size(), 1), until);

                        // bytes before a rejected one count when fed alone
                        if (o.err != scan_error::none) {
                            o.got = ref.got;
                        }

                        cases++;
                        fast += at == 0 ? 1 : 0;

                        if (!(o == ref)) {
                            differ++;
                            if (differ < 5) {
                                UNSCOPED_INFO("b0 " << int(hd[0]) << " b1 "
                                                    << int(hd[1]) << " size "
                                                    << hd.size() << " split "
                                                    << at);
                            }
                        }
                    }
                }
            }
        }
    }

    CHECK(differ == 0);
    CHECK(cases > 100000);
    CHECK(fast > 10000);
}

TEST_CASE("scanner: advance_data() takes data frames as advance() does",
          "[frame]")
{
    std::size_t taken = 0;
    std::size_t differ = 0;
    bytes open_msg = wire::frame(0x01, wire::text("a"), nullptr);
    bytes open_msg_masked = wire::frame(0x01, wire::text("a"), mask2);

    for (const bytes& hd : header_forms()) {
        bytes s = hd;
        s.push_back(0x42);
        s.push_back(0x82);

        for (role r : {role::client, role::server}) {
            for (bool rsv1 : {false, true}) {
                for (bool in_msg : {false, true}) {
                    basic_frame_scanner<16> sc(r, rsv1);
                    const bytes& prefix = !in_msg             ? bytes()
                                          : r == role::client ? open_msg_masked
                                                              : open_msg;

                    for (std::size_t pos = 0; pos < prefix.size();) {
                        pos += sc.advance(prefix.data() + pos,
                                          prefix.size() - pos);
                    }

                    // the header, then its payload in two calls
                    for (std::size_t end : {hd.size(), hd.size() + 1,
                                            s.size()})
                    {
                        std::size_t pos = end == hd.size()     ? 0
                                          : end == s.size() ? hd.size() + 1
                                                            : hd.size();
                        basic_frame_scanner<16> fast(sc);
                        std::size_t k =
                            fast.advance_data(s.data() + pos, end - pos);
                        std::size_t got = sc.advance(s.data() + pos,
                                                     end - pos);

                        if (k != 0) {
                            taken++;
                            if (k != got || !(observe(fast, k)
                                              == observe(sc, got)))
                            {
                                differ++;
                            }
                        }

                        if (got != end - pos) {
                            break;
                        }
                    }
                }
            }
        }
    }

    CHECK(differ == 0);
    CHECK(taken > 500);
}

TEST_CASE("scanner: a fast-path header then its payload, every split",
          "[frame]")
{
    // one stream of every valid form, fed whole and split every way: the
    // frames and errors agree (scan_all_ways), including the masks
    bytes s;
    const std::uint8_t m[4] = {0x9a, 0x00, 0xff, 0x31};

    wire::append(s, wire::frame(0x02, filler(125), m));
    wire::append(s, wire::frame(0x89, filler(16), m));
    wire::append(s, wire::frame(0x00, filler(126), m));
    wire::append(s, wire::frame(0x8a, filler(0), m));
    wire::append(s, wire::frame(0x80, filler(300), m));
    wire::append(s, wire::frame(0xc1, filler(3), m));
    wire::append(s, wire::frame(0x88, filler(2), m));

    scan_log log = scan_all_ways(role::client, true, s);

    REQUIRE(log.err == scan_error::none);
    REQUIRE(log.frames.size() == 7);
    CHECK(std::memcmp(log.frames[4].h.mask, m, 4) == 0);
    CHECK(log.frames[4].h.header_size == 8);
    CHECK(log.frames[1].ctrl == filler(16));
    CHECK(log.frames[6].ctrl == filler(2));

    // 64-bit lengths, server role
    bytes big = wire::header(0x82, 70000, nullptr);
    REQUIRE(big.size() == 10);
    basic_frame_scanner<16> sc(role::server);
    CHECK(sc.advance(big.data(), big.size()) == 10);
    CHECK(sc.header_complete());
    CHECK(sc.header().len == 70000);
    CHECK_FALSE(sc.at_boundary());
}

TEST_CASE("frame_extent: where a frame ends, from its length fields", "[frame]")
{
    const std::uint8_t m[4] = {1, 2, 3, 4};
    bytes a = wire::frame(0x82, filler(64), m);
    bytes b = wire::frame(0x81, filler(300), nullptr);
    bytes c = wire::frame(0x82, filler(70000), m);

    CHECK(frame_extent(a.data(), a.size()) == a.size());
    CHECK(frame_extent(b.data(), b.size()) == b.size());
    CHECK(frame_extent(c.data(), c.size()) == c.size());

    // one byte short anywhere: no extent
    for (const bytes* f : {&a, &b, &c}) {
        for (std::size_t n = 0; n < f->size(); n += n < 20 ? 1 : 997) {
            CHECK(frame_extent(f->data(), n) == no_extent);
        }
        CHECK(frame_extent(f->data(), f->size() - 1) == no_extent);
    }

    // more bytes behind it do not change it
    bytes ab = a;
    wire::append(ab, b);
    CHECK(frame_extent(ab.data(), ab.size()) == a.size());

    // judges nothing: a reserved opcode still has an extent
    bytes bad = wire::frame(0x83, filler(5), nullptr);
    CHECK(frame_extent(bad.data(), bad.size()) == bad.size());

    // a length near 2^64 does not wrap around
    bytes huge = wire::header(0x82, ~std::uint64_t(0) - 4, nullptr);
    huge.resize(64, 0);
    CHECK(frame_extent(huge.data(), huge.size()) == no_extent);
}

TEST_CASE("scanner: rewire() lays a control frame's first bytes out again",
          "[frame]")
{
    // every prefix of control frames with payloads up to the capture, fed
    // whole or a byte at a time (the header decoded in one go or byte by
    // byte), after a data frame so that the state is not fresh
    const std::uint8_t m[4] = {0x9a, 0x00, 0xff, 0x31};

    for (role r : {role::client, role::server}) {
        const std::uint8_t* mk = r == role::client ? m : nullptr;

        for (std::uint8_t b0 : {0x8a, 0x89, 0x88}) {
            for (std::size_t len : {0, 1, 5, 15, 16}) {
                bytes f = wire::frame(b0, filler(len), mk);
                bytes pre = wire::frame(0x82, filler(40), mk);

                for (std::size_t n = 1; n <= f.size(); n++) {
                    for (bool bytewise : {false, true}) {
                        basic_frame_scanner<16> sc(r);
                        REQUIRE(sc.advance(pre.data(), pre.size())
                                == pre.size());

                        if (bytewise) {
                            for (std::size_t i = 0; i < n; i++) {
                                REQUIRE(sc.advance(f.data() + i, 1) == 1);
                            }
                        } else {
                            REQUIRE(sc.advance(f.data(), n) == n);
                        }

                        sc.rewire(n);
                        INFO("b0 " << int(b0) << " len " << len << " n " << n
                                   << " bytewise " << bytewise);
                        CHECK(bytes(sc.wire(), sc.wire() + n)
                              == bytes(f.begin(), f.begin() + n));
                        CHECK(sc.error() == scan_error::none);
                        CHECK(sc.at_boundary() == (n == f.size()));
                    }
                }
            }
        }
    }
}

TEST_CASE("scanner: the error shares a byte with the header position",
          "[frame]")
{
    // rejected at each header byte position: the error reads back, the
    // scanner is not at a boundary and consumes nothing more
    bytes bad16 = wire::frame(0x82, filler(125), nullptr, wire::len_form::f16);
    bytes bad64 = wire::header(0x82, std::uint64_t(1) << 63, nullptr);

    for (std::size_t step : {1, 2, 64}) {
        for (const bytes* b : {&bad16, &bad64}) {
            basic_frame_scanner<16> sc(role::server);
            std::size_t pos = 0;

            while (pos < b->size() && sc.error() == scan_error::none) {
                std::size_t k = b->size() - pos < step ? b->size() - pos : step;
                pos += sc.advance(b->data() + pos, k);
            }

            CHECK(sc.error()
                  == (b == &bad16 ? scan_error::bad_size
                                  : scan_error::bad_size_64));
            CHECK_FALSE(sc.at_boundary());
            CHECK_FALSE(sc.header_complete());
            CHECK(sc.advance(b->data(), b->size()) == 0);
            CHECK(sc.until_boundary(b->data(), b->size())
                  == basic_frame_scanner<16>::npos);
        }
    }
}

// The per-connection state budget (two of each per connection).
static_assert(sizeof(frame_header) == 16, "frame_header grew");
static_assert(sizeof(basic_frame_scanner<16>) <= 48, "scanner grew");
