"""The relay stays transparent: WebSocket frames through a ws_heartbeat
location arrive byte-exact, and anything that is not a WebSocket upgrade is
left alone."""

import os
import random
import re
import socket
import threading
import time

from lib import wsproto
from lib.wsproto import BINARY, CLOSE, CONT, PING, PONG, TEXT, Client


def test_echo_byte_exact(ws_proxy):
    n, port, b = ws_proxy("ws_heartbeat on;")
    c = Client(port, "/echo")
    assert c.status == 101
    conn = b.accept()
    assert conn.path == "/echo"
    msgs = [(TEXT, b"hello"), (BINARY, bytes(range(256))), (TEXT, b""),
            (BINARY, os.urandom(70000))]
    for op, payload in msgs:
        c.send_frame(op, payload)
        f = c.recv_frame()
        assert (f.opcode, f.fin, f.payload) == (op, 1, payload)
        assert not f.masked
    # what the backend got is exactly what the client wrote
    got = [f for f in conn.received]
    assert [(f.opcode, f.payload) for f in got] == msgs
    assert all(f.masked for f in got)
    c.close()


def test_leftover_bytes_pipelined_with_the_handshake(ws_proxy):
    """Bytes the client sends right behind its request and bytes the backend
    sends right behind its 101 go through the module too."""
    n, port, b = ws_proxy("ws_heartbeat on;")
    early = wsproto.encode_frame(TEXT, b"early bird")
    c = Client(port, extra=early)
    conn = b.accept()
    f = conn.next_frame()
    assert f.payload == b"early bird"
    assert c.recv_frame().payload == b"early bird"
    c.close()


def test_endpoint_pings_and_pongs_pass_untouched(ws_proxy):
    n, port, b = ws_proxy("ws_heartbeat on; ws_heartbeat_interval 100ms;",
                          backend_kw=dict(mode="silent"))
    c = Client(port, answer_pings="module")
    conn = b.accept()
    c.send_frame(PING, b"client ping")
    c.send_frame(PONG, b"unsolicited")
    # a 16-byte Pong that is not ours is forwarded too
    c.send_frame(PONG, b"0123456789abcdef")
    c.send_frame(PONG, b"wshb" + b"\xff" * 12)
    got = [conn.next_frame() for _ in range(4)]
    assert [(f.opcode, f.payload) for f in got] == [
        (PING, b"client ping"), (PONG, b"unsolicited"),
        (PONG, b"0123456789abcdef"), (PONG, b"wshb" + b"\xff" * 12)]
    conn.send_frame(PING, b"server ping")
    conn.send_frame(PONG, b"server pong")
    f1, f2 = c.recv_frame(), c.recv_frame()
    assert (f1.opcode, f1.payload) == (PING, b"server ping")
    assert (f2.opcode, f2.payload) == (PONG, b"server pong")
    c.close()


def test_not_websocket_upgrade_is_left_alone(ws_proxy):
    """A 101 to another protocol: bytes pass as with stock nginx, no Ping."""
    n, port, b = ws_proxy("ws_heartbeat on; ws_heartbeat_interval 50ms;",
                          backend_kw=dict(mode="silent", upgrade="foo"))
    c = Client(port, upgrade="foo")
    assert c.status == 101
    conn = b.accept()
    junk = b"\x83\x05hello not websocket \xff\x00"
    c.send_raw(junk)
    deadline = time.monotonic() + 5
    while bytes(conn.raw) != junk and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bytes(conn.raw) == junk
    c.pump(0.3)
    assert c.pings == [] and c.frames == []
    c.close()


def test_off_means_no_pings(ws_proxy):
    n, port, b = ws_proxy("ws_heartbeat off; ws_heartbeat_interval 50ms;")
    c = Client(port)
    b.accept()
    c.pump(0.4)
    assert c.pings == []
    c.close()


def test_unknown_extension_is_left_alone(ws_proxy):
    n, port, b = ws_proxy(
        "ws_heartbeat on; ws_heartbeat_interval 50ms;",
        backend_kw=dict(extensions="x-custom-extension"))
    c = Client(port)
    b.accept()
    c.pump(0.4)
    assert c.pings == []
    c.close()


def test_permessage_deflate_rsv1_frames_pass(ws_proxy):
    n, port, b = ws_proxy(
        "ws_heartbeat on; ws_heartbeat_interval 100ms;",
        backend_kw=dict(extensions="permessage-deflate"))
    c = Client(port)
    b.accept()
    # RSV1 on a (pretend-)compressed message; the module never inflates
    c.send_frame(TEXT, b"\xf2\x48\xcd\xc9\xc9\x07\x00", rsv=4)
    f = c.recv_frame()
    assert (f.rsv, f.payload) == (4, b"\xf2\x48\xcd\xc9\xc9\x07\x00")
    c.pump(0.35)
    assert len(c.pings) >= 2, "heartbeat stays on with permessage-deflate"
    c.close()


def _random_frames(rng, count):
    """Messages 0 B .. 1 MiB, text and binary, some fragmented with the
    endpoint's own Pings and Pongs between fragments."""
    frames = []
    for i in range(count):
        r = rng.random()
        if r < 0.01:
            size = rng.randint(256 * 1024, 1024 * 1024)
        elif r < 0.1:
            size = rng.randint(4000, 70000)
        else:
            size = rng.randint(0, 300)
        op = TEXT if rng.random() < 0.5 else BINARY
        payload = (b"x" * size) if op == TEXT else rng.randbytes(size)
        if rng.random() < 0.15 and size > 2:
            cuts = sorted(rng.sample(range(1, size), min(3, size - 1)))
            parts = [payload[a:b] for a, b in
                     zip([0] + cuts, cuts + [size])]
            for j, part in enumerate(parts):
                frames.append((op if j == 0 else CONT, part,
                               j == len(parts) - 1))
                if j < len(parts) - 1 and rng.random() < 0.5:
                    frames.append((rng.choice([PING, PONG]),
                                   rng.randbytes(rng.randint(0, 125)), True))
        else:
            frames.append((op, payload, True))
    return frames


def test_integrity_under_pings(ws_proxy):
    """Thousands of frames both ways while Pings are injected every 20 ms,
    with a proxy buffer smaller than many frames and some frames trickled:
    every byte arrives exactly, in order."""
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 20ms;
            ws_heartbeat_timeout 5s;
            proxy_buffer_size 4k;""")
    rng = random.Random(4242)
    frames = _random_frames(rng, 2500)
    c = Client(port, answer_pings="module", timeout=30)
    c.record = True
    conn = b.accept()
    errors = []

    def sender():
        try:
            for k, (op, payload, fin) in enumerate(frames):
                data = wsproto.encode_frame(op, payload, fin)
                if 4096 < len(data) < 100000 and k % 7 == 0:
                    # trickle: the module sees this frame in many pieces
                    with c.lock:
                        c._send_locked(b"", False)
                        for i in range(0, len(data), 1500):
                            c.sock.sendall(data[i:i + 1500])
                            time.sleep(0.0005)
                        c.sent.append((data, False))
                else:
                    c.send_raw(data)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=sender)
    t.start()
    got = []
    while len(got) < len(frames):
        f = c.recv_frame(timeout=30)
        assert f is not None, "stalled after %d frames" % len(got)
        got.append(f)
    t.join()
    assert not errors, errors
    assert [(f.opcode, f.payload, bool(f.fin)) for f in got] == \
        [(op, p, fin) for op, p, fin in frames]
    assert len(c.pings) >= 3, "Pings were injected during the run"
    # the backend got the client's bytes exactly, minus our Pongs only
    expect = b"".join(d for d, pong in c.sent if not pong)
    deadline = time.monotonic() + 10
    while len(conn.raw) < len(expect) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bytes(conn.raw) == expect
    assert any(pong for _, pong in c.sent), "the client answered Pings"
    c.send_frame(CLOSE, wsproto.close_payload(1000))
    f = c.recv_frame()
    assert f.opcode == CLOSE and f.close_code == 1000
    c.close()


def test_post_action_after_the_relay(ws_proxy):
    """post_action runs an internal redirect after the relay, which zeroes
    r->ctx while the module's wrappers are still on the connection."""
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_interval 50ms;
            post_action @after;
        }
        location @after {
            access_log %(after)s after;
            return 204;""" % dict(after="logs/after.log"), http_extra="""
    log_format after "after status=$status upstream=$upstream_status "
                     "sent=$bytes_sent time=$request_time";""")
    after_log = os.path.join(n.prefix, "logs", "after.log")
    c = Client(port)
    conn = b.accept()
    c.pump(0.2)
    c.send_frame(TEXT, b"bye")
    assert conn.next_frame().payload == b"bye"
    # the client closes its side first: nginx ends the relay, runs the
    # post_action, then reads what is left on the connection
    c.send_frame(CLOSE, wsproto.close_payload(1000))
    c.sock.shutdown(socket.SHUT_WR)
    assert conn.closed.wait(5)
    # ... and closes the client connection after the post_action
    assert c.wait_closed(5), "client connection open after the post_action"
    c.close()
    n.stop()
    log = n.log()
    assert "exited on signal" not in log
    # the post_action ran (the request is logged by @after's access_log,
    # not by the relay location's) and after the relay: the upstream had
    # answered 101, the Pings of the 0.2 s relayed to the client went out
    # before, and the request lasted that long
    with open(n.access_log) as f:
        assert f.read() == ""
    with open(after_log) as f:
        lines = f.read().splitlines()
    assert len(lines) == 1, lines
    m = re.fullmatch(r"after status=(\d+) upstream=(\d+) sent=(\d+) "
                     r"time=([\d.]+)", lines[0])
    assert m, lines
    assert m.group(2) == "101", lines
    assert c.pings
    assert int(m.group(3)) >= len(c.head) + 18 * len(c.pings), lines
    assert float(m.group(4)) >= 0.2, lines
