"""The worker-exit watch (ngx/ngx_ws_heartbeat_exit.cpp): each worker keeps
one idle connection of its own to learn that it is exiting, but only where
some location drains (ws_heartbeat on, ws_heartbeat_drain on), and a worker
that cannot have it serves on without the drain instead of exiting.

t/preload/watch_fail.c, compiled here and preloaded into nginx, makes the
resources the watch may use fail in the workers (socket(AF_INET,
SOCK_DGRAM): EMFILE; open("/dev/null"): EACCES), as systemd's
RestrictAddressFamilies=, a sandbox or the fd limit can."""

import os
import re
import signal
import subprocess

import pytest

from conftest import proxy_server
from lib.nginx import PRELOAD, free_port, wait_for
from lib.wsproto import PING, TEXT, Client

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_C = os.path.join(HERE, "preload", "watch_fail.c")

WATCH_ALERT = r"\[alert\] (\d+)#\d+: ws heartbeat: .*watch"


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shim") / "watch_fail.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O", "-Wall", "-Werror",
                    "-o", out, SHIM_C, "-ldl"], check=True)
    return out


def shimmed(nginx_factory, shim, http, port, workers=2):
    """nginx with the shim preloaded (after the sanitizer runtime, which
    must come first); its log is checked here, not by the fixture."""
    n = nginx_factory(http, start=False, check=False, workers=workers)
    n.env["LD_PRELOAD"] = (PRELOAD + " " + shim).strip()
    n.start(port)
    return n


def alerts(n):
    """[(pid, line)] of the watch's alert lines."""
    return [(int(m.group(1)), line) for line in n.log().splitlines()
            for m in [re.search(WATCH_ALERT, line)] if m]


def check_only_watch_alerts(n):
    """No crash, no other alert, crit or emerg: the watch's alert is the
    one expected line (and sanitizer reports still fail)."""
    bad = [line for line in n.log().splitlines()
           if ("[alert]" in line or "[emerg]" in line or "[crit]" in line
               or "exited on signal" in line
               or re.search(r"exited with (fatal )?code [1-9]", line))
           and not re.search(WATCH_ALERT, line)]
    assert not bad, "error.log:\n" + "\n".join(bad)
    if os.path.isdir(n.asan_dir):
        assert not os.listdir(n.asan_dir), os.listdir(n.asan_dir)


def connect(n, port):
    """A WebSocket through nginx that echoes; a worker must serve it."""
    try:
        c = Client(port, answer_pings=True, timeout=5)
    except OSError as e:
        exited = [line for line in n.log().splitlines() if "exited" in line]
        raise AssertionError("no worker served (%s): %s" % (e, exited))
    assert c.status == 101, c.head
    c.send_frame(TEXT, b"hello")
    f = c.recv_frame(timeout=5)
    assert f is not None and f.payload == b"hello", f
    return c


def pinged(n, port):
    """connect(), and a module Ping arrives."""
    c = connect(n, port)
    f = c.recv_frame(timeout=5, skip_module_pings=False)
    assert f is not None and f.opcode == PING and f.is_module_ping, f
    return c


def test_no_watch_no_exit(nginx_factory, backend, shim):
    """Workers that cannot have the watch log it once each and serve on:
    the upgrade, the relay and the heartbeat work, and a reload brings up
    new workers that do the same."""
    b = backend()
    port = free_port()
    n = shimmed(nginx_factory, shim, proxy_server(port, b.port, """
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;"""), port)
    c = pinged(n, port)

    workers = set(n.worker_pids())
    assert len(workers) == 2, workers
    got = wait_for(lambda: len(alerts(n)) >= 2 and alerts(n), 5,
                   what="an alert from each worker")
    assert sorted(pid for pid, _ in got) == sorted(workers), got
    print(got[0][1])

    # a reload: new workers, each with its one alert, serving
    n.signal(signal.SIGHUP)
    new = wait_for(lambda: set(n.worker_pids()) - workers
                   if len(set(n.worker_pids()) - workers) == 2 else None,
                   10, what="two new workers")
    wait_for(lambda: len(alerts(n)) >= 4, 5, what="the new workers' alerts")
    c2 = pinged(n, port)
    pids = [pid for pid, _ in alerts(n)]
    assert sorted(pids) == sorted(workers | new), (pids, workers, new)
    # without the drain the old worker keeps its connection, as stock
    # nginx does, and the connection still relays
    c.send_frame(TEXT, b"old worker")
    f = c.recv_frame(timeout=5)
    assert f is not None and f.payload == b"old worker", f
    c.close()
    c2.close()
    check_only_watch_alerts(n)


@pytest.mark.parametrize("conf", [
    "",                                         # module loaded, unused
    "ws_heartbeat off; ws_heartbeat_drain on;",
    "ws_heartbeat on; ws_heartbeat_drain off; ws_heartbeat_interval 200ms;",
])
def test_watch_only_where_a_location_drains(nginx_factory, backend, shim,
                                            conf):
    """No location drains: no worker tries to make the watch (the shim
    would make it fail, and the failure would be logged)."""
    b = backend()
    port = free_port()
    n = shimmed(nginx_factory, shim, proxy_server(port, b.port, conf), port)
    c = pinged(n, port) if "ws_heartbeat on" in conf else connect(n, port)
    c.close()
    n.stop()
    assert not alerts(n), alerts(n)
    check_only_watch_alerts(n)
