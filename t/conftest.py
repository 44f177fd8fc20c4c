"""pytest fixtures: a real nginx with the real module, raw backends."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from lib.backend import BackendProcess  # noqa: E402
from lib.nginx import Nginx, free_port, proxy_server  # noqa: E402
from lib.wsproto import Backend  # noqa: E402


@pytest.fixture
def nginx_factory(tmp_path):
    """nginx_factory(http_block, **kw) -> started Nginx (or unstarted with
    start=False). Stopped at teardown, and its error.log must have no
    [alert]/[crit]/[emerg] and no crashed worker."""
    made = []

    def make(http, start=True, port=None, check=True, **kw):
        n = Nginx(tmp_path / ("nginx%d" % len(made)), http, **kw)
        n.check = check
        made.append(n)
        if start:
            n.start(port)
        return n

    yield make
    for n in made:
        n.stop()
    for n in made:
        if n.check:
            n.check_log()


@pytest.fixture
def backend():
    made = []

    def make(**kw):
        b = Backend(**kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def procs(tmp_path):
    """procs(argv, env=None, stdin=False) -> started lib.backend.
    BackendProcess; all are stopped at teardown (SIGCONT first: a test may
    have left one stopped)."""
    made = []

    def make(argv, env=None, stdin=False):
        p = BackendProcess(argv, str(tmp_path / ("backend%d.err"
                                                 % len(made))), env, stdin)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture
def ws_proxy(nginx_factory, backend):
    """ws_proxy(extra=..., backend_kw=...) -> (nginx, port, backend)."""

    def make(extra="ws_heartbeat on;", backend_kw=None, http_extra="",
             **kw):
        b = backend(**(backend_kw or {}))
        port = free_port()
        n = nginx_factory(http_extra + proxy_server(port, b.port, extra),
                          port=port, **kw)
        return n, port, b

    return make
