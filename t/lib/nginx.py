"""Start a real nginx (Debian's /usr/sbin/nginx by default) with the real
module, in its own prefix, on 127.0.0.1 ports or unix sockets; check its
error log."""

import functools
import grp
import os
import pwd
import re
import signal
import socket
import subprocess
import time

from .wsproto import connect

NGINX_BIN = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
MODULE = os.environ.get(
    "NGX_WS_HEARTBEAT_MODULE",
    os.path.join(os.path.dirname(__file__), "..", "..", "build",
                 "ngx_ws_heartbeat_module.so"))


@functools.lru_cache(maxsize=None)
def nginx_v():
    """The output of NGINX_BIN -V (version, build and configure
    arguments)."""
    r = subprocess.run([NGINX_BIN, "-V"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    assert r.returncode == 0, r.stdout
    return r.stdout


def nginx_version():
    """The version of NGINX_BIN, e.g. (1, 22, 1)."""
    m = re.search(r"nginx version: [^/\s]+/(\d+)\.(\d+)\.(\d+)",
                  nginx_v())
    assert m, nginx_v()
    return tuple(int(x) for x in m.groups())


def built_with(option):
    """Whether NGINX_BIN was configured with option, e.g. "--with-debug"
    (logs at debug level), "--with-http_realip_module"."""
    return re.search(r"(^|\s)%s(\s|$)" % re.escape(option), nginx_v(),
                     re.M) is not None


PRELOAD = os.environ.get("NGX_WS_HEARTBEAT_PRELOAD", "")
VALGRIND = os.environ.get("RELIABILITY_VALGRIND", "") == "1"

# The one slowdown factor of the suites: 1.0 normally, larger when nginx
# runs slower (the ASan module preloaded, or valgrind), or as set by
# NGX_WS_HEARTBEAT_SLOWDOWN (a loaded machine). Upper time bounds grow by
# it (slow()); lower bounds, which say that nothing came early, do not.
SLOWDOWN = float(os.environ.get("NGX_WS_HEARTBEAT_SLOWDOWN", "0")) or \
    (8.0 if VALGRIND else 3.0 if PRELOAD else 1.0)


def slow(t):
    """An upper time bound (or a margin above an expected time), scaled by
    the slowdown factor."""
    return t * SLOWDOWN


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll predicate() until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for " + what)
        time.sleep(interval)


def proxy_server(port, backend, extra="", location="/", scheme="http",
                 listen_extra="", addr="127.0.0.1"):
    """A server block on addr:port, or on the unix socket at the path port
    (a str: "listen unix:"), proxying WebSocket upgrades the documented
    way, to backend: a port on 127.0.0.1, "host:port", "unix:/path" or the
    path of a unix socket ("/path": proxy_pass http://unix:/path:)."""
    listen = "unix:" + port if isinstance(port, str) \
        else "%s:%d" % (addr, port)
    if isinstance(backend, int):
        backend = "127.0.0.1:%d" % backend
    elif backend.startswith("/"):
        backend = "unix:%s:" % backend
    return """
    server {
        listen %(listen)s %(listen_extra)s;
        location %(location)s {
            proxy_pass %(scheme)s://%(backend)s;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            %(extra)s
        }
    }
""" % dict(listen=listen, backend=backend, extra=extra, location=location,
           scheme=scheme, listen_extra=listen_extra)


def status_server(port):
    """A server block on 127.0.0.1:port with the ws_heartbeat_status
    endpoint at /status."""
    return """
    server {
        listen 127.0.0.1:%d;
        location = /status { ws_heartbeat_status; }
    }
""" % port


def wait_port(port, timeout=10.0):
    """port: a TCP port on 127.0.0.1, or the path of a unix socket."""
    def ok():
        try:
            connect(port, timeout=0.2).close()
            return True
        except OSError:
            return False
    wait_for(ok, timeout, what="port %s" % port)


def http_get(address, path, host="localhost", timeout=10.0):
    """GET path over HTTP/1.0 from a unix socket path or a (host, port):
    the response's head and body (bytes)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(b"GET %s HTTP/1.0\r\nHost: %s\r\n\r\n"
                  % (path.encode(), host.encode()))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


GROUP_LABEL = re.compile(r'(?<=[{,])group="[^"]*",?')


def without_group(sample):
    """A sample of the status endpoint's Prometheus text without its group
    label: 'x{group="chat",peer="client"}' -> 'x{peer="client"}',
    'x{group=""}' -> 'x'."""
    name = GROUP_LABEL.sub("", sample).replace(",}", "}")
    return name[:-2] if name.endswith("{}") else name


def status_value(port, sample, path="/status"):
    """One value of the Prometheus text of the status endpoint of
    status_server(port), e.g. 'nginx_ws_heartbeat_pings_total{peer=
    "client"}' (a sample as the text spells it, without the group label:
    the sum over the groups); None if it is not there."""
    head, body = http_get(("127.0.0.1", port), path)
    assert head.split()[1] == b"200", head
    total = None
    for line in body.decode().splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if without_group(name) == sample:
            total = (total or 0) + float(value)
    return total


# the module's close reasons, in the order of its status output
# (nginx_ws_heartbeat_closes_total{reason=...}, the JSON's "closes")
REASONS = ("client_heartbeat_timeout", "upstream_heartbeat_timeout",
           "read_timeout", "send_timeout", "invalid_frame", "drain",
           "max_age", "client_close", "upstream_close", "other")


@functools.lru_cache(maxsize=None)
def run_as():
    """The user directive of every test nginx.conf. Run as root, nginx
    starts its workers as the user it was configured with (--user=, nobody
    by default, Debian's); nginx.org's builds name "nginx", which exists
    only where their package created it. The tests name nginx's own
    default, nobody and its group, whatever the build says."""
    if os.geteuid() != 0:
        return ""
    nobody = pwd.getpwnam("nobody")
    return "\nuser nobody %s;" % grp.getgrgid(nobody.pw_gid).gr_name


class Nginx:
    """One nginx instance: nginx.conf from a template, own prefix."""

    def __init__(self, prefix, http, load_module=True, workers=1,
                 main="", events="", log_level="info"):
        self.prefix = str(prefix)
        self.proc = None
        os.makedirs(os.path.join(self.prefix, "logs"), exist_ok=True)
        os.makedirs(os.path.join(self.prefix, "tmp"), exist_ok=True)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        self.error_log = os.path.join(self.prefix, "logs", "error.log")
        self.env = dict(os.environ)
        self.asan_dir = os.path.join(self.prefix, "asan")
        if PRELOAD:
            os.makedirs(self.asan_dir, exist_ok=True)
            self.env["LD_PRELOAD"] = PRELOAD
            self.env["ASAN_OPTIONS"] = (
                "detect_leaks=0:abort_on_error=1:log_path=%s/report"
                % self.asan_dir)
            self.env["UBSAN_OPTIONS"] = (
                "print_stacktrace=1:halt_on_error=1:log_path=%s/report"
                % self.asan_dir)
        self.access_log = os.path.join(self.prefix, "logs", "access.log")
        tmp = os.path.join(self.prefix, "tmp")
        # NGX_WS_HEARTBEAT_MODULE= (empty): an nginx with the module built in
        lm = "load_module %s;" % os.path.abspath(MODULE) \
            if load_module and MODULE else ""
        lm += run_as()
        with open(self.conf, "w") as f:
            f.write("""
%(lm)s
worker_processes %(workers)d;
daemon off;
master_process on;
pid %(prefix)s/nginx.pid;
error_log %(prefix)s/logs/error.log %(log_level)s;
%(main)s
events { worker_connections 4096; %(events)s }
http {
    access_log %(prefix)s/logs/access.log;
    client_body_temp_path %(tmp)s/body;
    proxy_temp_path %(tmp)s/proxy;
    fastcgi_temp_path %(tmp)s/fastcgi;
    uwsgi_temp_path %(tmp)s/uwsgi;
    scgi_temp_path %(tmp)s/scgi;
%(http)s
}
""" % dict(lm=lm, workers=workers, prefix=self.prefix, tmp=tmp,
           log_level=log_level, main=main, events=events, http=http))

    def cmd(self, *extra):
        # -e: the error log before nginx.conf is read is ours too, not the
        # binary's compiled-in path (nginx.org's builds write
        # /var/log/nginx/error.log, Debian's stderr)
        return [NGINX_BIN, "-p", self.prefix + "/", "-c", self.conf,
                "-e", self.error_log] + list(extra)

    def test_config(self):
        """nginx -t: (returncode, output)."""
        r = subprocess.run(self.cmd("-t"), stdout=subprocess.PIPE,
                           env=self.env,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        return r.returncode, r.stdout

    def start(self, port=None):
        self.proc = subprocess.Popen(self.cmd(), stdout=subprocess.DEVNULL,
                                     env=self.env,
                                     stderr=subprocess.PIPE)
        if port is not None:
            try:
                wait_port(port)
            except TimeoutError:
                self.stop()
                raise RuntimeError("nginx did not start:\n" + self.log())
        return self

    @property
    def pid(self):
        return self.proc.pid

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.pid)],
                             stdout=subprocess.PIPE, text=True).stdout
        return [int(x) for x in out.split()]

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self, timeout=15):
        """SIGQUIT, and SIGKILL if nginx is still there after timeout;
        keeps its exit status in returncode."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.quit_timed_out()
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        self.returncode = self.proc.returncode
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def quit_timed_out(self):
        """nginx did not quit within stop()'s timeout: a subclass may try
        harder before it is killed."""

    def log(self):
        try:
            with open(self.error_log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10.0):
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log()), timeout,
                        what="error.log line /%s/" % pattern)

    def check_log(self):
        """No [alert], [emerg] or crashed worker in error.log."""
        bad = [l for l in self.log().splitlines()
               if "[alert]" in l or "[emerg]" in l or "[crit]" in l
               or "exited on signal" in l]
        assert not bad, "error.log:\n" + "\n".join(bad)
        self.check_sanitizers()

    def check_sanitizers(self):
        """No ASan or UBSan report (NGX_WS_HEARTBEAT_PRELOAD)."""
        if os.path.isdir(self.asan_dir):
            for name in os.listdir(self.asan_dir):
                with open(os.path.join(self.asan_dir, name)) as f:
                    raise AssertionError("sanitizer report %s:\n%s"
                                         % (name, f.read()[:20000]))
