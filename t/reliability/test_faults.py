"""Network faults. nginx runs in a network namespace of its own, the
client in another and the backend in a third, joined by veth pairs (link
down: a peer that vanishes without FIN or RST) or by a userspace link with
delay and loss (lib.netns.TunLink: this kernel has no sch_netem, see the
suite's README). Plus half-closed connections and resets mid-frame,
compared with stock nginx (the module loaded, ws_heartbeat off)."""

import contextlib
import random
import socket
import threading
import time

import pytest

from . import rlib
from .rlib import BINARY, CLOSE, TEXT, RawClient, raw_frame, slow
from lib import fixtures, netns, wsproto
from lib.nginx import free_port

pytestmark = rlib.gate

INTERVAL, TIMEOUT = 0.2, 0.5
HB = """
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 500ms;
            proxy_read_timeout 60s;
            proxy_connect_timeout 5s;
            %s"""


class Lab:
    """client ns --(veth or TunLink)-- nginx ns --veth-- backend ns."""

    def __init__(self, netlab, rnginx, extra="", client_link="veth",
                 backend_mode="echo", answer_pings=True, seed=1, conf=None):
        self.ns_c = netlab.namespace("c")
        self.ns_p = netlab.namespace("p")
        self.ns_b = netlab.namespace("b")
        if client_link == "veth":
            self.if_c, self.addr_c, self.if_pc, self.addr_p = \
                netlab.veth(self.ns_c, self.ns_p)
            self.tun = None
        else:
            self.tun, self.addr_c, self.addr_p = netlab.tun(
                self.ns_c, self.ns_p, seed)
        self.if_pb, self.addr_pb, self.if_b, self.addr_b = \
            netlab.veth(self.ns_p, self.ns_b)
        lsock = netns.ns_listener(self.ns_b, self.addr_b)
        self.backend = wsproto.Backend(mode=backend_mode,
                                       answer_pings=answer_pings, lsock=lsock)
        self.port = free_port()
        self.nginx = rnginx(rlib.server(
            self.port, "%s:%d" % (self.addr_b, self.backend.port),
            conf or HB % extra, addr=self.addr_p), netns=self.ns_p)

    def client(self, path="/", **kw):
        c = wsproto.Client(self.port, path, host=self.addr_p,
                           sock=netns.ns_socket(self.ns_c), **kw)
        assert c.status == 101, c.head
        return c

    def client_down(self):
        netns.ip("-n", self.ns_c, "link", "set", self.if_c, "down")

    def backend_down(self):
        netns.ip("-n", self.ns_b, "link", "set", self.if_b, "down")

    def stop(self):
        self.backend.stop()


@pytest.fixture
def lab(netlab, rnginx):
    yield from fixtures.made(lambda **kw: Lab(netlab, rnginx, **kw))


def stream_forever(conn, stop, size=16384):
    """The backend sends frames as fast as it can until stopped."""
    blob = b"s" * size
    try:
        while not stop.is_set():
            conn.send_frame(BINARY, blob)
    except OSError:
        pass


def expect_backend_close(conn, t0, bound, reason=b"heartbeat timeout"):
    while True:
        f = conn.next_frame(timeout=max(0.1, t0 + bound + 5
                                        - time.monotonic()))
        if f is None or f.opcode == CLOSE:
            break
    took = time.monotonic() - t0
    assert f is not None, "no Close to the backend in %.1fs" % took
    assert f.masked and f.close_code == 1001, f
    assert f.payload[2:] == reason, f.payload
    assert took <= bound, "Close after %.2fs, bound %.2fs" % (took, bound)
    return took


@rlib.valgrind_ok
def test_client_vanishes_idle_backend(lab):
    lb = lab()
    c = lb.client()
    conn = lb.backend.accept()
    with rlib.closing(c):
        c.send_text("hello")
        assert c.recv_frame(timeout=5).payload == b"hello"
        lb.client_down()
        t0 = time.monotonic()
        took = expect_backend_close(conn, t0, slow(INTERVAL + TIMEOUT + 1.0))
        print("client vanished: Close 1001 to the backend %.3fs after "
              "link down" % took)
        lb.nginx.wait_log(r"\[info\].*ws heartbeat: closing, client "
                          r"heartbeat timeout", timeout=slow(5))
        assert conn.closed.wait(slow(5))
        assert rlib.counters(lb.nginx.status())["client_heartbeat_timeout"] \
            == 1


@rlib.valgrind_ok
def test_client_vanishes_streaming_backend_send_timeout(lab):
    """A backend that keeps sending fills the socket toward a vanished
    client; with ws_heartbeat_send_timeout the backend hears of it with a
    Close 1001 "send timeout"."""
    lb = lab(extra="ws_heartbeat_send_timeout 300ms; send_timeout 30s;")
    c = lb.client()
    conn = lb.backend.accept()
    stop = threading.Event()
    with rlib.closing(c), contextlib.ExitStack() as cleanup:
        cleanup.callback(stop.set)
        c.send_text("hello")
        assert c.recv_frame(timeout=5).payload == b"hello"
        lb.client_down()
        t0 = time.monotonic()
        threading.Thread(target=stream_forever, args=(conn, stop),
                         daemon=True).start()
        took = expect_backend_close(conn, t0, slow(INTERVAL + TIMEOUT + 4),
                                    reason=b"send timeout")
        print("client vanished, backend streaming: Close %.3fs after link "
              "down" % took)


def test_client_vanishes_streaming_backend_heartbeat_alone(lab):
    lb = lab(extra="send_timeout 30s;")
    c = lb.client()
    conn = lb.backend.accept()
    stop = threading.Event()
    with rlib.closing(c), contextlib.ExitStack() as cleanup:
        cleanup.callback(stop.set)
        c.send_text("hello")
        assert c.recv_frame(timeout=5).payload == b"hello"
        lb.client_down()
        t0 = time.monotonic()
        threading.Thread(target=stream_forever, args=(conn, stop),
                         daemon=True).start()
        expect_backend_close(conn, t0, slow(INTERVAL + TIMEOUT + 2))


UPSTREAM_ON = "ws_heartbeat_upstream on;"


def expect_client_1011(c, t0, bound):
    f = c.recv_frame(timeout=bound + 5)
    took = time.monotonic() - t0
    assert f is not None and f.opcode == CLOSE, (f, took)
    assert f.close_code == 1011 and f.payload[2:] == b"upstream timeout"
    assert took <= bound, "Close after %.2fs, bound %.2fs" % (took, bound)
    assert c.wait_closed(slow(5))
    return took


@rlib.valgrind_ok
def test_backend_vanishes(lab):
    lb = lab(extra=UPSTREAM_ON)
    c = lb.client()
    lb.backend.accept()
    with rlib.closing(c):
        c.send_text("across")
        assert c.recv_frame(timeout=5).payload == b"across"
        lb.backend_down()
        t0 = time.monotonic()
        took = expect_client_1011(c, t0, slow(INTERVAL + TIMEOUT + 1.0))
        print("backend vanished: Close 1011 %.3fs after link down" % took)
        lb.nginx.wait_log(r"ws heartbeat: closing, upstream heartbeat "
                          r"timeout", timeout=slow(5))


def test_backend_vanishes_while_client_streams(lab):
    lb = lab(extra=UPSTREAM_ON + " proxy_send_timeout 30s;")
    c = lb.client(answer_pings=True)
    lb.backend.accept()
    stop = threading.Event()

    def stream():
        # whole frames only (send_raw holds the client's writer lock, so
        # its Pongs never cut into a frame)
        frame = wsproto.encode_frame(BINARY, b"c" * 16384)
        try:
            while not stop.is_set():
                c.send_raw(frame)
        except OSError:
            pass

    with rlib.closing(c), contextlib.ExitStack() as cleanup:
        cleanup.callback(stop.set)
        c.send_text("across")
        assert c.recv_frame(timeout=5).payload == b"across"
        lb.backend_down()
        t0 = time.monotonic()
        threading.Thread(target=stream, daemon=True).start()
        expect_client_1011(c, t0, slow(INTERVAL + TIMEOUT + 2))


LOSSY = """
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 2s;
            proxy_read_timeout 60s;"""


@rlib.no_valgrind
def test_slow_lossy_client_link_no_false_close(lab):
    """150 ms of delay from the clients to nginx and 5% loss each way,
    interval 200ms, timeout 2s: live clients answer every Ping late, some
    only after a retransmission, and none is closed; their messages
    arrive intact."""
    lb = lab(client_link="tun", conf=LOSSY, seed=20240)
    clients = [lb.client("/lossy-%d" % i, answer_pings=True)
               for i in range(rlib.scale(3, 4))]
    for _ in clients:
        lb.backend.accept()
    lb.tun.set(0, delay=0.150, loss=0.05)
    lb.tun.set(1, loss=0.05)
    seconds = rlib.scale(8.0, 30.0)
    results = [None] * len(clients)

    def run(i, c):
        rng = random.Random(i)
        sent, got = [], []
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and not c.closed:
                msg = b"%d-%d-" % (i, len(sent)) + \
                    rng.randbytes(rng.randint(10, 3000)).hex().encode()
                c.send_frame(TEXT, msg)
                sent.append(msg)
                end = time.monotonic() + rng.uniform(0.1, 0.6)
                while time.monotonic() < end and not c.closed:
                    f = c.recv_frame(timeout=end - time.monotonic())
                    if f is not None:
                        got.append(f)
            # what is still in flight
            while len(got) < len(sent) and not c.closed:
                f = c.recv_frame(timeout=slow(5))
                if f is None:
                    break
                got.append(f)
            results[i] = (sent, got, c.closed, len(c.pings))
        except Exception as e:      # reported below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, c))
               for i, c in enumerate(clients)]
    with rlib.closing(*clients):
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
    pings = 0
    for r in results:
        assert not isinstance(r, Exception), r
        sent, got, closed, n = r
        assert not closed, "a live client was closed"
        assert not [f for f in got if f.opcode == CLOSE], got[-3:]
        assert [f.payload for f in got] == sent
        pings += n
    c = rlib.counters(lb.nginx.status())
    assert c["client_heartbeat_timeout"] == 0, c
    st = lb.nginx.status()
    pongs = st['nginx_ws_heartbeat_pongs_total{peer="client"}']
    print("lossy link: %d clients, %.0fs, %d Pings answered (%d Pongs "
          "swallowed), packets forwarded/dropped %r"
          % (len(clients), seconds, pings, pongs, lb.tun.stats))
    assert pings >= len(clients) * 3 and pongs > 0
    assert "heartbeat timeout" not in lb.nginx.log()


# -- half-closed connections and resets, beside stock nginx -------------------

@pytest.fixture
def pair(rnginx, raw_backend):
    """One nginx, two locations to the same raw backend: /on/ with the
    module's heartbeat, /off/ as stock nginx."""
    b = raw_backend()
    port = free_port()
    n = rnginx("""
    server {
        listen 127.0.0.1:%d;
        location /on/ {
            proxy_pass http://127.0.0.1:%d;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            ws_heartbeat on;
            ws_heartbeat_interval 50ms;
            ws_heartbeat_timeout 5s;
        }
        location /off/ {
            proxy_pass http://127.0.0.1:%d;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            ws_heartbeat off;
        }
    }
""" % (port, b.port, b.port), port=port)
    return n, port, b


def half_close(port, b, loc, who):
    """who shuts its write side after one message; the other side then
    sends one. Returns what each side saw (module Pings taken out)."""
    path = "/%s/half-%s" % (loc, who)
    c = RawClient(port, path)
    conn = b.accept(path)
    m_client = raw_frame(TEXT, b"from the client", masked=True)
    m_backend = raw_frame(TEXT, b"from the backend")
    with rlib.closing(c, conn):
        # the other side sends once the relay has ended for it (EOF), as
        # stock nginx ends it, or after 5s if it does not end
        if who == "client":
            c.send(m_client)
            c.shutdown_write()
            conn.rec.wait_eof(slow(5))
            try:
                conn.send(m_backend)
            except OSError:
                pass
        else:
            conn.send(m_backend)
            conn.shutdown_write()
            c.rec.wait_eof(slow(5))
            try:
                c.send(m_client)
            except OSError:
                pass
        # the relay's end on both sides, as far as it comes
        c.rec.wait_eof(slow(5))
        conn.rec.wait_eof(slow(5))
        _, got_backend = rlib.match_relay(conn.rec.raw, m_client, True, True)
        _, got_client = rlib.match_relay(c.rec.raw, m_backend, False, False)
        return dict(backend_got=got_backend, backend_eof=conn.rec.eof.is_set(),
                    client_got=got_client, client_eof=c.rec.eof.is_set())


@rlib.valgrind_ok
@pytest.mark.parametrize("who", ["client", "backend"])
def test_half_close_like_stock_nginx(pair, who):
    """shutdown(SHUT_WR) from one side: stock nginx 1.22 ends the whole
    relay once that side's data is written (process_upgraded: eof on one
    side and its buffer empty); with the module, exactly the same."""
    n, port, b = pair
    stock = half_close(port, b, "off", who)
    module = half_close(port, b, "on", who)
    assert module == stock, (module, stock)
    print("half close by %s: %r" % (who, stock))


@rlib.valgrind_ok
@pytest.mark.parametrize("who", ["client", "backend"])
def test_reset_mid_frame_while_the_other_side_streams(pair, who):
    """An RST in the middle of a frame while the other side streams into
    it: the relay ends, the other side is closed, nothing at alert (the
    module's send wrapper sees the error first or the relay does)."""
    n, port, b = pair
    rng = random.Random(3)
    for loc in ("off", "on"):
        path = "/%s/rst-%s" % (loc, who)
        c = RawClient(port, path)
        conn = b.accept(path)
        with rlib.closing(c, conn):
            victim, streamer = (c, conn) if who == "client" else (conn, c)
            masked = streamer is c
            stop = threading.Event()

            def stream():
                blob = raw_frame(BINARY, rng.randbytes(1 << 20),
                                 masked=masked)
                try:
                    while not stop.is_set():
                        streamer.send(blob)
                except OSError:
                    pass
            t = threading.Thread(target=stream, daemon=True)
            t.start()
            # the victim sends half a frame of its own, then resets
            victim.send(raw_frame(BINARY, b"v" * 4000,
                                  masked=victim is c)[:1500])
            time.sleep(0.3)
            victim.reset()
            other = conn if victim is c else c
            assert other.rec.wait_eof(slow(5)), "%s: relay open" % loc
            stop.set()
            t.join(5)


@rlib.no_valgrind
@pytest.mark.parametrize("reader", ["client", "upstream"])
def test_slow_reader_is_not_declared_dead(rnginx, reader):
    """The other side of "a Ping stuck behind writes the peer does not
    take": a live peer that reads slowly (16 KiB every 300ms) while the
    other side streams as fast as it can, and sends nothing. The writes to
    it block again and again and a Ping waits behind the frames; yet it
    reads, so it is alive and must not be closed (timeout 1s)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = free_port()
    n = rnginx(rlib.server(port, lsock.getsockname()[1], """
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 1s;"""), port=port)
    accepted = []

    def backend():
        b, _ = lsock.accept()
        head, _ = wsproto.read_http_head(b)
        key = [l.split(":", 1)[1].strip() for l in head.split("\r\n")
               if l.lower().startswith("sec-websocket-key:")][0]
        b.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket"
                  b"\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
                  + wsproto.accept_key(key.encode()) + b"\r\n\r\n")
        accepted.append(b)

    t = threading.Thread(target=backend, daemon=True)
    t.start()
    sock = socket.socket()
    if reader == "client":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    c = wsproto.Client(port, "/slow", answer_pings=False, sock=sock)
    t.join(10)
    lsock.close()
    b = accepted[0]
    stop = threading.Event()

    def stream():
        frame = raw_frame(BINARY, b"r" * 30000, masked=reader == "upstream")
        try:
            while not stop.is_set():
                (b if reader == "client" else c.sock).sendall(frame)
        except OSError:
            pass

    slow_sock = c.sock if reader == "client" else b
    with rlib.closing(c), contextlib.ExitStack() as cleanup:
        cleanup.callback(rlib.close, b)
        cleanup.callback(stop.set)
        threading.Thread(target=stream, daemon=True).start()
        t0 = time.monotonic()
        got = 0
        slow_sock.settimeout(0.05)
        while time.monotonic() - t0 < rlib.scale(4.0, 10.0):
            try:
                data = slow_sock.recv(16384)
            except socket.timeout:
                data = b"?"
            assert data, "closed after %.1fs" % (time.monotonic() - t0)
            got += len(data)
            assert "heartbeat timeout" not in n.log(), \
                "a live slow reader (%d bytes read) closed after %.1fs" \
                % (got, time.monotonic() - t0)
            time.sleep(0.3)
        # Pings were due (queued, stuck behind the frames)
        st = n.status()
        assert st['nginx_ws_heartbeat_pings_total{peer="%s"}' % reader] >= 1
