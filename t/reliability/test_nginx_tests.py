"""The cases of nginx's own test suite for upgraded connections
(nginx-tests proxy_websocket.t and proxy_upgrade.t), rewritten here with
the module on and a short heartbeat interval, so that Pings are injected
(and answered, and swallowed) all along: a frame and its answer, a big
frame, ten big and small frames written back to back, bytes pipelined with
the handshake; a non-WebSocket upgrade left alone; no upgrade without an
Upgrade header; no upgrade in a subrequest (no crash); and the access log's
$bytes_sent / $body_bytes_sent / $sent_http_connection, which count the
module's Pings (documented) and match what the client read."""

import socket
import time

import pytest

from . import rlib
from .rlib import TEXT, slow
from lib import wsproto
from lib.nginx import free_port
from lib.wsproto import Client, read_http_head

pytestmark = rlib.gate

HB = """
            ws_heartbeat on;
            ws_heartbeat_interval 30ms;
            ws_heartbeat_timeout 5s;
            proxy_read_timeout 2s;
            send_timeout 2s;"""


class FooBarBackend(wsproto.Backend):
    """proxy_websocket.t's daemon: every message comes back with "foo"
    replaced by "bar"."""

    def _frame(self, conn, f):
        conn.received.append(f)
        if f.opcode == wsproto.PING:
            conn.send_frame(wsproto.PONG, f.payload)
        elif f.opcode == wsproto.CLOSE:
            conn.send_frame(wsproto.CLOSE, f.payload[:2])
        elif f.opcode in (wsproto.TEXT, wsproto.BINARY):
            conn.send_frame(f.opcode, f.payload.replace(b"foo", b"bar"))


class TextUpgradeBackend(wsproto.Listener):
    """proxy_upgrade.t's daemon: after any request a 101 to "foo" and a
    line "handshaked"; then everything up to "\\r\\nFIN" comes back with
    "foo" replaced by "bar"."""

    def __init__(self):
        super().__init__(backlog=64)

    def _serve(self, s):
        try:
            head, rest = read_http_head(s)
            # the protocol asked for ("foo", or "websocket": see the
            # subrequest test)
            upgrade = b"websocket" if "\r\nUpgrade: websocket" in head \
                else b"foo"
            s.sendall(b"HTTP/1.1 101 Switching\r\nUpgrade: " + upgrade +
                      b"\r\nConnection: Upgrade\r\n\r\nhandshaked\r\n")
            pending = rest
            while True:
                while b"\r\nFIN" in pending:
                    msg, _, pending = pending.partition(b"\r\nFIN")
                    s.sendall(msg.replace(b"foo", b"bar") + b"\r\n")
                data = s.recv(65536)
                if not data:
                    break
                pending += data
        except OSError:
            pass
        s.close()

    def stop(self):
        self.lsock.close()


def ws_read(c):
    f = c.recv_frame(timeout=slow(5))
    assert f is not None, "no answer"
    return f.payload


@pytest.fixture
def ws(rnginx, tmp_path):
    b = FooBarBackend()
    port = free_port()
    n = rnginx("""
    log_format bytes "$request_uri $bytes_sent $body_bytes_sent "
                     "$sent_http_connection";
    access_log %s/bytes.log bytes;
""" % tmp_path + rlib.server(port, b.port, HB), port=port)
    yield n, port, tmp_path
    b.stop()


@rlib.valgrind_ok
def test_websocket_frames_like_proxy_websocket_t(ws):
    n, port, _ = ws
    c = Client(port, "/ws", answer_pings=True)
    assert c.status == 101
    with rlib.closing(c):
        c.send_text("foo")
        assert ws_read(c) == b"bar"
        c.send_text("foo" * 16384)
        assert ws_read(c) == b"bar" * 16384
        for i in range(1, 11):
            c.send_text("foo" * 16384 + str(i))
            c.send_text("bazz%d" % i)
        for i in range(1, 11):
            assert ws_read(c) == b"bar" * 16384 + b"%d" % i
            assert ws_read(c) == b"bazz%d" % i
        # the heartbeat ran meanwhile: the client saw Pings
        c.pump(0.2)
        assert c.pings, "no Ping in 0.2s at a 30ms interval"


@rlib.valgrind_ok
def test_websocket_pipelined_like_proxy_websocket_t(ws):
    n, port, _ = ws
    c = Client(port, "/pipelined", answer_pings=True,
               extra=wsproto.encode_frame(TEXT, b"foo"))
    with rlib.closing(c):
        assert ws_read(c) == b"bar"
        c.send_text("foo")
        assert ws_read(c) == b"bar"


@rlib.valgrind_ok
def test_bytes_sent_count_what_the_client_read(ws):
    """proxy_upgrade.t's log check: $bytes_sent is what the client read,
    Pings included; $body_bytes_sent the same less the header."""
    n, port, tmp = ws
    c = Client(port, "/count", answer_pings=True)
    read = [len(c.head) + 4 + len(c.parser.buf)
            + sum(len(f.raw) for f in c.frames)]
    feed = c.parser.feed

    def counting(data):
        read[0] += len(data)
        return feed(data)
    c.parser.feed = counting
    with rlib.closing(c):
        for i in range(20):
            c.send_text("foo" * (i * 100))
            assert ws_read(c) == b"bar" * (i * 100)
        c.pump(0.3)
        c.send_frame(wsproto.CLOSE, wsproto.close_payload(1000))
        assert c.wait_closed(slow(5))
    assert c.pings
    log = tmp / "bytes.log"
    rlib.wait_for(lambda: log.exists() and "/count " in log.read_text(),
                  slow(5), what="access log line")
    line = [l for l in log.read_text().splitlines()
            if l.startswith("/count ")][0]
    _, sent, body, connection = line.split()
    assert int(sent) == read[0], (line, read[0])
    assert int(body) == read[0] - (len(c.head) + 4), line
    assert connection == "upgrade"


@pytest.fixture
def text_upgrade(rnginx, tmp_path):
    b = TextUpgradeBackend()
    port, ssi_port = free_port(), free_port()
    # not a file: a worker (user nobody) cannot read pytest's tmp_path
    n = rnginx(rlib.server(port, b.port, HB) + """
    server {
        listen 127.0.0.1:%d;
        location = /ssi.html {
            ssi on;
            default_type text/html;
            return 200 '<!--#include virtual="/upgrade" --> SEE-THIS';
        }
        location /upgrade {
            proxy_pass http://127.0.0.1:%d;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "Upgrade";
            ws_heartbeat on;
            ws_heartbeat_interval 30ms;
        }
    }
""" % (ssi_port, b.port), port=port)
    yield n, port, ssi_port
    b.stop()


def upgrade_connect(port, uri="/", header=True, message=None,
                    upgrade="foo"):
    s = socket.create_connection(("127.0.0.1", port), slow(5))
    req = "GET %s HTTP/1.1\r\nHost: localhost\r\n" % uri
    if header:
        req += "Upgrade: %s\r\n" % upgrade
    if upgrade == "websocket":
        req += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" \
            "Sec-WebSocket-Version: 13\r\n"
    req += "Connection: Upgrade\r\n\r\n"
    data = req.encode()
    if message is not None:
        data += message.encode() + b"\r\nFIN"
    s.sendall(data)
    return s


def read_until(s, token, timeout=3.0):
    s.settimeout(slow(timeout))
    buf = b""
    try:
        while token not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        pass
    return buf


@rlib.valgrind_ok
def test_text_upgrade_like_proxy_upgrade_t(text_upgrade):
    """Not a WebSocket: the module leaves it alone, no Ping ever."""
    n, port, _ = text_upgrade
    s = upgrade_connect(port)
    with rlib.closing(s):
        got = read_until(s, b"handshaked\r\n")
        assert got.startswith(b"HTTP/1.1 101") and \
            got.endswith(b"\r\n\r\nhandshaked\r\n"), got
        s.sendall(b"foo\r\nFIN")
        assert read_until(s, b"\r\n") == b"bar\r\n"
        s.sendall(b"foo" * 16384 + b"\r\nFIN")
        want = b"bar" * 16384 + b"\r\n"
        assert read_until(s, want) == want
        for i in range(1, 11):
            s.sendall(b"foo" * 16384 + b"%d\r\n" % i)
            s.sendall(b"bazz%d\r\n" % i + (b"FIN" if i == 10 else b""))
        want = b"".join(b"bar" * 16384 + b"%d\r\nbazz%d\r\n" % (i, i)
                        for i in range(1, 11))
        assert read_until(s, want) == want
        time.sleep(0.2)
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(100)     # nothing of the module's
    s = upgrade_connect(port, message="foo")
    with rlib.closing(s):
        got = read_until(s, b"handshaked\r\nbar\r\n")
        assert got.endswith(b"handshaked\r\nbar\r\n"), got
        s.sendall(b"foo\r\nFIN")
        assert read_until(s, b"\r\n") == b"bar\r\n"


@rlib.valgrind_ok
def test_no_upgrade_without_upgrade_header(text_upgrade):
    n, port, _ = text_upgrade
    s = upgrade_connect(port, header=False)
    with rlib.closing(s):
        got = read_until(s, b"handshaked\r\n", timeout=1.0)
        assert not got.endswith(b"handshaked\r\n"), got


@rlib.valgrind_ok
@pytest.mark.parametrize("upgrade", ["foo", "websocket"])
def test_no_upgrade_in_subrequest(text_upgrade, upgrade):
    """An SSI include of the upgrading location: no upgrade, no crash.
    nginx 1.22 refuses a 101 to a subrequest while reading the response
    header, before any header filter (so before the module's own check
    for main requests); with "websocket" the include is a WebSocket
    upgrade the module would otherwise take."""
    n, port, ssi_port = text_upgrade
    s = upgrade_connect(ssi_port, uri="/ssi.html", upgrade=upgrade)
    with rlib.closing(s):
        got = read_until(s, b"SEE-THIS", timeout=3.0)
        # the include did reach the upgrading backend: nginx refuses its
        # 101 and ends the page's request, nothing sent
        n.wait_log(r'\[error\].*connection upgrade in subrequest .*'
                   r'request: "GET /ssi\.html HTTP/1\.1", '
                   r'subrequest: "/upgrade"', timeout=slow(5))
        assert b"handshaked" not in got and b" 101 " not in got, got
        assert s.recv(1) == b"", "the page's connection is closed"
        # the worker is alive and serves the next request
        s2 = upgrade_connect(port)
        with rlib.closing(s2):
            assert read_until(s2, b"handshaked\r\n").endswith(
                b"handshaked\r\n")
