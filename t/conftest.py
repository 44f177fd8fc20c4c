"""pytest fixtures: a real nginx with the real module, raw backends."""

import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from lib import fixtures  # noqa: E402
from lib.backend import BackendProcess  # noqa: E402
# the test files take proxy_server from here ("from conftest import ...")
from lib.nginx import Nginx, free_port, proxy_server  # noqa: E402
from lib.wsproto import Backend  # noqa: E402


@pytest.fixture
def nginx_factory(tmp_path):
    """nginx_factory(http_block, **kw) -> started Nginx (or unstarted with
    start=False). Stopped at teardown, and its error.log must have no
    [alert]/[crit]/[emerg] and no crashed worker (unless check=False)."""
    yield from fixtures.nginxes(tmp_path, Nginx)


@pytest.fixture
def backend():
    """backend(**kw) -> a lib.wsproto.Backend, stopped at teardown."""
    yield from fixtures.made(Backend)


@pytest.fixture
def procs(tmp_path):
    """procs(argv, env=None, stdin=False) -> started lib.backend.
    BackendProcess; all are stopped at teardown (SIGCONT first: a test may
    have left one stopped)."""
    n = itertools.count()
    yield from fixtures.made(lambda argv, env=None, stdin=False: (
        BackendProcess(argv, str(tmp_path / ("backend%d.err" % next(n))),
                       env, stdin)))


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
