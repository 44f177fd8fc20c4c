// Unit tests for src/frame_builder.hpp: control frames the module injects.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>

#include "frame_builder.hpp"
#include "wire.hpp"

using namespace wshb;
using wire::bytes;

namespace {

const std::uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};

// Builds, then scans the result back with the scanner of the right role.
bytes scan_back(const std::uint8_t* f, std::size_t n, bool masked)
{
    frame_scanner sc(masked ? role::client : role::server);

    REQUIRE(sc.advance(f, n) == n);
    REQUIRE(sc.frame_complete());
    REQUIRE(sc.header().fin);
    REQUIRE(sc.header().rsv == 0);

    return bytes(sc.control_payload(),
                 sc.control_payload() + sc.control_size());
}

bool utf8(const char* s)
{
    return valid_utf8(reinterpret_cast<const std::uint8_t*>(s), std::strlen(s));
}

bool utf8(const bytes& b)
{
    return valid_utf8(b.data(), b.size());
}

} // namespace

TEST_CASE("builder: control frames", "[frame_builder]")
{
    std::uint8_t out[140];
    build_error err = build_error::none;
    bytes hello = wire::text("Hello");

    SECTION("unmasked ping matches RFC 6455 5.7")
    {
        std::size_t n = build_control(opcode::ping, hello.data(), 5, nullptr,
                                      out, sizeof(out), &err);
        bytes want = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};

        REQUIRE(n == 7);
        CHECK(err == build_error::none);
        CHECK(bytes(out, out + n) == want);
        CHECK(n == control_frame_size(5, false));
    }

    SECTION("masked pong matches RFC 6455 5.7")
    {
        std::size_t n = build_control(opcode::pong, hello.data(), 5, mask, out,
                                      sizeof(out), &err);
        bytes want = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                      0x7f, 0x9f, 0x4d, 0x51, 0x58};

        REQUIRE(n == 11);
        CHECK(bytes(out, out + n) == want);
        CHECK(scan_back(out, n, true) == hello);
    }

    SECTION("empty and maximal payloads")
    {
        std::size_t n = build_control(opcode::pong, nullptr, 0, nullptr, out,
                                      sizeof(out), &err);
        REQUIRE(n == 2);
        CHECK(out[0] == 0x8a);
        CHECK(out[1] == 0x00);

        bytes big(125, 0x42);
        n = build_control(opcode::ping, big.data(), big.size(), mask, out,
                          sizeof(out), &err);
        REQUIRE(n == 131);
        CHECK(scan_back(out, n, true) == big);
    }

    SECTION("data opcodes are refused")
    {
        CHECK(build_control(opcode::text, hello.data(), 5, nullptr, out,
                            sizeof(out), &err)
              == 0);
        CHECK(err == build_error::not_control);
        CHECK(build_control(opcode::cont, nullptr, 0, nullptr, out, sizeof(out),
                            &err)
              == 0);
        CHECK(err == build_error::not_control);
        CHECK(build_control(opcode::crsvb, nullptr, 0, nullptr, out,
                            sizeof(out), &err)
              == 0);
        CHECK(err == build_error::not_control);
    }

    SECTION("payload over 125 bytes")
    {
        bytes big(126, 0);
        CHECK(build_control(opcode::ping, big.data(), big.size(), nullptr, out,
                            sizeof(out), &err)
              == 0);
        CHECK(err == build_error::payload_too_long);
    }

    SECTION("buffer too small")
    {
        CHECK(build_control(opcode::ping, hello.data(), 5, mask, out, 10, &err)
              == 0);
        CHECK(err == build_error::buffer_too_small);
        CHECK(build_control(opcode::ping, hello.data(), 5, mask, out, 11, &err)
              == 11);
        CHECK(err == build_error::none);
    }

    SECTION("err may be null")
    {
        CHECK(build_control(opcode::text, nullptr, 0, nullptr, out, sizeof(out))
              == 0);
    }
}

TEST_CASE("builder: close frames", "[frame_builder]")
{
    std::uint8_t out[140];
    build_error err = build_error::none;

    SECTION("1001 with a reason, masked and not")
    {
        std::size_t n = build_close(1001, "going away", 10, nullptr, out,
                                    sizeof(out), &err);
        REQUIRE(n == 14);
        bytes p = scan_back(out, n, false);
        CHECK(p[0] == 0x03);
        CHECK(p[1] == 0xe9);
        CHECK(std::string(p.begin() + 2, p.end()) == "going away");

        n = build_close(1011, "", 0, mask, out, sizeof(out), &err);
        REQUIRE(n == 8);
        CHECK(scan_back(out, n, true) == (bytes{0x03, 0xf3}));
    }

    SECTION("codes that may not be sent")
    {
        for (std::uint16_t c :
             {0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535})
        {
            INFO(c);
            CHECK(build_close(c, "", 0, nullptr, out, sizeof(out), &err) == 0);
            CHECK(err == build_error::bad_close_code);
        }
    }

    SECTION("reason over 123 bytes")
    {
        std::string r(124, 'x');
        CHECK(build_close(1000, r.data(), r.size(), nullptr, out, sizeof(out),
                          &err)
              == 0);
        CHECK(err == build_error::reason_too_long);
        CHECK(build_close(1000, r.data(), 123, mask, out, sizeof(out), &err)
              == 131);
    }

    SECTION("reason that is not UTF-8")
    {
        CHECK(build_close(1000, "\xc0\xaf", 2, nullptr, out, sizeof(out), &err)
              == 0);
        CHECK(err == build_error::bad_reason_utf8);
    }

    SECTION("buffer too small")
    {
        CHECK(build_close(1000, "ab", 2, nullptr, out, 5, &err) == 0);
        CHECK(err == build_error::buffer_too_small);
    }
}

TEST_CASE("builder: close_code_sendable", "[frame_builder]")
{
    for (unsigned c = 0; c < 65536; c++) {
        bool want = (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014)
                    || (c >= 3000 && c <= 4999);
        if (close_code_sendable(static_cast<std::uint16_t>(c)) != want) {
            FAIL("close code " << c);
        }
    }
    CHECK(close_code_sendable(1000));
    CHECK_FALSE(close_code_sendable(1004));
    CHECK_FALSE(close_code_sendable(1005));
    CHECK_FALSE(close_code_sendable(1006));
    CHECK_FALSE(close_code_sendable(1015));
    CHECK(close_code_sendable(4999));
}

TEST_CASE("builder: valid_utf8 is strict", "[frame_builder]")
{
    SECTION("accepted")
    {
        CHECK(utf8(""));
        CHECK(utf8("plain ascii"));
        CHECK(utf8("\xc2\x80"));         // U+0080
        CHECK(utf8("\xdf\xbf"));         // U+07FF
        CHECK(utf8("\xe0\xa0\x80"));     // U+0800
        CHECK(utf8("\xed\x9f\xbf"));     // U+D7FF
        CHECK(utf8("\xee\x80\x80"));     // U+E000
        CHECK(utf8("\xef\xbf\xbf"));     // U+FFFF
        CHECK(utf8("\xf0\x90\x80\x80")); // U+10000
        CHECK(utf8("\xf4\x8f\xbf\xbf")); // U+10FFFF
        CHECK(utf8("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"));
        CHECK(utf8(bytes{0x00}));
    }

    SECTION("overlong forms")
    {
        CHECK_FALSE(utf8("\xc0\x80"));
        CHECK_FALSE(utf8("\xc1\xbf"));
        CHECK_FALSE(utf8("\xe0\x9f\xbf"));
        CHECK_FALSE(utf8("\xf0\x8f\xbf\xbf"));
    }

    SECTION("surrogates")
    {
        CHECK_FALSE(utf8("\xed\xa0\x80"));
        CHECK_FALSE(utf8("\xed\xbf\xbf"));
    }

    SECTION("beyond U+10FFFF")
    {
        CHECK_FALSE(utf8("\xf4\x90\x80\x80"));
        CHECK_FALSE(utf8("\xf5\x80\x80\x80"));
        CHECK_FALSE(utf8("\xff"));
    }

    SECTION("truncated and stray bytes")
    {
        CHECK_FALSE(utf8("\xc2"));
        CHECK_FALSE(utf8("\xe0\xa0"));
        CHECK_FALSE(utf8("\xf0\x90\x80"));
        CHECK_FALSE(utf8("\x80"));
        CHECK_FALSE(utf8("a\xbf"));
        CHECK_FALSE(utf8("\xc2\x41"));
        CHECK_FALSE(utf8("\xe1\x80\x41"));
    }

    SECTION("agrees with a reference decoder on all 1-3 byte inputs")
    {
        // reference: decode by the Unicode table 3-7 definition
        auto ref = [](const bytes& b) {
            std::size_t i = 0;
            while (i < b.size()) {
                unsigned c = b[i];
                std::size_t k = c < 0x80                ? 0
                                : c >= 0xc0 && c < 0xe0 ? 1
                                : c >= 0xe0 && c < 0xf0 ? 2
                                : c >= 0xf0 && c < 0xf8 ? 3
                                                        : 9;
                if (k == 9 || i + k >= b.size() + (k == 0 ? 1 : 0)) {
                    if (k == 0) {
                        i++;
                        continue;
                    }
                    return false;
                }
                unsigned cp = k == 0 ? c : c & (0x3f >> k);
                for (std::size_t j = 1; j <= k; j++) {
                    if ((b[i + j] & 0xc0) != 0x80) {
                        return false;
                    }
                    cp = (cp << 6) | (b[i + j] & 0x3f);
                }
                unsigned min = k == 1 ? 0x80 : k == 2 ? 0x800 : 0x10000;
                if (k > 0 && cp < min) {
                    return false;
                }
                if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
                    return false;
                }
                i += k + 1;
            }
            return true;
        };

        std::size_t mismatches = 0;
        for (unsigned a = 0; a < 256; a++) {
            for (unsigned b = 0; b < 256; b++) {
                bytes two = {std::uint8_t(a), std::uint8_t(b)};
                mismatches += utf8(two) != ref(two);
                for (unsigned c : {0x00u, 0x41u, 0x80u, 0x8fu, 0x90u, 0x9fu,
                                   0xa0u, 0xbfu, 0xc0u})
                {
                    bytes three = {std::uint8_t(a), std::uint8_t(b),
                                   std::uint8_t(c)};
                    mismatches += utf8(three) != ref(three);
                    three.push_back(0x80);
                    mismatches += utf8(three) != ref(three);
                }
            }
        }
        CHECK(mismatches == 0);
    }
}

TEST_CASE("builder: error words", "[frame_builder]")
{
    CHECK(std::string(to_string(build_error::not_control)).size() > 0);
    CHECK(std::string(to_string(build_error::bad_close_code))
          == "close code not sendable");
}

TEST_CASE("builder: queued frames, laid out again", "[frame_builder]")
{
    std::uint8_t out[inject_capacity];
    std::uint8_t want[140];
    const std::uint32_t key = 0x01020304u;

    SECTION("a Ping: make_ping()'s payload, masked and not")
    {
        heartbeat hb;
        std::uint8_t payload[ping_payload_size];
        for (int i = 0; i < 3; i++) {
            (void)hb.make_ping(payload, key);
            hb.on_ping_written(0, 0);
        }
        // the third Ping: sequence 2
        for (const std::uint8_t* m :
             {static_cast<const std::uint8_t*>(nullptr), mask}) {
            queued_frame f = queued_ping(2, m);
            std::size_t n = build_control(
                opcode::ping, payload, sizeof(payload), m, want, sizeof(want));
            CHECK(f.size == n);
            CHECK(build_queued(f, key, out, sizeof(out)) == n);
            CHECK(bytes(out, out + n) == bytes(want, want + n));
            // again: the same bytes
            std::memset(out, 0xee, sizeof(out));
            CHECK(build_queued(f, key, out, sizeof(out)) == n);
            CHECK(bytes(out, out + n) == bytes(want, want + n));
        }
    }

    SECTION("each Close text, masked and not, within inject_capacity")
    {
        for (std::uint8_t t = 0; t <= std::uint8_t(close_text::out_of_memory);
             t++) {
            close_text text = close_text(t);
            const char* r = to_string(text);
            INFO(r);
            CHECK((t == 0 || std::strlen(r) > 0));
            for (std::uint16_t code : {1001, 1011}) {
                queued_frame f = queued_close(code, text, mask);
                std::size_t n = build_close(code, r, std::strlen(r), mask, want,
                                            sizeof(want));
                REQUIRE(n != 0);
                CHECK(f.size == n);
                CHECK(f.size <= inject_capacity);
                CHECK(build_queued(f, key, out, sizeof(out)) == n);
                CHECK(bytes(out, out + n) == bytes(want, want + n));
                f = queued_close(code, text, nullptr);
                CHECK(build_queued(f, key, out, sizeof(out)) == f.size);
                bytes payload{std::uint8_t(code >> 8),
                              std::uint8_t(code & 0xff)};
                wire::append(payload, wire::text(r));
                CHECK(scan_back(out, f.size, false) == payload);
            }
        }
        CHECK(std::string(to_string(close_text::shutting_down))
              == "server shutting down");
        CHECK(queued_close(1001, close_text::shutting_down, mask).size
              == inject_capacity);
    }

    SECTION("none, a code not to send, a buffer too small")
    {
        CHECK(build_queued(queued_frame(), key, out, sizeof(out)) == 0);
        CHECK(queued_close(1005, close_text::none, nullptr).size == 0);
        queued_frame f = queued_ping(0, mask);
        CHECK(build_queued(f, key, out, f.size - 1) == 0);
    }
}
