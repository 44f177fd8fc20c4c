"""Many WebSocket clients and a streaming backend in one asyncio loop, on
raw sockets (lib.wsproto's codec), for the drain-at-scale tests.

Connection i of generation g asks for /ws?g=<g>&id=<i>&kind=<busy|idle>.
The backend sends each busy connection one frame every TICK: message
number seq of connection i is message(i, seq): text "<i>:<seq>", every
6th a binary of 1.5-4.5 KB, every 6th (another phase) a text fragmented
into 3 frames sent on 3 consecutive ticks; connections are out of
phase, so that at any moment about 2 in 7 are inside a fragmented
message. Busy clients send the backend a message every CLIENT_EVERY
ticks, every 3rd fragmented into 2 frames on consecutive ticks. Idle
connections carry nothing but the module's Pings and the clients'
Pongs.

Both ends behave like real endpoints: a Close is answered with a Close
(echoing the code) after finishing the fragmented message being sent, if
any; nothing is sent after it; the backend then shuts down its TCP side
(RFC 6455 7.1.1), the client closes when it sees EOF. Clients answer at
once; a busy backend connection answers at its next tick, after that
tick's frame, which is what a Close crossing a message in flight looks
like (deterministically, instead of by chance on the loopback). Every
frame is recorded with its time (Endpoint.dump() shows the history), so
the tests can check what arrived, whole and in order, before and after
each Close.

A Fleet may change the pace: Fleet(loop, tick=0.03, client_every=1) makes
busy clients send a frame every 30 ms; close_delay=0.3 makes every backend
connection answer a Close 300 ms after it arrived (streaming on
meanwhile), as a backend that finishes some work first does."""

import asyncio
import os
import socket
import time
from urllib.parse import parse_qs, urlsplit

from lib.wsproto import (BINARY, CLOSE, CONT, PING, PONG, TEXT, Parser,
                         accept_key, close_payload, encode_frame,
                         handshake_request, handshake_response, parse_head)

TICK = 0.02
CLIENT_EVERY = 5
PATTERN = bytes(range(256)) * 20


def message(conn_id, seq):
    """(opcode, payload, fragments) of backend message seq of conn_id."""
    head = b"%d:%d" % (conn_id, seq)
    kind = (seq + conn_id) % 6          # connections out of phase
    if kind == 5:
        size = 1500 + (seq * 397 + conn_id * 13) % 3000
        off = seq % 256
        return BINARY, head + b"|" + PATTERN[off:off + size], 1
    if kind == 2:
        return TEXT, head + b"|" + b"fragmented " * 8, 3
    return TEXT, head, 1


def client_message(conn_id, seq):
    """(opcode, payload, fragments) of client message seq of conn_id."""
    head = b"c%d:%d" % (conn_id, seq)
    if (seq + conn_id) % 3 == 1:
        return TEXT, head + b"|" + b"in two " * 5, 2
    return TEXT, head, 1


def split(payload, n):
    step = max(1, (len(payload) + n - 1) // n)
    parts = [payload[i:i + step] for i in range(0, len(payload), step)]
    while len(parts) < n:
        parts.append(b"")
    return parts


def fragments(opcode, payload, n):
    """The frames of one message: n (opcode, fin, payload) tuples."""
    if n == 1:
        return [(opcode, True, payload)]
    parts = split(payload, n)
    return [(opcode if i == 0 else CONT, i == len(parts) - 1, part)
            for i, part in enumerate(parts)]


def seq_of(payload, prefix=b""):
    head = payload.split(b"|", 1)[0]
    if not head.startswith(prefix):
        return None, None
    try:
        i, s = head[len(prefix):].split(b":")
        return int(i), int(s)
    except ValueError:
        return None, None


class Endpoint(asyncio.Protocol):
    """What both ends share: framing, reassembly, the closing handshake,
    an outgoing message that may be spread over ticks."""

    mask = False          # client frames are masked
    expect = None         # message(...) or client_message(...)
    prefix = b""

    def __init__(self, fleet):
        self.fleet = fleet
        self.transport = None
        self.parser = Parser()
        self.conn_id = None
        self.busy = False
        self.upgraded = False
        self.head = b""
        # outgoing
        self.out_seq = 0           # next message number to start
        self.out_frags = []        # frames of the message being sent
        self.sent_whole = 0        # messages sent whole
        self.sent_at = []          # when each was
        self.close_sent = False
        self.close_sent_at = None
        # incoming
        self.msg_op = None         # fragmented message being received
        self.msg_parts = []
        self.got = []              # seqs of whole messages before 1st Close
        self.after = []            # (seq, opcode) of messages after it
        self.after_at = None       # when the first of them arrived
        self.errors = []
        self.partial_at_close = False
        self.closes = []           # (time, code, reason) of every Close
        self.pings = 0
        self.last_msg_at = None
        self.eof_at = None
        self.salvaged = False      # read after a write error
        self.trace = []            # (time, what, opcode, fin, payload)
        self.started = time.monotonic()
        self.done = asyncio.get_event_loop().create_future()

    # -- output ---------------------------------------------------------

    def send(self, op, fin, payload):
        if self.transport is not None and not self.transport.is_closing():
            self.note("tx", op, fin, payload)
            self.transport.write(encode_frame(op, payload, fin, self.mask))

    def note(self, what, op=None, fin=None, payload=b""):
        self.trace.append((time.monotonic(), what, op, fin, payload[:24]))

    def dump(self, t0=0.0):
        """The connection's history, one line per event."""
        names = {CONT: "cont", TEXT: "text", BINARY: "binary",
                 CLOSE: "close", PING: "ping", PONG: "pong"}
        return "\n".join(
            "  %s %d %+9.3f ms %s %s%s %r" % (
                self.side, self.conn_id, 1000 * (t - t0), what,
                names.get(op, op if op is not None else ""),
                "" if fin is None else (" fin" if fin else " more"), p)
            for t, what, op, fin, p in self.trace)

    def rx_after_close(self):
        """(data frames, Close frames) received after the first Close."""
        data = closes = 0
        seen = False
        for _, what, op, _, _ in self.trace:
            if what != "rx":
                continue
            if seen and op in (CONT, TEXT, BINARY):
                data += 1
            if op == CLOSE:
                if seen:
                    closes += 1
                seen = True
        return data, closes

    def tick(self):
        """Send the next frame of the stream (called every tick)."""
        if self.close_sent or not self.upgraded:
            return
        if not self.out_frags:
            op, payload, n = self.next_message(self.out_seq)
            self.out_seq += 1
            self.out_frags = fragments(op, payload, n)
        self.send_frag()

    def send_frag(self):
        self.send(*self.out_frags.pop(0))
        if not self.out_frags:
            self.sent_whole += 1
            self.sent_at.append(time.monotonic())

    def finish_message(self):
        while self.out_frags:
            self.send_frag()

    def send_close(self, code, reason=b""):
        if self.close_sent:
            return
        self.finish_message()
        self.send(CLOSE, True, close_payload(code, reason))
        self.close_sent = True
        self.close_sent_at = time.monotonic()

    # -- input ----------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if not self.upgraded:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, rest = self.head.split(b"\r\n\r\n", 1)
            self.head = b""
            self.on_head(head.decode("latin-1"))
            if not self.upgraded:
                return
            data = rest
        for f in self.parser.feed(data):
            self.on_frame(f)
        self.fleet.progress()

    def on_frame(self, f):
        self.note("rx", f.opcode, f.fin, f.payload)
        if bool(f.masked) != (not self.mask):
            self.errors.append("frame masked=%d" % f.masked)
        if f.opcode == PING:
            self.pings += 1
            if not self.close_sent:
                self.send(PONG, True, f.payload)
            return
        if f.opcode == PONG:
            return
        if f.opcode == CLOSE:
            code = f.close_code
            self.closes.append((time.monotonic(), code, f.payload[2:]))
            if len(self.closes) == 1:
                if self.msg_op is not None:
                    self.partial_at_close = True
                self.on_close(code)
            return
        # data frames
        if f.opcode == CONT:
            if self.msg_op is None:
                self.errors.append("continuation without a message")
                return
            self.msg_parts.append(f.payload)
        else:
            if self.msg_op is not None:
                self.errors.append("new message inside a fragmented one")
            self.msg_op = f.opcode
            self.msg_parts = [f.payload]
        if f.fin:
            op, payload = self.msg_op, b"".join(self.msg_parts)
            self.msg_op, self.msg_parts = None, []
            self.on_message(op, payload)

    def on_message(self, op, payload):
        i, seq = seq_of(payload, self.prefix)
        if i != self.conn_id or seq is None:
            self.errors.append("foreign message %r" % payload[:40])
            return
        want_op, want, _ = self.expect(i, seq)
        if (op, payload) != (want_op, want):
            self.errors.append("message %d corrupted (%d bytes)"
                               % (seq, len(payload)))
        if self.closes:
            self.after.append((seq, op))
            if self.after_at is None:
                self.after_at = time.monotonic()
            return
        if seq != len(self.got):
            self.errors.append("got message %d after %d messages"
                               % (seq, len(self.got)))
        self.got.append(seq)
        self.last_msg_at = time.monotonic()

    def on_close(self, code):
        # answer the Close as real endpoints do, echoing the code
        self.send_close(code if code is not None else 1000)

    def eof_received(self):
        self.note("eof")
        self.eof_at = time.monotonic()
        return False          # close our side too

    def connection_lost(self, exc):
        self.note("lost %r" % (exc,))
        if exc is not None:
            self.salvage()
        if self.eof_at is None:
            self.eof_at = time.monotonic()
        if not self.done.done():
            self.done.set_result(True)
        self.fleet.progress()

    def salvage(self):
        """After a write error (the peer had closed and answered our data
        with a RST) asyncio drops the connection without reading what had
        arrived before; read it now: it is what nginx delivered."""
        sock = self.transport.get_extra_info("socket")
        if sock is None or sock.fileno() < 0:
            return
        s = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            s.setblocking(False)
            data = b""
            while True:
                try:
                    chunk = s.recv(1 << 16)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        if data:
            self.note("salvaged %d bytes" % len(data))
            self.salvaged = True
            if self.upgraded:
                for f in self.parser.feed(data):
                    self.on_frame(f)

    def check_stream(self):
        """Problems with what this end received: [] when every message
        arrived whole, byte-exact, numbered 0..k without a gap."""
        out = ["%s %d: %s" % (self.side, self.conn_id, e)
               for e in self.errors]
        if self.partial_at_close:
            out.append("%s %d: Close inside a fragmented message"
                       % (self.side, self.conn_id))
        return out


class BackendConn(Endpoint):
    side = "backend"
    expect = staticmethod(client_message)
    prefix = b"c"

    def __init__(self, fleet):
        super().__init__(fleet)
        self.gen = None
        self.path = None
        self.close_pending = None

    def next_message(self, seq):
        return message(self.conn_id, seq)

    def on_head(self, head):
        start, headers = parse_head(head)
        self.path = start.split()[1]
        q = parse_qs(urlsplit(self.path).query)
        self.gen = int(q["g"][0])
        self.conn_id = int(q["id"][0])
        self.busy = q["kind"][0] == "busy"
        self.transport.write(handshake_response(headers))
        self.upgraded = True
        self.fleet.backend[(self.gen, self.conn_id)] = self

    def on_close(self, code):
        # a streaming backend answers at its next tick, after that tick's
        # frame: the Close has crossed a message already on its way, as it
        # does on any network with some latency (here at most one TICK)
        if self.fleet.close_delay is not None:
            self.fleet.loop.call_later(self.fleet.close_delay,
                                       self.answer_close, code)
            return
        if self.busy and not self.close_sent:
            self.close_pending = code
            return
        self.answer_close(code)

    def answer_close(self, code):
        super().on_close(code)
        # the server closes the TCP connection first (RFC 6455 7.1.1)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write_eof()

    def tick(self):
        super().tick()
        if self.close_pending is not None:
            code, self.close_pending = self.close_pending, None
            self.answer_close(code)


class ClientConn(Endpoint):
    side = "client"
    mask = True
    expect = staticmethod(message)

    def __init__(self, fleet, gen, conn_id, busy):
        super().__init__(fleet)
        self.gen = gen
        self.conn_id = conn_id
        self.busy = busy
        self.status = None
        self.headers = {}
        self.request, self.key = handshake_request(
            "/ws?g=%d&id=%d&kind=%s" % (gen, conn_id,
                                        "busy" if busy else "idle"),
            "127.0.0.1")
        self.upgrade_done = asyncio.get_event_loop().create_future()
        self.ticks = 0

    def next_message(self, seq):
        return client_message(self.conn_id, seq)

    def tick(self):
        # a slower stream than the backend's
        self.ticks += 1
        if self.out_frags or \
                (self.ticks + self.conn_id) % self.fleet.client_every == 0:
            super().tick()

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.write(self.request)

    def on_head(self, head):
        start, self.headers = parse_head(head)
        self.status = int(start.split()[1])
        ok = (self.status == 101 and self.headers.get("sec-websocket-accept")
              == accept_key(self.key).decode())
        self.upgraded = ok
        if not self.upgrade_done.done():
            self.upgrade_done.set_result(ok)

    @property
    def worker(self):
        w = self.headers.get("x-worker")
        return int(w) if w else None

    def connection_lost(self, exc):
        if not self.upgrade_done.done():
            self.upgrade_done.set_result(False)
        super().connection_lost(exc)


class Fleet:
    """The backend server, the clients, the ticker; all in one loop."""

    def __init__(self, loop, tick=TICK, client_every=CLIENT_EVERY,
                 close_delay=None):
        self.loop = loop
        self.tick = tick           # the pace of the busy streams
        self.client_every = client_every   # ticks between client messages
        self.close_delay = close_delay     # the backend's answer to a Close
        self.server = None
        self.port = None
        self.backend = {}          # (gen, id) -> BackendConn
        self.clients = {}          # (gen, id) -> ClientConn
        self.ticker = None
        self.waiters = []          # (predicate, future)
        self.t0 = 0.0              # when the test sent its signal
        self.check_scheduled = False

    async def start_backend(self):
        self.server = await self.loop.create_server(
            lambda: BackendConn(self), "127.0.0.1", 0, backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]
        self.ticker = self.loop.create_task(self._tick())

    async def _tick(self):
        nxt = self.loop.time()
        while True:
            nxt += self.tick
            await asyncio.sleep(max(0.0, nxt - self.loop.time()))
            for c in list(self.backend.values()):
                if c.busy:
                    c.tick()
            for c in list(self.clients.values()):
                if c.busy:
                    c.tick()

    async def connect(self, port, gen, ids, busy, timeout=15.0):
        """Open clients (gen, i) for i in ids; True when all upgraded."""
        async def one(i):
            c = ClientConn(self, gen, i, busy(i))
            self.clients[(gen, i)] = c
            await self.loop.create_connection(lambda: c, "127.0.0.1", port)
            return await c.upgrade_done
        sem = asyncio.Semaphore(64)

        async def limited(i):
            async with sem:
                return await one(i)
        res = await asyncio.wait_for(
            asyncio.gather(*(limited(i) for i in ids)), timeout)
        return all(res)

    def gen(self, g, side="client"):
        d = self.clients if side == "client" else self.backend
        return [c for (gg, _), c in sorted(d.items()) if gg == g]

    # -- awaiting conditions --------------------------------------------

    def progress(self):
        """Something happened: check the waiters once per loop pass."""
        if not self.check_scheduled and self.waiters:
            self.check_scheduled = True
            self.loop.call_soon(self._check)

    def _check(self):
        self.check_scheduled = False
        for pred, fut in list(self.waiters):
            if not fut.done() and pred():
                fut.set_result(True)

    async def until(self, pred, timeout):
        """Wait until pred() holds (checked on every event); False on
        timeout."""
        if pred():
            return True
        fut = self.loop.create_future()
        item = (pred, fut)
        self.waiters.append(item)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return pred()
        finally:
            self.waiters.remove(item)

    async def stop(self):
        if self.ticker:
            self.ticker.cancel()
            try:
                await self.ticker
            except asyncio.CancelledError:
                pass
        for d in (self.clients, self.backend):
            for c in d.values():
                if c.transport is not None:
                    c.transport.abort()
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        me = asyncio.current_task()
        for t in asyncio.all_tasks(self.loop):
            if t is not me:
                t.cancel()
        await asyncio.sleep(0)


def alive(pid):
    """The process exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


async def wait_gone(pids, deadline, poll=0.005):
    """time.monotonic() when none of pids is alive any more, or None if
    some still is at deadline (a time.monotonic() value)."""
    while True:
        if not any(alive(p) for p in pids):
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(poll)
