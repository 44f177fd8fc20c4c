"""TLS on either side: a wss client to nginx, nginx to a TLS backend. The
module wraps ngx_ssl_write there, whose retries must repeat the same
buffer (OpenSSL's rule)."""

import random
import ssl
import threading
import time

import pytest

from conftest import proxy_server
from lib import wsproto
from lib.nginx import free_port, slow
from lib.tls import self_signed
from lib.wsproto import BINARY, CLOSE, PONG, TEXT, Client


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("cert"), "127.0.0.1")


def tls_setup(nginx_factory, backend, cert, client_tls, backend_tls,
              extra):
    crt, key = cert
    bkw = {"mode": "echo"}
    if backend_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        bkw["tls_context"] = ctx
    b = backend(**bkw)
    port = free_port()
    http = ""
    if client_tls:
        http = "ssl_certificate %s; ssl_certificate_key %s;" % (crt, key)
    n = nginx_factory(http + proxy_server(
        port, b.port, extra, scheme="https" if backend_tls else "http",
        listen_extra="ssl" if client_tls else ""), port=port)
    return n, port, b


@pytest.mark.parametrize("client_tls,backend_tls", [
    (True, False), (False, True), (True, True)])
def test_tls_integrity_and_pings(nginx_factory, backend, cert, client_tls,
                                 backend_tls):
    n, port, b = tls_setup(nginx_factory, backend, cert, client_tls,
                           backend_tls, """
            ws_heartbeat on;
            ws_heartbeat_interval 20ms;
            ws_heartbeat_upstream on;
            proxy_buffer_size 4k;""")
    c = Client(port, tls=client_tls, answer_pings="module", timeout=30)
    c.record = True
    conn = b.accept()
    rng = random.Random(7)
    msgs = []
    for i in range(400):
        size = rng.choice([0, 1, 125, 126, 4000, 65535, 65536, 300000])
        msgs.append((rng.choice([TEXT, BINARY]), rng.randbytes(size)))

    # one thread per SSL socket: OpenSSL objects are not thread-safe
    for op, p in msgs:
        c.send_frame(op, p)
        f = c.recv_frame(timeout=30)
        assert f is not None and (f.opcode, f.payload) == (op, p)
    assert c.pings, "Pings reached the client over TLS"
    assert not [f for f in conn.received if f.opcode == PONG]
    # and the upstream heartbeat's Pings reached the backend, masked (its
    # Pongs came back and were swallowed: every frame the client got
    # above was an echo)
    up = [f for f in conn.received if f.is_module_ping]
    assert up, "Pings reached the backend%s" % (
        " over TLS" if backend_tls else "")
    assert all(f.masked and f.fin and len(f.payload) == 16 for f in up), up
    c.close()


def test_tls_dead_client(nginx_factory, backend, cert):
    n, port, b = tls_setup(nginx_factory, backend, cert, True, True, """
            ws_heartbeat on;
            ws_heartbeat_interval 200ms;
            ws_heartbeat_timeout 400ms;""")
    c = Client(port, tls=True, answer_pings=False)
    conn = b.accept()
    t0 = time.monotonic()
    f = conn.next_frame(timeout=5)
    assert f is not None and f.opcode == CLOSE and f.close_code == 1001
    assert time.monotonic() - t0 <= 0.2 + 0.4 + slow(1.0)
    assert conn.closed.wait(5)
    c.close()


def test_tls_slow_client_retries_same_buffer(nginx_factory, backend, cert):
    """A wss client that reads slowly: ngx_ssl_write returns NGX_AGAIN over
    and over while Pings wait; nothing is corrupted (OpenSSL would fail
    the connection with "bad write retry")."""
    n, port, b = tls_setup(nginx_factory, backend, cert, True, False, """
            ws_heartbeat on;
            ws_heartbeat_interval 10ms;
            ws_heartbeat_timeout 10s;""")
    c = Client(port, tls=True, answer_pings="module", timeout=30)
    conn = b.accept()
    blob = bytes(range(256)) * 1024
    count = 40

    def push():
        for i in range(count):
            conn.send_frame(BINARY, blob)
    t = threading.Thread(target=push)
    t.start()
    got = 0
    while got < count:
        time.sleep(0.002)  # pacing: a slow reader, not synchronisation
        f = c.recv_frame(timeout=30)
        assert f is not None, "stalled after %d frames" % got
        assert f.payload == blob
        got += 1
    t.join()
    assert "bad write retry" not in n.log()
    assert len(c.pings) > 0
    c.send_frame(CLOSE, wsproto.close_payload(1000))
    c.close()
