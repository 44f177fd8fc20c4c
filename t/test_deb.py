"""make deb: the Debian package libnginx-mod-http-ws-heartbeat. Built (by
`make deb`, when missing or out of date), installed with dpkg -i, loaded
into Debian's /usr/sbin/nginx through the snippet it ships, then purged
again if it was not installed before. Needs root (dpkg). The tests that
install it are skipped unless NGINX_BIN is the system nginx: against any
other nginx no test installs or removes a package."""

import fcntl
import glob
import os
import subprocess

import pytest

from conftest import proxy_server
from lib import nginx as nginx_lib
from lib.wsproto import TEXT, Client

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.path.join(ROOT, "build")
PKG = "libnginx-mod-http-ws-heartbeat"
SO = "/usr/lib/nginx/modules/ngx_ws_heartbeat_module.so"
SNIPPET = "/usr/share/nginx/modules-available/mod-http-ws-heartbeat.conf"
ENABLED = "/etc/nginx/modules-enabled/50-mod-http-ws-heartbeat.conf"
ABI_FILE = "/usr/share/nginx/src/debian/libnginx-mod.abisubstvars"
SYSTEM_NGINX = "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="dpkg -i needs root")


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          timeout=kw.pop("timeout", 120), **kw).stdout


def status(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True)
    return r.stdout if r.returncode == 0 else ""


def against_system_nginx():
    """Whether the tests run against the system nginx, the one the package
    is for and installs into."""
    return os.path.realpath(nginx_lib.NGINX_BIN) == \
        os.path.realpath(SYSTEM_NGINX)


def nginx_abi():
    with open(ABI_FILE) as f:
        for line in f:
            if line.startswith("nginx:abi="):
                return line.split("=", 1)[1].strip()
    raise AssertionError("no nginx:abi in " + ABI_FILE)


@pytest.fixture(scope="module")
def deb():
    """The .deb in build/, made by `make deb` if missing or stale. A lock
    keeps two test runs in this checkout from building or installing at
    the same time."""
    os.makedirs(BUILD, exist_ok=True)
    lock = open(os.path.join(BUILD, "deb.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-s", "-C", ROOT, "BUILD=build", "deb"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, env=env, timeout=900)
    assert r.returncode == 0, "make deb failed:\n" + r.stdout
    debs = glob.glob(os.path.join(BUILD, PKG + "_*.deb"))
    assert len(debs) == 1, debs
    yield debs[0]
    lock.close()


@pytest.fixture(scope="module")
def installed(deb):
    """dpkg -i the package; purge it at the end unless it was installed
    before (a copy installed before is left replaced by this build).
    Skipped, and the system left alone, unless the tests run against the
    system nginx (NGINX_BIN)."""
    if not against_system_nginx():
        pytest.skip("NGINX_BIN is %s, not the system nginx %s: the package "
                    "is not installed into the system"
                    % (nginx_lib.NGINX_BIN, SYSTEM_NGINX))
    before = status(PKG)
    run("dpkg", "-i", deb)
    assert status(PKG) == "install ok installed"
    yield deb
    if "installed" not in before:
        run("dpkg", "--purge", PKG)
        assert not os.path.exists(SO)
        assert not os.path.lexists(ENABLED)
        assert not os.path.lexists(ENABLED + ".removed")


def test_package_depends_on_the_exact_nginx_abi(deb):
    fields = run("dpkg-deb", "-f", deb, "Package", "Depends")
    assert "Package: %s\n" % PKG in fields
    depends = fields.split("Depends:", 1)[1].strip()
    deps = [d.strip() for d in depends.split(",")]
    abi = nginx_abi()
    assert abi in deps, depends
    # the nginx installed here is the one that provides that ABI
    provides = run("dpkg-query", "-W", "-f=${Provides}", "nginx")
    assert abi in [p.strip() for p in provides.split(",")], provides
    contents = run("dpkg-deb", "-c", deb)
    assert "." + SO + "\n" in contents, contents
    assert "." + SNIPPET + "\n" in contents, contents


def test_installed_files_and_enabled_snippet(installed):
    assert os.path.isfile(SO)
    with open(SNIPPET) as f:
        assert f.read().strip() == "load_module %s;" % SO
    # the postinst of dh_nginx enables it the Debian way
    assert os.path.realpath(ENABLED) == SNIPPET
    listed = run("dpkg", "-L", PKG).split()
    assert SO in listed and SNIPPET in listed


def test_debian_default_config_loads_it(installed):
    """Debian's /etc/nginx/nginx.conf includes modules-enabled/*.conf."""
    r = subprocess.run([SYSTEM_NGINX, "-t"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    assert r.returncode == 0, r.stdout
    assert "test is successful" in r.stdout


def test_websocket_gets_pings_from_packaged_module(installed, nginx_factory,
                                                   backend):
    b = backend()
    port = nginx_lib.free_port()
    n = nginx_factory(proxy_server(port, b.port, """
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 1s;"""),
                      start=False, load_module=False,
                      main="include %s;" % SNIPPET)
    with open(n.conf) as f:
        conf = f.read()
    assert "load_module" not in conf.replace("include " + SNIPPET, "")
    rc, out = n.test_config()
    assert rc == 0 and "test is successful" in out, out
    assert "[warn]" not in out, out
    n.start(port)

    # the worker maps the packaged .so, not one from build/
    worker = n.worker_pids()[0]
    with open("/proc/%d/maps" % worker) as f:
        maps = f.read()
    assert SO in maps
    assert os.path.join(BUILD, "ngx_ws_heartbeat_module.so") not in maps

    c = Client(port)
    conn = b.accept()
    c.pump(1.0)
    assert not c.closed
    assert len(c.pings) >= 3, c.pings
    for _, f in c.pings:
        assert f.is_module_ping and f.fin and not f.masked
    c.send_frame(TEXT, b"through the package")
    assert c.recv_frame().payload == b"through the package"
    assert conn.next_frame().payload == b"through the package"
    c.close()
