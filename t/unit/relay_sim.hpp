// Test-side model of one relay direction around wshb::outbound: a caller
// that behaves like nginx's upgraded-connection loop (a buffer that only
// grows at the end and is consumed at the front; after a short or blocked
// send the same bytes are offered again), a fake Io that writes short,
// says "again" or 0 as told, checks the OpenSSL retry rule and records
// the output, and a reference check of that output against the input.
// Used by t/unit/test_outbound.cpp (random choices from mt19937) and by
// t/fuzz/fuzz_outbound.cpp (choices from the fuzz input). Not Catch-based:
// run() returns the first problem found as a string, empty when all is well.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "frame.hpp"
#include "frame_builder.hpp"
#include "outbound.hpp"

namespace sim {

using bytes = std::vector<std::uint8_t>;

// The Io's answer to "is this Pong ours": tag "wshb", like the heartbeat.
inline bool ours(const std::uint8_t* payload, std::size_t n)
{
    return n == 16 && std::memcmp(payload, "wshb", 4) == 0;
}

// What the input stream holds, from a one-shot scan.
struct reference {
    struct frame {
        std::size_t off;
        std::size_t size;
        wshb::opcode op;
        std::uint64_t len;
        bool swallow; // a candidate Pong the Io will claim
    };

    enum end_t { clean, error, truncated };

    std::vector<frame> frames;
    std::size_t tail = 0; // where the rejected or unfinished frame starts
    end_t end = clean;
    wshb::scan_error err = wshb::scan_error::none;
};

inline reference reference_of(const bytes& s, wshb::role r, bool swallow,
                              bool rsv1)
{
    reference ref;
    wshb::frame_scanner sc(r, rsv1);
    std::size_t pos = 0;
    std::size_t start = 0;
    std::uint8_t pong_b1 = r == wshb::role::client ? 0x90 : 0x10;

    while (pos < s.size()) {
        std::size_t k = sc.advance(s.data() + pos, s.size() - pos);

        if (sc.error() != wshb::scan_error::none) {
            ref.end = reference::error;
            ref.err = sc.error();
            ref.tail = start;
            return ref;
        }

        pos += k;

        if (sc.frame_complete()) {
            const wshb::frame_header& h = sc.header();
            bool cand = s[start] == 0x8a && s[start + 1] == pong_b1;
            reference::frame f{
                start, pos - start, h.op, h.len,
                swallow && cand
                    && ours(sc.control_payload(), sc.control_size())};
            ref.frames.push_back(f);
            start = pos;
        }
    }

    if (start != s.size()) {
        ref.end = reference::truncated;
        ref.tail = start;
    } else {
        ref.tail = s.size();
    }

    return ref;
}

// The Io's frame() as the glue has it: the frames queued are kept here
// (queued(): value is their index), laid out again at each call in one
// buffer, which stands for the worker's: scribble() overwrites it as
// another connection of the worker would between two writes of this one.
struct frame_maker {
    std::vector<bytes> made;
    std::uint8_t buf[wshb::inject_capacity];
    std::size_t calls = 0;

    wshb::queued_frame queued(const bytes& b)
    {
        wshb::queued_frame f;
        f.value = static_cast<std::uint32_t>(made.size());
        f.size = static_cast<std::uint8_t>(b.size() < 255 ? b.size() : 255);
        made.push_back(b);
        return f;
    }

    const std::uint8_t* frame(const wshb::queued_frame& f)
    {
        const bytes& b = made.at(f.value);
        calls++;
        std::memcpy(buf, b.data(),
                    b.size() < sizeof(buf) ? b.size() : sizeof(buf));
        return buf;
    }

    void scribble() { std::memset(buf, 0xee, sizeof(buf)); }
};

// Random choices. Chooser: std::uint32_t pick(std::uint32_t n) in [0, n),
// where 0 is always the plain, progressing choice.
struct options {
    std::uint32_t grow_max = 4096; // most bytes the buffer grows by
    std::uint32_t again_odds = 0;  // 1 in N writes says again (0: never)
    std::uint32_t short_odds = 0;  // 1 in N writes is short
    std::uint32_t zero_odds = 0;   // 1 in N writes returns 0
    std::uint32_t queue_odds = 0;  // 1 in N steps queues a frame
    std::uint32_t last_odds = 0;   // 1 in N queued frames is the last
    std::uint32_t flush_odds = 6;  // 1 in N steps calls flush()
};

template <class Chooser>
struct fake_io {
    const bytes& in;
    Chooser& ch;
    const options& opt;
    bytes out;
    std::string problem;

    // the retry owed after io_again or 0
    bool owed = false;
    const std::uint8_t* owed_p = nullptr;
    std::size_t owed_n = 0;
    bytes owed_copy;

    bool last_incomplete = false; // last write short, again or 0
    std::size_t writes = 0;
    std::size_t agains = 0;
    std::size_t shorts = 0;

    std::vector<bytes> pongs_asked;
    std::size_t pongs_claimed = 0;
    std::vector<wshb::frame_header> frames; // from on_frame
    std::size_t headers = 0;
    std::size_t errors = 0;
    wshb::scan_error err = wshb::scan_error::none;
    frame_maker maker;

    fake_io(const bytes& s, Chooser& c, const options& o) : in(s), ch(c), opt(o)
    {
    }

    void fail(const std::string& what)
    {
        if (problem.empty()) {
            problem = what;
        }
    }

    bool is_relay(const std::uint8_t* p) const
    {
        return !in.empty() && p >= in.data() && p < in.data() + in.size();
    }

    long write(const std::uint8_t* p, std::size_t n)
    {
        writes++;

        if (n == 0) {
            fail("write of 0 bytes");
        }

        if (is_relay(p) && p + n > in.data() + in.size()) {
            fail("relay write past the input");
        }

        if (owed) {
            // OpenSSL: the retry repeats the same buffer, at least as long
            if (p != owed_p) {
                fail("retry with another pointer");
            } else if (is_relay(p) ? n < owed_n : n != owed_n) {
                fail("retry with another length");
            } else if (std::memcmp(p, owed_copy.data(), owed_n) != 0) {
                fail("retry with other bytes");
            }
        }

        std::size_t w = n;
        long r;

        if (opt.again_odds != 0 && ch.pick(opt.again_odds) == 1) {
            r = wshb::io_again;
            w = 0;
        } else if (opt.zero_odds != 0 && ch.pick(opt.zero_odds) == 1) {
            r = 0;
            w = 0;
        } else if (n > 1 && opt.short_odds != 0 && ch.pick(opt.short_odds) == 1)
        {
            w = 1
                + ch.pick(static_cast<std::uint32_t>(
                    n - 1 > 0xffffffu ? 0xffffffu : n - 1));
            r = static_cast<long>(w);
        } else {
            r = static_cast<long>(n);
        }

        if (w == 0) {
            agains++;
            owed = true;
            owed_p = p;
            owed_n = n;
            owed_copy.assign(p, p + n);
        } else {
            owed = false;
            out.insert(out.end(), p, p + w);
            if (w < n) {
                shorts++;
            }
        }

        last_incomplete = w < n;

        // another connection of the worker writes its frame in between
        maker.scribble();
        return r;
    }

    const std::uint8_t* frame(const wshb::queued_frame& f)
    {
        return maker.frame(f);
    }

    bool match_pong(const std::uint8_t* payload, std::size_t n)
    {
        if (n != 16) {
            fail("match_pong with a payload that is not 16 bytes");
        }

        pongs_asked.emplace_back(payload, payload + n);

        if (ours(payload, n)) {
            pongs_claimed++;
            return true;
        }

        return false;
    }

    void on_header(const wshb::frame_header&) { headers++; }

    void on_frame(const wshb::frame_header& h, const std::uint8_t*, std::size_t)
    {
        frames.push_back(h);
    }

    void on_error(wshb::scan_error e)
    {
        errors++;
        err = e;
    }
};

// Builds the k-th injected frame: a Ping or a Pong, "INJ" + counter.
inline bytes inject_frame(wshb::role r, std::uint32_t k, std::uint32_t extra)
{
    std::uint8_t payload[16] = {'I', 'N', 'J'};
    std::uint8_t mask[4] = {std::uint8_t(k), 0x5a, std::uint8_t(k >> 8), 1};
    std::uint8_t out[wshb::inject_capacity];
    std::size_t len = 7 + extra % 10;

    payload[3] = static_cast<std::uint8_t>(k >> 24);
    payload[4] = static_cast<std::uint8_t>(k >> 16);
    payload[5] = static_cast<std::uint8_t>(k >> 8);
    payload[6] = static_cast<std::uint8_t>(k);
    for (std::size_t i = 7; i < len; i++) {
        payload[i] = static_cast<std::uint8_t>(i * 31 + k);
    }

    wshb::opcode op = extra % 3 == 0 ? wshb::opcode::pong : wshb::opcode::ping;
    std::size_t n = wshb::build_control(
        op, payload, len, r == wshb::role::client ? mask : nullptr, out,
        sizeof(out));

    return bytes(out, out + n);
}

struct result {
    std::string problem;
    std::size_t steps = 0;
    std::size_t writes = 0;
    std::size_t agains = 0;
    std::size_t shorts = 0;
    std::size_t injected = 0;
    std::size_t swallowed = 0;
    std::size_t frames = 0;
    bool passthrough = false;
    bool ended = false; // a last frame was written: the rest discarded
};

// Is out the relay frames (minus swallowed Pongs) with the injected
// frames in order at frame boundaries, then the tail as it should be?
// A search over (frames placed, injections placed): an input frame may be
// byte-identical to an injected one, so a greedy match is not enough.
// ended: the last injection was a last frame (queue(..., true)): the
// output stops right after it, wherever the relay frames had got to.
inline std::string check_output(const bytes& s, const reference& ref,
                                const bytes& out,
                                const std::vector<bytes>& injects, bool swallow,
                                wshb::role r, bool inject_may_be_dropped,
                                bool ended = false)
{
    std::size_t n = ref.frames.size();
    std::size_t m = injects.size();
    std::vector<std::size_t> fo(n + 1, 0);
    std::vector<std::size_t> jo(m + 1, 0);

    for (std::size_t i = 0; i < n; i++) {
        const reference::frame& f = ref.frames[i];
        fo[i + 1] = fo[i] + (f.swallow ? 0 : f.size);
    }

    for (std::size_t j = 0; j < m; j++) {
        jo[j + 1] = jo[j] + injects[j].size();
    }

    auto matches = [&](std::size_t o, const std::uint8_t* p, std::size_t k) {
        return out.size() >= o && out.size() - o >= k
               && std::memcmp(out.data() + o, p, k) == 0;
    };

    std::size_t tail = s.size() - ref.tail;

    (void)swallow;
    (void)r;

    // all frames placed, j injections placed: does the rest fit?
    auto finished = [&](std::size_t i, std::size_t j) {
        if (ended) {
            return j == m && fo[i] + jo[j] == out.size();
        }

        std::size_t o = fo[n] + jo[j];

        if (i != n) {
            return false;
        }

        if (j != m && !(inject_may_be_dropped && j + 1 == m)) {
            return false;
        }

        if (ref.end == reference::clean) {
            return o == out.size();
        }

        // an unfinished candidate Pong in the hold went out at release()
        return matches(o, s.data() + ref.tail, tail) && o + tail == out.size();
    };

    std::vector<bool> seen((n + 1) * (m + 1), false);
    std::vector<std::pair<std::size_t, std::size_t>> stack;
    std::size_t best_o = 0;
    std::size_t best_i = 0;

    stack.emplace_back(0, 0);

    while (!stack.empty()) {
        std::size_t i = stack.back().first;
        std::size_t j = stack.back().second;
        stack.pop_back();

        if (seen[i * (m + 1) + j]) {
            continue;
        }
        seen[i * (m + 1) + j] = true;

        std::size_t o = fo[i] + jo[j];

        if (o >= best_o) {
            best_o = o;
            best_i = i;
        }

        if (finished(i, j)) {
            return std::string();
        }

        if (j < m && matches(o, injects[j].data(), injects[j].size())) {
            stack.emplace_back(i, j + 1);
        }

        if (i < n) {
            const reference::frame& f = ref.frames[i];

            if (f.swallow || matches(o, s.data() + f.off, f.size)) {
                stack.emplace_back(i + 1, j);
            }
        }
    }

    if (best_i < n) {
        return "output differs at frame " + std::to_string(best_i)
               + " (input offset " + std::to_string(ref.frames[best_i].off)
               + ", output offset " + std::to_string(best_o) + ")";
    }

    return "output tail or injections wrong after output offset "
           + std::to_string(best_o);
}

template <class Chooser>
result run(const bytes& s, wshb::role r, bool swallow, bool rsv1, Chooser& ch,
           const options& opt)
{
    result res;
    reference ref = reference_of(s, r, swallow, rsv1);
    fake_io<Chooser> io(s, ch, opt);
    wshb::outbound ob(r, swallow, rsv1);
    std::vector<bytes> injects;
    std::size_t pos = 0;
    std::size_t avail = 0;
    std::size_t idle = 0;
    std::size_t last_n = 0;
    bool retry_owed = false;
    std::uint32_t counter = 0;
    bool dropped = false;
    const std::size_t max_steps = 40 * s.size() + 100000;

    for (res.steps = 0; res.steps < max_steps; res.steps++) {
        if (!io.problem.empty()) {
            break;
        }

        // the caller's buffer grows at its end
        if (avail < s.size()) {
            std::size_t g = 1 + ch.pick(opt.grow_max);
            avail = s.size() - avail < g ? s.size() : avail + g;
        }

        if (opt.queue_odds != 0 && !ob.queued() && ch.pick(opt.queue_odds) == 1)
        {
            bytes f = inject_frame(r, counter, ch.pick(1000));
            bool last = opt.last_odds != 0 && ch.pick(opt.last_odds) == 1;
            bool open = !ob.passthrough() && !ob.discarding();
            bool ok = ob.queue(io.maker.queued(f), last);

            if (ok != open) {
                io.fail("queue() refused or accepted wrongly");
                break;
            }

            if (ok) {
                injects.push_back(f);
                counter++;
            }
        }

        bool do_flush = pos == avail || ch.pick(opt.flush_odds) == 1;

        if (do_flush) {
            std::size_t writes = io.writes;
            io.last_incomplete = false;
            long rc = ob.flush(io);

            if (rc != 0 && rc != wshb::io_again) {
                io.fail("flush() returned " + std::to_string(rc));
                break;
            }

            if ((rc == wshb::io_again)
                != (io.writes != writes && io.last_incomplete)) {
                io.fail("flush() result does not match the last write");
                break;
            }

            if (pos == s.size() && rc == 0) {
                if (!ob.queued() || ++idle > 50) {
                    break;
                }
            }

            continue;
        }

        std::size_t n = avail - pos;

        // nginx offers the same bytes again, never fewer
        if (retry_owed && n < last_n) {
            io.fail("harness: buffer shrank");
            break;
        }

        io.last_incomplete = false;
        std::size_t writes = io.writes;
        long rc = ob.send(io, s.data() + pos, n);

        if (rc == wshb::io_error) {
            io.fail("send() returned io_error");
            break;
        }

        if (rc == wshb::io_again) {
            if (!io.last_incomplete || io.writes == writes) {
                io.fail("io_again without a blocked write");
                break;
            }
            retry_owed = true;
            last_n = n;
            continue;
        }

        if (rc <= 0 || static_cast<std::size_t>(rc) > n) {
            io.fail("send() returned " + std::to_string(rc) + " for "
                    + std::to_string(n));
            break;
        }

        if (static_cast<std::size_t>(rc) < n && !io.last_incomplete) {
            io.fail("send() consumed less without a short write");
            break;
        }

        if (ob.blocked() != io.last_incomplete) {
            io.fail("blocked() disagrees with the last write");
            break;
        }

        retry_owed = static_cast<std::size_t>(rc) < n;
        last_n = n - static_cast<std::size_t>(rc);
        pos += static_cast<std::size_t>(rc);
    }

    if (!io.problem.empty()) {
        res.problem = io.problem;
        return res;
    }

    if (pos != s.size()) {
        res.problem = "did not consume the whole input";
        return res;
    }

    // the sender's stream ends: an unfinished hold goes out as it is
    {
        io.last_incomplete = false;
        long rc = ob.release(io);

        for (std::size_t i = 0; rc == wshb::io_again && i < 100000; i++) {
            io.last_incomplete = false;
            rc = ob.flush(io);
        }

        if (rc != 0) {
            res.problem =
                "release() then flush() returned " + std::to_string(rc);
            return res;
        }

        if (ob.pending() && !ob.queued()) {
            res.problem = "a hold left after release()";
            return res;
        }

        if (!io.problem.empty()) {
            res.problem = io.problem;
            return res;
        }
    }

    // a frame queued behind an unfinished tail frame never goes out
    if (ob.queued()) {
        ob.drop_queued();
        if (ob.queued()) {
            res.problem = "a started injection never finished";
            return res;
        }
        injects.pop_back();
    }

    dropped = ref.end == reference::error;
    res.ended = ob.discarding();
    res.problem =
        check_output(s, ref, io.out, injects, swallow, r, dropped, res.ended);

    if (!res.problem.empty()) {
        return res;
    }

    // the Io heard of every frame, in order, up to the end or the error
    if (io.frames.size() != ref.frames.size()) {
        res.problem = "on_frame count " + std::to_string(io.frames.size())
                      + " != " + std::to_string(ref.frames.size());
        return res;
    }

    for (std::size_t i = 0; i < ref.frames.size(); i++) {
        if (io.frames[i].op != ref.frames[i].op
            || io.frames[i].len != ref.frames[i].len)
        {
            res.problem = "on_frame " + std::to_string(i) + " differs";
            return res;
        }
    }

    if (io.headers < io.frames.size() || io.headers > io.frames.size() + 1) {
        res.problem = "on_header count off";
        return res;
    }

    if (io.errors != (ref.end == reference::error ? 1u : 0u)
        || io.err != ref.err || ob.passthrough() != (io.errors != 0))
    {
        res.problem = "on_error not called exactly once on rejection";
        return res;
    }

    std::size_t want_claims = 0;
    for (const reference::frame& f : ref.frames) {
        want_claims += f.swallow ? 1 : 0;
    }

    // after a last frame the Pongs are consumed, not claimed
    if (res.ended ? io.pongs_claimed > want_claims
                  : io.pongs_claimed != want_claims)
    {
        res.problem = "swallowed " + std::to_string(io.pongs_claimed)
                      + " Pongs, expected " + std::to_string(want_claims);
        return res;
    }

    if (!swallow && !io.pongs_asked.empty()) {
        res.problem = "match_pong called with swallowing off";
        return res;
    }

    res.writes = io.writes;
    res.agains = io.agains;
    res.shorts = io.shorts;
    res.injected = injects.size();
    res.swallowed = io.pongs_claimed;
    res.frames = ref.frames.size();
    res.passthrough = ob.passthrough();

    return res;
}

} // namespace sim
