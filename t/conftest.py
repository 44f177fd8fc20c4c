"""pytest fixtures: a real nginx with the real module, raw backends."""

import itertools
import os
import shutil
import sys
import tempfile

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
def sockdir():
    """A directory for unix sockets, with a path short enough for one
    (sun_path: 108 bytes; pytest's tmp_path can be longer)."""
    d = tempfile.mkdtemp(prefix="wshb-")
    os.chmod(d, 0o755)      # nginx's workers may run as "nobody"
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ws_proxy(sockdir, nginx_factory, backend):
    """ws_proxy(extra=..., backend_kw=...) -> (nginx, port, backend).
    client="unix": nginx listens on a unix socket and port is its path;
    upstream="unix": the backend listens on one (proxy_pass
    http://unix:/path:) and its port is that path."""

    def make(extra="ws_heartbeat on;", backend_kw=None, http_extra="",
             client="tcp", upstream="tcp", **kw):
        bkw = dict(backend_kw or {})
        if upstream == "unix":
            bkw["unix"] = os.path.join(sockdir, "backend.sock")
        b = backend(**bkw)
        port = os.path.join(sockdir, "nginx.sock") if client == "unix" \
            else free_port()
        n = nginx_factory(http_extra + proxy_server(port, b.port, extra),
                          port=port, **kw)
        return n, port, b

    return make
