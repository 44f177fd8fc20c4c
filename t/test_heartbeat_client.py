"""Pings to the client, dead-client detection, read and send timeouts, on a
real nginx with the real module."""

import os
import socket
import threading
import time

import pytest

from lib import wsproto
from lib.nginx import (built_with, free_port, slow, status_server,
                       status_value)
from lib.wsproto import BINARY, CLOSE, PONG, TEXT, Client, streaming

# the client-side tests run with the client on TCP and on a unix socket
# ("listen unix:"); $remote_addr of the latter is "unix:"
CLIENTS = ["tcp", "unix"]
CLIENT_ADDR = {"tcp": r"127\.0\.0\.1", "unix": r"unix:"}


def intervals(pings):
    ts = [t for t, _ in pings]
    return [b - a for a, b in zip(ts, ts[1:])]


def test_idle_client_gets_pings_and_outlives_proxy_read_timeout(ws_proxy):
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 300ms;
            ws_heartbeat_timeout 1s;
            proxy_read_timeout 1s;""")
    c = Client(port)
    conn = b.accept()
    t0 = time.monotonic()
    c.pump(2.6)
    assert not c.closed, "connection closed while the client answered Pings"
    assert len(c.pings) >= 6, c.pings
    first = c.pings[0][0] - t0
    assert 0.24 <= first <= 0.3 + slow(0.15), first
    for gap in intervals(c.pings):
        assert 0.24 <= gap <= 0.3 + slow(0.06), intervals(c.pings)
    # module Pings: unmasked, FIN, 16-byte payload; Pongs never reach the
    # backend
    for _, f in c.pings:
        assert f.fin and not f.masked and len(f.payload) == 16
    assert not [f for f in conn.received if f.opcode == PONG]
    # still usable
    c.send_frame(TEXT, b"still here")
    assert c.recv_frame().payload == b"still here"
    c.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_dead_client_backend_gets_close_1001(ws_proxy, client):
    interval, timeout = 0.3, 0.5
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 300ms;
            ws_heartbeat_timeout 500ms;
            proxy_read_timeout 1m;""", client=client)
    c = Client(port, answer_pings=False)
    conn = b.accept()
    c.send_frame(TEXT, b"last words")
    last = time.monotonic()
    assert conn.next_frame().payload == b"last words"
    # the client never reads and never answers from here on
    f = conn.next_frame(timeout=interval + timeout + 3)
    took = time.monotonic() - last
    assert f is not None and f.opcode == CLOSE, f
    assert f.close_code == 1001
    assert f.masked, "frames to the upstream are masked"
    assert took <= interval + timeout + slow(1.0), took
    assert conn.closed.wait(5), "nginx closed the upstream connection"
    # and the client connection is closed too
    assert c.wait_closed(5)
    n.wait_log(r"\[info\].*ws heartbeat: closing, client heartbeat timeout "
               r'in location "/".*client: ' + CLIENT_ADDR[client])
    c.close()


STREAMING_BOUND = slow(8.0)


@pytest.mark.parametrize("client", CLIENTS)
def test_frozen_client_streaming_backend_gets_close_1001(ws_proxy, client):
    """The client stops reading (and sending) while the backend streams to
    it: nginx's writes to it soon block, and the module's Ping waits behind
    the backend's frames, never written. What tells a frozen client from a
    slow one is whether it still takes bytes: ACKs on TCP, the queue of
    unread bytes on a unix socket (which has no ACKs)."""
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 500ms;
            proxy_read_timeout 1m;""", client=client,
                          backend_kw=dict(mode="silent"))
    c = Client(port, answer_pings=False)
    conn = b.accept()
    c.send_frame(TEXT, b"last words")
    assert conn.next_frame().payload == b"last words"
    t0 = time.monotonic()
    with streaming(conn):
        f = conn.next_frame(timeout=STREAMING_BOUND + 2)
        took = time.monotonic() - t0
    assert f is not None, "no Close %.1fs after the client froze" % took
    assert f.opcode == CLOSE and f.close_code == 1001, (f, f.payload)
    assert f.payload[2:] == b"heartbeat timeout"
    assert 0.4 <= took <= STREAMING_BOUND, took
    print("frozen client, streaming backend: Close 1001 %.3fs after" % took)
    n.wait_log(r"ws heartbeat: closing, client heartbeat timeout")
    c.close()


@pytest.mark.parametrize("client", CLIENTS + ["unix-realip"])
def test_slow_client_is_not_declared_dead(ws_proxy, client):
    """The other side of the frozen client: one that reads slowly (16 KiB
    every 150 ms) while the backend streams to it. The writes to it block
    for longer than the heartbeat timeout, again and again, with a Ping
    waiting behind the frames; yet it takes bytes, so it is alive.
    unix-realip: the realip module gives the connection the client's IP
    address; its socket is still a unix one."""
    sport = free_port()
    realip = client == "unix-realip"
    if realip and not built_with("--with-http_realip_module"):
        pytest.skip("nginx is built without the realip module")
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 1s;
            %s""" % ("set_real_ip_from unix:; real_ip_header X-Real-IP;"
                     if realip else ""),
                          client="unix" if realip else client,
                          backend_kw=dict(mode="silent"),
                          http_extra=status_server(sport))
    c = Client(port, answer_pings=True, read_size=16384, read_pause=0.15,
               headers={"X-Real-IP": "203.0.113.7"} if realip else None)
    conn = b.accept()
    with streaming(conn, 8192):
        c.pump(4.0)
    assert not c.closed, n.log()[-2000:]
    assert "heartbeat timeout" not in n.log()
    assert not conn.closed.is_set()
    assert not [f for f in conn.received if f.opcode == CLOSE]
    # Pings were due (and waited behind the frames)
    assert status_value(
        sport, 'nginx_ws_heartbeat_pings_total{peer="client"}') >= 1
    c.close()


def test_client_alive_by_data_only(ws_proxy):
    """Any byte from the client proves it alive, Pong or not."""
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 300ms;""")
    c = Client(port, answer_pings=False)
    conn = b.accept()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        c.send_frame(BINARY, b"tick")
        c.pump(0.1)
    assert not c.closed
    assert not any(f.opcode == CLOSE for f in conn.received)
    c.close()


READ_TIMEOUT = 0.6
READ = """
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 5s;
            ws_heartbeat_read_timeout 600ms;"""


def expect_read_timeout(n, conn, c, t0, low=READ_TIMEOUT - 0.1):
    """The idle client is closed: the backend gets Close 1001 "read
    timeout" READ_TIMEOUT after t0 (its last data)."""
    f = conn.next_frame(timeout=5)
    took = time.monotonic() - t0
    assert f is not None and f.opcode == CLOSE and f.close_code == 1001, f
    assert f.payload[2:] == b"read timeout"
    assert low <= took <= READ_TIMEOUT + slow(1.0), took
    assert c.wait_closed(5)
    n.wait_log(r"ws heartbeat: closing, client read timeout")


def test_read_timeout_closes_idle_data(ws_proxy):
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_read_timeout 600ms;""")
    c = Client(port)            # answers Pings, sends no data
    conn = b.accept()
    expect_read_timeout(n, conn, c, time.monotonic())
    c.close()


def pump_alive(c, conn, seconds, t0, what):
    """c.pump(seconds); the connection must stay open all along."""
    try:
        c.pump(seconds)
    except ConnectionError:
        c.closed = True
    closes = [f for f in conn.received if f.opcode == CLOSE]
    assert not c.closed and not closes, "closed as idle %.2fs %s: %r" % (
        time.monotonic() - t0, what, [f.payload for f in closes])


def test_read_timeout_counts_a_long_frame(ws_proxy):
    """A client streaming one 1 MiB frame, in pieces over 3 x the read
    timeout, sends data all along, not only when the frame's header goes
    out; idle after it, it is closed."""
    n, port, b = ws_proxy(READ, backend_kw=dict(mode="silent"))
    c = Client(port)
    conn = b.accept()
    payload = os.urandom(1 << 20)
    raw = wsproto.encode_frame(BINARY, payload)
    pieces = 32
    step = len(raw) // pieces + 1
    pause = 3 * READ_TIMEOUT / pieces
    t0 = time.monotonic()
    for i in range(0, len(raw), step):
        c.send_raw(raw[i:i + step])
        pump_alive(c, conn, pause, t0, "into the frame")
    last = time.monotonic()
    assert last - t0 >= 3 * READ_TIMEOUT
    f = conn.next_frame(timeout=5)
    assert f is not None and f.opcode == BINARY and f.payload == payload, f
    expect_read_timeout(n, conn, c, last)
    c.close()


def test_read_timeout_counts_frames_held_back(ws_proxy):
    """A client whose frames wait in nginx because the backend stopped
    reading (its TCP connection up) for 2 x the read timeout is not idle;
    once they are through and it is idle, it is closed."""
    # More than the kernel buffers in the way hold: the backend's receive
    # window kept small, for tcp_rmem may let it grow to 32 MiB, and 16
    # MiB, for nginx's send buffer to the backend grows to tcp_wmem's
    # maximum (4 MiB here) on the loopback's 64 KiB segments. With 4 MiB
    # and no rcvbuf, all of it went through unblocked now and then.
    n, port, b = ws_proxy(READ, backend_kw=dict(mode="silent",
                                                rcvbuf=65536))
    c = Client(port)
    conn = b.accept()
    conn.reading.clear()
    frames = [os.urandom(1 << 18) for _ in range(64)]    # 16 MiB
    raw = b"".join(wsproto.encode_frame(BINARY, p) for p in frames)
    sender = threading.Thread(target=c.send_raw, args=(raw,), daemon=True)
    t0 = time.monotonic()
    sender.start()
    pump_alive(c, conn, 2 * READ_TIMEOUT, t0, "with its frames held back")
    conn.reading.set()
    got = []
    while len(got) < len(frames):
        f = conn.next_frame(timeout=5)
        assert f is not None and f.opcode == BINARY, \
            "frame %d: %r after %.2fs" % (len(got), f, time.monotonic() - t0)
        got.append(f.payload)
    last = time.monotonic()
    assert got == frames
    sender.join(5)
    # (nginx wrote the last bytes a little before the backend parsed them)
    expect_read_timeout(n, conn, c, last, low=0)
    c.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_send_timeout_closes_slow_consumer(ws_proxy, client):
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 10s;
            ws_heartbeat_send_timeout 500ms;
            send_timeout 30s;""", client=client)
    c = Client(port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = b.accept()
    blob = b"z" * 65536
    t0 = time.monotonic()
    sent = 0
    conn.sock.settimeout(0.2)
    try:
        # the client never reads: nginx's writes to it block
        while time.monotonic() - t0 < 5 and not conn.closed.is_set():
            conn.send_frame(BINARY, blob)
            sent += 1
    except (socket.timeout, OSError):
        pass
    f = conn.next_frame(timeout=5)
    assert f is not None and f.opcode == CLOSE and f.close_code == 1001, f
    assert f.payload[2:] == b"send timeout"
    assert conn.closed.wait(5)
    took = time.monotonic() - t0
    assert took < slow(4), took
    n.wait_log(r"ws heartbeat: closing, client send timeout")
    c.close()


def test_invalid_client_frame_steps_aside(ws_proxy):
    # answer_close=False: the backend's parser reads the junk and the
    # client's masked frames after it out of step, and now and then finds
    # a Close in them (random mask keys); answered, it would end the
    # connection (~1 run in 5)
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 1s;""",
                          backend_kw=dict(mode="silent", answer_close=False,
                                          answer_pings=False))
    # The client answers no Ping: the timeout leaves room for a loaded
    # machine between the upgrade and the invalid frame, which would
    # otherwise close the connection first (as a dead client)
    c = Client(port, answer_pings=False)
    conn = b.accept()
    # an unmasked client frame, then a reserved opcode: passed through
    bad = wsproto.encode_frame(TEXT, b"unmasked", mask=False) + \
        b"\x83\x80abcd" + b"trailing junk"
    c.send_raw(bad)
    deadline = time.monotonic() + 5
    while bytes(conn.raw) != bad and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bytes(conn.raw) == bad
    n.wait_log(r"\[info\].*client sent invalid WebSocket frame "
               r"\(wrong mask bit\), ws heartbeat disabled")
    # no more Pings and no heartbeat close: stock nginx behaviour. A Ping
    # written before the invalid frame is in the socket buffer by now.
    c.pump(0.05)
    before = len(c.pings)
    # a client sending all along: a running heartbeat would send a Ping
    # every 100ms after its bytes
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        c.send_frame(BINARY, b"chatter")
        c.pump(0.05)
    assert len(c.pings) == before, "Pings after stepping aside"
    # then a client that neither answers nor sends: a running heartbeat
    # would close it 100ms + 1s on
    c.pump(1.5)
    assert len(c.pings) == before, "Pings after stepping aside"
    assert not c.closed
    assert not [f for f in c.frames if f.opcode == CLOSE], c.frames
    conn.send(b"\x81\x02ok")
    assert c.recv_frame().payload == b"ok"
    c.close()
