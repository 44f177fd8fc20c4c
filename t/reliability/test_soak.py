"""Soak: many concurrent WebSocket connections through two nginx workers
for a while, with random churn, random message sizes and random faults
(client or backend closing with or without a Close frame, FIN, RST,
half-close, a client that vanishes, invalid frames, a backend that stops
answering). Every echo is checked byte for byte; at the end every worker's
open file descriptors are back to their baseline, RSS growth per 1,000
connection lifecycles is reported and bounded, and the status counters
add up: connections_total grew by the number of upgrades, active is back
to 0, and each connection ended once, under the reason its fault implies.

Quick mode: 300 connections for 35s. Full mode (RELIABILITY=full): 2,000
connections for 4 minutes."""

import asyncio
import collections
import os
import random
import socket
import struct
import time

from . import rlib
from .rlib import BINARY, CLOSE, PING, PONG, TEXT, raw_frame
from lib.nginx import free_port
from lib.wsproto import (Parser, close_payload, encode_frame,
                         handshake_request, handshake_response, parse_head)

pytestmark = [rlib.gate, rlib.no_valgrind]

SLOTS = int(os.environ.get("RELIABILITY_SOAK_SLOTS", rlib.scale(300, 2000)))
SECONDS = float(os.environ.get("RELIABILITY_SOAK_SECONDS",
                               rlib.scale(30.0, 240.0)))
IDLE = rlib.scale((0.2, 4.0), (2.0, 20.0))
INTERVAL, TIMEOUT = 1.0, 3.0

# fault: (weight, location, end reasons it may count as)
FAULTS = {
    "normal": (40, None, {"client_close"}),
    "server_close": (10, None, {"upstream_close"}),
    "client_fin": (8, None, {"client_close"}),
    "client_rst": (6, None, {"client_close", "other"}),
    "half_close": (6, None, {"client_close"}),
    "server_fin": (6, None, {"upstream_close"}),
    "server_rst": (5, None, {"upstream_close", "other"}),
    "vanish": (7, None, {"client_heartbeat_timeout"}),
    "invalid": (7, None, {"invalid_frame"}),
    "backend_stall": (5, "b", {"upstream_heartbeat_timeout"}),
}


def sizes(rng):
    r = rng.random()
    if r < 0.7:
        return rng.randint(0, 200)
    if r < 0.95:
        return rng.randint(200, 16384)
    return rng.randint(16384, 262144)


# -- backend ------------------------------------------------------------------

async def backend_conn(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return
    writer.write(handshake_response(parse_head(head.decode("latin-1"))[1]))
    parser = Parser()
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            for f in parser.feed(data):
                if f.opcode == PING:
                    writer.write(encode_frame(PONG, f.payload, mask=False))
                elif f.opcode == CLOSE:
                    writer.write(encode_frame(CLOSE, f.payload[:2],
                                              mask=False))
                    await writer.drain()
                    writer.close()
                    return
                elif f.opcode == TEXT and f.payload.startswith(b"__"):
                    if await backend_command(f.payload, reader, writer):
                        return
                elif f.opcode in (TEXT, BINARY, 0):
                    writer.write(encode_frame(f.opcode, f.payload, f.fin,
                                              mask=False, rsv=f.rsv))
                # (frames with reserved opcodes are dropped)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    writer.close()


async def backend_command(cmd, reader, writer):
    """True when the connection is done with."""
    if cmd == b"__close__":
        writer.write(encode_frame(CLOSE, close_payload(1000),
                                  mask=False))
        return False
    if cmd == b"__fin__":
        writer.close()
        return True
    if cmd == b"__rst__":
        abort(writer)
        return True
    if cmd == b"__stall__":
        # reads nothing, answers nothing, until nginx gives up on it
        for _ in range(120):
            if writer.transport.is_closing():
                break
            await asyncio.sleep(0.5)
        writer.close()
        return True
    return False


def abort(writer):
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- client -------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.upgrades = 0
        self.lifecycles = 0
        self.faults = collections.Counter()
        self.bytes_checked = 0
        self.messages = 0
        self.pings = 0
        self.failures = []


class WsClient:
    def __init__(self, reader, writer, stats):
        self.reader, self.writer, self.stats = reader, writer, stats
        self.frames = asyncio.Queue()
        self.answer = True
        self.half_closed = False
        self.t0 = time.monotonic()
        self.pongs = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self):
        parser = Parser()
        try:
            while True:
                data = await self.reader.read(1 << 16)
                if not data:
                    break
                for f in parser.feed(data):
                    if f.opcode == PING:
                        self.stats.pings += 1
                        # (no writes after our FIN: half-closed)
                        if self.answer and \
                                not self.writer.transport.is_closing() \
                                and not self.half_closed:
                            self.writer.write(encode_frame(PONG, f.payload))
                            # when each Ping came and its Pong went (for
                            # the report of a failed lifecycle)
                            self.pongs.append((
                                round(time.monotonic() - self.t0, 3),
                                self.writer.transport.get_write_buffer_size()
                            ))
                    else:
                        self.frames.put_nowait(f)
        except (ConnectionError, OSError):
            pass
        except Exception as e:
            self.frames.put_nowait(e)
        self.frames.put_nowait(None)

    async def next(self, timeout=15.0):
        f = await asyncio.wait_for(self.frames.get(), timeout)
        if isinstance(f, Exception):
            raise f
        return f

    def send(self, data):
        self.writer.write(data)

    async def eof(self, timeout=15.0):
        """The server closed: frames until the end (None)."""
        rest = []
        while True:
            f = await self.next(timeout)
            if f is None:
                return rest
            rest.append(f)


async def lifecycle(port, rng, stats, ident):
    fault = rng.choices(list(FAULTS), [w for w, _, _ in FAULTS.values()])[0]
    loc = FAULTS[fault][1] or rng.choice("aab")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake_request("/%s/%d/%s" % (loc, ident, fault),
                                   "soak")[0])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    assert head.startswith(b"HTTP/1.1 101"), head
    stats.upgrades += 1
    stats.faults[fault] += 1
    c = WsClient(reader, writer, stats)
    t0 = time.monotonic()
    step = "exchange"
    try:
        await exchange(c, rng, stats)
        step = "idle"
        await asyncio.sleep(rng.uniform(*IDLE))
        step = "exchange 2"
        await exchange(c, rng, stats)
        step = "ending"
        await ending(c, fault, writer)
    except Exception as e:
        raise AssertionError("/%s/%d/%s: %s after %.1fs: %r; Pongs sent at "
                             "(s, bytes left in the transport): %r"
                             % (loc, ident, fault, step,
                                time.monotonic() - t0, e, c.pongs[-5:]))
    finally:
        c.task.cancel()
        writer.transport.abort()
    stats.lifecycles += 1


async def exchange(c, rng, stats):
    for _ in range(rng.randint(0, 4)):
        payload = rng.randbytes(sizes(rng))
        op = BINARY
        if rng.random() < 0.15 and len(payload) > 2:
            cut = rng.randrange(1, len(payload))
            c.send(encode_frame(BINARY, payload[:cut], fin=False)
                   + encode_frame(0, payload[cut:]))
        else:
            c.send(encode_frame(op, payload))
        await c.writer.drain()
        echo = b""
        while True:
            f = await c.next()
            assert f is not None, "closed during an echo"
            assert f.opcode in (BINARY, 0), f
            echo += f.payload
            if f.fin:
                break
        assert echo == payload, "echo differs (%d bytes sent)" % len(payload)
        stats.bytes_checked += 2 * len(payload)
        stats.messages += 1


async def ending(c, fault, writer):
    if fault == "normal":
        c.send(encode_frame(CLOSE, close_payload(1000)))
        rest = await c.eof()
        assert rest and rest[0].opcode == CLOSE, rest
    elif fault == "server_close":
        c.send(encode_frame(TEXT, b"__close__"))
        f = await c.next()
        assert f is not None and f.opcode == CLOSE, f
        c.send(encode_frame(CLOSE, f.payload[:2]))
        await c.eof()
    elif fault == "client_fin":
        writer.close()
    elif fault == "client_rst":
        abort(writer)
    elif fault == "half_close":
        c.half_closed = True
        writer.write_eof()
        await c.eof()
    elif fault in ("server_fin", "server_rst"):
        c.send(encode_frame(TEXT, b"__%s__" % fault[7:].encode()))
        rest = await c.eof()
        assert not [f for f in rest if f.opcode != CLOSE], rest
    elif fault == "vanish":
        # no more reading, no Pong: the heartbeat must find out
        c.answer = False
        c.task.cancel()
        await asyncio.sleep(INTERVAL + TIMEOUT + 0.5)
        data = b""
        while True:
            chunk = await asyncio.wait_for(c.reader.read(1 << 16), 15)
            if not chunk:
                break
            data += chunk
        frames = Parser().feed(data)
        assert frames and frames[-1].opcode == CLOSE and \
            frames[-1].close_code == 1001, frames[-3:]
    elif fault == "invalid":
        c.send(raw_frame(0x3, b"reserved", masked=True))
        c.send(encode_frame(CLOSE, close_payload(1000)))
        rest = await c.eof()
        assert rest and rest[0].opcode == CLOSE, rest
    elif fault == "backend_stall":
        c.send(encode_frame(TEXT, b"__stall__"))
        rest = await c.eof(INTERVAL + TIMEOUT + 15)
        assert rest and rest[-1].opcode == CLOSE and \
            rest[-1].close_code == 1011, rest


async def slot(port, seed, stats, deadline, ident):
    rng = random.Random(seed)
    k = 0
    while time.monotonic() < deadline:
        k += 1
        try:
            await lifecycle(port, rng, stats, ident * 100000 + k)
        except Exception as e:  # counted; the test fails on any
            stats.failures.append("%s: %r" % (ident, e))
            await asyncio.sleep(0.5)


# -- the test -----------------------------------------------------------------

SOAK = """
    server {
        listen 127.0.0.1:%(port)d reuseport backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        ws_heartbeat on;
        ws_heartbeat_interval 1s;
        ws_heartbeat_timeout 3s;
        location /a/ {
            proxy_pass http://127.0.0.1:%(bport)d;
        }
        location /b/ {
            proxy_pass http://127.0.0.1:%(bport)d;
            ws_heartbeat_upstream on;
        }
    }
"""


def test_soak(rnginx, tmp_path):
    asyncio.run(soak(rnginx, tmp_path))


async def soak(rnginx, tmp_path):
    server = await asyncio.start_server(backend_conn, "127.0.0.1", 0,
                                        backlog=4096)
    bport = server.sockets[0].getsockname()[1]
    port = free_port()
    n = rnginx(SOAK % dict(port=port, bport=bport), port=port, workers=2,
               main="worker_rlimit_nofile 16384;")
    try:
        await run_soak(n, port)
    finally:
        server.close()


def measure(n, pids):
    return {p: (n.fds(p), n.rss_kb(p)) for p in pids}


async def wait_idle(n, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rlib.counters(n.status())["active"] == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("active stays at %r" % rlib.counters(n.status()))


async def wait_fds(n, pids, baseline, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = {p: n.fds(p) for p in pids}
        if now == {p: baseline[p][0] for p in pids}:
            return now
        await asyncio.sleep(0.5)
    raise AssertionError("fds %r, baseline %r" % (
        now, {p: baseline[p][0] for p in pids}))


async def run_soak(n, port):
    pids = n.worker_pids()
    assert len(pids) == 2
    c0 = rlib.counters(n.status())

    # warm up (allocator arenas, connection structures), then the baseline
    warm = Stats()
    await asyncio.gather(*[slot(port, 10 ** 6 + i, warm,
                                time.monotonic() + 3.0, 90 + i)
                           for i in range(50)])
    assert not warm.failures, warm.failures[:5]
    await wait_idle(n)
    await asyncio.sleep(1.0)
    base = measure(n, pids)

    stats = Stats()
    t0 = time.monotonic()
    deadline = t0 + SECONDS
    tasks = []
    for i in range(SLOTS):
        tasks.append(asyncio.ensure_future(
            slot(port, i, stats, deadline, i)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    # RSS at full load, a quarter in, and at the end of the load
    await asyncio.sleep(SECONDS / 4)
    mid = measure(n, pids), stats.lifecycles
    await asyncio.sleep(max(0.0, deadline - time.monotonic() - 1.0))
    end = measure(n, pids), stats.lifecycles
    await asyncio.gather(*tasks)
    took = time.monotonic() - t0
    await wait_idle(n)
    fds = await wait_fds(n, pids, base)
    after = measure(n, pids)
    assert n.worker_pids() == pids, "a worker was replaced"

    c1 = rlib.counters(n.status())
    d = rlib.delta(c0, c1)
    upgrades = warm.upgrades + stats.upgrades
    faults = warm.faults + stats.faults
    lifecycles = stats.lifecycles
    growth = {p: end[0][p][1] - mid[0][p][1] for p in pids}
    per_k = {p: growth[p] / max(1, (end[1] - mid[1]) / 1000.0)
             for p in pids}
    report = (
        "soak: %d slots, %.0fs, %d connection lifecycles (+%d warm-up), "
        "%d messages, %d bytes checked, %d Pings answered, faults %s\n"
        "  workers (fds, RSS kB): baseline %r, load 1/4 %r, load end %r, "
        "after %r\n  RSS growth 1/4 -> end: %r kB over %d lifecycles = %r "
        "kB per 1k\n  counters delta %r"
        % (SLOTS, took, lifecycles, warm.lifecycles, stats.messages,
           stats.bytes_checked, stats.pings,
           dict(stats.faults - collections.Counter(
               {"normal": stats.faults["normal"]})),
           base, mid[0], end[0], after, growth, end[1] - mid[1],
           {p: round(v, 1) for p, v in per_k.items()}, d))
    print(report)
    with open(os.path.join(n.prefix, "soak-report.txt"), "w") as f:
        f.write(report + "\n")

    assert not stats.failures, "%d lifecycles failed, first: %s" % (
        len(stats.failures), "\n".join(stats.failures[:10]))
    # counters: one per upgrade, none left active, one end each
    assert d["total"] == upgrades, (d, upgrades)
    assert c1["active"] == 0
    assert sum(d[r] for r in rlib.REASONS) == upgrades, d
    for reason in rlib.REASONS:
        low = sum(k for f, k in faults.items() if FAULTS[f][2] == {reason})
        high = sum(k for f, k in faults.items() if reason in FAULTS[f][2])
        assert low <= d[reason] <= high, (reason, d[reason], low, high, d)
    # no descriptor leak, RSS flat under the same load
    assert fds == {p: base[p][0] for p in pids}
    if rlib.ASAN:
        return      # ASan's quarantine keeps freed memory: RSS says nothing
    for p in pids:
        assert growth[p] <= 16384, report
        assert per_k[p] <= 512, report
