"""Hostile frames end to end: a raw client and a raw backend send every
class of malformed frame, after a valid prefix, in random pieces. On every
stream, whatever the module did with it, the receiving side gets exactly
what was sent, byte for byte, plus only module Pings at frame boundaries
of the part the module accepted (rlib.match_relay, driven by rlib.scan, a
Python mirror of the module's scanner). A rejected stream logs one info
line naming the reason and the direction, and from then on nothing is
injected; nothing is logged at alert; no worker crashes."""

import random
import re
import time

import pytest

from . import rlib
from .rlib import (BINARY, TEXT, E_MASK, E_OPCODE, RawClient, raw_frame,
                   slow, wait_delivered)

pytestmark = rlib.gate

SEEDS = rlib.scale([11], [11, 12, 13])
LOCATIONS = """
        location /%(name)s/ {
            proxy_pass http://127.0.0.1:%(bport)d;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            ws_heartbeat on;
            ws_heartbeat_interval 40ms;
            ws_heartbeat_timeout 30s;
            %(extra)s
        }
"""


class Env:
    """One nginx for the whole module, with a location per variant:
    off (client heartbeat only), up (upstream heartbeat too, and a 1k relay
    buffer), deflate (permessage-deflate negotiated: RSV1 allowed)."""

    def __init__(self, tmp, hostile_after_101):
        self.backend = rlib.RawBackend(after_101=hostile_after_101)
        self.deflate = rlib.RawBackend(extensions="permessage-deflate")
        self.port = rlib.nginx_lib.free_port()
        locs = "".join(LOCATIONS % dict(name=name, bport=b.port, extra=extra)
                       for name, b, extra in (
                           ("off", self.backend, ""),
                           ("up", self.backend,
                            "ws_heartbeat_upstream on; "
                            "proxy_buffer_size 1k;"),
                           ("deflate", self.deflate, "")))
        http = """
    server {
        listen 127.0.0.1:%d;
%s
    }
""" % (self.port, locs)
        self.nginx = rlib.RNginx(tmp, http)
        self.nginx.start(self.port)
        self.before = rlib.counters(self.nginx.status())
        self.connections = 0
        self.rejected = 0
        self.excluded = {}
        self.bytes_checked = 0

    def close(self):
        self.nginx.stop()
        self.backend.stop()
        self.deflate.stop()
        self.nginx.check_log()


PIPELINED = {}      # path -> bytes the backend writes right behind its 101


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("hostile"),
            lambda path: PIPELINED.get(path, b""))
    yield e
    e.close()


def cases():
    out = []
    for seed in SEEDS:
        for direction in ("c2u", "u2c"):
            for i, case in enumerate(rlib.hostile_cases(
                    direction == "c2u", random.Random(seed))):
                if rlib.FULL:
                    locs = ["off", "up"]
                else:
                    locs = [("off", "up")[(i + (direction == "u2c")) % 2]]
                if case.rsv1:
                    locs = ["deflate"]
                for loc in locs:
                    out.append(pytest.param(
                        direction, case, loc, seed,
                        id="%s-%s-%s-%d" % (direction, case.name, loc,
                                            seed)))
    return out


def no_more_bytes(c, conn, settle=0.1, window=0.3):
    """Both sides keep sending for a while, and each receives exactly what
    the other sent, nothing of the module's: a running heartbeat (40ms
    interval) would send a Ping 40ms after a peer's bytes (wherever a
    stream still has frame boundaries to put it at)."""
    time.sleep(settle)
    t = time.monotonic()
    sent = {c: b"", conn: b""}
    end = t + slow(window)
    i = 0
    while time.monotonic() < end:
        for side in (c, conn):
            data = raw_frame(BINARY, b"alive %d" % i, masked=side is c)
            side.send(data)
            sent[side] += data
        i += 1
        time.sleep(0.02)
    for rec, want in ((c.rec, sent[conn]), (conn.rec, sent[c])):
        rlib.wait_for(lambda: len(rec.since(t)) >= len(want), slow(5),
                      what="the other side's bytes")
    # and a Ping due after the last of them would come within 40ms
    time.sleep(0.15)
    for rec, want in ((c.rec, sent[conn]), (conn.rec, sent[c])):
        late = rec.since(t)
        at = next((i for i, (x, y) in enumerate(zip(late, want)) if x != y),
                  min(len(late), len(want)))
        assert late == want, "bytes after stepping aside, at %d: %r" % (
            at, late[at:at + 64])


def invalid_line(who, reason, path):
    return (r"\[info\].*%s sent invalid WebSocket frame \(%s\), ws heartbeat "
            r"disabled for this connection.*\"GET %s HTTP/1\.1\""
            % (who, re.escape(reason), re.escape(path)))


@rlib.valgrind_ok
@pytest.mark.parametrize("direction,case,loc,seed", cases())
def test_hostile_stream(env, direction, case, loc, seed):
    rng = random.Random("%s-%s-%d" % (direction, case.name, seed))
    path = "/%s/%s-%s-%d" % (loc, direction, case.name, seed)
    c = RawClient(env.port, path)
    assert c.status == 101, c.head
    backend = env.deflate if loc == "deflate" else env.backend
    conn = backend.accept(path)
    env.connections += 1
    with rlib.closing(c, conn):
        hostile_stream(env, direction, case, loc, rng, path, c, conn)


def hostile_stream(env, direction, case, loc, rng, path, c, conn):
    from_client = direction == "c2u"
    stream = rlib.valid_prefix(from_client, rng) + case.data
    if case.kind == "reject":
        # after the error anything at all passes, as with stock nginx
        stream += b"after the error: " + rng.randbytes(700)
    elif case.kind == "close":
        # frames after a Close are a protocol error but well framed
        stream += raw_frame(TEXT, b"after close", masked=from_client)
    elif case.kind == "pass" and case.reason is None \
            and case.name.startswith("huge"):
        stream += rng.randbytes(2000)     # more of the endless payload

    sender, receiver = (c, conn) if from_client else (conn, c)
    # Pings only go toward the upstream with ws_heartbeat_upstream on; to
    # the client they are unmasked
    masked = from_client
    sender.send_chunked(stream, rng)

    if case.kind == "trunc-rst":
        wait_delivered(receiver.rec, stream, from_client, masked,
                       rsv1=case.rsv1)
        sender.reset()
    elif case.kind == "trunc-fin":
        sender.shutdown_write()

    pings, received = wait_delivered(receiver.rec, stream, from_client,
                                     masked, rsv1=case.rsv1)
    env.bytes_checked += len(stream)
    if from_client and loc != "up":
        assert pings == 0, "Pings to the upstream with the upstream " \
                           "heartbeat off"
    n = env.nginx
    if case.kind == "reject":
        env.rejected += 1
        n.wait_log(invalid_line("client" if from_client else "upstream",
                                case.reason, path), timeout=slow(5))
        # stepped aside: no Ping either way any more
        no_more_bytes(c, conn)
        # the other direction still relays, byte for byte
        if from_client:
            reply = raw_frame(BINARY, rng.randbytes(3000))
            t = time.monotonic()
            conn.send(reply)
            wait_for_bytes(c.rec, t, reply)
        else:
            reply = raw_frame(BINARY, rng.randbytes(3000), masked=True)
            t = time.monotonic()
            c.send(reply)
            wait_for_bytes(conn.rec, t, reply)
    elif case.kind == "close":
        # an endpoint's Close ends the heartbeat (no Ping after it)
        no_more_bytes(c, conn, settle=0.15)
    elif case.kind in ("trunc-fin", "trunc-rst"):
        # stock nginx ends the relay on a half-close or reset: both
        # connections are closed, nothing is added to the cut frame
        assert receiver.rec.wait_eof(slow(5)), "relay still open"
        assert sender is c or c.rec.wait_eof(slow(5))
        assert receiver.rec.raw == received
    if case.kind != "reject":
        assert "invalid WebSocket frame" not in "".join(
            l for l in n.log().splitlines(True) if path + " " in l)


def wait_for_bytes(rec, since, data, timeout=5.0):
    deadline = time.monotonic() + slow(timeout)
    while time.monotonic() < deadline:
        got = rec.since(since)
        if len(got) >= len(data):
            break
        time.sleep(0.005)
    assert rec.since(since) == data


@rlib.valgrind_ok
@pytest.mark.parametrize("side", ["client", "upstream"])
def test_hostile_bytes_pipelined_with_the_handshake(env, side):
    """Bytes that arrive in the same packet as the request (nginx relays
    them from r->header_in) or as the 101 (from u->buffer) take another
    path into the relay: they are checked all the same."""
    path = "/off/pipelined-%s" % side
    from_client = side == "client"
    stream = raw_frame(TEXT, b"early", masked=from_client) + \
        raw_frame(0x5, b"reserved", masked=from_client) + b"junk"
    if from_client:
        c = RawClient(env.port, path, extra=stream)
    else:
        PIPELINED[path] = stream
        c = RawClient(env.port, path)
    conn = env.backend.accept(path)
    env.connections += 1
    env.rejected += 1
    receiver = conn if from_client else c
    wait_delivered(receiver.rec, stream, from_client, from_client)
    env.nginx.wait_log(invalid_line(side, E_OPCODE, path), timeout=slow(5))
    no_more_bytes(c, conn)
    c.close()
    conn.close()


@rlib.valgrind_ok
def test_mutated_streams_random(env):
    """Valid streams with random bytes flipped, cut or inserted, sent in
    random pieces from one side while the other side talks validly: byte
    exact both ways; where the Python scanner finds an error, the module
    logs the same reason."""
    rng = random.Random(99)
    rounds = rlib.scale(12, 40)
    for k in range(rounds):
        from_client = k % 2 == 0
        path = "/%s/mutated-%d" % (("off", "up")[k % 3 == 0], k)
        c = RawClient(env.port, path)
        conn = env.backend.accept(path)
        env.connections += 1
        stream = bytearray(rlib.valid_prefix(from_client, rng))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(stream))
            op = rng.random()
            if op < 0.6:
                stream[at] ^= 1 << rng.randrange(8)
            elif op < 0.8:
                stream[at:at] = rng.randbytes(rng.randint(1, 20))
            else:
                del stream[at:at + rng.randint(1, 50)]
        stream = bytes(stream)
        _, err, _ = rlib.scan(stream, from_client)
        sender, receiver = (c, conn) if from_client else (conn, c)
        other, other_rx = (conn, c) if from_client else (c, conn)
        talk = b"".join(raw_frame(TEXT, b"valid %d" % i,
                                  masked=not from_client)
                        for i in range(20))
        sender.send_chunked(stream, rng)
        other.send_chunked(talk, rng)
        wait_delivered(receiver.rec, stream, from_client, from_client)
        wait_delivered(other_rx.rec, talk, not from_client, not from_client)
        env.bytes_checked += len(stream) + len(talk)
        if err:
            env.rejected += 1
            env.nginx.wait_log(invalid_line(
                "client" if from_client else "upstream", err, path),
                timeout=slow(5))
        c.close()
        conn.close()


def both_invalid(env, path):
    """The client's and then the upstream's stream go invalid."""
    c = RawClient(env.port, path)
    conn = env.backend.accept(path)
    c.send(raw_frame(TEXT, b"unmasked", masked=False))
    env.nginx.wait_log(invalid_line("client", E_MASK, path))
    bad = raw_frame(0x3, b"reserved")
    t = time.monotonic()
    conn.send(bad)
    # the second direction's bytes pass (stepped aside)
    wait_for_bytes(c.rec, t, bad)
    time.sleep(0.1)
    c.close()
    conn.close()
    return [l for l in env.nginx.log().splitlines()
            if "invalid WebSocket frame" in l and path + " " in l]


@rlib.valgrind_ok
def test_both_directions_invalid_counted_once(env):
    before = rlib.counters(env.nginx.status())
    both_invalid(env, "/off/both-invalid-count")
    rlib.wait_for(lambda: rlib.counters(env.nginx.status())["active"] == 0,
                  slow(10), what="connection to end")
    d = rlib.delta(before, rlib.counters(env.nginx.status()))
    env.connections += 1
    env.rejected += 1
    assert d["total"] == 1 and d["invalid_frame"] == 1, d
    assert sum(d[r] for r in rlib.REASONS) == 1, d


@rlib.valgrind_ok
def test_both_directions_invalid_logged_once(env):
    lines = both_invalid(env, "/off/both-invalid-log")
    env.connections += 1
    env.rejected += 1
    assert len(lines) == 1, "\n".join(lines)


@rlib.valgrind_ok
def test_no_ping_injected_after_stepping_aside(env):
    rng = random.Random(5)
    path = "/off/queued-ping-after-step-aside"
    # the Ping counter counts this connection's Pings only
    rlib.wait_for(lambda: rlib.counters(env.nginx.status())["active"] == 0,
                  slow(10), what="the other connections to end")
    before = env.nginx.status()[CLIENT_PINGS]
    c = RawClient(env.port, path)
    conn = env.backend.accept(path)
    env.connections += 1
    env.rejected += 1
    with rlib.closing(c, conn):
        queued_ping(env, rng, path, c, conn, before)


CLIENT_PINGS = 'nginx_ws_heartbeat_pings_total{peer="client"}'


def queued_ping(env, rng, path, c, conn, before):
    # a big frame from the backend is in flight ...
    big = raw_frame(BINARY, rng.randbytes(200000))
    conn.send(big[:50000])
    rlib.wait_for(lambda: len(c.rec.raw) >= 50000, slow(5),
                  what="first part of the big frame")
    # ... when the client's bytes make a Ping due 40ms later: it is queued
    # until the frame ends
    c.send(raw_frame(TEXT, b"valid", masked=True))

    def queued():
        # counted when queued; not in what the client received
        received, _ = rlib.match_relay(c.rec.raw, big, False, False)
        return env.nginx.status()[CLIENT_PINGS] - before > received
    rlib.wait_for(queued, slow(5), what="a Ping queued behind the frame")
    c.send(raw_frame(TEXT, b"not masked", masked=False))
    env.nginx.wait_log(invalid_line("client", E_MASK, path))
    conn.send(big[50000:])
    wait_delivered(c.rec, big, False, False)
    time.sleep(slow(0.3))
    received = c.rec.raw
    at = received.find(big[:64])
    assert at >= 0
    extra = received[at + len(big):]
    assert received[at:at + len(big)] == big
    assert extra == b"", "%d byte(s) injected after the module stepped " \
        "aside: %r" % (len(extra), extra[:32])


@rlib.valgrind_ok
@pytest.mark.parametrize("direction,end", [("c2u", "fin"), ("c2u", "rst"),
                                           ("u2c", "fin")])
def test_truncated_pong_then_end_passes_every_byte(env, direction, end):
    from_client = direction == "c2u"
    # the upstream's Pongs are only looked at with the upstream heartbeat
    path = "/%s/truncated-pong-%s-%s" % ("off" if from_client else "up",
                                         direction, end)
    c = RawClient(env.port, path)
    conn = env.backend.accept(path)
    env.connections += 1
    with rlib.closing(c, conn):
        sender, receiver = (c, conn) if from_client else (conn, c)
        hello = raw_frame(TEXT, b"hello", masked=from_client)
        data = hello + \
            raw_frame(0xA, b"0123456789abcdef", masked=from_client)[:10]
        sender.send(data)
        # nginx has read it all once the first frame is through (the
        # Pong's start may be held back)
        rlib.wait_for(lambda: rlib.match_relay(
            receiver.rec.raw, data, from_client, from_client)[1] >=
            len(hello), slow(5), what="the frame before the Pong")
        if end == "fin":
            sender.shutdown_write()
        else:
            sender.reset()
        assert receiver.rec.wait_eof(slow(5)), "relay still open"
        pings, delivered = rlib.match_relay(receiver.rec.raw, data,
                                            from_client, from_client)
        assert delivered == len(data), \
            "%d of %d bytes reached the %s before the end" % (
                delivered, len(data), "backend" if from_client else "client")


@rlib.valgrind_ok
def test_zz_counters_add_up(env):
    """After the module's hostile connections (whatever subset ran): every
    connection was counted once, none is left active, each connection
    ended once, and every rejected stream counted one invalid_frame
    close. (Connections of tests that check their own counters are taken
    out: env.excluded.)"""
    def settled():
        return rlib.counters(env.nginx.status())["active"] == 0
    try:
        rlib.wait_for(settled, slow(15), what="active connections to end")
    except TimeoutError:
        open_conns = [c.path for b in (env.backend, env.deflate)
                      for c in b.all if not c.rec.eof.is_set()]
        raise AssertionError("still active: %r; backend connections not "
                             "closed by nginx: %r"
                             % (rlib.counters(env.nginx.status()),
                                open_conns))
    d = rlib.delta(env.before, rlib.counters(env.nginx.status()))
    for k, v in env.excluded.items():
        d[k] -= v
    print("hostile: %d connections, %d streams rejected, %d bytes compared "
          "byte for byte" % (env.connections, env.rejected,
                             env.bytes_checked))
    assert d["total"] == env.connections, d
    assert d["invalid_frame"] == env.rejected, (d, env.rejected)
    assert sum(d[r] for r in rlib.REASONS) == d["total"], d
