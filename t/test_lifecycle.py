"""The planned ends of a connection and the closes the module makes on
behalf of a side, on a real nginx with the real module: the drain spread
over ws_heartbeat_drain_spread (and cut to fit worker_shutdown_timeout),
ws_heartbeat_max_age, ws_heartbeat_drain off in an exiting worker, the
rules of RFC 6455 5.5.1 for the endpoint the module becomes when it sends
a Close (nothing more of the other side after it, its answer not relayed
twice), a connection in lingering close at the exit, and a module close
in a location with post_action.

Many clients and a recording backend come from t/drainlib/fleet.py; one
connection scenarios use lib.wsproto's raw Client and Backend. Timing
bounds are generous and scaled by lib.nginx's slowdown factor."""

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from drainlib.fleet import Fleet, alive, wait_gone
from lib.nginx import SLOWDOWN as SLOW, free_port, wait_for
from lib.wsproto import CLOSE, PING, TEXT, Client, close_payload
from test_observability import LOG_FORMAT_CONF, Status, closes, read_log, val


@pytest.fixture
def fleets(nginx_factory):
    """(loop, make): make(**kw) -> a Fleet with its backend listening.
    Set up after nginx_factory so that the fleets go first at teardown."""
    loop = asyncio.new_event_loop()
    made = []

    def make(**kw):
        fl = Fleet(loop, **kw)
        loop.run_until_complete(fl.start_backend())
        made.append(fl)
        return fl

    yield loop, make
    for fl in made:
        loop.run_until_complete(fl.stop())
    loop.close()


def site(port, backend, extra="", locations=""):
    """An http block body: one server on port proxying / to backend (a
    port), with the module on, X-Worker, an access log in
    test_observability's format and the status endpoint."""
    return LOG_FORMAT_CONF + """
    server {
        listen 127.0.0.1:%(port)d;
        access_log logs/ws.log wshb;
        location / {
            proxy_pass http://127.0.0.1:%(backend)d;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            add_header X-Worker $pid always;
            ws_heartbeat on;
            %(extra)s
        }
        location = /status { ws_heartbeat_status; }
        %(locations)s
    }
""" % dict(port=port, backend=backend, extra=extra, locations=locations)


def start(nginx_factory, backend, extra="", locations="", **kw):
    port = free_port()
    n = nginx_factory(site(port, backend, extra, locations), port=port, **kw)
    n.ws_log = os.path.join(n.prefix, "logs", "ws.log")
    return n, port


def idle(i):
    return False


def busy(i):
    return True


def history(fl, c, t0):
    """One connection's history (client and backend) for a failure."""
    b = fl.backend.get((c.gen, c.conn_id))
    return c.dump(t0) + ("\n" + b.dump(t0) if b else "")


async def connect_idle(fl, n, port, count):
    """count idle clients upgraded, each with its backend connection;
    returns (clients, old worker pids)."""
    assert await fl.connect(port, 0, range(count), idle)
    clients = fl.gen(0)
    assert await fl.until(lambda: len(fl.gen(0, "backend")) == count, 10)
    return clients, set(n.worker_pids())


def still_open(fl, clients, t0, limit):
    """The message when some of clients are still open after limit
    seconds: how many, and the history of the first."""
    left = [c for c in clients if not c.done.done()]
    return "%d of %d connections still open %.1fs after the start:\n%s" % (
        len(left), len(clients), limit, history(fl, left[0], t0)
        if left else "")


async def all_closed(fl, conns, timeout):
    """Wait until every one of conns has had a Close; those that have
    not."""
    await fl.until(lambda: all(c.closes for c in conns), timeout)
    return [c for c in conns if not c.closes]


async def new_connection_served(fl, n, port, old=()):
    """A new connection is served, by a worker that is not one of old, and
    its traffic flows."""
    assert await fl.connect(port, 9, range(1), busy)
    c = fl.gen(9)[0]
    assert c.worker is not None and c.worker not in old, (c.worker, old)
    assert c.worker in n.worker_pids()
    assert await fl.until(lambda: len(c.got) >= 3, 5 * SLOW), c.dump()
    c.send_close(1000)
    assert await fl.until(lambda: c.done.done(), 5 * SLOW)


# -- (a) the drain spread over ws_heartbeat_drain_spread ----------------------

def test_reload_spreads_the_drain(fleets, nginx_factory):
    """200 idle connections, spread 4s: each gets its Close at its own
    moment, evenly over the window (no fifth holds more than 40%), its
    heartbeat going on until then; the old worker exits by spread + drain
    timeout + 1 s; a new connection is served by the new worker."""
    N, SPREAD, GRACE = 200, 4.0, 2.0
    loop, make = fleets
    fl = make()
    n, port = start(nginx_factory, fl.port, """
            ws_heartbeat_interval 1s;
            ws_heartbeat_drain_spread 4s;
            ws_heartbeat_drain_timeout 2s;""")

    async def run():
        clients, old = await connect_idle(fl, n, port, N)
        t0 = fl.t0 = time.monotonic()
        n.signal(signal.SIGHUP)
        limit = SPREAD + GRACE + 1.0 * SLOW
        gone = asyncio.ensure_future(wait_gone(old, t0 + limit))
        late = await all_closed(fl, clients, limit)
        assert not late, "%d clients got no Close:\n%s" % (
            len(late), history(fl, late[0], t0))
        # the backend's answer to the module's Close 1001, passed on
        bad = [c for c in clients if c.closes[0][1:] != (1001, b"")]
        assert not bad, history(fl, bad[0], t0)
        at = sorted(c.closes[0][0] - t0 for c in clients)
        fifths = [0] * 5
        for t in at:
            fifths[min(4, int(t / (SPREAD / 5)))] += 1
        print("\nspread figure: closes per fifth of 4s %s, first %.3fs, "
              "last %.3fs" % (fifths, at[0], at[-1]))
        assert max(fifths) <= 0.4 * N, "closes per fifth of %.0fs: %s" % (
            SPREAD, fifths)
        # until its moment a connection goes on as before, heartbeat
        # included (ws_heartbeat_interval 1s)
        deaf = [c for c in clients if c.closes[0][0] - t0 > 2.5 and not any(
            w == "rx" and op == PING and t > t0 for t, w, op, _, _ in c.trace)]
        assert not deaf, "no Ping after the reload:\n" + \
            history(fl, deaf[0], t0)
        t_gone = await gone
        assert t_gone is not None, "old worker alive %.1fs after the reload" \
            % limit
        print("spread figure: the old worker lived %.3fs" % (t_gone - t0))
        assert "drain timeout" not in n.log()
        await new_connection_served(fl, n, port, old)

    loop.run_until_complete(run())


# -- (b) closing on behalf of a busy client: drain and max age ----------------

@pytest.mark.parametrize("end", ["drain", "max_age"])
def test_close_on_behalf_of_busy_client(fleets, nginx_factory, end):
    """Clients that send a message every 30 ms, a backend that answers a
    Close 300 ms after it came: after the module's Close 1001 the backend
    gets nothing more of its client (no data frame, no second Close), and
    before it a whole, in-order prefix of what the client sent; the client
    gets the backend's Close."""
    N = 10
    loop, make = fleets
    fl = make(tick=0.03, client_every=1, close_delay=0.3)
    extra = """
            ws_heartbeat_interval 1s;
            ws_heartbeat_drain_timeout 3s;
            ws_heartbeat_drain_spread 0;"""
    if end == "max_age":
        extra += "ws_heartbeat_max_age 1500ms 500ms;"
    n, port = start(nginx_factory, fl.port, extra)
    reason = b"server shutting down" if end == "drain" else b"max age"

    async def run():
        assert await fl.connect(port, 0, range(N), busy)
        clients = fl.gen(0)
        fl.t0 = time.monotonic()
        if end == "drain":
            # traffic flows both ways, then the reload
            assert await fl.until(lambda: len(fl.gen(0, "backend")) == N
                                  and all(len(b.got) >= 5
                                          for b in fl.gen(0, "backend")),
                                  5 * SLOW)
            fl.t0 = time.monotonic()
            n.signal(signal.SIGHUP)
        conns = clients + fl.gen(0, "backend")
        limit = (1.5 + 3 + 1) * SLOW
        assert await fl.until(lambda: all(c.done.done() for c in conns),
                              limit), still_open(fl, clients, fl.t0, limit)
        backs = {b.conn_id: b for b in fl.gen(0, "backend")}
        bad = []
        for c in clients:
            b = backs[c.conn_id]
            problems = c.check_stream() + b.check_stream()
            if not b.closes or b.closes[0][1:] != (1001, reason):
                problems.append("backend %d: first Close %r"
                                % (b.conn_id, b.closes[:1]))
            data, more = b.rx_after_close()
            if data or more:
                problems.append("backend %d: %d data frames and %d Close "
                                "frames after the module's Close"
                                % (b.conn_id, data, more))
            if len(b.got) < 5:
                problems.append("backend %d: only %d messages before the "
                                "Close" % (b.conn_id, len(b.got)))
            if c.sent_whole <= len(b.got):
                problems.append("client %d: sent nothing after the module's "
                                "Close" % c.conn_id)
            if not c.closes or c.closes[0][1:] != (1001, b"") \
                    or not b.close_sent_at \
                    or c.closes[0][0] < b.close_sent_at:
                problems.append("client %d: first Close %r is not the "
                                "backend's" % (c.conn_id, c.closes[:1]))
            if problems:
                bad += problems
                bad.append(history(fl, c, fl.t0))
        assert not bad, "\n".join(bad)
        print("\n%s figure: the backends got %d messages before the Close, "
              "the clients sent %d more" % (
                  end, sum(len(b.got) for b in backs.values()),
                  sum(c.sent_whole - len(backs[c.conn_id].got)
                      for c in clients)))

    loop.run_until_complete(run())
    # what the clients sent after the module's Close was discarded
    s = Status(port).wait(lambda s: val(s, "connections_active") == 0,
                          "the connections to end")
    ends = {r: v for r, v in closes(s).items() if v}
    assert ends == {end: N}, ends
    assert val(s, "discarded_frames_total", **{"from": "client"}) > 0
    assert val(s, "discarded_frames_total", **{"from": "upstream"}) == 0


# -- (c) ws_heartbeat_max_age -------------------------------------------------

def test_max_age_closes_each_at_its_age(fleets, nginx_factory):
    """ws_heartbeat_max_age 4s 2s: each connection gets Close 1001 "max
    age" to its backend at an age of its own in [2 s, 4 s], the ages spread
    over the jitter; the client gets the backend's answer after that; the
    access log and the counters say max_age; new connections are
    served."""
    N, AGE, JITTER = 20, 4.0, 2.0
    GRAIN = 0.1                # the timer's grain (8 ms here) and more
    loop, make = fleets
    fl = make()
    n, port = start(nginx_factory, fl.port, """
            ws_heartbeat_interval 1s;
            ws_heartbeat_max_age 4s 2s;
            ws_heartbeat_drain_timeout 2s;""")

    async def run():
        clients, old = await connect_idle(fl, n, port, N)
        t0 = fl.t0 = min(c.started for c in clients)
        conns = clients + fl.gen(0, "backend")
        limit = AGE + 2 + 1.0 * SLOW
        assert await fl.until(lambda: all(c.done.done() for c in conns),
                              limit), still_open(fl, clients, t0, limit)
        backs = {b.conn_id: b for b in fl.gen(0, "backend")}
        ages, bad = [], []
        for c in clients:
            b = backs[c.conn_id]
            if not b.closes or b.closes[0][1:] != (1001, b"max age"):
                bad.append("backend %d: Close %r" % (c.conn_id, b.closes[:1]))
                continue
            # counted by the module from the request, which comes after
            # the client started connecting: the client's age is longer
            age = b.closes[0][0] - c.started
            ages.append(age)
            if not AGE - JITTER <= age <= AGE + GRAIN + 0.5 * SLOW:
                bad.append("connection %d closed at %.3fs" % (c.conn_id,
                                                             age))
            if not c.closes or c.closes[0][1:] != (1001, b"") \
                    or c.closes[0][0] < b.closes[0][0]:
                bad.append("client %d: Close %r, not the backend's after "
                           "the module's" % (c.conn_id, c.closes[:1]))
        assert not bad, "\n".join(bad) + "\n" + history(fl, clients[0], t0)
        ages.sort()
        print("\nmax age figure: ages %.3f .. %.3f s" % (ages[0], ages[-1]))
        # each its own age, drawn over the jitter
        assert ages[-1] - ages[0] > 0.2, ages
        assert ages[0] < AGE - JITTER / 2 < ages[-1], ages
        # the worker is not exiting: new connections are served
        await new_connection_served(fl, n, port)

    loop.run_until_complete(run())
    s = Status(port).wait(lambda s: val(s, "connections_active") == 0,
                          "the connections to end")
    ends = {r: v for r, v in closes(s).items() if v}
    # and the new connection, closed by its client
    assert ends == {"max_age": N, "client_close": 1}, ends
    reasons = [d["reason"] for d in read_log(n.ws_log)]
    assert reasons.count("max_age") == N, reasons


# -- (d) ws_heartbeat_drain off in an exiting worker --------------------------

def pump(c, stop):
    """Read and answer the module's Pings until stop is set or the
    connection ends."""
    while not stop.is_set() and not c.closed:
        try:
            c.pump(0.02)
        except OSError:
            return


@pytest.mark.parametrize("drain", ["off", "on"])
def test_exiting_worker_stops_pinging(nginx_factory, backend, drain):
    """ws_heartbeat_drain off: in an exiting worker the module no longer
    pings, so an idle connection (whose client answers every Ping) ends as
    with stock nginx, at proxy_read_timeout, without a Close frame, and
    the old nginx exits; its Pings would have kept it open for ever. With
    drain on it ends at once, with the backend's Close."""
    INTERVAL, READ_TIMEOUT = 0.3, 1.5
    b = backend(mode="silent")
    n, port = start(nginx_factory, b.port, """
            ws_heartbeat_interval 300ms;
            ws_heartbeat_timeout 1s;
            ws_heartbeat_drain %s;
            ws_heartbeat_drain_spread 0;
            proxy_read_timeout 1500ms;""" % drain)
    c = Client(port)
    b.accept()
    stop = threading.Event()
    reader = threading.Thread(target=pump, args=(c, stop), daemon=True)
    reader.start()
    try:
        # the heartbeat keeps the idle connection open past
        # proxy_read_timeout
        wait_for(lambda: len(c.pings) >= 2, 5 * SLOW, what="two Pings")
        wait_for(lambda: c.pings[-1][0] - c.pings[0][0] > READ_TIMEOUT * 1.2,
                 5 * SLOW, what="Pings for longer than proxy_read_timeout")
        t0 = time.monotonic()
        n.signal(signal.SIGQUIT)
        bound = (READ_TIMEOUT + 0.5 * SLOW) if drain == "off" else 1.0 * SLOW
        try:
            n.proc.wait(bound)
        except subprocess.TimeoutExpired:
            pass
        t_exit = time.monotonic() - t0
        assert n.proc.poll() is not None, \
            "nginx still running %.1fs after SIGQUIT (drain %s), %d Pings " \
            "since" % (t_exit, drain, sum(1 for t, _ in c.pings if t > t0))
        reader.join(5)
    finally:
        stop.set()
    close_frames = [f for f in c.frames if f.opcode == CLOSE]
    late = [t - t0 for t, _ in c.pings if t > t0 + INTERVAL]
    print("\ndrain %s figure: nginx exited %.3fs after SIGQUIT" % (drain,
                                                                    t_exit))
    assert c.closed
    assert not late, "Pings %.3fs after SIGQUIT" % late[0]
    if drain == "off":
        # proxy_read_timeout, re-armed by the last Pong before the signal
        # (at most an interval earlier; nginx moves a timer only when it
        # changes by 300 ms or more)
        assert t_exit >= READ_TIMEOUT - INTERVAL - 0.3 - 0.05, t_exit
        assert not close_frames, close_frames
    else:
        assert [f.close_code for f in close_frames] == [1001]
    c.close()


# -- (e) a connection in lingering close when the worker exits ----------------

def test_lingering_close_is_no_drain(nginx_factory, backend):
    """The relay has ended (the client closed, the backend answered) and
    nginx lingers on the client connection when the worker begins to exit:
    the drain leaves it alone, and it ends as client_close, not drain."""
    b = backend(mode="silent")
    n, port = start(nginx_factory, b.port, """
            ws_heartbeat_drain_spread 0;
            ws_heartbeat_drain_timeout 1s;
            lingering_close always;
            lingering_timeout 10s;""")
    c = Client(port)
    b.accept()
    c.send_frame(CLOSE, close_payload(1000))
    f = c.recv_frame(timeout=5)
    assert f is not None and f.opcode == CLOSE and f.close_code == 1000, f
    # the backend closed: nginx ends the relay and shuts down its side of
    # the client connection, then reads what the client still sends
    assert c.wait_closed(5 * SLOW)
    old = n.worker_pids()
    n.signal(signal.SIGHUP)
    for p in old:
        n.wait_log(r"%d#%d: gracefully shutting down" % (p, p), 5 * SLOW)
    # it lingers (lingering_timeout 10s) and holds the old worker
    assert all(alive(p) for p in old)
    # the exiting worker has looked for connections to drain; the client
    # closes its side, the lingering close ends
    c.close()
    wait_for(lambda: not any(alive(p) for p in old), 5 * SLOW,
             what="the old worker to exit")
    s = Status(port).wait(lambda s: val(s, "connections_active") == 0,
                          "the connection to end")
    ends = {r: v for r, v in closes(s).items() if v}
    assert ends == {"client_close": 1}, ends
    assert [d["reason"] for d in read_log(n.ws_log)] == ["client_close"]


# -- (f) a module close with post_action --------------------------------------

def test_module_close_ends_relay_with_post_action(nginx_factory, backend):
    """A close the module starts (the client is dead: heartbeat timeout)
    ends the connection in a location with post_action too: the backend
    gets Close 1001, then both connections close."""
    b = backend(mode="silent", answer_close=False)
    n, port = start(nginx_factory, b.port, """
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 300ms;
            post_action @after;""", """
        location @after { return 204; }""")
    c = Client(port, answer_pings=False)
    conn = b.accept()
    g = conn.next_frame(timeout=5 * SLOW)
    assert g is not None and g.opcode == CLOSE and g.close_code == 1001, g
    assert g.payload[2:] == b"heartbeat timeout"
    assert conn.closed.wait(2 * SLOW), \
        "the backend connection is still open after the module's Close"
    assert c.wait_closed(2 * SLOW), "the client connection is still open"
    f = [x for x in c.frames if x.opcode == CLOSE]
    assert [x.close_code for x in f] == [1001], f
    n.wait_log(r"ws heartbeat: closing, client heartbeat timeout")
    c.close()
    s = Status(port).wait(lambda s: val(s, "connections_active") == 0,
                          "the connection to end")
    ends = {r: v for r, v in closes(s).items() if v}
    assert ends == {"client_heartbeat_timeout": 1}, ends


# -- (g) the client's answer to a drain goes no further -----------------------

def test_client_close_after_drain_not_relayed(nginx_factory, backend):
    """After the module's Close 1001 to the backend and the backend's
    answer, the client's own Close is consumed and counted, not relayed
    to the backend as a second Close."""
    b = backend(mode="silent", answer_close=False)
    n, port = start(nginx_factory, b.port, """
            ws_heartbeat_drain_spread 0;
            ws_heartbeat_drain_timeout 5s;""")
    c = Client(port)
    conn = b.accept()
    c.send_frame(TEXT, b"hello")
    assert conn.next_frame().payload == b"hello"
    n.signal(signal.SIGHUP)
    g = conn.next_frame(timeout=5 * SLOW)
    assert g is not None and g.opcode == CLOSE and g.close_code == 1001, g
    assert g.payload[2:] == b"server shutting down"
    # the backend answers and keeps its TCP side open
    conn.send_frame(CLOSE, close_payload(1001))
    f = c.recv_frame(timeout=5 * SLOW)
    assert f is not None and f.opcode == CLOSE and f.close_code == 1001, f
    assert f.payload[2:] == b""                 # the backend's
    c.send_frame(CLOSE, close_payload(1001, b"bye"))
    status = Status(port)
    # the client's Close has been through nginx: discarded or relayed
    wait_for(lambda: val(status.get(), "discarded_frames_total",
                         **{"from": "client"}) or len(conn.received) > 1,
             5 * SLOW, what="the client's Close to go through nginx")
    # the backend closes; nginx ends the relay: all it wrote has arrived
    conn.sock.shutdown(socket.SHUT_WR)
    assert conn.closed.wait(5 * SLOW)
    assert [(x.opcode, x.payload) for x in conn.received] == \
        [(TEXT, b"hello"), (CLOSE, g.payload)]
    s = status.wait(lambda s: val(s, "connections_active") == 0,
                    "the connection to end")
    assert val(s, "discarded_frames_total", **{"from": "client"}) == 1
    ends = {r: v for r, v in closes(s).items() if v}
    assert ends == {"drain": 1}, ends
    c.close()


# -- (h) spread 0, and the spread cut to fit worker_shutdown_timeout ----------

@pytest.mark.parametrize("case", ["spread0", "cut"])
def test_drain_spread_bounds(fleets, nginx_factory, case):
    """ws_heartbeat_drain_spread 0 drains every connection at once; with
    worker_shutdown_timeout 3s, spread 10s and drain timeout 1s, the
    spread is cut to 2s: every connection gets its Close within 2 s of the
    exit, spread over that window, before nginx would cut them."""
    N = 20
    loop, make = fleets
    fl = make()
    if case == "spread0":
        conf, main, within = "ws_heartbeat_drain_spread 0;", "", 0.5 * SLOW
    else:
        conf = "ws_heartbeat_drain_spread 10s;"
        main = "worker_shutdown_timeout 3s;"
        within = 2.0 + 0.3 * SLOW
    n, port = start(nginx_factory, fl.port, conf + """
            ws_heartbeat_interval 1s;
            ws_heartbeat_drain_timeout 1s;""", main=main)
    if case == "cut":
        rc, out = n.test_config()
        assert rc == 0 and "the spread is cut to fit" in out, out

    async def run():
        clients, old = await connect_idle(fl, n, port, N)
        t0 = fl.t0 = time.monotonic()
        n.signal(signal.SIGQUIT)
        late = await all_closed(fl, clients, within)
        assert not late, "%d clients without a Close %.1fs after the exit:" \
            "\n%s" % (len(late), within, history(fl, late[0], t0))
        at = sorted(c.closes[0][0] - t0 for c in clients)
        print("\n%s figure: closes from %.3fs to %.3fs after SIGQUIT"
              % (case, at[0], at[-1]))
        assert all(c.closes[0][1:] == (1001, b"") for c in clients)
        if case == "cut":
            # cut, not dropped: still spread over the 2 s
            assert at[-1] > 1.0, at
        assert await wait_gone(old, t0 + within + 1.0 * SLOW) is not None

    loop.run_until_complete(run())
