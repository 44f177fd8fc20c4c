"""Graceful drain at scale: 200 live WebSocket connections, busy and idle,
through one nginx while it reloads or quits.

The clients and the streaming backend (t/drainlib/fleet.py) run in one
asyncio loop on raw sockets. Both ends behave like real endpoints: they
answer a Close with a Close, so the closing handshakes complete and an
exiting worker can go long before ws_heartbeat_drain_timeout.

A backend that streams has a message on its way when nginx's Close 1001
reaches it. The module therefore sends its Close to the backend only and
lets the client learn of the drain from the backend's own Close, which
comes after the backend's last message: a Close sent to the client at the
same time would be overtaken by that message, which clients then ignore
(RFC 6455 5.5.1). The tests ask for every message the backend sent before
its Close to reach the client before the client's Close
(check_close_last, and the one-connection test at the end).

Run with -s to see the measured figures ("drain figure"); a failure
shows the history of the first connection at fault. With
DRAIN_SCALE_LOG_LEVEL=debug nginx logs at debug level."""

import asyncio
import os
import re
import signal
import socket
import time

import pytest

from conftest import proxy_server
from drainlib.fleet import Fleet, alive, wait_gone
from lib.nginx import free_port, slow
from lib.wsproto import BINARY, CLOSE, CONT, TEXT, Client

N = 200
LOG_LEVEL = os.environ.get("DRAIN_SCALE_LOG_LEVEL", "info")   # or debug
GRACE = slow(3.0)                   # ws_heartbeat_drain_timeout
LATE = slow(1.0)                    # the old workers' exit after it
BUSY_MIN = 10                       # messages before the signal

CONF = """
            ws_heartbeat on;
            ws_heartbeat_interval 300ms;
            ws_heartbeat_drain %s;
            ws_heartbeat_drain_timeout %dms;
            ws_heartbeat_drain_spread 0;
            add_header X-Worker $pid always;"""


# The first Close a client sees is the module's, or the backend's answer to
# the module's Close when that went through first: the module's Close to the
# client waits for the end of the fragmented message in flight, the backend
# finishes that message and answers at once, and the module then drops its
# own Close (the closing handshake is under way).
DRAIN_REASONS = (b"server shutting down", b"")


def busy(i):
    return i % 5 < 3                # 120 busy, 80 idle


@pytest.fixture
def fleet(nginx_factory):
    """(loop, Fleet) with the backend listening. Set up after nginx_factory
    so that it is torn down first: the connections go, then nginx."""
    loop = asyncio.new_event_loop()
    fl = Fleet(loop)
    loop.run_until_complete(fl.start_backend())
    yield loop, fl
    loop.run_until_complete(fl.stop())
    loop.close()


def start_nginx(nginx_factory, fl, drain):
    port = free_port()
    n = nginx_factory(proxy_server(port, fl.port,
                                   CONF % (drain, GRACE * 1000)), port=port,
                      workers=2, log_level=LOG_LEVEL)
    return n, port


async def open_fleet(n, port, fl):
    """N clients, all upgraded, traffic flowing both ways, idle clients
    pinged; returns (clients, old worker pids)."""
    assert await fl.connect(port, 0, range(N), busy), \
        [c.status for c in fl.gen(0) if c.status != 101][:5]
    clients = fl.gen(0)
    old = set(n.worker_pids())
    assert len(old) == 2
    assert {c.worker for c in clients} <= old

    def warm():
        backs = fl.gen(0, "backend")
        return (len(backs) == N
                and all(len(c.got) >= BUSY_MIN for c in clients if c.busy)
                and all(c.pings >= 1 for c in clients if not c.busy)
                and all(len(b.got) >= 2 for b in backs if b.busy))
    assert await fl.until(warm, 15), "traffic did not start"
    return clients, old


def check_close(side, conns, t0, code=1001, reasons=DRAIN_REASONS,
                within=GRACE):
    """Every connection's first Close has this code and one of these
    reasons, at most within seconds after t0 (default: the drain's 1001 in
    the grace period)."""
    bad = []
    for c in conns:
        if not c.closes:
            bad.append("%s %d: no Close" % (side, c.conn_id))
            continue
        t, got_code, got_reason = c.closes[0]
        if got_code != code or got_reason not in reasons:
            bad.append("%s %d: Close %r %r" % (side, c.conn_id, got_code,
                                               got_reason))
        if within is not None and t - t0 > within:
            bad.append("%s %d: Close %.2fs after the signal"
                       % (side, c.conn_id, t - t0))
    return bad


def check_streams(clients, backs, slack=0.05):
    """Per connection: every message the backend finished before its Close
    arrived at the client, whole, byte-exact, numbered 0..k without a gap
    or a duplicate, and no Close cut a fragmented message. From the client
    to the backend the same, except that the messages a client sent after
    the backend had closed are lost (nginx ends the relay when the backend
    closes): a lost message must have been sent at most `slack` seconds
    before the backend's Close."""
    bad = []
    by_id = {b.conn_id: b for b in backs}
    for c in clients:
        b = by_id[c.conn_id]
        bad += c.check_stream() + b.check_stream()
        got = len(c.got) + len(c.after)
        if got != b.sent_whole:
            bad.append("backend %d: sent %d messages before its Close, %d "
                       "arrived" % (b.conn_id, b.sent_whole, got))
        for k in range(len(b.got) + len(b.after), c.sent_whole):
            if b.close_sent_at is None or \
                    c.sent_at[k] < b.close_sent_at - slack:
                bad.append("client %d: message %d lost" % (c.conn_id, k))
    return bad


def check_close_last(clients, backs):
    """The client's first Close comes after every message the backend sent
    before its own Close: none arrives after it (RFC 6455 5.5.1: no data
    frame after a Close; a client ignores them)."""
    by_id = {b.conn_id: b for b in backs}
    bad = []
    for c in clients:
        if c.after:
            b = by_id[c.conn_id]
            bad.append("client %d: messages %s of %d arrived after its Close "
                       "(%.1f ms after it; the backend's Close came %.1f ms "
                       "after it)"
                       % (c.conn_id, [s for s, _ in c.after][:6],
                          b.sent_whole,
                          1000 * (c.after_at - c.closes[0][0]),
                          1000 * ((c.closes[1][0] if len(c.closes) > 1
                                   else float("nan")) - c.closes[0][0])))
    return bad


def report_streams(clients, backs):
    busy_c = [c for c in clients if c.busy]
    busy_b = [b for b in backs if b.busy]
    by_id = {b.conn_id: b for b in backs}
    print("drain figure: %d/%d busy clients got data after their Close; "
          "%d/%d clients' first Close was the backend's; "
          "%d/%d busy backend connections got data after their Close; "
          "%d/%d busy clients' last message was lost after the backend "
          "closed; %d connections read what was left after a write error"
          % (sum(1 for c in busy_c if c.after), len(busy_c),
             sum(1 for c in clients if c.closes and c.closes[0][2] == b""),
             len(clients),
             sum(1 for b in busy_b if b.after), len(busy_b),
             sum(1 for c in busy_c if c.sent_whole > len(by_id[c.conn_id].got)
                 + len(by_id[c.conn_id].after)), len(busy_c),
             sum(1 for c in clients + backs if c.salvaged)))


async def wait_log(n, pattern, timeout):
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while not rx.search(n.log()):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def summary(bad, fl, n=None, limit=25):
    """The problems, the history of the first connection named, the
    error.log lines that are not notices."""
    out = "%d problems:\n%s" % (len(bad), "\n".join(bad[:limit]))
    m = re.match(r"(client|backend) (\d+):", bad[0]) if bad else None
    if m:
        i = int(m.group(2))
        out += "\nconnection %d, times from the signal:\n%s\n%s" % (
            i, fl.clients[(0, i)].dump(fl.t0), fl.backend[(0, i)].dump(fl.t0))
    if n is not None:
        lines = [l for l in n.log().splitlines() if "[notice]" not in l]
        out += "\nerror.log:\n" + "\n".join(lines[-40:])
    return out


async def drain_scenario(n, port, fl, sig):
    clients, old = await open_fleet(n, port, fl)
    backs = fl.gen(0, "backend")

    # some backend messages are half sent when the signal comes: their
    # Close must wait for the message's end
    # (wait for that moment rather than hope for it: under ASan the fleet
    # is slower and fewer messages are in flight at any instant)
    def in_message():
        return sum(1 for b in backs if b.out_frags)
    await fl.until(lambda: in_message() >= 10, 5)
    mid = in_message()
    t0 = fl.t0 = time.monotonic()
    n.signal(sig)
    gone = asyncio.ensure_future(wait_gone(old, t0 + GRACE + LATE))
    assert mid >= 10, "only %d connections inside a message" % mid

    # every client and every backend connection gets Close 1001 ...
    await fl.until(lambda: all(c.closes for c in clients + backs),
                   GRACE + LATE)
    bad = check_close("client", clients, t0) + check_close("backend", backs,
                                                           t0)
    assert not bad, summary(bad, fl, n)
    t_first = min(c.closes[0][0] for c in clients) - t0
    t_close = max(c.closes[0][0] for c in clients) - t0

    # ... the handshakes complete, the connections end ...
    assert await fl.until(lambda: all(c.done.done() for c in clients + backs),
                          t0 + GRACE + LATE - time.monotonic())
    t_end = max(c.eof_at for c in clients) - t0

    # ... and the old workers exit, long before the grace period ends
    t_gone = await gone
    assert t_gone is not None, "old workers %s alive %.1fs after the signal" \
        % ([p for p in old if alive(p)], GRACE + LATE)
    lived = t_gone - t0
    print("\ndrain figure: %s, old workers lived %.3fs after the signal "
          "(first Close %.3fs, last Close %.3fs, last connection end %.3fs)"
          % (signal.Signals(sig).name, lived, t_first, t_close, t_end))
    assert lived < GRACE + LATE
    assert "drain timeout" not in n.log(), \
        "a closing handshake did not complete"
    return clients, backs, old


def test_reload_drains_200_connections(fleet, nginx_factory):
    loop, fl = fleet
    n, port = start_nginx(nginx_factory, fl, "on")

    async def run():
        clients, backs, old = await drain_scenario(n, port, fl,
                                                   signal.SIGHUP)
        # reconnecting clients are served by the new workers
        assert await fl.connect(port, 1, range(N), busy)
        new = set(n.worker_pids())
        assert new and not new & old
        workers = {c.worker for c in fl.gen(1)}
        assert workers <= new, (workers, new, old)
        # and their traffic flows
        assert await fl.until(lambda: all(len(c.got) >= 3 for c in fl.gen(1)
                                          if c.busy), 10)
        for c in fl.gen(1):
            c.send_close(1000)
        assert await fl.until(lambda: all(c.done.done() for c in fl.gen(1)),
                              10)
        # what was sent before the Close arrived, whole ...
        report_streams(clients, backs)
        bad = check_streams(clients, backs)
        assert not bad, summary(bad, fl, n)
        # ... and before the client's Close
        bad = check_close_last(clients, backs)
        assert not bad, summary(bad, fl, n)

    loop.run_until_complete(run())


def test_quit_drains_200_connections(fleet, nginx_factory):
    loop, fl = fleet
    n, port = start_nginx(nginx_factory, fl, "on")

    async def run():
        clients, backs, old = await drain_scenario(n, port, fl,
                                                   signal.SIGQUIT)
        # the master goes too, within the grace period + 1 s
        while n.proc.poll() is None and \
                time.monotonic() - fl.t0 < GRACE + LATE:
            await asyncio.sleep(0.005)
        assert n.proc.poll() is not None, "master still running"
        print("drain figure: SIGQUIT, master exited %.3fs after the signal"
              % (time.monotonic() - fl.t0))
        report_streams(clients, backs)
        bad = check_streams(clients, backs)
        assert not bad, summary(bad, fl, n)
        bad = check_close_last(clients, backs)
        assert not bad, summary(bad, fl, n)

    loop.run_until_complete(run())


def test_reload_drain_off_keeps_connections(fleet, nginx_factory):
    loop, fl = fleet
    n, port = start_nginx(nginx_factory, fl, "off")

    async def run():
        clients, old = await open_fleet(n, port, fl)
        backs = fl.gen(0, "backend")
        t0 = fl.t0 = time.monotonic()
        n.signal(signal.SIGHUP)
        # the new workers are up and take new connections ...
        for p in old:
            assert await wait_log(n, r"%d#%d: gracefully shutting down"
                                  % (p, p), 5)
        assert await fl.connect(port, 1, range(4), busy)
        new = {c.worker for c in fl.gen(1)}
        assert not new & old
        # ... while the old ones keep theirs, relaying, for 1.5 s
        before = {c.conn_id: len(c.got) for c in clients}
        await asyncio.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
        closed = [c.conn_id for c in clients + backs if c.closes]
        assert not closed, "Close within 1.5s of the reload: %s" % closed[:10]
        # every old worker that holds connections is still there (one that
        # got none of them exits at once, as stock nginx does)
        holding = {c.worker for c in clients}
        assert sorted(p for p in holding if alive(p)) == sorted(holding)
        late = time.monotonic() - 0.3
        stalled = [c.conn_id for c in clients if c.busy and (
            len(c.got) - before[c.conn_id] < 20 or c.last_msg_at < late)]
        assert not stalled, "not relaying any more: %s" % stalled[:10]
        assert all(len(b.got) > 2 for b in backs if b.busy)

        # the clients go: the old workers follow
        t1 = time.monotonic()
        for c in clients + fl.gen(1):
            c.send_close(1000)
        assert await fl.until(lambda: all(
            c.done.done() for c in clients + backs + fl.gen(1)), 10)
        t_gone = await wait_gone(old, time.monotonic() + 5)
        assert t_gone is not None, "old workers stay after their clients"
        print("\ndrain figure: drain off, old workers lived %.3fs after the "
              "reload, %.3fs after the clients closed"
              % (t_gone - t0, t_gone - t1))
        # the clients' closing handshakes went through the old workers
        bad = (check_close("backend", backs, t1, 1000, (b"",), None)
               + check_close("client", clients, t1, 1000, (b"",), None))
        assert not bad, summary(bad, fl, n)
        bad = check_streams(clients, backs)
        assert not bad, summary(bad, fl, n)

    loop.run_until_complete(run())


def test_message_crossing_the_close_reaches_the_client_first(ws_proxy):
    """The failure the tests above see on most busy connections, on one
    connection and deterministically: the backend sends a message before
    it has read the Close 1001 nginx sent it (the two cross on the wire).
    That message was sent before the backend's Close, so it must reach the
    client, and before the client's Close: a client ignores data frames
    after a Close (RFC 6455 5.5.1, 1.4)."""
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_drain_timeout 3s;
            ws_heartbeat_drain_spread 0;""",
                          backend_kw=dict(mode="silent", answer_close=False))
    c = Client(port)
    conn = b.accept()
    conn.send_frame(TEXT, b"0:0")
    assert c.recv_frame().payload == b"0:0"
    n.signal(signal.SIGHUP)
    # nginx's Close reaches the backend, which has sent its next message
    # before reading it, then answers and closes (as a server does)
    g = conn.next_frame(timeout=5)
    assert g is not None and g.opcode == CLOSE and g.close_code == 1001
    conn.send_frame(TEXT, b"0:1")
    conn.send_frame(CLOSE, g.payload[:2])
    conn.sock.shutdown(socket.SHUT_WR)
    # the client reads until the connection ends, answering the first Close
    frames = []
    while True:
        try:
            f = c.recv_frame(timeout=5)
        except ConnectionResetError:    # our answer met a closed socket
            f = None
        if f is None:
            break
        frames.append(f)
        if f.opcode == CLOSE and [x.opcode for x in frames].count(CLOSE) == 1:
            try:
                c.send_frame(CLOSE, f.payload[:2])
            except OSError:
                pass
    c.close()
    kinds = [(x.opcode, x.payload) for x in frames]
    closes = [i for i, x in enumerate(frames) if x.opcode == CLOSE]
    assert closes and frames[closes[0]].close_code == 1001, kinds
    data = [x.payload for x in frames if x.opcode in (TEXT, BINARY, CONT)]
    before = [x.payload for x in frames[:closes[0]]
              if x.opcode in (TEXT, BINARY, CONT)]
    assert data == [b"0:1"], kinds
    assert before == [b"0:1"], \
        "the message arrived after the client's Close: %r" % kinds
