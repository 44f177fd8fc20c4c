"""Graceful drain: an exiting worker (nginx -s quit, reload) sends Close
1001 to its WebSocket peers at message boundaries instead of holding the
connections until they end by themselves."""

import os
import signal
import time

from lib.nginx import slow
from lib.wsproto import BINARY, CLOSE, CONT, TEXT, Client


def wait_exit(n, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if n.proc.poll() is not None:
            return True
        time.sleep(0.02)
    return False


def test_quit_closes_through_the_backend(ws_proxy):
    """The backend gets Close 1001 from nginx; the client hears it through
    the backend's own Close, after the backend's last message."""
    # the bounds below are well inside the drain timeout, at any slowdown
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_drain_timeout %dms;
            ws_heartbeat_drain_spread 0;""" % slow(3000))
    c = Client(port)
    conn = b.accept()
    c.send_frame(TEXT, b"hi")
    assert c.recv_frame().payload == b"hi"
    assert conn.next_frame().payload == b"hi"
    t0 = time.monotonic()
    n.signal(signal.SIGQUIT)
    g = conn.next_frame(timeout=5)
    assert g is not None and g.opcode == CLOSE and g.close_code == 1001
    assert g.masked and g.payload[2:] == b"server shutting down"
    f = c.recv_frame(timeout=5)
    assert f is not None and f.opcode == CLOSE, f
    assert f.close_code == 1001      # the backend's reply, passed through
    assert time.monotonic() - t0 < slow(1.0)
    # the client completes the closing handshake: nginx lets it through,
    # the relay ends, the worker exits long before the drain timeout
    c.send_frame(CLOSE, f.payload[:2])
    assert c.wait_closed(5)
    assert wait_exit(n, slow(2.5)), "nginx exited"
    assert time.monotonic() - t0 < slow(2.5)
    n.proc = None
    c.close()


def test_drain_timeout_bounds_a_silent_peer(ws_proxy):
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_drain_timeout 500ms;
            ws_heartbeat_drain_spread 0;""",
                          backend_kw=dict(mode="silent", answer_close=False))
    c = Client(port, answer_pings=False)
    b.accept()
    t0 = time.monotonic()
    n.signal(signal.SIGQUIT)
    # the backend never answers the Close: when the grace ends the client
    # gets the module's own Close 1001, then the connection is closed
    f = c.recv_frame(timeout=5)
    assert f is not None and f.opcode == CLOSE and f.close_code == 1001, f
    assert f.payload[2:] == b"server shutting down"
    assert c.wait_closed(5)
    took = time.monotonic() - t0
    assert 0.4 <= took <= 0.5 + slow(1.0), took
    assert wait_exit(n, 2)
    n.wait_log(r"ws heartbeat: closing, drain timeout")
    n.proc = None
    c.close()


def test_message_in_flight_finishes_first(ws_proxy):
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_drain_timeout 5s;
            ws_heartbeat_drain_spread 0;""",
                          backend_kw=dict(mode="silent", answer_close=False))
    c = Client(port)
    conn = b.accept()
    conn.send_frame(TEXT, b"part one ", fin=False)
    f = c.recv_frame()
    assert (f.opcode, f.fin, f.payload) == (TEXT, 0, b"part one ")
    n.signal(signal.SIGQUIT)
    # the backend heard about it ...
    g = conn.next_frame(timeout=5)
    assert g is not None and g.opcode == CLOSE and g.close_code == 1001
    # ... the client gets no Close inside the unfinished message, nor
    # before the backend's own Close
    assert c.recv_frame(timeout=0.3) is None
    conn.send_frame(CONT, b"part two", fin=True)
    conn.send_frame(TEXT, b"one more")
    conn.send_frame(CLOSE, g.payload[:2])
    f = c.recv_frame()
    assert (f.opcode, f.fin, f.payload) == (CONT, 1, b"part two")
    assert c.recv_frame().payload == b"one more"
    f = c.recv_frame()
    assert f is not None and f.opcode == CLOSE and f.close_code == 1001
    assert f.payload[2:] == b""      # the backend's, not the module's
    c.close()


def test_drain_off_is_stock_behaviour(ws_proxy):
    n, port, b = ws_proxy("""
            ws_heartbeat on;
            ws_heartbeat_drain off;""")
    c = Client(port)
    conn = b.accept()
    workers = n.worker_pids()
    n.signal(signal.SIGQUIT)
    # the old worker keeps the connection: no Close, still relaying
    assert c.recv_frame(timeout=1.0) is None
    c.send_frame(BINARY, b"still relayed")
    assert c.recv_frame().payload == b"still relayed"
    assert all(os.path.exists("/proc/%d" % p) for p in workers)
    c.close()
    conn.close()
    assert wait_exit(n, 5)
    n.proc = None
