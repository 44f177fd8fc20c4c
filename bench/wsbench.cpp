// wsbench: WebSocket load generator and echo backend for the
// ngx_ws_heartbeat benchmarks. C++17, epoll (edge-triggered), many
// connections per thread; nothing beyond the standard library, Linux and
// OpenSSL (SHA-1 for the handshake).
//
//   wsbench client --url ws://127.0.0.1:8080/ws -c 100 -t 1 --size 64
//                  [--rate MSGS_PER_S_TOTAL | --inflight K] [--warmup S]
//                  [--duration S] [--src 127.0.0.2,127.0.0.3] [--idle]
//                  [--reconnect] [--events FILE]
//                  [--json FILE] [--ready-file FILE] [--label TEXT]
//   wsbench server --listen 127.0.0.1:9000 [--listen ...] -t 1
//                  [--ping-interval MS] [--push-interval MS] [--size B]
//                  [--json FILE] [--ready-file FILE]
//
// client: opens -c connections (a bounded number of handshakes at a time,
// source addresses round-robin over --src), then sends binary messages of
// --size bytes, flat out with --inflight messages outstanding per
// connection, or open loop at --rate messages/s in total (latency counted
// from the intended send time, so no coordinated omission). Every echoed
// byte is checked. Pings from the peer are answered with Pongs. --idle
// sends nothing and holds the connections (answering Pings) for
// --duration seconds, or until SIGTERM/SIGINT with --duration 0. A Close
// from the peer is answered and the socket closed; --reconnect opens a
// connection that ends (Close or EOF) again at once, and --events FILE
// lists when each ended and when its successor was open. A Close whose
// reason is a number (the server's, below) is checked against the
// messages received on that connection.
//
// server: an echo backend. Echoes every data frame as it arrives (frame by
// frame, streaming, unmasked), answers Pings with Pongs, answers a Close
// with a Close whose reason is the number of messages it pushed on that
// connection. --ping-interval: also sends each connection a Ping every MS
// milliseconds (a backend that runs its own heartbeat). --push-interval:
// sends each connection a numbered message of --size bytes every MS
// milliseconds (the client's message format, which it checks).
//
// Both write a text summary to stdout and, with --json, the same as JSON.

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <climits>
#include <cstdarg>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

namespace {

std::atomic<bool> g_stop{false};
std::atomic<bool> g_snap{false};

void on_signal(int) { g_stop.store(true); }
void on_usr1(int) { g_snap.store(true); }

// counters another thread reads while the connections run (snapshots)
struct Live {
    std::atomic<std::uint64_t> pings{0}, open{0}, lost{0};
    void bump(std::atomic<std::uint64_t>& a)
    {
        a.store(a.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    void drop(std::atomic<std::uint64_t>& a)
    {
        a.store(a.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    }
};

// Adds one thread's counters (the members S::counters points to) to a
// total.
template <class S>
void add_counters(S& total, const S& s)
{
    for (auto m : S::counters) {
        total.*m += s.*m;
    }
}

std::uint64_t now_ns()
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::uint64_t(ts.tv_sec) * 1000000000ull + std::uint64_t(ts.tv_nsec);
}

[[noreturn]] void die(const char* fmt, const char* a = "")
{
    std::fprintf(stderr, "wsbench: ");
    std::fprintf(stderr, fmt, a);
    std::fprintf(stderr, "\n");
    std::exit(2);
}

void raise_nofile()
{
    rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void) setrlimit(RLIMIT_NOFILE, &rl);
    }
}

std::string b64(const unsigned char* p, int n)
{
    std::string out(4 * ((n + 2) / 3) + 1, '\0');
    int k = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(&out[0]), p, n);
    out.resize(k);
    return out;
}

std::string accept_key(const std::string& key)
{
    std::string s = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
    return b64(d, SHA_DIGEST_LENGTH);
}

// XOR with a 4-byte key starting at key phase `off` (payload offset).
void xor_mask(std::uint8_t* p, std::size_t n, const std::uint8_t key[4],
              std::uint64_t off)
{
    std::size_t i = 0;
    while (i < n && ((off + i) & 3) != 0) {
        p[i] ^= key[(off + i) & 3];
        i++;
    }
    std::uint32_t k32;
    std::memcpy(&k32, key, 4);
    std::uint64_t k64 = (std::uint64_t(k32) << 32) | k32;
    for (; i + 8 <= n; i += 8) {
        std::uint64_t w;
        std::memcpy(&w, p + i, 8);
        w ^= k64;
        std::memcpy(p + i, &w, 8);
    }
    for (; i < n; i++) {
        p[i] ^= key[(off + i) & 3];
    }
}

// Frame header into out (returns its size). mask: key appended.
std::size_t frame_header(std::uint8_t* out, std::uint8_t b0, std::uint64_t len,
                         const std::uint8_t* mask)
{
    std::size_t h = 0;
    std::uint8_t m = mask ? 0x80 : 0;
    out[h++] = b0;
    if (len < 126) {
        out[h++] = std::uint8_t(m | len);
    } else if (len < 65536) {
        out[h++] = std::uint8_t(m | 126);
        out[h++] = std::uint8_t(len >> 8);
        out[h++] = std::uint8_t(len);
    } else {
        out[h++] = std::uint8_t(m | 127);
        for (int i = 7; i >= 0; i--) {
            out[h++] = std::uint8_t(len >> (8 * i));
        }
    }
    if (mask) {
        std::memcpy(out + h, mask, 4);
        h += 4;
    }
    return h;
}

// A growable output buffer with a consumed head.
struct OutBuf {
    std::vector<std::uint8_t> b;
    std::size_t head = 0;

    std::size_t size() const { return b.size() - head; }
    const std::uint8_t* data() const { return b.data() + head; }
    void consume(std::size_t n)
    {
        head += n;
        if (head == b.size()) {
            b.clear();
            head = 0;
        } else if (head > 65536 && head > b.size() / 2) {
            b.erase(b.begin(), b.begin() + long(head));
            head = 0;
        }
    }
    std::uint8_t* grow(std::size_t n)
    {
        std::size_t old = b.size();
        b.resize(old + n);
        return b.data() + old;
    }
    // Appends a frame header (b0: FIN and opcode; mask: the masking key,
    // or none) and room for `room` bytes of its payload; returns where the
    // payload goes.
    std::uint8_t* frame(std::uint8_t b0, std::uint64_t len, const std::uint8_t* mask,
                        std::size_t room)
    {
        std::uint8_t* h = grow(14 + room);
        std::size_t hl = frame_header(h, b0, len, mask);
        b.resize(b.size() - (14 - hl));
        return h + hl;
    }
    void release()
    {
        std::vector<std::uint8_t>().swap(b);
        head = 0;
    }
};

// Incremental frame parser: header bytes, then the payload in pieces.
struct FrameIn {
    std::uint8_t hdr[14];
    std::uint8_t hlen = 0;
    std::uint8_t need = 2;
    bool in_payload = false;
    std::uint8_t b0 = 0;
    bool masked = false;
    std::uint8_t key[4] = {0, 0, 0, 0};
    std::uint64_t len = 0;
    std::uint64_t off = 0;  // payload bytes consumed of this frame

    std::uint8_t op() const { return b0 & 0x0f; }
    bool fin() const { return (b0 & 0x80) != 0; }

    // Feeds header bytes; returns bytes consumed. in_payload set when the
    // header is complete.
    std::size_t header(const std::uint8_t* p, std::size_t n)
    {
        std::size_t used = 0;
        while (!in_payload && used < n) {
            hdr[hlen++] = p[used++];
            if (hlen == 2) {
                std::uint8_t l7 = hdr[1] & 0x7f;
                need = std::uint8_t(2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0)
                                    + ((hdr[1] & 0x80) ? 4 : 0));
            }
            if (hlen >= 2 && hlen == need) {
                b0 = hdr[0];
                masked = (hdr[1] & 0x80) != 0;
                std::uint8_t l7 = hdr[1] & 0x7f;
                std::size_t k = 2;
                if (l7 < 126) {
                    len = l7;
                } else if (l7 == 126) {
                    len = (std::uint64_t(hdr[2]) << 8) | hdr[3];
                    k = 4;
                } else {
                    len = 0;
                    for (int i = 0; i < 8; i++) {
                        len = (len << 8) | hdr[2 + i];
                    }
                    k = 10;
                }
                if (masked) {
                    std::memcpy(key, hdr + k, 4);
                }
                off = 0;
                in_payload = true;
            }
        }
        return used;
    }

    void next()
    {
        hlen = 0;
        need = 2;
        in_payload = false;
    }
};

// Latency histogram: log-linear, ~3% buckets, values in ns.
struct Histogram {
    static constexpr int kSub = 32;
    std::vector<std::uint64_t> c = std::vector<std::uint64_t>(64 + 64 * kSub);
    std::uint64_t n = 0, max = 0;
    double sum = 0;

    static int index(std::uint64_t v)
    {
        if (v < 64) {
            return int(v);
        }
        int e = 63 - __builtin_clzll(v);  // >= 6
        int sub = int((v >> (e - 5)) & (kSub - 1));
        return 64 + (e - 6) * kSub + sub;
    }
    static double value(int i)
    {
        if (i < 64) {
            return i;
        }
        int e = (i - 64) / kSub + 6;
        int sub = (i - 64) % kSub;
        double lo = std::ldexp(double(kSub + sub), e - 5);
        double w = std::ldexp(1.0, e - 5);
        return lo + w / 2;
    }
    void add(std::uint64_t v)
    {
        c[std::size_t(index(v))]++;
        n++;
        sum += double(v);
        if (v > max) {
            max = v;
        }
    }
    void merge(const Histogram& o)
    {
        for (std::size_t i = 0; i < c.size(); i++) {
            c[i] += o.c[i];
        }
        n += o.n;
        sum += o.sum;
        max = std::max(max, o.max);
    }
    double pct(double q) const
    {
        if (n == 0) {
            return 0;
        }
        std::uint64_t want = std::uint64_t(std::ceil(q * double(n)));
        if (want == 0) {
            want = 1;
        }
        std::uint64_t acc = 0;
        for (std::size_t i = 0; i < c.size(); i++) {
            acc += c[i];
            if (acc >= want) {
                return std::min(value(int(i)), double(max));
            }
        }
        return double(max);
    }
};

struct Addr {
    sockaddr_in sa{};
};

Addr parse_addr(const std::string& hp)
{
    Addr a;
    auto colon = hp.rfind(':');
    std::string host = colon == std::string::npos ? hp : hp.substr(0, colon);
    int port = colon == std::string::npos ? 0 : std::atoi(hp.c_str() + colon + 1);
    a.sa.sin_family = AF_INET;
    a.sa.sin_port = htons(std::uint16_t(port));
    if (inet_pton(AF_INET, host.c_str(), &a.sa.sin_addr) != 1) {
        die("bad IPv4 address \"%s\"", host.c_str());
    }
    return a;
}

std::vector<std::string> split(const std::string& s, char sep)
{
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= s.size()) {
        std::size_t e = s.find(sep, start);
        if (e == std::string::npos) {
            e = s.size();
        }
        if (e > start) {
            out.push_back(s.substr(start, e - start));
        }
        start = e + 1;
    }
    return out;
}

void write_file(const std::string& path, const std::string& text)
{
    if (path.empty()) {
        return;
    }
    std::string tmp = path + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) {
        die("cannot write %s", tmp.c_str());
    }
    std::fputs(text.c_str(), f);
    std::fclose(f);
    std::rename(tmp.c_str(), path.c_str());
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, f);
    std::vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
    return buf;
}

std::string json_escape(const std::string& s)
{
    std::string o;
    for (char ch : s) {
        if (ch == '"' || ch == '\\') {
            o += '\\';
        }
        o += ch;
    }
    return o;
}

// ----------------------------------------------------------- connections

// What a client and a server connection have in common.
struct Conn {
    int fd = -1;
    bool closing = false;         // a Close is queued: shut down after it
    bool reading_paused = false;  // output over the limit: resume on EPOLLOUT
    std::string hs;               // the handshake's HTTP head so far
    OutBuf out;
    FrameIn in;
    std::uint8_t ctl[125];        // the payload of the control frame in
};

// One thread's connections on an edge-triggered epoll, either side: the
// socket's registration, the handshake's HTTP head, reading, writing and
// the frame loop. Side (CRTP) supplies consume(c, p, n) (the bytes read),
// lost(c, peer_close), on_header(c), data(c, p, k) (data payload, as it
// arrives) and frame_done(c).
template <class Side, class C>
class Peer {
protected:
    // pause_at: stop reading while this much output is queued
    explicit Peer(std::size_t pause_at)
        : ep_(epoll_create1(EPOLL_CLOEXEC)), rbuf_(256 * 1024), pause_at_(pause_at)
    {
    }
    ~Peer() { close(ep_); }

    Side& side() { return static_cast<Side&>(*this); }

    // a connected (or connecting) socket
    void watch(int fd, C* c)
    {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;
        ev.data.ptr = c;
        epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
    }

    // epoll events of a connection
    void ready(C& c, std::uint32_t events)
    {
        if (events & EPOLLOUT) {
            flush(c);
            if (c.reading_paused && c.fd >= 0 && c.out.size() < pause_at_) {
                c.reading_paused = false;
                do_read(c);
            }
        }
        if (c.fd >= 0 && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
            do_read(c);
        }
    }

    void flush(C& c)
    {
        while (c.out.size() > 0 && c.fd >= 0) {
            ssize_t w = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
            if (w > 0) {
                c.out.consume(std::size_t(w));
                continue;
            }
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
                return;
            }
            side().lost(c, false);
            return;
        }
        if (c.closing && c.fd >= 0) {
            shutdown(c.fd, SHUT_WR);
        }
    }

    void do_read(C& c)
    {
        for (;;) {
            if (c.out.size() >= pause_at_) {
                c.reading_paused = true;
                return;
            }
            ssize_t r = ::recv(c.fd, rbuf_.data(), rbuf_.size(), 0);
            if (r > 0) {
                side().consume(c, rbuf_.data(), std::size_t(r));
                flush(c);
                if (c.fd < 0) {
                    return;
                }
                continue;
            }
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r < 0 && errno == EAGAIN) {
                return;
            }
            side().lost(c, false);
            return;
        }
    }

    // The handshake's HTTP head (request or response) from bytes as they
    // arrive: true once it is complete, with the head in `head` (without
    // the blank line) and p, n past it; a head over `limit` loses c.
    bool http_head(C& c, const std::uint8_t*& p, std::size_t& n, std::size_t limit,
                   std::string& head)
    {
        std::size_t before = c.hs.size();
        c.hs.append(reinterpret_cast<const char*>(p), n);
        std::size_t e = c.hs.find("\r\n\r\n");
        if (e == std::string::npos) {
            if (c.hs.size() > limit) {
                side().lost(c, false);
            }
            return false;
        }
        head = c.hs.substr(0, e);
        std::size_t used = e + 4 - before;
        p += used;
        n -= used;
        std::string().swap(c.hs);
        return true;
    }

    // WebSocket frames, in pieces as they arrive; control frame payloads
    // (unmasked) into c.ctl, data payloads to data()
    void frames(C& c, const std::uint8_t* p, std::size_t n)
    {
        while (n > 0 && c.fd >= 0) {
            if (!c.in.in_payload) {
                std::size_t k = c.in.header(p, n);
                p += k;
                n -= k;
                if (!c.in.in_payload) {
                    break;
                }
                side().on_header(c);
                if (c.in.len == 0) {
                    side().frame_done(c);
                    continue;
                }
                if (n == 0) {
                    break;
                }
            }
            std::size_t k = std::size_t(std::min<std::uint64_t>(n, c.in.len - c.in.off));
            if (c.in.op() & 0x8) {
                std::size_t at = std::size_t(std::min<std::uint64_t>(c.in.off, 125));
                std::size_t m = std::min(125 - at, k);
                std::memcpy(c.ctl + at, p, m);
                if (c.in.masked) {
                    xor_mask(c.ctl + at, m, c.in.key, c.in.off);
                }
            } else {
                side().data(c, p, k);
            }
            c.in.off += k;
            p += k;
            n -= k;
            if (c.in.off == c.in.len) {
                side().frame_done(c);
            }
        }
    }

    int ep_;
    std::vector<std::uint8_t> rbuf_;
    std::size_t pause_at_;
};

// ---------------------------------------------------------------- client

struct ClientOpts {
    Addr dst;
    std::string host_header, path = "/";
    int conns = 1, threads = 1;
    std::size_t size = 64;
    double rate = 0;  // total msgs/s; 0 = flat out
    int inflight = 1;
    double warmup = 1, duration = 5;
    bool idle = false;
    bool reconnect = false;   // a connection that ends is opened again
    std::vector<Addr> srcs;
    std::string json, ready_file, label, snapshot, events;
    int burst = 256;          // handshakes in progress per thread
    double connect_timeout = 120;
};

enum ConnState : std::uint8_t { c_new, c_connecting, c_handshake, c_open, c_closed };

struct ClientConn : Conn {
    ConnState st = c_new;
    std::uint8_t tries = 0;
    bool counted_open = false;
    std::uint32_t idx = 0;
    std::uint8_t key[4];
    std::string ws_key;
    std::uint8_t head[16];
    std::uint64_t tx_seq = 0, rx_seq = 0;
    int outstanding = 0;
    bool bad = false;          // verification failed: stop checking
    int close_code = 0;        // of the Close frame received, 1005: none
    std::int64_t event = -1;   // its reconnect in the events, until open

    // the state of one WebSocket connection, for a new one in this slot
    void reset()
    {
        closing = reading_paused = bad = false;
        std::string().swap(hs);
        out.release();
        in = FrameIn{};
        tx_seq = rx_seq = 0;
        outstanding = 0;
        close_code = 0;
    }
};

// a connection that ended and was opened again (--reconnect): when its end
// was seen (Close frame or EOF), the Close code (0: EOF without one), and
// when the new connection's handshake completed (0: not yet)
struct Reconnect {
    std::uint64_t closed_ns, open_ns;
    int code;
};

struct ClientStats {
    Histogram lat;
    std::uint64_t msgs = 0, bytes = 0;             // in the window
    std::uint64_t msgs_total = 0, sent_total = 0;
    std::uint64_t connect_errors = 0, handshake_errors = 0, verify_errors = 0;
    std::uint64_t peer_closes = 0, disconnects = 0;
    std::uint64_t pings = 0, pongs_sent = 0, pongs_in = 0;
    std::uint64_t opened = 0, late_sends = 0, reconnects = 0;
    // Close frames whose reason is the number of messages the backend
    // sent (wsbench server); those that found fewer (or more) received,
    // and the messages missing
    std::uint64_t closes_counted = 0, closes_short = 0, msgs_missing = 0;
    std::map<int, std::uint64_t> close_codes;

    using S = ClientStats;
    static constexpr std::uint64_t S::*counters[] = {
        &S::msgs, &S::bytes, &S::msgs_total, &S::sent_total, &S::connect_errors,
        &S::handshake_errors, &S::verify_errors, &S::peer_closes, &S::disconnects,
        &S::pings, &S::pongs_sent, &S::pongs_in, &S::opened, &S::late_sends,
        &S::reconnects, &S::closes_counted, &S::closes_short, &S::msgs_missing};

    void merge(const ClientStats& s)
    {
        add_counters(*this, s);
        lat.merge(s.lat);
        for (auto& kv : s.close_codes) {
            close_codes[kv.first] += kv.second;
        }
    }
};

// deterministic payload bytes after the 16-byte head
const std::vector<std::uint8_t>& pattern()
{
    static std::vector<std::uint8_t> p = [] {
        std::vector<std::uint8_t> v((1 << 20) + 512);
        for (std::size_t i = 0; i < v.size(); i++) {
            v[i] = std::uint8_t(i * 7 + 3 + (i >> 8));
        }
        return v;
    }();
    return p;
}

// A binary message of n >= 16 bytes: its sequence number and a timestamp
// (ns, CLOCK_MONOTONIC), then the pattern from seq % 251; masked when a
// key is given (client to server).
void put_message(OutBuf& out, std::uint64_t seq, std::uint64_t ts, std::size_t n,
                 const std::uint8_t* mask)
{
    std::uint8_t* p = out.frame(0x82, n, mask, n);
    std::memcpy(p, &seq, 8);
    std::memcpy(p + 8, &ts, 8);
    std::memcpy(p + 16, pattern().data() + seq % 251, n - 16);
    if (mask) {
        xor_mask(p, n, mask, 0);
    }
}

class ClientThread : Peer<ClientThread, ClientConn> {
public:
    ClientThread(const ClientOpts& o, int tid, std::vector<std::uint32_t> ids)
        : Peer(SIZE_MAX), o_(o), tid_(tid),
          rng_(std::random_device{}() ^ (unsigned(tid) << 16))
    {
        conns_.resize(ids.size());
        for (std::size_t i = 0; i < ids.size(); i++) {
            conns_[i].idx = ids[i];
        }
    }

    ~ClientThread()
    {
        for (auto& c : conns_) {
            if (c.fd >= 0) {
                close(c.fd);
            }
        }
    }

    // phase 1: open every connection; returns when all are open or failed
    void connect_all(std::uint64_t deadline)
    {
        std::size_t next = 0;
        while (!g_stop.load()) {
            while (pending_ < o_.burst && next < conns_.size()) {
                start_connect(conns_[next++]);
            }
            retry(o_.burst);
            if (next >= conns_.size() && pending_ == 0 && retry_.empty()) {
                break;
            }
            if (now_ns() > deadline) {
                break;
            }
            poll(10);
        }
    }

    // the traffic phases (or holding when idle)
    void run(std::uint64_t t_start, std::uint64_t t_measure, std::uint64_t t_end)
    {
        t_measure_ = t_measure;
        t_end_ = t_end;
        std::size_t open = open_count();
        sending_ = !o_.idle && open > 0;
        if (!o_.idle && o_.rate > 0 && open > 0) {
            period_ns_ = 1e9 * double(threads_share_open_) / o_.rate;
            period_ns_ /= double(open);
            next_send_ = double(t_start);
        }
        // flat out: fill the window
        if (sending_ && o_.rate <= 0) {
            for (auto& c : conns_) {
                if (c.st == c_open) {
                    fill(c);
                    flush(c);
                }
            }
        }
        std::size_t rr = 0;
        while (!g_stop.load()) {
            std::uint64_t now = now_ns();
            if (t_end != 0 && now >= t_end) {
                break;
            }
            retry(INT_MAX);
            std::int64_t timeout = 50000000;
            if (sending_ && period_ns_ > 0) {
                // open loop: every message whose time has come
                int guard = 0;
                while (double(now) >= next_send_ && guard++ < 4096) {
                    ClientConn* c = nullptr;
                    for (std::size_t k = 0; k < conns_.size(); k++) {
                        ClientConn& cand = conns_[rr++ % conns_.size()];
                        if (cand.st == c_open) {
                            c = &cand;
                            break;
                        }
                    }
                    if (!c) {
                        sending_ = false;
                        break;
                    }
                    if (now - std::uint64_t(next_send_) > 1000000) {
                        st_.late_sends++;
                    }
                    send_msg(*c, std::uint64_t(next_send_));
                    flush(*c);
                    next_send_ += period_ns_;
                }
                double wait = next_send_ - double(now_ns());
                timeout = wait <= 0 ? 0 : std::int64_t(wait);
            }
            if (t_end != 0) {
                std::uint64_t left = t_end - std::min(t_end, now_ns());
                timeout = std::min<std::int64_t>(timeout, std::int64_t(left));
            }
            poll_ns(timeout);
        }
        sending_ = false;
        // drain: wait for outstanding echoes a little (not counted)
        std::uint64_t drain_end = now_ns() + 1000000000ull;
        while (!o_.idle && !g_stop.load() && now_ns() < drain_end) {
            bool any = false;
            for (auto& c : conns_) {
                if (c.st == c_open && c.outstanding > 0) {
                    any = true;
                    break;
                }
            }
            if (!any) {
                break;
            }
            poll(10);
        }
    }

    std::size_t open_count() const
    {
        std::size_t n = 0;
        for (auto& c : conns_) {
            n += c.st == c_open;
        }
        return n;
    }

    void set_share(std::size_t total_open) { threads_share_open_ = total_open; }

    ClientStats& stats() { return st_; }
    Live& live() { return live_; }
    const std::vector<Reconnect>& reconnects() const { return reconnects_; }

private:
    friend Peer;

    // the connections whose (re)connect is due, while fewer than `limit`
    // handshakes are in progress
    void retry(int limit)
    {
        std::uint64_t now = now_ns();
        auto due = std::move(retry_);
        retry_.clear();
        for (auto& r : due) {
            if (now >= r.first && pending_ < limit) {
                start_connect(conns_[r.second]);  // may queue a retry
            } else {
                retry_.push_back(r);
            }
        }
    }

    void start_connect(ClientConn& c)
    {
        c.reset();
        c.tries++;
        c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c.fd < 0) {
            st_.connect_errors++;
            c.st = c_closed;
            return;
        }
        if (!o_.srcs.empty()) {
            int one = 1;
            setsockopt(c.fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
            const Addr& s = o_.srcs[c.idx % o_.srcs.size()];
            if (bind(c.fd, reinterpret_cast<const sockaddr*>(&s.sa), sizeof(s.sa)) != 0) {
                fail_connect(c);
                return;
            }
        }
        int rc = connect(c.fd, reinterpret_cast<const sockaddr*>(&o_.dst.sa),
                         sizeof(o_.dst.sa));
        if (rc != 0 && errno != EINPROGRESS) {
            fail_connect(c);
            return;
        }
        watch(c.fd, &c);
        c.st = c_connecting;
        pending_++;
    }

    void fail_connect(ClientConn& c)
    {
        if (c.fd >= 0) {
            close(c.fd);
            c.fd = -1;
        }
        if (c.st == c_connecting || c.st == c_handshake) {
            pending_--;
        }
        if (c.tries < 5) {
            c.st = c_new;
            retry_.emplace_back(now_ns() + 200000000ull * c.tries,
                                std::size_t(&c - conns_.data()));
        } else {
            c.st = c_closed;
            st_.connect_errors++;
        }
    }

    void send_handshake(ClientConn& c)
    {
        unsigned char raw[16];
        for (auto& b : raw) {
            b = std::uint8_t(rng_());
        }
        for (auto& b : c.key) {
            b = std::uint8_t(rng_() | 1);
        }
        c.ws_key = b64(raw, 16);
        std::string req = "GET " + o_.path + " HTTP/1.1\r\nHost: " + o_.host_header
                          + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Key: " + c.ws_key
                          + "\r\nSec-WebSocket-Version: 13\r\n\r\n";
        std::memcpy(c.out.grow(req.size()), req.data(), req.size());
        c.st = c_handshake;
        flush(c);
    }

    void poll(int timeout_ms) { poll_ns(std::int64_t(timeout_ms) * 1000000); }

    // epoll_pwait2: sub-millisecond sleeps for the open-loop schedule
    void poll_ns(std::int64_t ns)
    {
        epoll_event evs[256];
        timespec ts;
        ts.tv_sec = ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        int n = epoll_pwait2(ep_, evs, 256, &ts, nullptr);
        for (int i = 0; i < n; i++) {
            ClientConn& c = *static_cast<ClientConn*>(evs[i].data.ptr);
            if (c.st == c_closed || c.fd < 0) {
                continue;
            }
            if (c.st == c_connecting) {
                int err = 0;
                socklen_t l = sizeof(err);
                getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err != 0 || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
                    fail_connect(c);
                    continue;
                }
                if (evs[i].events & EPOLLOUT) {
                    send_handshake(c);
                }
            }
            ready(c, evs[i].events);
        }
    }

    void lost(ClientConn& c, bool peer_close)
    {
        bool was_open = c.st == c_open;
        if (c.st == c_handshake || c.st == c_connecting) {
            st_.handshake_errors++;
            if (c.event >= 0) {
                fail_connect(c);  // a reconnect: tried again
                return;
            }
            pending_--;
        } else if (c.st == c_open) {
            live_.drop(live_.open);
            live_.bump(live_.lost);
            if (peer_close) {
                st_.peer_closes++;
            } else {
                st_.disconnects++;
            }
        }
        if (c.fd >= 0) {
            close(c.fd);
            c.fd = -1;
        }
        c.st = c_closed;
        c.out.release();
        // reconnect at once, once this batch of events is done (the
        // events may still hold the old socket's)
        if (was_open && o_.reconnect && !g_stop.load()) {
            std::uint64_t now = now_ns();
            c.event = std::int64_t(reconnects_.size());
            reconnects_.push_back({now, 0, peer_close ? c.close_code : 0});
            st_.reconnects++;
            c.tries = 0;
            retry_.emplace_back(now, std::size_t(&c - conns_.data()));
        }
    }

    // the bytes read: the handshake's response, then frames
    void consume(ClientConn& c, const std::uint8_t* p, std::size_t n)
    {
        if (c.st == c_handshake) {
            std::string head;
            if (!http_head(c, p, n, 8192, head)) {
                return;
            }
            // header names are case-insensitive: compare the value
            if (head.compare(0, 12, "HTTP/1.1 101") != 0
                || head.find(accept_key(c.ws_key)) == std::string::npos) {
                lost(c, false);
                return;
            }
            c.st = c_open;
            pending_--;
            st_.opened++;
            live_.bump(live_.open);
            if (c.event >= 0) {
                reconnects_[std::size_t(c.event)].open_ns = now_ns();
                c.event = -1;
            }
            if (sending_ && o_.rate <= 0) {
                fill(c);
            }
        }
        if (c.st == c_open) {
            frames(c, p, n);
        }
    }

    void on_header(ClientConn&) {}

    // an echoed message: head bytes, then the pattern
    void data(ClientConn& c, const std::uint8_t* p, std::size_t k)
    {
        std::uint64_t off = c.in.off;
        std::size_t i = 0;
        while (i < k && off + i < 16) {
            c.head[off + i] = p[i];
            i++;
        }
        if (i < k && !c.bad) {
            const auto& pat = pattern();
            std::uint64_t seq = c.rx_seq;
            std::size_t start = std::size_t(seq % 251) + std::size_t(off + i - 16);
            if (start + (k - i) > pat.size()
                || std::memcmp(p + i, pat.data() + start, k - i) != 0) {
                c.bad = true;
                st_.verify_errors++;
            }
        }
    }

    void frame_done(ClientConn& c)
    {
        std::uint8_t op = c.in.op();
        std::uint64_t len = c.in.len;
        c.in.next();
        if (op == 0x9) {  // Ping: answer
            st_.pings++;
            live_.bump(live_.pings);
            std::uint8_t* d = c.out.frame(0x8a, len, c.key, len);
            std::memcpy(d, c.ctl, len);
            xor_mask(d, len, c.key, 0);
            st_.pongs_sent++;
            return;
        }
        if (op == 0xa) {
            st_.pongs_in++;
            return;
        }
        if (op == 0x8) {
            int code = len >= 2 ? (c.ctl[0] << 8) | c.ctl[1] : 1005;
            st_.close_codes[code]++;
            c.close_code = code;
            count_check(c, len);
            // the answer (best effort), then the socket closed
            std::uint8_t* d = c.out.frame(0x88, 2, c.key, 2);
            d[0] = std::uint8_t(code >> 8);
            d[1] = std::uint8_t(code);
            xor_mask(d, 2, c.key, 0);
            (void) ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
            lost(c, true);
            return;
        }
        // data frame: one whole message
        std::uint64_t seq, ts;
        std::memcpy(&seq, c.head, 8);
        std::memcpy(&ts, c.head + 8, 8);
        if (len != o_.size || seq != c.rx_seq || op != 0x2) {
            if (!c.bad) {
                st_.verify_errors++;
            }
            c.bad = true;
        }
        c.rx_seq++;
        c.outstanding--;
        st_.msgs_total++;
        std::uint64_t now = now_ns();
        if (ts >= t_measure_ && (t_end_ == 0 || ts < t_end_)) {
            st_.msgs++;
            st_.bytes += len;
            st_.lat.add(now - ts);
        }
        if (sending_ && o_.rate <= 0 && now < t_end_) {
            send_msg(c, now);
        }
    }

    // a Close whose reason is a number (the messages the wsbench server
    // sent on this connection) against the messages received
    void count_check(ClientConn& c, std::uint64_t len)
    {
        if (len <= 2 || len > 22) {
            return;
        }
        std::uint64_t sent = 0;
        for (std::uint64_t i = 2; i < len; i++) {
            if (c.ctl[i] < '0' || c.ctl[i] > '9') {
                return;
            }
            sent = sent * 10 + (c.ctl[i] - '0');
        }
        st_.closes_counted++;
        if (sent != c.rx_seq) {
            st_.closes_short++;
            st_.msgs_missing += sent > c.rx_seq ? sent - c.rx_seq : 0;
        }
    }

    void send_msg(ClientConn& c, std::uint64_t ts)
    {
        put_message(c.out, c.tx_seq++, ts, o_.size, c.key);
        c.outstanding++;
        st_.sent_total++;
    }

    // flat out: --inflight messages outstanding
    void fill(ClientConn& c)
    {
        while (c.outstanding < o_.inflight) {
            send_msg(c, now_ns());
        }
    }

    const ClientOpts& o_;
    int tid_;
    std::mt19937 rng_;
    std::vector<ClientConn> conns_;
    std::vector<std::pair<std::uint64_t, std::size_t>> retry_;
    std::vector<Reconnect> reconnects_;
    int pending_ = 0;
    ClientStats st_;
    Live live_;
    bool sending_ = false;
    std::uint64_t t_measure_ = 0, t_end_ = 0;
    double period_ns_ = 0, next_send_ = 0;
    std::size_t threads_share_open_ = 0;
};

int client_main(ClientOpts& o)
{
    if (o.size < 16) {
        o.size = 16;
    }
    if (o.size > (1 << 20)) {
        die("--size at most 1 MiB");
    }
    pattern();
    std::vector<std::unique_ptr<ClientThread>> th;
    for (int t = 0; t < o.threads; t++) {
        std::vector<std::uint32_t> ids;
        for (int i = t; i < o.conns; i += o.threads) {
            ids.push_back(std::uint32_t(i));
        }
        th.emplace_back(new ClientThread(o, t, ids));
    }
    std::uint64_t t0 = now_ns();
    std::uint64_t cdl = t0 + std::uint64_t(o.connect_timeout * 1e9);
    {
        std::vector<std::thread> ts;
        for (auto& t : th) {
            ts.emplace_back([&t, cdl] { t->connect_all(cdl); });
        }
        for (auto& t : ts) {
            t.join();
        }
    }
    double connect_s = double(now_ns() - t0) / 1e9;
    std::size_t open = 0;
    for (auto& t : th) {
        open += t->open_count();
    }
    std::fprintf(stderr, "READY %zu of %d in %.2fs\n", open, o.conns, connect_s);
    write_file(o.ready_file, fmt("%zu %d %.3f\n", open, o.conns, connect_s));

    std::uint64_t start = now_ns();
    std::uint64_t measure = start + std::uint64_t((o.idle ? 0 : o.warmup) * 1e9);
    std::uint64_t end = o.duration > 0
        ? measure + std::uint64_t(o.duration * 1e9) : 0;
    {
        std::vector<std::thread> ts;
        std::atomic<int> running{int(th.size())};
        for (auto& t : th) {
            // open-loop rate: each thread sends its share of the total
            t->set_share(open);
            ts.emplace_back([&t, &running, start, measure, end] {
                t->run(start, measure, end);
                running--;
            });
        }
        // SIGUSR1: a snapshot of the live counters into --snapshot
        while (running.load() > 0) {
            usleep(20000);
            if (g_snap.exchange(false) && !o.snapshot.empty()) {
                std::uint64_t pings = 0, openn = 0, lost = 0;
                for (auto& t : th) {
                    pings += t->live().pings.load(std::memory_order_relaxed);
                    openn += t->live().open.load(std::memory_order_relaxed);
                    lost += t->live().lost.load(std::memory_order_relaxed);
                }
                write_file(o.snapshot,
                           fmt("{\"t\":%.6f,\"pings\":%" PRIu64 ",\"open\":%" PRIu64
                               ",\"lost\":%" PRIu64 "}\n",
                               double(now_ns()) / 1e9, pings, openn, lost));
            }
        }
        for (auto& t : ts) {
            t.join();
        }
    }
    double window = o.idle
        ? double(now_ns() - measure) / 1e9
        : (end ? double(end - measure) / 1e9 : double(now_ns() - measure) / 1e9);

    ClientStats tot;
    std::size_t alive = 0;
    for (auto& t : th) {
        tot.merge(t->stats());
        alive += t->open_count();
    }
    double mps = window > 0 ? double(tot.msgs) / window : 0;
    double mbs = window > 0 ? double(tot.bytes) / window / 1e6 : 0;
    auto us = [&](double q) { return tot.lat.pct(q) / 1000.0; };
    std::uint64_t errors = tot.connect_errors + tot.handshake_errors
                           + tot.verify_errors + tot.peer_closes + tot.disconnects;
    std::string codes;
    for (auto& kv : tot.close_codes) {
        codes += fmt("%s\"%d\":%" PRIu64, codes.empty() ? "" : ",", kv.first, kv.second);
    }
    // the latency histogram itself, sparse ([bucket, count] pairs; values
    // as Histogram::value()): bench/run.py pools the windows of a paired
    // run into one p99 per arm
    std::string hist;
    for (std::size_t i = 0; i < tot.lat.c.size(); i++) {
        if (tot.lat.c[i] != 0) {
            hist += fmt("%s[%zu,%" PRIu64 "]", hist.empty() ? "" : ",", i,
                        tot.lat.c[i]);
        }
    }
    std::string j = fmt(
        "{\"label\":\"%s\",\"mode\":\"%s\",\"conns\":%d,\"opened\":%" PRIu64
        ",\"alive_at_end\":%zu,\"connect_s\":%.3f,\"size\":%zu,\"rate\":%.1f,"
        "\"inflight\":%d,\"window_s\":%.3f,",
        json_escape(o.label).c_str(), o.idle ? "idle" : (o.rate > 0 ? "rate" : "flat"),
        o.conns, tot.opened, alive, connect_s, o.size, o.rate, o.inflight, window);
    j += fmt("\"messages\":%" PRIu64 ",\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,"
             "\"latency_us\":{\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"p999\":%.2f,"
             "\"max\":%.2f,\"mean\":%.2f},",
             tot.msgs, mps, mbs, us(0.5), us(0.9), us(0.99), us(0.999),
             double(tot.lat.max) / 1000.0,
             tot.lat.n ? tot.lat.sum / double(tot.lat.n) / 1000.0 : 0.0);
    // (appended as it is: fmt() has 4 KiB of room)
    j += fmt("\"latency_hist\":{\"sub\":%d,\"max_ns\":%" PRIu64
             ",\"buckets\":[", Histogram::kSub, tot.lat.max);
    j += hist + "]},";
    j += fmt("\"errors\":%" PRIu64 ",\"connect_errors\":%" PRIu64
             ",\"handshake_errors\":%" PRIu64 ",\"verify_errors\":%" PRIu64
             ",\"peer_closes\":%" PRIu64 ",\"disconnects\":%" PRIu64
             ",\"close_codes\":{%s},\"pings\":%" PRIu64 ",\"pongs_sent\":%" PRIu64
             ",\"late_sends\":%" PRIu64 ",\"sent_total\":%" PRIu64
             ",\"echoed_total\":%" PRIu64 ",\"reconnects\":%" PRIu64
             ",\"closes_counted\":%" PRIu64 ",\"closes_short\":%" PRIu64
             ",\"msgs_missing\":%" PRIu64 "}\n",
             errors, tot.connect_errors, tot.handshake_errors, tot.verify_errors,
             tot.peer_closes, tot.disconnects, codes.c_str(), tot.pings,
             tot.pongs_sent, tot.late_sends, tot.sent_total, tot.msgs_total,
             tot.reconnects, tot.closes_counted, tot.closes_short, tot.msgs_missing);
    std::printf("%s%s%s conns=%d open=%" PRIu64 " alive=%zu size=%zu window=%.2fs\n"
                "  %.0f msg/s  %.2f MB/s  latency us p50=%.1f p99=%.1f p999=%.1f max=%.1f\n"
                "  errors=%" PRIu64 " (connect %" PRIu64 ", handshake %" PRIu64
                ", verify %" PRIu64 ", peer close %" PRIu64 ", disconnect %" PRIu64
                ")  pings answered=%" PRIu64 "\n",
                o.label.c_str(), o.label.empty() ? "" : ": ",
                o.idle ? "idle" : (o.rate > 0 ? "rate" : "flat"), o.conns,
                tot.opened, alive, o.size, window, mps, mbs, us(0.5), us(0.99),
                us(0.999), double(tot.lat.max) / 1000.0, errors,
                tot.connect_errors, tot.handshake_errors, tot.verify_errors,
                tot.peer_closes, tot.disconnects, tot.pings);
    std::fflush(stdout);
    write_file(o.json, j);
    if (!o.events.empty()) {
        // one line a reconnect: "closed_s open_s code" (CLOCK_MONOTONIC
        // seconds; open_s 0: not open again; code 0: EOF without a Close)
        std::string ev;
        for (auto& t : th) {
            for (const Reconnect& r : t->reconnects()) {
                ev += fmt("%.6f %.6f %d\n", double(r.closed_ns) / 1e9,
                          double(r.open_ns) / 1e9, r.code);
            }
        }
        write_file(o.events, ev);
    }
    return 0;
}

// ---------------------------------------------------------------- server

struct ServerOpts {
    std::vector<Addr> listen;
    int threads = 1;
    int ping_interval_ms = 0;
    int push_interval_ms = 0;  // a numbered message to each connection
    std::size_t size = 64;     // of those messages
    std::string json, ready_file;
};

struct SrvConn : Conn {
    bool open = false;      // handshake done
    bool dead = false;
    std::uint32_t slot = 0;
    std::uint64_t ping_seq = 0;
    std::uint64_t push_seq = 0;  // messages pushed
};

struct ServerStats {
    std::uint64_t accepted = 0, frames = 0, bytes = 0, pings_in = 0;
    std::uint64_t pings_sent = 0, pongs_in = 0, closes = 0, pushed = 0;
    std::uint64_t active = 0;

    // summed over the threads (active is not reported)
    using S = ServerStats;
    static constexpr std::uint64_t S::*counters[] = {
        &S::accepted, &S::frames, &S::bytes, &S::pings_in, &S::pings_sent,
        &S::pongs_in, &S::closes, &S::pushed};
};

class ServerThread : Peer<ServerThread, SrvConn> {
public:
    // reading pauses while 1 MiB of output is queued (backpressure)
    ServerThread(const ServerOpts& o) : Peer(1u << 20), o_(o)
    {
        for (const Addr& a : o.listen) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
            if (bind(fd, reinterpret_cast<const sockaddr*>(&a.sa), sizeof(a.sa)) != 0
                || listen(fd, 4096) != 0) {
                die("cannot listen: %s", std::strerror(errno));
            }
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = nullptr;
            ev.data.u64 = std::uint64_t(lfds_.size()) + 1;  // 1..n: listeners
            epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
            lfds_.push_back(fd);
        }
        // one wheel of 10 ms slots turns once per interval
        int every = std::max(o.ping_interval_ms, o.push_interval_ms);
        if (every > 0) {
            slots_.resize(std::size_t(std::max(1, every / 10)));
        }
    }

    void run()
    {
        std::uint64_t next_tick = now_ns() + 10000000ull;
        while (!g_stop.load()) {
            epoll_event evs[256];
            int n = epoll_wait(ep_, evs, 256, 10);
            for (int i = 0; i < n; i++) {
                if (evs[i].data.u64 <= lfds_.size()) {
                    do_accept(lfds_[evs[i].data.u64 - 1]);
                    continue;
                }
                SrvConn& c = *static_cast<SrvConn*>(evs[i].data.ptr);
                if (!c.dead) {
                    ready(c, evs[i].events);
                }
            }
            std::uint64_t now = now_ns();
            if (!slots_.empty() && now >= next_tick) {
                while (now >= next_tick) {
                    tick();
                    next_tick += 10000000ull;
                }
            }
            reap();
        }
    }

    ServerStats& stats() { return st_; }

private:
    friend Peer;

    void do_accept(int lfd)
    {
        for (;;) {
            int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                return;
            }
            SrvConn* c = new SrvConn;
            c->fd = fd;
            st_.accepted++;
            watch(fd, c);
            if (!slots_.empty()) {
                c->slot = std::uint32_t(cursor_++ % slots_.size());
                slots_[c->slot].push_back(c);
            }
        }
    }

    void tick()
    {
        auto& v = slots_[tick_++ % slots_.size()];
        std::size_t w = 0;
        for (std::size_t i = 0; i < v.size(); i++) {
            SrvConn* c = v[i];
            if (c->dead) {
                continue;
            }
            v[w++] = c;
            // not inside a frame being echoed
            if (!c->open || c->closing || c->in.hlen != 0 || c->in.in_payload) {
                continue;
            }
            if (o_.ping_interval_ms > 0) {
                std::memcpy(c->out.frame(0x89, 8, nullptr, 8), &c->ping_seq, 8);
                c->ping_seq++;
                st_.pings_sent++;
            }
            if (o_.push_interval_ms > 0) {
                put_message(c->out, c->push_seq++, now_ns(), o_.size, nullptr);
                st_.pushed++;
            }
            flush(*c);
        }
        v.resize(w);
    }

    void reap()
    {
        // wheel entries hold pointers: free a connection only after a
        // full turn of the wheel has dropped it
        std::size_t turn = slots_.size() + 1;
        std::size_t w = 0;
        for (std::size_t i = 0; i < graveyard_.size(); i++) {
            if (slots_.empty() || tick_ > graveyard_[i].second + turn) {
                delete graveyard_[i].first;
            } else {
                graveyard_[w++] = graveyard_[i];
            }
        }
        graveyard_.resize(w);
    }

    void lost(SrvConn& c, bool /* peer_close */)
    {
        if (c.dead) {
            return;
        }
        c.dead = true;
        if (c.open) {
            st_.active--;
        }
        close(c.fd);
        c.fd = -1;
        c.out.release();
        graveyard_.emplace_back(&c, tick_);
    }

    // the bytes read: the handshake's request, then frames (echoed)
    void consume(SrvConn& c, const std::uint8_t* p, std::size_t n)
    {
        if (!c.open) {
            std::string head;
            if (!http_head(c, p, n, 16384, head)) {
                return;
            }
            std::string key;
            for (std::size_t pos = 0; pos < head.size();) {
                std::size_t eol = std::min(head.find("\r\n", pos), head.size());
                std::string line = head.substr(pos, eol - pos);
                pos = eol + 2;
                if (line.size() > 18 && strncasecmp(line.c_str(), "sec-websocket-key:", 18) == 0) {
                    key = line.substr(18);
                    key.erase(0, key.find_first_not_of(" \t"));
                    key.erase(key.find_last_not_of(" \t") + 1);
                }
            }
            if (key.empty()) {
                lost(c, false);
                return;
            }
            std::string resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               "Connection: Upgrade\r\nSec-WebSocket-Accept: "
                               + accept_key(key) + "\r\n\r\n";
            std::memcpy(c.out.grow(resp.size()), resp.data(), resp.size());
            c.open = true;
            st_.active++;
        }
        frames(c, p, n);
    }

    // a data frame: its header echoed now, unmasked
    void on_header(SrvConn& c)
    {
        if (!(c.in.op() & 0x8)) {
            c.out.frame(c.in.b0, c.in.len, nullptr, 0);
            st_.frames++;
            st_.bytes += c.in.len;
        }
    }

    // and its payload as it arrives
    void data(SrvConn& c, const std::uint8_t* p, std::size_t k)
    {
        std::uint8_t* d = c.out.grow(k);
        std::memcpy(d, p, k);
        if (c.in.masked) {
            xor_mask(d, k, c.in.key, c.in.off);
        }
    }

    void frame_done(SrvConn& c)
    {
        std::uint8_t op = c.in.op();
        std::uint64_t len = std::min<std::uint64_t>(c.in.len, 125);
        c.in.next();
        if (op == 0x9) {
            st_.pings_in++;
            if (!c.closing) {
                std::memcpy(c.out.frame(0x8a, len, nullptr, len), c.ctl, len);
            }
        } else if (op == 0xa) {
            st_.pongs_in++;
        } else if (op == 0x8) {
            st_.closes++;
            if (!c.closing) {
                // the status code, and as the reason the number of
                // messages pushed, for the client to check
                std::string why = len >= 2 ? std::to_string(c.push_seq) : "";
                std::size_t code = len >= 2 ? 2 : 0;
                std::uint8_t* d = c.out.frame(0x88, code + why.size(), nullptr,
                                              code + why.size());
                std::memcpy(d, c.ctl, code);
                std::memcpy(d + code, why.data(), why.size());
                c.closing = true;
            }
        }
    }

    const ServerOpts& o_;
    std::vector<int> lfds_;
    std::vector<std::vector<SrvConn*>> slots_;
    std::vector<std::pair<SrvConn*, std::uint64_t>> graveyard_;
    std::uint64_t cursor_ = 0, tick_ = 0;
    ServerStats st_;
};

int server_main(ServerOpts& o)
{
    if (o.listen.empty()) {
        die("server: --listen ADDR:PORT");
    }
    std::vector<std::unique_ptr<ServerThread>> th;
    for (int t = 0; t < o.threads; t++) {
        th.emplace_back(new ServerThread(o));
    }
    write_file(o.ready_file, "ready\n");
    std::fprintf(stderr, "READY listening\n");
    std::vector<std::thread> ts;
    for (auto& t : th) {
        ts.emplace_back([&t] { t->run(); });
    }
    for (auto& t : ts) {
        t.join();
    }
    ServerStats s;
    for (auto& t : th) {
        add_counters(s, t->stats());
    }
    std::string j = fmt("{\"accepted\":%" PRIu64 ",\"frames\":%" PRIu64
                        ",\"bytes\":%" PRIu64 ",\"pings_in\":%" PRIu64
                        ",\"pings_sent\":%" PRIu64 ",\"pongs_in\":%" PRIu64
                        ",\"closes\":%" PRIu64 ",\"pushed\":%" PRIu64 "}\n",
                        s.accepted, s.frames, s.bytes, s.pings_in, s.pings_sent,
                        s.pongs_in, s.closes, s.pushed);
    std::printf("server: %s", j.c_str());
    std::fflush(stdout);
    write_file(o.json, j);
    return 0;
}

void usage()
{
    std::fputs(
        "usage: wsbench client --url ws://IP:PORT/PATH [-c N] [-t T] [--size B]\n"
        "           [--rate MSG_PER_S | --inflight K] [--warmup S] [--duration S]\n"
        "           [--idle] [--reconnect] [--events F] [--src IP,IP..] [--burst N]\n"
        "           [--json F] [--ready-file F] [--label TEXT]\n"
        "       wsbench server --listen IP:PORT [--listen ..] [-t T]\n"
        "           [--ping-interval MS] [--push-interval MS] [--size B]\n"
        "           [--json F] [--ready-file F]\n",
        stderr);
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc < 2) {
        usage();
    }
    ::signal(SIGPIPE, SIG_IGN);
    struct sigaction sa{};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    struct sigaction su{};
    su.sa_handler = on_usr1;
    sigaction(SIGUSR1, &su, nullptr);
    raise_nofile();
    std::string mode = argv[1];
    auto need = [&](int& i) -> std::string {
        if (i + 1 >= argc) {
            usage();
        }
        return argv[++i];
    };
    if (mode == "client") {
        ClientOpts o;
        std::string url;
        for (int i = 2; i < argc; i++) {
            std::string a = argv[i];
            if (a == "--url") url = need(i);
            else if (a == "-c") o.conns = std::atoi(need(i).c_str());
            else if (a == "-t") o.threads = std::atoi(need(i).c_str());
            else if (a == "--size") o.size = std::size_t(std::atoll(need(i).c_str()));
            else if (a == "--rate") o.rate = std::atof(need(i).c_str());
            else if (a == "--inflight") o.inflight = std::atoi(need(i).c_str());
            else if (a == "--warmup") o.warmup = std::atof(need(i).c_str());
            else if (a == "--duration") o.duration = std::atof(need(i).c_str());
            else if (a == "--idle") o.idle = true;
            else if (a == "--reconnect") o.reconnect = true;
            else if (a == "--events") o.events = need(i);
            else if (a == "--burst") o.burst = std::atoi(need(i).c_str());
            else if (a == "--json") o.json = need(i);
            else if (a == "--ready-file") o.ready_file = need(i);
            else if (a == "--label") o.label = need(i);
            else if (a == "--snapshot") o.snapshot = need(i);
            else if (a == "--connect-timeout") o.connect_timeout = std::atof(need(i).c_str());
            else if (a == "--src") {
                for (auto& s : split(need(i), ',')) {
                    o.srcs.push_back(parse_addr(s + ":0"));
                }
            } else usage();
        }
        if (url.compare(0, 5, "ws://") != 0) {
            die("--url ws://IP:PORT/PATH");
        }
        std::string rest = url.substr(5);
        std::size_t slash = rest.find('/');
        std::string hp = slash == std::string::npos ? rest : rest.substr(0, slash);
        o.path = slash == std::string::npos ? "/" : rest.substr(slash);
        if (hp.find(':') == std::string::npos) {
            hp += ":80";
        }
        o.host_header = hp;
        o.dst = parse_addr(hp);
        o.threads = std::max(1, std::min(o.threads, o.conns));
        o.inflight = std::max(1, o.inflight);
        return client_main(o);
    }
    if (mode == "server") {
        ServerOpts o;
        for (int i = 2; i < argc; i++) {
            std::string a = argv[i];
            if (a == "--listen") o.listen.push_back(parse_addr(need(i)));
            else if (a == "-t") o.threads = std::atoi(need(i).c_str());
            else if (a == "--ping-interval") o.ping_interval_ms = std::atoi(need(i).c_str());
            else if (a == "--push-interval") o.push_interval_ms = std::atoi(need(i).c_str());
            else if (a == "--size") o.size = std::size_t(std::atoll(need(i).c_str()));
            else if (a == "--json") o.json = need(i);
            else if (a == "--ready-file") o.ready_file = need(i);
            else usage();
        }
        if (o.ping_interval_ms > 0 && o.push_interval_ms > 0
            && o.ping_interval_ms != o.push_interval_ms) {
            die("--ping-interval and --push-interval: one interval for both");
        }
        o.size = std::min<std::size_t>(std::max<std::size_t>(o.size, 16), 1 << 20);
        return server_main(o);
    }
    usage();
}
