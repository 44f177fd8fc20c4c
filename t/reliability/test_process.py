"""Process faults: a backend killed (SIGKILL) or frozen (SIGSTOP) in the
middle of a message, nginx reloaded while traffic flows, and one worker of
two crashing (SIGSEGV) while both carry connections."""

import os
import random
import signal
import sys
import threading
import time

import pytest

from . import rlib
from .backend_proc import MIDFRAME_SENT, midframe_bytes
from .rlib import BINARY, CLOSE, CONT, slow
from lib import wsproto
from lib.nginx import free_port
from lib.wsproto import Client

pytestmark = [rlib.gate]

HERE = os.path.dirname(os.path.abspath(__file__))
BACKEND = [sys.executable, os.path.join(HERE, "backend_proc.py")]


def stop_process(p):
    """SIGSTOP, and wait until it has taken effect: the thread that takes
    the signal stops the others, and until it runs they run on (on a
    loaded machine, long enough to echo a message)."""
    p.signal(signal.SIGSTOP)

    def stopped():
        tasks = "/proc/%d/task" % p.pid
        for tid in os.listdir(tasks):
            with open("%s/%s/stat" % (tasks, tid)) as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "T":
                    return False
        return True
    rlib.wait_for(stopped, slow(5), interval=0.001,
                  what="the backend to stop")


def partial_frame(c):
    """The bytes of the unfinished frame a wsproto.Client holds."""
    return bytes(c.parser.buf)


@rlib.valgrind_ok
@pytest.mark.parametrize("upstream", ["off", "on"])
def test_backend_sigkill_mid_message(rnginx, procs, upstream):
    """The backend dies in the middle of a 1 MiB frame: the client gets
    exactly the bytes the backend wrote, nothing appended (no Close can go
    inside a frame), then the connection ends, as with stock nginx."""
    bp = procs(BACKEND + ["midframe"])
    port = free_port()
    n = rnginx(rlib.server(port, bp.port, """
            ws_heartbeat on;
            ws_heartbeat_upstream %s;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 5s;""" % upstream), port=port)
    before = rlib.counters(n.status())
    c = Client(port, "/kill", answer_pings=True)
    with rlib.closing(c):
        assert bp.readline(slow(10)) == "sent %d" % MIDFRAME_SENT
        want = midframe_bytes()[:MIDFRAME_SENT]
        rlib.wait_for(lambda: c.pump(0.02) or
                      len(partial_frame(c)) >= MIDFRAME_SENT,
                      slow(10), interval=0, what="the partial frame")
        bp.signal(signal.SIGKILL)
        assert c.wait_closed(slow(5)), "connection left open"
        assert partial_frame(c) == want
        assert not [f for f in c.frames if f.opcode == CLOSE]
    rlib.wait_for(lambda: rlib.counters(n.status())["active"] == 0,
                  slow(10), what="connection to end")
    d = rlib.delta(before, rlib.counters(n.status()))
    assert d["total"] == 1 and d["upstream_close"] == 1, d


@rlib.valgrind_ok
def test_backend_sigstop_mid_frame_upstream_heartbeat(rnginx, procs):
    """Frozen in the middle of a frame, with the upstream heartbeat on: the
    backend is declared dead; the client gets no Close (it would land in
    the middle of the frame), only the bytes sent, then the end."""
    bp = procs(BACKEND + ["midframe"])
    port = free_port()
    n = rnginx(rlib.server(port, bp.port, """
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 500ms;"""), port=port)
    c = Client(port, "/stop", answer_pings=True)
    with rlib.closing(c):
        assert bp.readline(slow(10)) == "sent %d" % MIDFRAME_SENT
        stop_process(bp)
        t0 = time.monotonic()
        assert c.wait_closed(slow(5)), "frozen backend not detected"
        took = time.monotonic() - t0
        assert took <= slow(0.2 + 0.5 + 1.0), took
        assert partial_frame(c) == midframe_bytes()[:MIDFRAME_SENT]
        assert not [f for f in c.frames if f.opcode == CLOSE]
    n.wait_log(r"ws heartbeat: closing, upstream heartbeat timeout")


@rlib.valgrind_ok
def test_backend_sigstop_upstream_heartbeat_off(rnginx, procs):
    """Frozen for 2s without the upstream heartbeat: nginx waits, as stock
    nginx does; the client (answering Pings) stays; after SIGCONT every
    message comes back intact and in order."""
    bp = procs(BACKEND + ["echo"])
    port = free_port()
    rnginx(rlib.server(port, bp.port, """
            ws_heartbeat on;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 1s;"""), port=port)
    c = Client(port, "/freeze", answer_pings=True)
    rng = random.Random(1)
    with rlib.closing(c):
        c.send_text("before")
        assert c.recv_frame(timeout=slow(5)).payload == b"before"
        stop_process(bp)
        sent = []
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            msg = rng.randbytes(rng.randint(1, 20000))
            c.send_frame(BINARY, msg)
            sent.append(msg)
            c.pump(0.1)
        assert not c.closed
        assert not [f for f in c.frames if f.opcode != wsproto.PING]
        bp.signal(signal.SIGCONT)
        got = []
        while len(got) < len(sent):
            f = c.recv_frame(timeout=slow(10))
            if f is None:
                break
            got.append(f.payload)
        assert_same_messages(got, sent)


def assert_same_messages(got, sent):
    if got == sent:
        return
    i = next((k for k in range(min(len(got), len(sent)))
              if got[k] != sent[k]), min(len(got), len(sent)))
    where = [k for k, m in enumerate(sent) if i < len(got) and m == got[i]]
    raise AssertionError(
        "%d messages sent, %d came back; first difference at %d: got %d "
        "bytes %r..., sent %d bytes %r...; got[%d] is sent%r"
        % (len(sent), len(got), i,
           len(got[i]) if i < len(got) else -1,
           got[i][:16] if i < len(got) else None,
           len(sent[i]) if i < len(sent) else -1,
           sent[i][:16] if i < len(sent) else None, i, where))


# -- reload -------------------------------------------------------------------

class Talker(threading.Thread):
    """A client that sends messages (some fragmented) and checks each
    echo, until stopped or until the server closes."""

    def __init__(self, port, path, seed):
        super().__init__(daemon=True)
        self.c = Client(port, path, answer_pings=True, timeout=30)
        self.rng = random.Random(seed)
        self.sent, self.got = [], []
        self.stop = threading.Event()
        self.close_frame = None
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set() and not self.c.closed:
                msg = self.rng.randbytes(self.rng.choice([10, 500, 70000]))
                if self.rng.random() < 0.3:
                    cut = len(msg) // 2
                    self.c.send_frame(BINARY, msg[:cut], fin=False)
                    self.c.send_frame(CONT, msg[cut:])
                else:
                    self.c.send_frame(BINARY, msg)
                self.sent.append(msg)
                echo = b""
                while True:
                    f = self.c.recv_frame(timeout=slow(10))
                    if f is None or f.opcode == CLOSE:
                        break
                    echo += f.payload       # the backend echoes fragments
                    if f.fin:
                        break
                if f is None:
                    break
                if f.opcode == CLOSE:
                    self.close_frame = f
                    break
                self.got.append(echo)
        except OSError as e:
            self.error = e

    def check_intact(self):
        # every echo that came is the message sent at its place
        assert self.got == self.sent[:len(self.got)]


@pytest.mark.parametrize("drain", ["on", "off"])
@rlib.no_valgrind
def test_reload_during_traffic(rnginx, drain):
    b = wsproto.Backend(mode="echo")
    port = free_port()
    n = rnginx(rlib.server(port, b.port, """
            ws_heartbeat on;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 2s;
            ws_heartbeat_drain %s;
            ws_heartbeat_drain_timeout 3s;
            ws_heartbeat_drain_spread 0;""" % drain), port=port,
               workers=2)
    try:
        old_workers = set(n.worker_pids())
        talkers = [Talker(port, "/t%d" % i, i) for i in range(6)]
        for t in talkers:
            t.start()
        rlib.wait_for(lambda: all(len(t.got) > 5 for t in talkers),
                      slow(10), what="traffic on every old connection")
        st = rlib.counters(n.status())
        assert st["total"] == 6
        n.reload()
        rlib.wait_for(lambda: set(n.worker_pids()) - old_workers,
                      slow(10), what="new workers")
        # the old workers have closed their listening sockets
        for pid in old_workers:
            n.wait_log(r"%d#%d: gracefully shutting down" % (pid, pid),
                       timeout=slow(10))
        echoes = [len(t.got) for t in talkers]
        # new connections go to the new workers and work
        fresh = [Talker(port, "/new%d" % i, 100 + i) for i in range(3)]
        for t in fresh:
            t.start()
        rlib.wait_for(lambda: all(len(t.got) > 5 for t in fresh),
                      slow(10), what="traffic on every new connection")
        if drain == "off":
            # the old workers go on relaying for the old connections
            rlib.wait_for(lambda: all(len(t.got) > k + 5
                                      for t, k in zip(talkers, echoes)),
                          slow(10), what="traffic on every old connection "
                          "after the old workers began to exit")
        if drain == "on":
            # each old connection ended with the backend's answer to the
            # module's Close 1001, after whole messages only; a client that
            # keeps sending may instead get an RST when nginx closes with
            # its next message unread (as stock nginx does when a backend
            # closes)
            closed_by_frame = 0
            for t in talkers:
                t.join(slow(10))
                assert not t.is_alive(), "old connection still talking"
                assert t.error is None or \
                    isinstance(t.error, (ConnectionResetError,
                                        BrokenPipeError)), t.error
                t.check_intact()
                if t.error is None:
                    assert t.close_frame is not None and \
                        t.close_frame.close_code == 1001, t.close_frame
                    closed_by_frame += 1
                assert len(t.got) > 5
            print("reload, drain on: %d of %d old connections got the Close "
                  "1001, the others a reset" % (closed_by_frame,
                                                len(talkers)))
        else:
            for t in talkers:
                assert t.is_alive() and not t.c.closed
        for t in fresh + (talkers if drain == "off" else []):
            assert t.is_alive() and t.error is None, t.error
            t.stop.set()
            t.join(slow(10))
            t.check_intact()
            assert t.close_frame is None and len(t.got) > 5
            t.c.send_frame(CLOSE, wsproto.close_payload(1000))
            assert t.c.wait_closed(slow(5))
        for t in talkers + fresh:
            t.c.close()
        # the old workers are gone, the counters went on across the reload
        rlib.wait_for(lambda: not (set(n.worker_pids()) & old_workers),
                      slow(10), what="old workers to exit")
        rlib.wait_for(lambda: rlib.counters(n.status())["active"] == 0,
                      slow(10), what="connections to end")
        st = rlib.counters(n.status())
        assert st["total"] == 9
        assert sum(st[r] for r in rlib.REASONS) == 9, st
        if drain == "on":
            assert st["drain"] == 6, st
    finally:
        b.stop()


# -- a worker crash -----------------------------------------------------------

@rlib.no_valgrind
def test_worker_crash_leaves_the_other_worker_alone(rnginx):
    """kill -SEGV one of two workers: its connections end; the other
    worker's go on, byte for byte, with their heartbeat; the master starts
    a new worker that serves new connections. The master logs the crash
    ("exited on signal 11"): expected exactly once, nothing else."""
    b = wsproto.Backend(mode="echo")
    port = free_port()
    n = rnginx(rlib.server(port, b.port, """
            ws_heartbeat on;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 2s;
            add_header X-Worker-Pid $pid always;""",
                           listen_extra="reuseport"),
               start=False, workers=2)
    if rlib.ASAN:
        # the signal is the test's, not a bug: no ASan report for it
        n.env["ASAN_OPTIONS"] += ":handle_segv=0"
    n.start(port)
    try:
        clients = []
        by_worker = {}
        for i in range(40):
            c = Client(port, "/c%d" % i, answer_pings=True)
            clients.append(c)
            by_worker.setdefault(int(c.headers["x-worker-pid"]), []).append(c)
            if len(by_worker) == 2 and i >= 9:
                break
        assert len(by_worker) == 2, by_worker.keys()
        victim, survivor = sorted(by_worker, key=lambda p: -len(by_worker[p]))
        for c in clients:
            c.send_text("before")
            assert c.recv_frame(timeout=slow(5)).payload == b"before"
        before = rlib.counters(n.status())
        n.expect_crash(victim, signal.SIGSEGV)
        os.kill(victim, signal.SIGSEGV)
        for c in by_worker[victim]:
            assert c.wait_closed(slow(5)), "crashed worker's connection open"
        # the gauge leaves out the crashed worker's connections at once
        live = len(by_worker[survivor])
        rlib.wait_for(lambda: rlib.counters(n.status())["active"] == live,
                      slow(5), what="%d active: the survivor's connections"
                      % live)
        # the survivor's connections: traffic and Pings go on
        rng = random.Random(9)
        for c in by_worker[survivor]:
            c.pings.clear()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for c in by_worker[survivor]:
                msg = rng.randbytes(rng.randint(1, 5000))
                c.send_frame(BINARY, msg)
                f = c.recv_frame(timeout=slow(5))
                assert f is not None and f.payload == msg
                c.pump(0.01)
        for c in by_worker[survivor]:
            c.pump(0.3)
            assert not c.closed and c.pings, "survivor lost its heartbeat"
        rlib.wait_for(lambda: len(n.worker_pids()) == 2 and
                      victim not in n.worker_pids(), slow(10),
                      what="a new worker")
        fresh = Client(port, "/after-crash", answer_pings=True)
        clients.append(fresh)
        fresh.send_text("after")
        assert fresh.recv_frame(timeout=slow(5)).payload == b"after"
        for c in clients:
            c.close()
        # every connection closed: the gauge is back to 0, the crashed
        # worker's slot left out (or taken over by the new worker)
        rlib.wait_for(lambda: rlib.counters(n.status())["active"] == 0,
                      slow(10), what="0 active after every close")
        after = rlib.counters(n.status())
        print("worker crash: %d connections lost with worker %d; active "
              "gauge after every connection closed: %d"
              % (len(by_worker[victim]), victim, after["active"]))
        assert after["total"] - before["total"] == 1
    finally:
        b.stop()
