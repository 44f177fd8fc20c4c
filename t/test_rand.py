"""A Ping that cannot be queued (RAND_bytes() fails for the mask of an
upstream Ping) does not leave its side waiting for ever: the next Ping goes
an interval later, and the upstream heartbeat works once random bytes can
be had again. t/preload/rand_fail.c, compiled here and preloaded into
nginx, makes the first WSHB_RAND_FAILS calls of RAND_bytes() in the worker
fail."""

import time

import pytest

from conftest import proxy_server
from lib import preload
from lib.nginx import PRELOAD, free_port, slow, wait_for
from lib.wsproto import PING, TEXT, Client

FAILS = 4
INTERVAL = 0.2


def pings(conn):
    """The module's Pings the backend got so far (masked, as a client's)."""
    return [f for f in list(conn.received)
            if f.opcode == PING and f.is_module_ping and f.masked]


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    return preload.build("rand_fail", tmp_path_factory)


def test_upstream_pings_resume_after_rand_bytes_fails(nginx_factory,
                                                      backend, shim):
    b = backend(mode="echo")
    port = free_port()
    n = nginx_factory(proxy_server(port, b.port, """
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 2s;"""), start=False, check=False)
    # the sanitizer runtime, if any, must come first
    n.env["LD_PRELOAD"] = (PRELOAD + " " + shim).strip()
    n.env["WSHB_RAND_FAILS"] = str(FAILS)
    n.start(port)
    c = Client(port, "/ws/rand")
    conn = b.accept()
    try:
        t0 = time.monotonic()
        # FAILS draws fail: the connection's own, then the masks of the
        # first Pings; the next goes through, an interval after the last
        wait_for(lambda: pings(conn), slow(FAILS * INTERVAL + 2.0),
                 what="a module Ping at the backend after RAND_bytes() "
                 "failed")
        took = time.monotonic() - t0
        assert took >= (FAILS - 2) * INTERVAL, took
        # and the heartbeat goes on: more Pings, the connection alive
        wait_for(lambda: len(pings(conn)) >= 3, slow(3.0),
                 what="Pings keep coming")
        c.send_frame(TEXT, b"still here")
        f = conn.next_frame(timeout=slow(5))
        assert f is not None and f.payload == b"still here", f
    finally:
        c.close()
    assert n.log().count("RAND_bytes() failed") == FAILS - 1, n.log()
