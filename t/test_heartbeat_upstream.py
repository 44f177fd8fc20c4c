"""The upstream heartbeat (ws_heartbeat_upstream on) on a real nginx with
the real module: Pings to the backend keep a quiet live backend connected
and never reach the client's eyes as Pongs; a frozen or vanished backend is
detected and the client gets Close 1011 "upstream timeout"; the Pings are
masked with fresh keys while the client's own frames pass byte-exact; and
with the upstream heartbeat off a backend that never answers Pings is left
alone.

The live backends of the first tests are real, independent implementations
that answer Pings by themselves, run as their own processes:
t/backends/py_echo.py (Debian's python3-websockets) and
t/backends/node_echo.js (Node.js ws, Debian's node-ws)."""

import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import threading
import time

import pytest

from conftest import proxy_server
from lib.backend import NODE_BIN, NODE_ECHO, NODE_PATH, py_echo_argv
from lib.netns import NetLab, ip
from lib.nginx import free_port, slow, status_server, status_value, wait_for
from lib.wsproto import (BINARY, CLOSE, PING, PONG, TEXT, Client,
                         streaming)

UPSTREAM_TIMEOUT_LOG = (r'\[info\].*ws heartbeat: closing, upstream heartbeat '
                        r'timeout in location "/"')


# -- helpers -----------------------------------------------------------------

def record_frames(c):
    """Every frame the client parses from here on (and those already
    parsed), in arrival order, whatever recv_frame() later skips."""
    log = list(c.frames)
    feed = c.parser.feed

    def recording_feed(data):
        out = feed(data)
        log.extend(out)
        return out

    c.parser.feed = recording_feed
    return log


def close_reason(f):
    return f.payload[2:]


def ping_seq(f):
    return struct.unpack("!I", f.payload[4:8])[0]


def start_echo(procs, kind):
    if kind == "python-websockets":
        return procs(py_echo_argv())
    return procs([NODE_BIN, NODE_ECHO],
                 env=dict(os.environ, NODE_PATH=NODE_PATH))


def stats(c):
    """Ask a t/backends echo server how many Pings it received."""
    c.send_text("__stats__")
    f = c.recv_frame(timeout=5)
    assert f is not None and f.opcode == TEXT, f
    return json.loads(f.payload)


# -- 1. quiet live backends ----------------------------------------------------

QUIET = """
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 1s;
            proxy_read_timeout 600ms;"""
PROXY_READ_TIMEOUT = 0.6


@pytest.mark.parametrize("kind", ["python-websockets", "node-ws"])
def test_quiet_live_backend_outlives_proxy_read_timeout(kind, procs,
                                                        nginx_factory):
    bp = start_echo(procs, kind)
    port = free_port()
    n = nginx_factory(proxy_server(port, bp.port, QUIET), port=port)
    c = Client(port, answer_pings=True)
    assert c.status == 101, c.head
    frames = record_frames(c)
    c.send_text("hello")
    f = c.recv_frame(timeout=5)
    assert f is not None and f.payload == b"hello", f

    # nobody sends a byte of data for 5 x proxy_read_timeout: only the
    # module's Pings and the automatic Pongs cross the connection. (Note:
    # nginx re-arms the upstream read timer on any event of the pair, so
    # the client leg's Pongs alone already hold proxy_read_timeout off;
    # the backend's own count of Pings below is what shows that the
    # upstream heartbeat ran and was answered.)
    c.pump(5 * PROXY_READ_TIMEOUT)
    assert not c.closed, "closed while idle: " + n.log()[-2000:]
    assert not [f for f in frames if f.opcode == CLOSE], frames

    c.send_text("still here")
    f = c.recv_frame(timeout=5)
    assert f is not None and (f.opcode, f.payload) == (TEXT, b"still here"), f

    # the backend really was pinged (~15 in 3s) and answered by itself; its
    # Pongs never reached the client
    s = stats(c)
    assert s["wshb_pings"] >= 8, s
    assert s["pings"] == s["wshb_pings"], s
    assert len(c.pings) >= 8, "client heartbeat: %d Pings" % len(c.pings)
    pongs = [f for f in frames if f.opcode == PONG]
    assert not pongs, "the client saw Pongs: %r" % pongs
    assert not c.closed
    c.close()
    assert not re.search(r"\[error\]", n.log()), n.log()


# -- 2. frozen backend ---------------------------------------------------------

FROZEN_INTERVAL, FROZEN_TIMEOUT = 0.2, 0.5
FROZEN = """
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 500ms;
            proxy_read_timeout 60s;"""


def expect_upstream_timeout_close(c, t0, interval, timeout):
    """The client (answering Pings meanwhile) gets Close 1011 "upstream
    timeout" within interval + timeout + 1s of t0; returns the time it
    took."""
    f = c.recv_frame(timeout=interval + timeout + 5)
    took = time.monotonic() - t0
    assert f is not None, "no Close within %.1fs (closed=%s)" % (took,
                                                                c.closed)
    assert f.opcode == CLOSE, f
    assert f.close_code == 1011, (f.close_code, f.payload)
    assert close_reason(f) == b"upstream timeout", f.payload
    assert not f.masked
    assert took <= interval + timeout + slow(1.0), took
    # a Ping has to stay unanswered for a whole timeout first
    assert took >= timeout - 0.1, took
    assert c.wait_closed(5), "nginx closed the client connection"
    return took


def frozen_backend(sockdir, procs, nginx_factory, upstream):
    """t/backends/py_echo.py on 127.0.0.1 or, upstream "unix", on a unix
    socket (proxy_pass http://unix:/path:), behind nginx with FROZEN; a
    client echoed once; then the backend frozen (SIGSTOP). Returns (nginx,
    the backend's BackendProcess, the client, the time of the freeze)."""
    if upstream == "unix":
        bp = procs(py_echo_argv(unix=os.path.join(sockdir, "echo.sock")))
    else:
        bp = procs(py_echo_argv())
    port = free_port()
    n = nginx_factory(proxy_server(port, bp.port, FROZEN), port=port)
    c = Client(port, answer_pings=True)
    assert c.status == 101, c.head
    c.send_text("before the freeze")
    f = c.recv_frame(timeout=5)
    assert f is not None and f.payload == b"before the freeze", f
    bp.signal(signal.SIGSTOP)
    return n, bp, c, time.monotonic()


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_frozen_backend_client_gets_1011(sockdir, procs, nginx_factory,
                                         upstream):
    n, bp, c, t0 = frozen_backend(sockdir, procs, nginx_factory, upstream)
    took = expect_upstream_timeout_close(c, t0, FROZEN_INTERVAL,
                                         FROZEN_TIMEOUT)
    print("frozen backend: Close 1011 %.3fs after SIGSTOP" % took)
    n.wait_log(UPSTREAM_TIMEOUT_LOG, timeout=5)
    # the backend was stopped, not dead, all along ...
    with open("/proc/%d/stat" % bp.pid) as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    assert state == "T", "backend process state %s, not stopped" % state
    # ... and nginx closed its connection to it after writing what the
    # frozen process never read: its socket is closed by the peer (TCP:
    # in CLOSE_WAIT) with the masked Ping (2 + 4 + 16 bytes) and the
    # masked Close 1001 "heartbeat timeout" (2 + 4 + 2 + 17) unread, and
    # on TCP the FIN (1 in the kernel's count)
    unread = 22 + 25 + (1 if upstream == "tcp" else 0)
    socks = wait_for(lambda: [q for closed, q in backend_sockets(bp.port)
                              if closed],
                     timeout=5, what="nginx to close the upstream connection")
    assert socks == [unread], (socks, backend_sockets(bp.port))
    c.close()


TCP_CLOSE_WAIT, TCP_LISTEN = 0x08, 0x0A


def backend_sockets(port):
    """(closed by the peer, bytes unread) of the connections accepted on a
    local TCP port, as /proc/net/tcp shows them (closed: CLOSE_WAIT), or
    on the unix socket at the path port, as ss -x shows them (closed: shut
    down both ways, "---")."""
    out = []
    if isinstance(port, str):
        lines = subprocess.run(["ss", "-Hxane", "src", port],
                               stdout=subprocess.PIPE, text=True,
                               check=True).stdout.splitlines()
        for fields in (line.split() for line in lines):
            if fields[1] != "LISTEN":
                out.append((fields[8] == "---", int(fields[2])))
        return out
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, state, queues = fields[1], int(fields[3], 16), fields[4]
            if int(local.split(":")[1], 16) == port and state != TCP_LISTEN:
                out.append((state == TCP_CLOSE_WAIT,
                            int(queues.split(":")[1], 16)))
    return out


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
@pytest.mark.parametrize("client", ["idle", "chatty"])
def test_deaf_backend_gets_masked_close_1001(ws_proxy, client, upstream):
    """Beyond the frozen process: a raw backend that reads everything but
    never sends a byte shows what nginx writes to it. Its last frames are
    the unanswered Ping and a masked Close 1001 "heartbeat timeout"; a
    client sending data all along changes nothing (only the backend's bytes
    prove the backend alive)."""
    n, port, b = ws_proxy(FROZEN,
                          backend_kw=dict(mode="silent", answer_pings=False),
                          upstream=upstream)
    c = Client(port, answer_pings=True)
    conn = b.accept()
    t0 = time.monotonic()
    if client == "chatty":
        deadline = t0 + FROZEN_INTERVAL + FROZEN_TIMEOUT + 5
        while not any(f.opcode == CLOSE for f in c.frames) \
                and not c.closed and time.monotonic() < deadline:
            c.send_frame(TEXT, b"chatter")
            c.pump(0.05)
    expect_upstream_timeout_close(c, t0, FROZEN_INTERVAL, FROZEN_TIMEOUT)
    assert conn.closed.wait(5), "nginx closed the upstream connection"
    got = list(conn.received)
    assert got and got[-1].opcode == CLOSE, got
    assert got[-1].masked and got[-1].fin
    assert got[-1].close_code == 1001, got[-1].payload
    assert close_reason(got[-1]) == b"heartbeat timeout", got[-1].payload
    # one Ping, never answered, then nothing but the Close from nginx
    pings = [f for f in got if f.opcode == PING]
    assert len(pings) == 1, got
    assert pings[0].is_module_ping and pings[0].masked, pings
    if client == "chatty":
        assert [f.opcode for f in got if f.opcode != TEXT] == [PING, CLOSE]
        assert len([f for f in got if f.opcode == TEXT]) >= 5, got
    else:
        assert [f.opcode for f in got] == [PING, CLOSE], got
    n.wait_log(UPSTREAM_TIMEOUT_LOG, timeout=5)
    c.close()


STREAMING_BOUND = slow(8.0)


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_frozen_backend_streaming_client_gets_1011(sockdir, procs,
                                                   nginx_factory, upstream):
    """The backend freezes while the client keeps sending: nginx's writes
    to it soon block, and the module's Ping waits behind the client's
    frames, never written, so no Pong can be missed. What tells a frozen
    backend from a slow one is then whether it still takes bytes: ACKs on
    TCP, the queue of unread bytes on a unix socket (which has no ACKs,
    and once counted as alive whatever happened)."""
    n, bp, c, t0 = frozen_backend(sockdir, procs, nginx_factory, upstream)
    with streaming(c):
        f = c.recv_frame(timeout=STREAMING_BOUND + 2)
        took = time.monotonic() - t0
    assert f is not None, "no Close %.1fs after SIGSTOP (closed=%s)" % (
        took, c.closed)
    assert f.opcode == CLOSE and f.close_code == 1011, (f, f.payload)
    assert close_reason(f) == b"upstream timeout", f.payload
    assert FROZEN_TIMEOUT - 0.1 <= took <= STREAMING_BOUND, took
    print("frozen backend, streaming client: Close 1011 %.3fs after SIGSTOP"
          % took)
    n.wait_log(UPSTREAM_TIMEOUT_LOG, timeout=5)
    assert c.wait_closed(5)
    c.close()


SLOW = """
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 1s;"""


@pytest.mark.parametrize("upstream", ["tcp", "unix"])
def test_slow_backend_is_not_declared_dead(ws_proxy, upstream):
    """The other side of the frozen backend: one that reads slowly (16 KiB
    every 150 ms) while the client streams. The writes to it block for
    longer than the heartbeat timeout, again and again, with a Ping
    waiting behind the frames; yet it takes bytes, so it is alive."""
    sport = free_port()
    n, port, b = ws_proxy(SLOW, upstream=upstream, backend_kw=dict(
        mode="silent", read_size=16384, read_pause=0.15),
        http_extra=status_server(sport))
    c = Client(port, answer_pings=True)
    b.accept()
    with streaming(c, 8192):
        c.pump(4.0)
    assert not c.closed, n.log()[-2000:]
    assert "heartbeat timeout" not in n.log()
    assert not [f for f in c.frames if f.opcode == CLOSE]
    # Pings were due (and waited behind the frames)
    assert status_value(
        sport, 'nginx_ws_heartbeat_pings_total{peer="upstream"}') >= 1
    c.close()


# -- 3. vanished backend -------------------------------------------------------

@contextlib.contextmanager
def private_link():
    """Two network namespaces made here, "proxy" and "backend", joined by a
    veth pair with addresses in one 10.213.x.y/30 and nothing else: no
    default route, no link to the host (lib.netns.NetLab). Both nginx and
    the backend run inside them, so no packet of the test (retransmissions
    of the orphaned upstream socket included, after the link is cut) can
    ever be routed anywhere else. Removed on the way out, whatever
    happened."""
    lab = NetLab(net="10.213", prefix="wshb")
    try:
        ns_p, ns_b = lab.namespace("p"), lab.namespace("b")
        if_p, addr_p, if_b, addr_b = lab.veth(ns_p, ns_b)
        yield dict(ns_p=ns_p, ns_b=ns_b, if_p=if_p, if_b=if_b,
                   addr_p=addr_p, addr_b=addr_b)
    finally:
        # whatever still runs in them (the test stops its own first) is
        # killed; deleting a namespace takes its end of the veth pair
        lab.close()


VANISHED_INTERVAL, VANISHED_TIMEOUT = 0.2, 0.5
VANISHED = """
            proxy_connect_timeout 5s;
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 500ms;
            proxy_read_timeout 60s;"""


def test_vanished_backend_client_gets_1011(sockdir, procs, nginx_factory):
    sock = os.path.join(sockdir, "nginx.sock")
    with private_link() as link:
        bp = procs(["ip", "netns", "exec", link["ns_b"]]
                   + py_echo_argv(link["addr_b"]))
        n = nginx_factory(proxy_server(sock, "%s:%d" % (link["addr_b"],
                                                        bp.port),
                                       VANISHED), start=False)
        # nginx runs in the proxy namespace; the client reaches it over a
        # unix socket, which no network namespace confines
        plain_cmd = n.cmd
        n.cmd = lambda *extra: (["ip", "netns", "exec", link["ns_p"]]
                                + plain_cmd(*extra))
        try:
            vanish(n, bp, link, sock)
        finally:
            # stop both while their namespaces still exist
            n.stop()
            bp.stop()


def vanish(n, bp, link, sock):
    n.start(sock)
    c = Client(sock, answer_pings=True)
    assert c.status == 101, c.head + n.log()[-2000:]
    c.send_text("across the link")
    f = c.recv_frame(timeout=5)
    assert f is not None and f.payload == b"across the link", f

    # the backend's host vanishes: no FIN, no RST, nothing
    ip("-n", link["ns_p"], "link", "set", link["if_p"], "down")
    t0 = time.monotonic()
    took = expect_upstream_timeout_close(c, t0, VANISHED_INTERVAL,
                                         VANISHED_TIMEOUT)
    print("vanished backend: Close 1011 %.3fs after link down" % took)
    n.wait_log(UPSTREAM_TIMEOUT_LOG, timeout=5)
    assert bp.proc.poll() is None, "the backend lives on, unreachable"
    c.close()


# -- 4. masking ----------------------------------------------------------------

def test_upstream_pings_masked_fresh_keys_client_frames_untouched(ws_proxy):
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 50ms;
            ws_heartbeat_timeout 1s;""", backend_kw=dict(mode="echo"))
    c = Client(port, answer_pings=True)
    c.record = True
    conn = b.accept()
    payloads = [b"one", b"x" * 200, os.urandom(70000), b"", b"last"]
    t0 = time.monotonic()
    for i, p in enumerate(payloads):
        c.send_frame(TEXT if i != 2 else BINARY, p)
        f = c.recv_frame(timeout=5)
        assert f is not None and f.payload == p, f
        c.pump(0.2)
    c.pump(max(0.0, 1.1 - (time.monotonic() - t0)))
    assert not c.closed

    got = list(conn.received)
    pings = [f for f in got if f.opcode == PING]
    assert len(pings) >= 10, "%d upstream Pings in ~1s at 50ms" % len(pings)
    for f in pings:
        assert f.masked and f.fin and f.rsv == 0, f
        assert len(f.payload) == 16 and f.payload[:4] == b"wshb", f.payload
        # the key in the frame unmasks to the payload (the parser did that)
        assert f.raw[2:6] == f.key
    keys = [f.key for f in pings]
    assert len(set(keys)) == len(keys), "mask keys repeat: %r" % keys
    seqs = [ping_seq(f) for f in pings]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs

    # the client's frames arrived exactly as it wrote them: same mask keys
    data = [f.raw for f in got if f.opcode in (TEXT, BINARY)]
    sent = [raw for raw, module_pong in c.sent if not module_pong]
    assert len(sent) == len(payloads)
    assert data == sent
    # the client's Pongs to the module's Pings went nowhere
    assert not [f for f in got if f.opcode == PONG]
    assert not [f for f in got if f.opcode == CLOSE]
    c.close()


# -- 5. swallowing both ways ---------------------------------------------------

def test_pongs_swallowed_both_ways_under_traffic(ws_proxy):
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 50ms;
            ws_heartbeat_timeout 1s;""", backend_kw=dict(mode="echo"))
    c = Client(port, answer_pings=True)
    frames = record_frames(c)
    conn = b.accept()
    count, burst = 200, 10
    client_msgs = [b"msg-%d" % i for i in range(count)]
    server_msgs = [b"srv-%d" % i for i in range(count)]

    # the backend echoes every frame and also sends one of its own per text
    # frame: traffic both ways, in bursts, with pauses longer than the
    # interval so that both heartbeats run between them
    def push():
        i = 0
        while i < count:
            f = conn.next_frame(timeout=10)
            if f is None:
                return
            if f.opcode == TEXT:
                conn.send_frame(BINARY, server_msgs[i])
                i += 1
    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()

    for start in range(0, count, burst):
        for m in client_msgs[start:start + burst]:
            c.send_frame(TEXT, m)
        c.pump(0.08)
        assert not c.closed

    def all_in():
        c.pump(0.05)
        data = [f for f in frames if f.opcode in (TEXT, BINARY)]
        return len(data) >= 2 * count or c.closed
    wait_for(all_in, 15, interval=0, what="400 messages at the client")
    pusher.join(5)
    c.pump(0.2)
    assert not c.closed

    echoes = [f.payload for f in frames if f.opcode == TEXT]
    pushed = [f.payload for f in frames if f.opcode == BINARY]
    assert echoes == client_msgs
    assert pushed == server_msgs
    assert not [f for f in frames if f.opcode == PONG], "Pongs at the client"
    assert not [f for f in frames if f.opcode == CLOSE]
    assert len(c.pings) >= 5, "client heartbeat idle: %d" % len(c.pings)

    got = list(conn.received)
    assert [f.payload for f in got if f.opcode == TEXT] == client_msgs
    assert not [f for f in got if f.opcode == PONG], "Pongs at the backend"
    assert not [f for f in got if f.opcode == CLOSE]
    pings = [f for f in got if f.opcode == PING]
    assert len(pings) >= 5, "upstream heartbeat idle: %d" % len(pings)
    for f in pings:
        assert f.masked and f.is_module_ping and len(f.payload) == 16, f
    c.close()
    errors = [l for l in n.log().splitlines() if "[error]" in l]
    assert not errors, errors


# -- 6. upstream heartbeat off ---------------------------------------------------

@pytest.mark.parametrize("mode", ["echo", "silent"])
def test_upstream_off_never_cuts_deaf_backend(ws_proxy, mode):
    """echo: the backend echoes but never answers a Ping; silent: it never
    sends a single byte, so the upstream leg is quiet for 3 x (interval +
    timeout) and only the absence of an upstream heartbeat keeps it open."""
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_upstream off;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 300ms;""",
                          backend_kw=dict(mode=mode, answer_pings=False))
    c = Client(port, answer_pings=True)
    frames = record_frames(c)
    conn = b.accept()
    end = time.monotonic() + 1.5
    i = 0
    while time.monotonic() < end:
        msg = b"tick-%d" % i
        c.send_frame(TEXT, msg)
        if mode == "echo":
            f = c.recv_frame(timeout=5)
            assert f is not None and (f.opcode, f.payload) == (TEXT, msg), f
            c.pump(0.1)
        else:
            wait_for(lambda: any(f.payload == msg for f in conn.received),
                     5, interval=0.005, what="frame at the backend")
            c.pump(0.1)
        i += 1
    assert i >= 8, i
    assert not c.closed
    assert not conn.closed.is_set()
    assert not [f for f in frames if f.opcode == CLOSE], frames
    got = list(conn.received)
    assert not [f for f in got if f.opcode == CLOSE], got
    assert not [f for f in got if f.opcode == PING], \
        "upstream Pings with ws_heartbeat_upstream off"
    assert [f.payload for f in got if f.opcode == TEXT] == \
        [b"tick-%d" % j for j in range(i)]
    assert "heartbeat timeout" not in n.log()
    c.close()
