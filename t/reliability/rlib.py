"""The reliability harness: an nginx runner that also runs under valgrind
or inside a network namespace and accepts the one crash a test causes on
purpose, raw endpoints that record every byte with its arrival time, a
Python mirror of the module's frame scanner that tells where the module may
inject a Ping and a catalogue of hostile frames; the lab of network
namespaces (NetLab, TunLink) is lib.netns's.

Modes (environment):
  RELIABILITY=quick|full   the suite runs only when set (the Makefile's
                           reliability targets set it); full runs longer
                           soaks and every variant
  RELIABILITY_VALGRIND=1   nginx runs under valgrind (memcheck),
                           master_process off; only tests marked
                           valgrind_ok run
  RELIABILITY_BUGS=fail    tests of known, unfixed bugs fail instead of
                           being reported as xfail
"""

import contextlib
import glob
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from lib import nginx as nginx_lib
from lib import wsproto
from lib.nginx import REASONS, Nginx, wait_for
from lib.wsproto import (BINARY, CLOSE, CONT, PING, PING_TAG, PONG, TEXT,
                         xor_mask)

HERE = os.path.dirname(os.path.abspath(__file__))

MODE = os.environ.get("RELIABILITY", "")
FULL = MODE == "full"
VALGRIND = os.environ.get("RELIABILITY_VALGRIND", "") == "1"
ASAN = bool(nginx_lib.PRELOAD)
BUGS_FAIL = os.environ.get("RELIABILITY_BUGS", "") == "fail"

# every test module of the suite carries this mark
gate = pytest.mark.skipif(
    MODE not in ("quick", "full"),
    reason="reliability suite: run it with make reliability-quick or "
           "make reliability (RELIABILITY=quick|full)")

# tests that also run with nginx under valgrind
valgrind_ok = pytest.mark.valgrind_ok
# tests that need several worker processes, signals to workers, or load:
# not under valgrind
no_valgrind = pytest.mark.skipif(
    VALGRIND, reason="needs nginx worker processes or load; not under "
                     "valgrind")


def known_bug(text):
    """A test that shows a bug that is not fixed yet: xfail (strict, so a
    fix makes it XPASS and the suite asks for the mark to go) unless
    RELIABILITY_BUGS=fail."""
    if BUGS_FAIL:
        return lambda f: f
    return pytest.mark.xfail(strict=True, reason="BUG: " + text)


def scale(quick, full):
    return full if FULL else quick


def slow(t):
    """Timing bounds grow under sanitizers and valgrind (the suites' one
    slowdown factor, lib.nginx.SLOWDOWN)."""
    return nginx_lib.slow(t)


# -- nginx --------------------------------------------------------------------

VALGRIND_SUPP = os.path.join(HERE, "valgrind.supp")
EXITED_ON_SIGNAL = re.compile(
    r"worker process (\d+) exited on signal (\d+)")


class RNginx(Nginx):
    """Nginx with a status server on a unix socket, optional network
    namespace, optional valgrind, and a log check that accepts exactly
    the worker crashes a test caused (expect_crash)."""

    def __init__(self, prefix, http, netns=None, workers=1, main="",
                 status=True, **kw):
        self.sockdir = tempfile.mkdtemp(prefix="wshbr-")
        self.status_sock = os.path.join(self.sockdir, "status.sock")
        if status:
            http = http + """
    server {
        listen unix:%s;
        access_log off;
        location / { ws_heartbeat_status; }
    }
""" % self.status_sock
        super().__init__(prefix, http, workers=workers, main=main, **kw)
        self.netns = netns
        self.valgrind = VALGRIND
        self.expected_crashes = []     # (pid, signal)
        self.stderr_path = os.path.join(self.prefix, "logs", "stderr.log")
        if self.valgrind:
            with open(self.conf) as f:
                text = f.read()
            text = text.replace("master_process on;", "master_process off;")
            with open(self.conf, "w") as f:
                f.write(text)

    def argv(self):
        argv = self.cmd()
        if self.valgrind:
            argv = ["valgrind", "--tool=memcheck", "--error-exitcode=99",
                    "--log-file=%s/valgrind.%%p.log" % self.prefix,
                    "--num-callers=40", "--suppressions=" + VALGRIND_SUPP,
                    "--leak-check=full", "--show-leak-kinds=definite",
                    "--errors-for-leak-kinds=definite"] + argv
        if self.netns:
            pre = ["ip", "netns", "exec", self.netns]
            if PRELOAD_ENV_KEYS & set(self.env):
                # only nginx gets the sanitizer runtime, not ip(8)
                pre += ["/usr/bin/env"] + ["%s=%s" % (k, self.env[k])
                                           for k in sorted(PRELOAD_ENV_KEYS)
                                           if k in self.env]
            argv = pre + argv
        return argv

    def start(self, port=None):
        env = dict(self.env)
        if self.netns:
            for k in PRELOAD_ENV_KEYS:
                env.pop(k, None)
        self.stderr_file = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL,
                                     stderr=self.stderr_file, env=env)
        try:
            wait_for(self.status_ready, slow(15), interval=0.05,
                     what="nginx status socket")
            if port is not None and not self.netns:
                nginx_lib.wait_port(port, slow(15))
        except TimeoutError:
            self.stop()
            raise RuntimeError("nginx did not start:\n" + self.log()[-3000:]
                               + self.stderr_text())
        return self

    def stderr_text(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def status_ready(self):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(self.status_sock)
            return True
        except OSError:
            return False

    def stop(self, timeout=None):
        if self.proc is None:
            return
        super().stop(timeout or (60 if self.valgrind else 20))
        self.stderr_file.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def quit_timed_out(self):
        if self.valgrind:
            # nginx with master_process off can miss a SIGQUIT that lands
            # between its check of ngx_quit and epoll_wait() without a
            # timer (valgrind widens that window): ask again, then SIGTERM,
            # so that valgrind still writes its summary
            self.missed_quit = True
            for sig in (signal.SIGQUIT, signal.SIGTERM):
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(30)
                    break
                except subprocess.TimeoutExpired:
                    pass

    def reload(self):
        os.kill(self.pid, signal.SIGHUP)

    def worker_pids(self):
        if self.valgrind:
            return [self.pid]
        return super().worker_pids()

    def expect_crash(self, pid, sig):
        self.expected_crashes.append((pid, sig))

    def check_log(self):
        """No [alert]/[crit]/[emerg], no crashed worker other than those
        expected (each exactly once), no sanitizer or valgrind report."""
        crashes = []
        bad = []
        for line in self.log().splitlines():
            m = EXITED_ON_SIGNAL.search(line)
            if m:
                crashes.append((int(m.group(1)), int(m.group(2))))
                continue
            if "[alert]" in line or "[emerg]" in line or "[crit]" in line:
                bad.append(line)
        assert not bad, "error.log:\n" + "\n".join(bad)
        assert sorted(crashes) == sorted(self.expected_crashes), \
            "worker crashes %r, expected %r" % (crashes,
                                               self.expected_crashes)
        self.check_sanitizers()
        if self.valgrind:
            self.check_valgrind()

    def check_valgrind(self):
        logs = glob.glob(os.path.join(self.prefix, "valgrind.*.log"))
        assert logs, "no valgrind log"
        for path in logs:
            with open(path, errors="replace") as f:
                text = f.read()
            m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
            assert m, "valgrind did not finish (%s):\n%s" % (path,
                                                             text[-5000:])
            assert m.group(1) == "0", "valgrind (%s):\n%s" % (path,
                                                             text[-20000:])
        assert self.returncode == 0, \
            "nginx under valgrind exited %s" % self.returncode

    # -- observability

    def status(self):
        """The status endpoint's Prometheus text as {name{labels}: value},
        summed over the groups (labels without group)."""
        head, body = nginx_lib.http_get(self.status_sock, "/status",
                                        "status", slow(10))
        assert head.startswith(b"HTTP/1.1 200"), head
        out = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            name = nginx_lib.without_group(name)
            out[name] = out.get(name, 0) + float(value)
        return out

    def fds(self, pid):
        return len(os.listdir("/proc/%d/fd" % pid))

    def rss_kb(self, pid):
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


PRELOAD_ENV_KEYS = {"LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS"}


def closes(st, reason):
    return st.get('nginx_ws_heartbeat_closes_total{reason="%s"}' % reason, 0)


def counters(st):
    """The figures the suite checks, from one status() reading."""
    c = {"total": st["nginx_ws_heartbeat_connections_total"],
         "active": st["nginx_ws_heartbeat_connections_active"]}
    for r in REASONS:
        c[r] = closes(st, r)
    return c


def delta(before, after):
    return {k: after[k] - before[k] for k in after}


# the server block of lib.nginx, to a backend port or "host:port"
server = nginx_lib.proxy_server


# -- raw endpoints ------------------------------------------------------------

def close(sock):
    """close() of a socket another thread is blocked reading does not end
    the connection until that read returns: shut it down first (FIN)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def reset(sock):
    """End the connection with an RST (SO_LINGER 0), even while a Recorder
    is blocked reading it: SHUT_RD wakes the reader and sends nothing."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


@contextlib.contextmanager
def closing(*endpoints):
    """Close these endpoints (RawClient, RawConn, wsproto.Client) on the
    way out, whatever happened, so that a failed check leaves no
    connection open behind it."""
    try:
        yield
    finally:
        for e in endpoints:
            try:
                e.close()
            except OSError:
                pass


class Recorder:
    """Reads a socket in a thread: every byte, with arrival times."""

    def __init__(self, sock, initial=b""):
        self.sock = sock
        self.chunks = []            # (monotonic time, bytes)
        if initial:
            self.chunks.append((time.monotonic(), bytes(initial)))
        self.eof = threading.Event()
        self.error = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                with self.lock:
                    self.chunks.append((time.monotonic(), data))
        except OSError as e:
            self.error = e
        self.eof.set()

    @property
    def raw(self):
        with self.lock:
            return b"".join(d for _, d in self.chunks)

    def since(self, t):
        with self.lock:
            return b"".join(d for at, d in self.chunks if at >= t)

    def wait_len(self, n, timeout=10.0):
        """Wait until n bytes arrived (or EOF); returns the bytes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.raw
            if len(raw) >= n or self.eof.is_set():
                return raw
            time.sleep(0.005)
        return self.raw

    def wait_eof(self, timeout=10.0):
        return self.eof.wait(timeout)


def send_chunked(sock, data, rng, max_chunk=None, pause=0.002, lock=None):
    """Write data in random pieces (1 byte .. max_chunk), pausing now and
    then so that the receiver reads them separately."""
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    i = 0
    sizes = [1, 2, 3, 5, 7, 13, 64, 500, 1400, 4096, 20000]
    while i < len(data):
        n = rng.choice(sizes)
        if max_chunk:
            n = min(n, max_chunk)
        with (lock or contextlib.nullcontext()):
            sock.sendall(data[i:i + n])
        i += n
        if rng.random() < 0.3:
            time.sleep(rng.random() * pause)


class RawEnd:
    """What RawClient and RawConn do with their socket (self.sock), whose
    bytes a Recorder (self.rec) keeps; writes under self.lock if set."""

    lock = None

    def send(self, data):
        with (self.lock or contextlib.nullcontext()):
            self.sock.sendall(data)

    def send_chunked(self, data, rng, **kw):
        send_chunked(self.sock, data, rng, lock=self.lock, **kw)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self):
        """close() with SO_LINGER 0: the peer gets an RST."""
        reset(self.sock)

    def close(self):
        close(self.sock)


class RawClient(RawEnd):
    """A WebSocket client that answers nothing: it sends what it is told,
    exactly, and records every byte it receives."""

    def __init__(self, port, path="/", host="127.0.0.1", extra=b"",
                 upgrade="websocket", headers=None, sock=None, addr=None,
                 timeout=10.0):
        if sock is None:
            sock = socket.create_connection((addr or host, port), timeout)
        elif addr is not None:
            sock.settimeout(timeout)
            sock.connect((addr, port))
        self.sock = sock
        self.sock.settimeout(timeout)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head, self.status, self.headers, rest = \
            wsproto.client_handshake(self.sock, path, host, upgrade, headers,
                                     extra)
        self.sock.settimeout(None)
        self.rec = Recorder(self.sock, rest)


class RawConn(RawEnd):
    """One connection at a RawBackend; its writes go one at a time."""

    def __init__(self, sock, path, headers, rest):
        self.sock = sock
        self.path = path
        self.headers = headers
        self.rec = Recorder(sock, rest)
        self.lock = threading.Lock()


class RawBackend(wsproto.Listener):
    """A backend that answers the upgrade (optionally with bytes of its own
    right behind the 101, in the same write: after_101, bytes or a function
    of the request path) and then only records: every byte it gets, with
    arrival times. It sends what the test tells it."""

    def __init__(self, lsock=None, extensions=None, after_101=b"",
                 upgrade="websocket"):
        self.extensions = extensions
        self.after_101 = after_101
        self.upgrade = upgrade
        self.conns = {}                 # path -> RawConn
        self.cond = threading.Condition()
        self.all = []
        super().__init__(lsock)

    def _serve(self, s):
        try:
            path, headers, rest = wsproto.read_request(s)
        except (OSError, ConnectionError, ValueError):
            s.close()
            return
        after = self.after_101(path) if callable(self.after_101) \
            else self.after_101
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(wsproto.handshake_response(
            headers, self.upgrade, extensions=self.extensions) + after)
        conn = RawConn(s, path, headers, rest)
        with self.cond:
            self.conns[path] = conn
            self.all.append(conn)
            self.cond.notify_all()

    def accept(self, path, timeout=10.0):
        with self.cond:
            ok = self.cond.wait_for(lambda: path in self.conns, timeout)
            assert ok, "no backend connection for " + path
            return self.conns[path]

    def stop(self):
        try:
            self.lsock.close()
        except OSError:
            pass
        for c in self.all:
            c.close()


# -- frames: builder, a mirror of the module's scanner, hostile catalogue -----

def raw_frame(op, payload=b"", fin=True, rsv=0, masked=False, form=None,
              declared=None, key=None):
    """Any frame, well formed or not (wsproto.encode_frame); unmasked
    unless masked."""
    return wsproto.encode_frame(op, payload, fin, masked, rsv, key, form,
                                declared)


# the module's names for its scanner errors (src/frame.cpp to_string)
E_OPCODE = "reserved opcode"
E_RSV = "bad RSV bits"
E_CTL_SIZE = "control frame too long"
E_CTL_FRAG = "fragmented control frame"
E_SIZE = "non-minimal length"
E_SIZE64 = "64-bit length with top bit set"
E_MASK = "wrong mask bit"
E_CONT = "continuation without message"
E_DATA = "data frame inside message"


def scan(data, client, rsv1=False):
    """The module's frame scanner, in Python, over a whole stream: returns
    (boundaries, error, error_offset). boundaries are the stream offsets at
    which the module's scanner is between frames (0 and the end of every
    complete frame before any error); error is the module's name for the
    first rejection (None if none) and error_offset where that frame
    starts."""
    bounds = [0]
    i = 0
    in_msg = False
    n = len(data)
    while i < n:
        start = i
        b0 = data[i]
        fin, rsv, op = b0 >> 7, b0 & 0x70, b0 & 0x0F
        control = op & 0x8
        if (3 <= op <= 7) or op >= 0xB:
            return bounds, E_OPCODE, start
        if rsv & 0x30:
            return bounds, E_RSV, start
        if rsv & 0x40 and (not rsv1 or op not in (TEXT, BINARY)):
            return bounds, E_RSV, start
        if control:
            if not fin:
                return bounds, E_CTL_FRAG, start
        elif op == CONT:
            if not in_msg:
                return bounds, E_CONT, start
        elif in_msg:
            return bounds, E_DATA, start
        if not control:
            in_msg = not fin
        if i + 1 >= n:
            return bounds, None, None
        b1 = data[i + 1]
        masked, len7 = b1 >> 7, b1 & 0x7F
        if bool(masked) != bool(client):
            return bounds, E_MASK, start
        if control and len7 > 125:
            return bounds, E_CTL_SIZE, start
        ext = 2 if len7 == 126 else 8 if len7 == 127 else 0
        if i + 2 + ext > n:
            return bounds, None, None
        if ext == 2:
            length = struct.unpack("!H", data[i + 2:i + 4])[0]
            if length < 126:
                return bounds, E_SIZE, start
        elif ext == 8:
            length = struct.unpack("!Q", data[i + 2:i + 10])[0]
            if length >> 63:
                return bounds, E_SIZE64, start
            if length < 65536:
                return bounds, E_SIZE, start
        else:
            length = len7
        end = i + 2 + ext + (4 if masked else 0) + length
        if end > n:
            return bounds, None, None
        i = end
        bounds.append(i)
    return bounds, None, None


def module_ping_at(buf, i, masked):
    """Length of the module Ping starting at buf[i] (0 if none): FIN Ping,
    RSV 0, 16-byte payload tagged "wshb"; masked toward the upstream."""
    if masked:
        if buf[i:i + 2] != b"\x89\x90" or len(buf) < i + 22:
            return 0
        key = buf[i + 2:i + 6]
        return 22 if xor_mask(buf[i + 6:i + 22], key)[:4] == PING_TAG else 0
    if buf[i:i + 2] != b"\x89\x10" or len(buf) < i + 18:
        return 0
    return 18 if buf[i + 2:i + 6] == PING_TAG else 0


class RelayMismatch(AssertionError):
    pass


def match_relay(received, sent, client, masked_pings, rsv1=False):
    """Compares what a peer received with what the other peer sent: equal
    byte for byte, except for module Pings, which may only stand at frame
    boundaries of the part of the stream the module's scanner accepted.
    Returns (pings, delivered): module Pings found and how many sent bytes
    arrived (a prefix of sent). Raises RelayMismatch on any other byte."""
    bounds = set(scan(sent, client, rsv1)[0])
    i = j = pings = 0
    ordered = sorted(bounds)
    while i < len(received):
        if j in bounds:
            k = module_ping_at(received, i, masked_pings)
            if k and received[i:i + k] != sent[j:j + k]:
                i += k
                pings += 1
                continue
        nxt = next((b for b in ordered if b > j), len(sent))
        seg = sent[j:nxt]
        got = received[i:i + len(seg)]
        if got != seg[:len(got)] or not seg:
            off = next((x for x in range(len(got)) if x >= len(seg)
                        or got[x] != seg[x]), len(got))
            raise RelayMismatch(
                "byte %d received (sent offset %d) differs: got %r, "
                "expected %r" % (i + off, j + off,
                                 received[i + off:i + off + 24],
                                 sent[j + off:j + off + 24]))
        i += len(got)
        j += len(got)
    return pings, j


def count_pings_only(received, masked):
    """received must be module Pings only; returns how many."""
    i = n = 0
    while i < len(received):
        k = module_ping_at(received, i, masked)
        assert k, "not a module Ping at %d: %r" % (i, received[i:i + 24])
        i += k
        n += 1
    return n


def valid_prefix(client, rng):
    """Well-formed frames of every kind an endpoint may send, including the
    endpoint's own Pings and Pongs (one shaped like the module's but not
    its), a fragmented message with a control frame inside, and the
    three length encodings."""
    m = client
    fs = [
        raw_frame(TEXT, b"hello", masked=m),
        raw_frame(BINARY, rng.randbytes(300), masked=m),
        raw_frame(TEXT, b"frag-1", fin=False, masked=m),
        raw_frame(PING, b"endpoint ping", masked=m),
        raw_frame(CONT, b"frag-2", fin=False, masked=m),
        raw_frame(PONG, b"0123456789abcdef", masked=m),
        raw_frame(CONT, b"frag-3", masked=m),
        raw_frame(PONG, b"wshb" + b"\xff" * 12, masked=m),
        raw_frame(PING, rng.randbytes(125), masked=m),
        raw_frame(BINARY, b"", masked=m),
        raw_frame(BINARY, rng.randbytes(70000), masked=m),
        raw_frame(TEXT, b"x" * 126, masked=m),
    ]
    return b"".join(fs)


class Case:
    """One hostile ending of a stream. kind: "reject" (the module must step
    aside with reason), "pass" (well framed, passes, no step aside),
    "close" (an endpoint Close of any payload: Pings stop), "trunc-fin"
    and "trunc-rst" (a frame cut short, then FIN or RST)."""

    def __init__(self, name, data, reason=None, kind="reject", rsv1=False):
        self.name, self.data, self.reason = name, data, reason
        self.kind, self.rsv1 = kind, rsv1

    def __repr__(self):
        return self.name


def hostile_cases(client, rng):
    """Every class of malformed or hostile frame, for a stream sent by a
    client (frames masked) or by a server (not masked)."""
    m = client
    junk = rng.randbytes(40)
    cases = []
    for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
        cases.append(Case("opcode-%x" % op, raw_frame(op, junk, masked=m),
                          E_OPCODE))
    cases += [
        Case("rsv1-no-extension", raw_frame(TEXT, b"z", rsv=4, masked=m),
             E_RSV),
        Case("rsv2", raw_frame(BINARY, b"z", rsv=2, masked=m), E_RSV),
        Case("rsv3", raw_frame(TEXT, b"z", rsv=1, masked=m), E_RSV),
        Case("rsv1-on-ping-deflate", raw_frame(PING, b"p", rsv=4, masked=m),
             E_RSV, rsv1=True),
        Case("rsv1-on-continuation-deflate",
             raw_frame(TEXT, b"a", fin=False, rsv=4, masked=m)
             + raw_frame(CONT, b"b", rsv=4, masked=m), E_RSV, rsv1=True),
        Case("ping-126", raw_frame(PING, b"p" * 126, masked=m),
             E_CTL_SIZE),
        Case("close-64bit-form", raw_frame(CLOSE, b"\x03\xe8", form="64",
                                           masked=m), E_CTL_SIZE),
        Case("pong-fragmented", raw_frame(PONG, b"q", fin=False, masked=m),
             E_CTL_FRAG),
        Case("ping-fragmented-inside-message",
             raw_frame(TEXT, b"a", fin=False, masked=m)
             + raw_frame(PING, b"p", fin=False, masked=m), E_CTL_FRAG),
        Case("len16-non-minimal", raw_frame(BINARY, b"abc", form="16",
                                            masked=m), E_SIZE),
        Case("len64-non-minimal", raw_frame(BINARY, b"a" * 1000,
                                            form="64", masked=m), E_SIZE),
        Case("len64-top-bit", raw_frame(BINARY, b"abc", form="64",
                                        declared=(1 << 63) | 5,
                                        masked=m), E_SIZE64),
        Case("len64-all-ones", raw_frame(BINARY, b"", form="64",
                                         declared=(1 << 64) - 1,
                                         masked=m), E_SIZE64),
        Case("wrong-mask-bit", raw_frame(TEXT, b"mask?", masked=not m),
             E_MASK),
        Case("continuation-without-message",
             raw_frame(CONT, b"orphan", masked=m), E_CONT),
        Case("text-inside-message",
             raw_frame(BINARY, b"a", fin=False, masked=m)
             + raw_frame(TEXT, b"b", masked=m), E_DATA),
        # "G" is 0x47: no FIN, RSV1, opcode 7 (the opcode is checked first)
        Case("garbage-http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", E_OPCODE),
        Case("garbage-nul", b"\x00" * 64, E_CONT),
        # well framed, and passed as is
        Case("huge-valid-length", raw_frame(BINARY, b"", form="64",
                                            declared=1 << 40, masked=m)
             + rng.randbytes(3000), None, "pass"),
        Case("close-invalid-code-999",
             raw_frame(CLOSE, struct.pack("!H", 999) + b"bad", masked=m),
             None, "close"),
        Case("close-code-1005", raw_frame(CLOSE, struct.pack("!H", 1005),
                                          masked=m), None, "close"),
        Case("close-one-byte", raw_frame(CLOSE, b"\x03", masked=m), None,
             "close"),
        Case("close-bad-utf8", raw_frame(CLOSE, b"\x03\xe8\xff\xfe\xc0",
                                         masked=m), None, "close"),
        Case("truncated-then-fin",
             raw_frame(BINARY, rng.randbytes(5000), masked=m)[:2500],
             None, "trunc-fin"),
        Case("truncated-header-then-fin",
             raw_frame(BINARY, rng.randbytes(70000), masked=m)[:5],
             None, "trunc-fin"),
        Case("truncated-then-rst",
             raw_frame(TEXT, b"t" * 4000, masked=m)[:1000], None,
             "trunc-rst"),
    ]
    # random garbage, decided by the Python scanner (a differential check
    # of the module's own)
    for k in range(3):
        g = rng.randbytes(rng.choice([1, 7, 300, 5000]))
        _, err, _ = scan(g, client)
        cases.append(Case("garbage-random-%d" % k, g, err,
                          "reject" if err else "pass"))
    # the catalogue agrees with the scanner mirror, after a valid prefix
    for c in cases:
        _, err, _ = scan(valid_prefix(client, random.Random(0)) + c.data,
                         client, c.rsv1)
        assert err == c.reason, (c.name, err, c.reason)
    return cases


def wait_delivered(rec, sent, client, masked_pings, timeout=10.0,
                   rsv1=False, partial=False):
    """Poll a Recorder until every byte of sent has arrived (module Pings
    aside, see match_relay); returns (pings, received). With partial, EOF
    ends the wait and a prefix is accepted."""
    deadline = time.monotonic() + slow(timeout)
    while True:
        received = rec.raw
        pings, delivered = match_relay(received, sent, client, masked_pings,
                                       rsv1)
        if delivered == len(sent):
            return pings, received
        if partial and rec.eof.is_set():
            return pings, received
        if time.monotonic() > deadline or rec.eof.is_set():
            raise AssertionError(
                "%d of %d bytes arrived (eof=%s, %d module Pings)"
                % (delivered, len(sent), rec.eof.is_set(), pings))
        time.sleep(0.005)
