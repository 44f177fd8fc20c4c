"""ws_heartbeat_idle_buffers release: the relay's two buffers go back to
the request's pool right after the upgrade and at the module's timer ticks
that find them empty, and come back before the relay runs again. An idle
gap here holds ticks (a short ws_heartbeat_interval, a long timeout): the
client receiving the module's Ping shows one went by. The bytes must go through exactly as sent whatever
the idle gaps cut: bursts, frames split across a gap in either direction,
both sides at once in the same event-loop turn, TLS on both sides,
permessage-deflate; the heartbeat goes on meanwhile; the memory really
goes (worker RSS, release against keep); and a failed allocation at a
wake-up closes that connection only (t/preload/malloc_fail.c)."""

import asyncio
import os
import random
import signal
import ssl
import time

import pytest
import websockets

from conftest import proxy_server
from lib import preload
from lib.backend import py_echo_argv
from lib.nginx import PRELOAD, free_port, slow, wait_for
from lib.tls import self_signed
from lib.wsproto import BINARY, CLOSE, TEXT, Client, encode_frame


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("cert"), "127.0.0.1")


def proxied(nginx_factory, backend, extra, cert=None, client_tls=False,
          backend_tls=False, **bkw):
    """nginx in front of a raw backend (echo by default): (nginx, port,
    backend)."""
    http = ""
    if backend_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*cert)
        bkw["tls_context"] = ctx
    if client_tls:
        http = "ssl_certificate %s; ssl_certificate_key %s;" % cert
    b = backend(**bkw)
    port = free_port()
    n = nginx_factory(http + proxy_server(
        port, b.port, extra, scheme="https" if backend_tls else "http",
        listen_extra="ssl" if client_tls else ""), port=port)
    return n, port, b


def relayed(conn):
    """The raw bytes the backend got of the client's frames (the module's
    own Pings, if any, left out)."""
    return b"".join(f.raw for f in list(conn.received)
                    if not f.is_module_ping)


def await_ticks(c, count=2, timeout=None):
    """Read (frames are kept) until count of the module's Pings came to
    Client c after the last frame it returned: that many ticks of its
    timer went by since (a tick releases the buffers it finds empty).
    Pings already read past that frame count (they wait in c.frames).
    c must answer them: a Ping unanswered is the last until the peer
    sends again, and one may go out between the relay of c's frame and
    that of its answer."""
    ahead = sum(1 for f in c.frames if f.is_module_ping)
    target = len(c.pings) - ahead + count
    deadline = time.monotonic() + (timeout or slow(5))
    while len(c.pings) < target:
        left = deadline - time.monotonic()
        assert left > 0 and not c.closed, "%d Pings of %d" % (
            len(c.pings), target)
        c._fill(left)


TICKS = """
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 60s;"""


def rss_anon_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon for %d" % pid)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("mode", ["release", "keep"])
def test_idle_burst_idle_cycles_byte_exact(nginx_factory, backend, cert,
                                           tls, mode):
    """Bursts of frames of every size class in both directions, each
    followed by an idle gap: what each side sends arrives byte for byte
    (the client's masked frames as they were on the wire)."""
    n, port, b = proxied(nginx_factory, backend, """
            ws_heartbeat on;
            ws_heartbeat_idle_buffers %s;
            proxy_buffer_size 4k;""" % mode + TICKS, cert, tls, tls)
    c = Client(port, tls=tls, timeout=30)
    conn = b.accept()
    rng = random.Random(20)
    sent = bytearray()
    for cycle in range(6):
        msgs = [(rng.choice([TEXT, BINARY]),
                 rng.randbytes(rng.choice([0, 1, 125, 126, 4095, 4096,
                                           4097, 65536, 200000])))
                for _ in range(12)]
        for op, p in msgs:
            frame = encode_frame(op, p)
            sent += frame
            c.send_raw(frame)
        for op, p in msgs:
            f = c.recv_frame(timeout=30)
            assert f is not None and (f.opcode, f.payload) == (op, p), \
                "cycle %d" % cycle
        # the backend speaks first now: the upstream's direction wakes
        pushed = [rng.randbytes(rng.choice([1, 4096, 70000]))
                  for _ in range(5)]
        for p in pushed:
            conn.send_frame(BINARY, p)
        for p in pushed:
            f = c.recv_frame(timeout=30)
            assert f is not None and f.payload == p, "cycle %d" % cycle
        await_ticks(c)      # the idle gap: the buffers go
    assert relayed(conn) == bytes(sent)
    c.close()


@pytest.mark.parametrize("mode", ["release", "keep"])
def test_frames_split_across_idle_gaps(nginx_factory, backend, mode):
    """A frame cut in two by an idle gap, each way: the first part is
    relayed and the buffers go while the relay waits for the rest; the
    heartbeat's timer runs in the gap (its Ping to the client must not go
    into the middle of the backend's frame; the client's Pongs wait for
    the end of its own cut frame) and the rest follows byte-exact."""
    n, port, b = proxied(nginx_factory, backend, """
            ws_heartbeat on;
            ws_heartbeat_idle_buffers %s;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 5s;""" % mode)
    c = Client(port, timeout=20)
    conn = b.accept()
    payload = bytes(range(256)) * 40            # 10240 bytes: 3 buffers
    frame = encode_frame(BINARY, payload)
    raw = encode_frame(BINARY, payload, mask=False)
    cuts = (1, 2, 5, 100, 4096, 9000)
    for cut in cuts:
        # client -> upstream
        c.send_raw(frame[:cut])
        wait_for(lambda: len(conn.raw) >= sum(map(len, frame_list(conn)))
                 + cut, slow(5),
                 what="the first %d bytes at the backend" % cut)
        # idle: a tick's Ping (one: its Pong waits for the frame's end)
        await_ticks(c, 1)
        c.send_raw(frame[cut:])
        f = c.recv_frame(timeout=slow(5))
        assert f is not None and f.payload == payload, cut
        # upstream -> client
        conn.send(raw[:cut])
        wait_for(lambda: c._fill(0.05) and len(c.parser.buf) >= cut,
                 slow(5), what="the first %d bytes at the client" % cut)
        pings = len(c.pings)
        # idle: timer ticks, no Ping can show it (none inside a frame)
        c.pump(0.3)
        assert bytes(c.parser.buf) == raw[:cut], cut
        assert len(c.pings) == pings, "a Ping inside a frame"
        conn.send(raw[cut:])
        f = c.recv_frame(timeout=slow(5))
        assert f is not None and f.payload == payload, cut
    # the client's Pongs stopped at the module
    assert [f.raw for f in list(conn.received)] == [frame] * len(cuts)
    # the heartbeat ran between the frames
    assert c.pings
    c.close()


def frame_list(conn):
    return [f.raw for f in list(conn.received)]


def test_burst_on_both_sides_in_one_event_loop_turn(nginx_factory, backend):
    """The worker is stopped while both peers send after an idle gap: on
    SIGCONT both sockets are ready in the same epoll wake-up, and both
    released buffers come back in the same turn."""
    n, port, b = proxied(nginx_factory, backend, """
            ws_heartbeat on;""" + TICKS)
    c = Client(port, timeout=30)
    conn = b.accept()
    rng = random.Random(2)
    (worker,) = n.worker_pids()
    sent = bytearray()
    for rnd in range(4):
        await_ticks(c)                          # idle: released
        ups = [b"up%d-%d-" % (rnd, i) + rng.randbytes(rng.choice(
            [10, 3000, 20000])) for i in range(20)]
        downs = [b"dn%d-%d-" % (rnd, i) + rng.randbytes(rng.choice(
            [10, 3000, 20000])) for i in range(20)]
        os.kill(worker, signal.SIGSTOP)
        try:
            data = b"".join(encode_frame(BINARY, p) for p in ups)
            sent += data
            c.send_raw(data)
            conn.send(b"".join(encode_frame(BINARY, p, mask=False)
                               for p in downs))
        finally:
            os.kill(worker, signal.SIGCONT)
        got = []
        while len(got) < len(ups) + len(downs):
            f = c.recv_frame(timeout=30)
            assert f is not None, "round %d: %d frames" % (rnd, len(got))
            got.append(f.payload)
        # each direction in its order, the two interleaved as they came
        assert [p for p in got if p.startswith(b"up")] == ups
        assert [p for p in got if p.startswith(b"dn")] == downs
    assert relayed(conn) == bytes(sent)
    c.close()


def test_heartbeat_goes_on_while_released(nginx_factory, backend):
    """An idle connection's buffers are released (at the first ticks); the
    Pings to both peers still go out, their Pongs are swallowed, and the connection relays
    again afterwards."""
    n, port, b = proxied(nginx_factory, backend, """
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 1s;""")
    c = Client(port, answer_pings="module")
    conn = b.accept()
    c.pump(1.2)
    assert len(c.pings) >= 5, c.pings
    up = [f for f in list(conn.received) if f.is_module_ping]
    assert len(up) >= 5, up
    # the client's Pongs to the module went no further
    assert not [f for f in list(conn.received) if not f.is_module_ping]
    assert not c.closed
    c.send_frame(TEXT, b"after the idle time")
    f = c.recv_frame()
    assert f is not None and f.payload == b"after the idle time"
    c.close()


def test_permessage_deflate_across_idle_gaps(nginx_factory, procs):
    """permessage-deflate by two real implementations (python3-websockets
    on both ends), messages between idle gaps longer than the heartbeat
    interval: every message arrives whole."""
    be = procs(py_echo_argv())
    port = free_port()
    nginx_factory(proxy_server(port, be.port, """
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_idle_buffers release;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 2s;"""), port=port)
    rng = random.Random(5)
    messages = [("message %d " % i) * rng.choice([1, 50, 3000])
                for i in range(30)]

    async def run():
        async with websockets.connect(
                "ws://127.0.0.1:%d/" % port, ping_interval=None,
                max_size=None) as ws:
            ext = ws.response_headers.get("Sec-WebSocket-Extensions", "")
            echoes = []
            for i, m in enumerate(messages):
                await ws.send(m)
                echoes.append(await ws.recv())
                if i % 5 == 4:
                    await asyncio.sleep(0.25)   # idle: Pings go
            return ext, echoes

    ext, echoes = asyncio.run(run())
    assert ext.startswith("permessage-deflate"), ext
    assert echoes == messages


def idle_connections(port, b, count, size, tls=False, batch=10):
    """count connections that each relay one frame of size bytes both
    ways (the relay buffers' pages get written) and then stay idle, a
    batch at a time: each batch waits for a tick of each of its
    connections (which releases their buffers) before the next one
    opens. Their Pongs wake the client's buffer, which goes again at
    once (it relayed nothing)."""
    clients = []
    blob = bytes(range(256)) * (size // 256)
    for i in range(0, count, batch):
        group = []
        for _ in range(min(batch, count - i)):
            c = Client(port, tls=tls, timeout=30)
            conn = b.accept()
            c.send_frame(BINARY, blob)
            f = c.recv_frame(timeout=30)
            assert f is not None and f.payload == blob
            group.append((c, conn))
        for c, _ in group:
            await_ticks(c, 1)
        clients += group
    return clients


@pytest.mark.skipif(bool(PRELOAD), reason="ASan's allocator holds freed "
                    "memory back (quarantine): RSS shows no reuse")
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_idle_connections_hold_no_relay_buffers(nginx_factory, backend,
                                                cert, tls):
    """The memory goes: with proxy_buffer_size 64k and 100 connections
    that each relayed a 64 KB frame both ways, the worker holds the 128
    KB of buffers per connection with keep (and, with TLS, two written
    16k TLS buffers), and next to nothing with release (a tick releases
    them; malloc hands them to the next connections). Compared in one
    test, the same way, so that what nginx itself allocates cancels
    out."""
    count, size = 100, 65536 - 256
    growth = {}
    for mode in ("keep", "release"):
        n, port, b = proxied(nginx_factory, backend, """
                ws_heartbeat on;
                ws_heartbeat_idle_buffers %s;
                proxy_buffer_size 64k;
                proxy_buffers 4 64k;
                proxy_busy_buffers_size 64k;""" % mode + TICKS,
            cert, tls, tls)
        (worker,) = n.worker_pids()
        # one connection first: the worker's one-time allocations
        warm = idle_connections(port, b, 1, size, tls)
        before = rss_anon_kb(worker)
        clients = idle_connections(port, b, count, size, tls)
        growth[mode] = (rss_anon_kb(worker) - before) * 1024 / count
        print("%s: worker RssAnon +%.0f B per connection" % (
            mode, growth[mode]))
        for c, _ in warm + clients:
            c.close()
        n.stop()
    # keep: two 64 KB buffers written per connection
    assert growth["keep"] > 100 * 1024, growth
    # release: those are gone (TLS keeps OpenSSL's own state either way)
    assert growth["keep"] - growth["release"] > 1.5 * 65536, growth
    assert growth["release"] < 65536, growth


@pytest.mark.skipif(bool(PRELOAD), reason="ASan's allocator holds freed "
                    "memory back (quarantine): RSS shows no reuse")
def test_many_wake_ups_do_not_grow_the_worker(nginx_factory, backend):
    """Each wake-up takes a buffer back into the request's pool; the pool
    must find the record its buffer left (a new 16-byte record per
    wake-up would grow each pool for as long as its connection lives):
    20 connections, 300 cycles each of an echo then a tick (the shortest
    interval), 12,000 wake-ups, leave the worker's memory flat."""
    conns, rounds = 20, 300
    n, port, b = proxied(nginx_factory, backend, """
            ws_heartbeat on;
            ws_heartbeat_interval 10ms;
            ws_heartbeat_timeout 60s;""")
    (worker,) = n.worker_pids()
    clients = []
    for _ in range(conns):
        clients.append(Client(port))
        b.accept()

    def cycles(count):
        for i in range(count):
            for c in clients:
                c.send_frame(BINARY, b"%d" % i)
            for c in clients:
                f = c.recv_frame()
                assert f is not None and f.payload == b"%d" % i
            for c in clients:
                await_ticks(c, 1)           # released again

    cycles(20)                              # the worker's first touches
    before = rss_anon_kb(worker)
    cycles(rounds)                          # 2 wake-ups each
    grown = rss_anon_kb(worker) - before
    # a record per wake-up: 600 per pool, 9.4 KB, past any pool's slack
    assert grown < 32, grown
    for c in clients:
        c.close()


def test_keep_and_release_by_location(nginx_factory, backend):
    """The directive is per location: a keep location and a release one
    side by side both relay."""
    b = backend()
    port = free_port()
    nginx_factory("""
    server {
        listen 127.0.0.1:%d;
        ws_heartbeat on;
        ws_heartbeat_idle_buffers keep;
        location /keep {
            proxy_pass http://127.0.0.1:%d;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }
        location /release {
            proxy_pass http://127.0.0.1:%d;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            ws_heartbeat_idle_buffers release;
        }
    }
""" % (port, b.port, b.port), port=port)
    for path in ("/keep", "/release"):
        c = Client(port, path)
        b.accept()
        for i in range(3):
            c.send_frame(TEXT, b"%s %d" % (path.encode(), i))
            f = c.recv_frame()
            assert f is not None and f.payload == b"%s %d" % (
                path.encode(), i)
            time.sleep(0.05)                    # idle
        c.close()


@pytest.fixture(scope="module")
def malloc_shim(tmp_path_factory):
    return preload.build("malloc_fail", tmp_path_factory)


FAIL_SIZE = 12288       # proxy_buffer_size 12k: nothing else is that size


@pytest.mark.skipif(bool(PRELOAD), reason="ASan's runtime owns malloc()")
def test_no_memory_at_wake_up_closes_that_connection(nginx_factory,
                                                     backend, malloc_shim,
                                                     sockdir):
    """malloc() of a relay buffer fails when an idle connection wakes up:
    that connection ends with Close 1011 to the client and Close 1001 to
    the backend and a line in the log; the worker lives on and another
    idle connection relays. The victim's tick (a short interval) released
    its buffers before the wake-up."""
    b = backend()
    port = free_port()
    # where the workers (user nobody when run as root) can see it
    trigger = os.path.join(sockdir, "no-memory")
    n = nginx_factory("""
    server {
        listen 127.0.0.1:%d;
        ws_heartbeat on;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        location /other {
            proxy_pass http://127.0.0.1:%d;
            proxy_buffer_size 16k;
            proxy_busy_buffers_size 16k;
        }
        location /victim {
            proxy_pass http://127.0.0.1:%d;
            proxy_buffer_size 12k;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 60s;
        }
    }
""" % (port, b.port, b.port), start=False, check=False)
    n.env["LD_PRELOAD"] = malloc_shim
    n.env["WSHB_MALLOC_FAIL_SIZE"] = str(FAIL_SIZE)
    n.env["WSHB_MALLOC_FAIL_FILE"] = trigger
    n.start(port)
    (worker,) = n.worker_pids()
    other = Client(port, "/other")
    other_conn = b.accept()
    other.send_frame(TEXT, b"hello")
    f = other.recv_frame()
    assert f is not None and f.payload == b"hello"
    c = Client(port, "/victim")
    conn = b.accept()
    c.send_frame(TEXT, b"hello")
    f = c.recv_frame()
    assert f is not None and f.payload == b"hello"
    # idle: a tick releases the buffers (a Pong's wake-up releases again)
    await_ticks(c, 2)
    open(trigger, "w").close()
    try:
        c.send_frame(TEXT, b"wake up")
        frames = []
        while True:
            f = c.recv_frame(timeout=slow(5))
            assert f is not None, frames
            frames.append(f)
            if f.opcode == CLOSE:
                break
        assert frames[-1].close_code == 1011, frames
        assert c.wait_closed(slow(5))
        f = conn.next_frame(timeout=slow(5))
        while f is not None and f.opcode != CLOSE:
            f = conn.next_frame(timeout=slow(5))
        assert f is not None and f.close_code == 1001, f
    finally:
        os.unlink(trigger)
    n.wait_log(r"ws heartbeat: closing, no memory for a relay buffer "
               r"\(12288 bytes\)")
    # the worker is the same and the other connection relays
    assert n.worker_pids() == [worker]
    other.send_frame(TEXT, b"still here")
    f = other.recv_frame()
    assert f is not None and f.payload == b"still here"
    f = other_conn.next_frame()
    assert f is not None and f.opcode == TEXT
    other.close()
    # nothing worse than the failed malloc() itself in the log
    bad = [line for line in n.log().splitlines()
           if ("[alert]" in line or "[crit]" in line
               or "exited on signal" in line
               or ("[emerg]" in line and "malloc(12288) failed" not in line))]
    assert not bad, n.log()
    assert "malloc(12288) failed" in n.log()
