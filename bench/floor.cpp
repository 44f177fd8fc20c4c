// The floor of an in-process heartbeat: what any program that keeps idle
// WebSocket connections alive with Pings must pay on this machine, and
// nothing more. Per connection and interval: one send() of a prebuilt
// Ping, one recv() of the Pong, a share of an epoll wake-up. Timers are
// batched as the module batches them (ngx/ngx_ws_heartbeat_timer.cpp):
// deadlines rounded up to a grain of about 1/64 of the interval (a power
// of two, 1 to 128 ms), so that one wake-up serves every connection due
// in the same grain; here a ring of per-grain lists, no tree.
//
// bench/run.py's idle section runs it beside the module and stock nginx
// ("F"), with the same wsbench clients, and divides its CPU time by the
// round trips the clients count.
//
//   floor --port P --interval-ms N [--procs N] [--ready-file F]
//
// --procs: that many processes share the listening socket (as nginx's
// workers do). The handshake is answered (101, Sec-WebSocket-Accept) and
// then the connection only gets Pings; what it sends is read and dropped.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

volatile sig_atomic_t g_stop = 0;

std::uint64_t now_ms()
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::uint64_t(ts.tv_sec) * 1000 + std::uint64_t(ts.tv_nsec) / 1000000;
}

std::string accept_key(const std::string& key)
{
    std::string s = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
    std::string out(4 * ((SHA_DIGEST_LENGTH + 2) / 3) + 1, '\0');
    int k = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(&out[0]), d,
                            SHA_DIGEST_LENGTH);
    out.resize(std::size_t(k));
    return out;
}

// A server's Ping: FIN, opcode 9, unmasked, 16 bytes of payload (the
// module's size)
const std::uint8_t ping_frame[18] = {0x89, 16, 'w', 's', 'h', 'b', 0, 0, 0, 0,
                                     0,    0,  0,   0,   0,   0,   0, 0};

struct conn {
    int fd = -1;
    bool open = false;           // handshake answered
    std::uint32_t slot = 0;      // ring slot of its next Ping
    std::string head;            // the request, until it is whole
};

struct floor_loop {
    int ep = -1;
    int lfd = -1;
    std::uint64_t interval = 10000;
    std::uint64_t grain = 128;
    std::vector<conn> conns;                  // by fd
    std::vector<std::vector<int>> ring;       // fds due per grain
    std::uint64_t next_tick = 0;              // the next grain to serve (ms)

    std::uint64_t slot_of(std::uint64_t ms) const
    {
        return (ms / grain) % ring.size();
    }

    // the Ping due an interval from now, rounded up to the grain
    void schedule(int fd, std::uint64_t now)
    {
        std::uint64_t due = (now + interval + grain - 1) / grain * grain;
        conns[std::size_t(fd)].slot = std::uint32_t(slot_of(due));
        ring[slot_of(due)].push_back(fd);
    }

    // in_ring: its next Ping is in the ring (an open connection not being
    // served by tick() right now)
    void drop(int fd, bool in_ring)
    {
        conn& c = conns[std::size_t(fd)];
        if (in_ring && c.open) {
            std::vector<int>& s = ring[c.slot];
            for (std::size_t i = 0; i < s.size(); i++) {
                if (s[i] == fd) {
                    s[i] = s.back();
                    s.pop_back();
                    break;
                }
            }
        }
        close(fd);
        c.fd = -1;
        c.open = false;
        c.head.clear();
    }

    void accept_all()
    {
        for (;;) {
            int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK);
            if (fd < 0) {
                return;
            }
            if (std::size_t(fd) >= conns.size()) {
                conns.resize(std::size_t(fd) * 2 + 1);
            }
            conns[std::size_t(fd)] = conn();
            conns[std::size_t(fd)].fd = fd;
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.fd = fd;
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        }
    }

    void handshake(conn& c, const char* p, std::size_t n, std::uint64_t now)
    {
        c.head.append(p, n);
        std::size_t end = c.head.find("\r\n\r\n");
        if (end == std::string::npos) {
            if (c.head.size() > 8192) {
                drop(c.fd, false);
            }
            return;
        }
        std::string key;
        for (std::size_t pos = 0; pos < end;) {
            std::size_t eol = c.head.find("\r\n", pos);
            std::string line = c.head.substr(pos, eol - pos);
            pos = eol + 2;
            if (line.size() > 18
                && strncasecmp(line.c_str(), "sec-websocket-key:", 18) == 0) {
                key = line.substr(18);
                key.erase(0, key.find_first_not_of(" \t"));
                key.erase(key.find_last_not_of(" \t") + 1);
            }
        }
        std::string resp = "HTTP/1.1 101 Switching Protocols\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Accept: " + accept_key(key)
                           + "\r\n\r\n";
        if (key.empty()
            || send(c.fd, resp.data(), resp.size(), MSG_NOSIGNAL)
                   != ssize_t(resp.size())) {
            drop(c.fd, false);
            return;
        }
        c.head.clear();
        c.head.shrink_to_fit();
        c.open = true;
        schedule(c.fd, now);
    }

    // what a heartbeat must do when a peer's bytes arrive: one recv
    void readable(int fd, std::uint64_t now)
    {
        char buf[512];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                drop(fd, true);
            }
            return;
        }
        conn& c = conns[std::size_t(fd)];
        if (!c.open) {
            handshake(c, buf, std::size_t(n), now);
        }
    }

    // the grains that have passed: one send of the Ping per connection
    void tick(std::uint64_t now)
    {
        while (next_tick <= now) {
            std::vector<int> due;
            due.swap(ring[slot_of(next_tick)]);
            for (int fd : due) {
                if (send(fd, ping_frame, sizeof(ping_frame),
                         MSG_NOSIGNAL | MSG_DONTWAIT) < 0
                    && errno != EAGAIN) {
                    drop(fd, false);
                    continue;
                }
                schedule(fd, now);
            }
            next_tick += grain;
        }
    }

    void run()
    {
        ep = epoll_create1(0);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = lfd;
        epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
        std::vector<epoll_event> evs(512);
        next_tick = (now_ms() / grain + 1) * grain;

        while (!g_stop) {
            std::uint64_t now = now_ms();
            int timeout = next_tick > now ? int(next_tick - now) : 0;
            int n = epoll_wait(ep, evs.data(), int(evs.size()), timeout);
            now = now_ms();
            for (int i = 0; i < n; i++) {
                int fd = evs[std::size_t(i)].data.fd;
                if (fd == lfd) {
                    accept_all();
                } else if (conns[std::size_t(fd)].fd == fd) {
                    readable(fd, now);
                }
            }
            tick(now);
        }
    }
};

void on_signal(int)
{
    g_stop = 1;
}

} // namespace

int main(int argc, char** argv)
{
    int port = 0, procs = 1;
    std::uint64_t interval = 10000;
    const char* ready = nullptr;

    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--port") {
            port = std::atoi(argv[i + 1]);
        } else if (a == "--interval-ms") {
            interval = std::strtoull(argv[i + 1], nullptr, 10);
        } else if (a == "--procs") {
            procs = std::atoi(argv[i + 1]);
        } else if (a == "--ready-file") {
            ready = argv[i + 1];
        } else {
            std::fprintf(stderr, "floor: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (port <= 0 || interval == 0 || procs < 1) {
        std::fprintf(stderr, "usage: floor --port P --interval-ms N "
                             "[--procs N] [--ready-file F]\n");
        return 2;
    }

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(std::uint16_t(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0
        || listen(lfd, 65535) != 0) {
        std::perror("floor: listen");
        return 1;
    }

    // the module's grain: ~1/64 of the interval, a power of two, 1..128 ms
    std::uint64_t grain = interval / 64;
    grain = grain >= 128 ? 128 : grain;
    while (grain & (grain - 1)) {
        grain &= grain - 1;
    }
    grain = grain == 0 ? 1 : grain;

    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    std::vector<pid_t> kids;
    for (int i = 0; i < procs; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            floor_loop f;
            f.lfd = lfd;
            f.interval = interval;
            f.grain = grain;
            f.ring.resize(std::size_t(2 * (interval / grain) + 2));
            f.run();
            return 0;
        }
        kids.push_back(pid);
    }

    if (ready != nullptr) {
        FILE* f = std::fopen(ready, "w");
        if (f != nullptr) {
            std::fprintf(f, "%d\n", procs);
            std::fclose(f);
        }
    }

    while (!g_stop) {
        pause();
    }
    for (pid_t pid : kids) {
        kill(pid, SIGTERM);
    }
    for (pid_t pid : kids) {
        waitpid(pid, nullptr, 0);
    }
    return 0;
}
