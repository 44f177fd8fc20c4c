"""The worker-exit watch (ngx/ngx_ws_heartbeat_exit.cpp): each worker keeps
one idle connection of its own to learn that it is exiting, wherever some
location has ws_heartbeat on, with ws_heartbeat_drain on or off (with it
off the module steps aside at exit, and needs the watch for that), and
none where no location has. A worker that cannot have it serves on instead
of exiting, and learns of its exit late: its connections drain when their
timers next wake.

t/preload/watch_fail.c, compiled here and preloaded into nginx, makes the
resources the watch may use fail in the workers (socket(AF_INET,
SOCK_DGRAM): EMFILE; open("/dev/null"): EACCES), as systemd's
RestrictAddressFamilies=, a sandbox or the fd limit can."""

import os
import re
import signal

import pytest

from conftest import proxy_server
from lib import preload
from lib.nginx import PRELOAD, free_port, slow, wait_for
from lib.wsproto import CLOSE, PING, TEXT, Client


WATCH_ALERT = (r"\[alert\] (\d+)#\d+: ws heartbeat: .*worker-exit watch.*, "
               r"an exiting worker's connections drain when their timers "
               r"next wake")


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return preload.build("watch_fail", tmp_path_factory)


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


def alert_from_each(n, workers):
    """Each of the workers (pids) logs the watch's alert, once."""
    got = wait_for(lambda: len(alerts(n)) >= len(workers) and alerts(n), 5,
                   what="an alert from each worker")
    assert sorted(pid for pid, _ in got) == sorted(workers), (got, workers)
    return got


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
    new workers that do the same. An old worker learns of its exit late,
    from its connection's timer, and drains the connection then."""
    b = backend()
    port = free_port()
    n = shimmed(nginx_factory, shim, proxy_server(port, b.port, """
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_drain_spread 0;"""), port)
    c = pinged(n, port)

    workers = set(n.worker_pids())
    assert len(workers) == 2, workers
    got = alert_from_each(n, workers)
    print(got[0][1])

    # a reload: new workers, each with its one alert, serving
    n.signal(signal.SIGHUP)
    new = wait_for(lambda: set(n.worker_pids()) - workers
                   if len(set(n.worker_pids()) - workers) == 2 else None,
                   10, what="two new workers")
    alert_from_each(n, workers | new)
    # the old worker's connection drains when its timer next wakes (the
    # interval; the spread is 0): the backend answers the Close 1001 the
    # drain sent it, and the answer reaches the client
    f = c.recv_frame(timeout=slow(5))
    assert f is not None and f.opcode == CLOSE and f.close_code == 1001, f
    assert c.wait_closed(5)
    c.close()
    # and the old workers, their connections ended, exit (until they have
    # their signal, 100ms after the new ones start, they still accept)
    wait_for(lambda: not workers & set(n.worker_pids()), slow(5),
             what="the old workers to exit")
    c2 = pinged(n, port)
    c2.close()
    check_only_watch_alerts(n)


@pytest.mark.parametrize("conf, watched", [
    ("", False),                                # module loaded, unused
    ("ws_heartbeat off; ws_heartbeat_drain on;", False),
    ("ws_heartbeat on; ws_heartbeat_drain off; ws_heartbeat_interval 200ms;",
     True),
    ("ws_heartbeat on; ws_heartbeat_drain on; ws_heartbeat_interval 200ms;",
     True),
])
def test_watch_where_a_location_has_ws_heartbeat_on(nginx_factory, backend,
                                                    shim, conf, watched):
    """A location with ws_heartbeat on, draining or not: each worker tries
    to make the watch (the shim makes it fail: one alert each). None has:
    no worker tries (the failure would be logged)."""
    b = backend()
    port = free_port()
    n = shimmed(nginx_factory, shim, proxy_server(port, b.port, conf), port)
    c = pinged(n, port) if watched else connect(n, port)
    if watched:
        alert_from_each(n, n.worker_pids())
    c.close()
    n.stop()
    if not watched:
        assert not alerts(n), alerts(n)
    check_only_watch_alerts(n)
