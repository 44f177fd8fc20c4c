"""pytest fixtures: a real nginx with the real module, raw backends."""

import http.client
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from lib.nginx import Nginx, free_port  # noqa: E402
from lib.wsproto import Backend  # noqa: E402


def proxy_server(port, backend_port, extra="", location="/",
                 scheme="http", listen_extra=""):
    """A server block proxying WebSocket upgrades the documented way.
    port, backend_port: TCP ports on 127.0.0.1, or paths of unix sockets
    (str): "listen unix:...", "proxy_pass http://unix:...:"."""
    return """
    server {
        listen %(listen)s %(listen_extra)s;
        location %(location)s {
            proxy_pass %(scheme)s://%(upstream)s;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            %(extra)s
        }
    }
""" % dict(listen=address(port), upstream=address(backend_port, ":"),
           extra=extra, location=location, scheme=scheme,
           listen_extra=listen_extra)


def status_server(port):
    """A server block with the ws_heartbeat_status endpoint at /status."""
    return """
    server {
        listen 127.0.0.1:%d;
        location = /status { ws_heartbeat_status; }
    }
""" % port


def status_value(port, key):
    """One value of the status endpoint's Prometheus text, e.g.
    'nginx_ws_heartbeat_pings_total{peer="upstream"}'; None if absent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/status")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in body.splitlines():
        name, _, value = line.rpartition(" ")
        if name == key:
            return float(value)
    return None


def address(port, unix_end=""):
    if isinstance(port, str):
        return "unix:" + port + unix_end
    return "127.0.0.1:%d" % port


@pytest.fixture
def sockdir():
    """A directory for unix sockets, with a path short enough for one
    (sun_path: 108 bytes; pytest's tmp_path can be longer)."""
    d = tempfile.mkdtemp(prefix="wshb-")
    os.chmod(d, 0o755)      # nginx's workers may run as "nobody"
    yield d
    shutil.rmtree(d, ignore_errors=True)


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
def ws_proxy(sockdir, nginx_factory, backend):
    """ws_proxy(extra=..., backend_kw=...) -> (nginx, port, backend).
    client="unix": nginx listens on a unix socket and port is its path;
    upstream="unix": the backend listens on one (proxy_pass http://unix:)."""

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
