// Test-side WebSocket wire helpers: encode frames any way we like
// (including the encodings the scanner must reject) and cut byte streams
// into chunks. Shared by the unit tests and the fuzz targets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace wire {

using bytes = std::vector<std::uint8_t>;

enum class len_form { minimal, f16, f64 };

// Header for a frame whose first byte is b0 (FIN, RSV, opcode), payload
// length len, optional mask, length written in the given form.
inline bytes header(std::uint8_t b0, std::uint64_t len,
                    const std::uint8_t* mask, len_form form = len_form::minimal)
{
    bytes h;
    std::uint8_t m = mask != nullptr ? 0x80 : 0;

    h.push_back(b0);

    if (form == len_form::minimal) {
        form = len < 126     ? len_form::minimal
               : len < 65536 ? len_form::f16
                             : len_form::f64;
    }

    if (form == len_form::minimal) {
        h.push_back(static_cast<std::uint8_t>(m | len));

    } else if (form == len_form::f16) {
        h.push_back(static_cast<std::uint8_t>(m | 126));
        h.push_back(static_cast<std::uint8_t>(len >> 8));
        h.push_back(static_cast<std::uint8_t>(len));

    } else {
        h.push_back(static_cast<std::uint8_t>(m | 127));
        for (int s = 56; s >= 0; s -= 8) {
            h.push_back(static_cast<std::uint8_t>(len >> s));
        }
    }

    if (mask != nullptr) {
        h.insert(h.end(), mask, mask + 4);
    }

    return h;
}

// A whole frame; the payload is given unmasked and masked here.
inline bytes frame(std::uint8_t b0, const bytes& payload,
                   const std::uint8_t* mask, len_form form = len_form::minimal)
{
    bytes f = header(b0, payload.size(), mask, form);

    for (std::size_t i = 0; i < payload.size(); i++) {
        std::uint8_t k = mask != nullptr ? mask[i & 3] : 0;
        f.push_back(static_cast<std::uint8_t>(payload[i] ^ k));
    }

    return f;
}

inline bytes text(const char* s)
{
    bytes b;
    while (*s != '\0') {
        b.push_back(static_cast<std::uint8_t>(*s++));
    }
    return b;
}

inline void append(bytes& to, const bytes& b)
{
    to.insert(to.end(), b.begin(), b.end());
}

// Chunk sizes that cover n bytes.
using chunking = std::vector<std::size_t>;

inline chunking whole(std::size_t n)
{
    return chunking{n};
}

inline chunking split_at(std::size_t n, std::size_t at)
{
    if (at == 0 || at >= n) {
        return whole(n);
    }
    return chunking{at, n - at};
}

inline chunking random_chunks(std::size_t n, std::uint32_t seed,
                              std::size_t max_chunk = 0)
{
    std::mt19937 rng(seed);
    chunking c;

    if (max_chunk == 0) {
        max_chunk = n / 4 + 1;
    }

    std::uniform_int_distribution<std::size_t> d(1, max_chunk);
    std::size_t left = n;

    while (left > 0) {
        std::size_t k = d(rng);
        if (rng() % 8 == 0) {
            k = 1;
        }
        if (k > left) {
            k = left;
        }
        c.push_back(k);
        left -= k;
    }

    return c;
}

// whole, every two-piece split, byte by byte, and a few random chunkings
inline std::vector<chunking> all_chunkings(std::size_t n,
                                           std::size_t randoms = 8)
{
    std::vector<chunking> v;

    v.push_back(whole(n));

    for (std::size_t at = 1; at < n; at++) {
        v.push_back(split_at(n, at));
    }

    if (n <= 4096) {
        v.push_back(chunking(n, 1));
    }

    for (std::uint32_t s = 1; s <= randoms; s++) {
        v.push_back(random_chunks(n, s));
    }

    return v;
}

} // namespace wire
