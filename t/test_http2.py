"""HTTP/2 clients are left alone. nginx before 1.31.0 does not reject
Upgrade and Connection on HTTP/2 requests, so an h2 client can reach the
upgraded relay (the raw WebSocket bytes then land on the HTTP/2 stream);
the module must not engage there: no Ping may ever be written into that
stream. nginx 1.31.0 and later answer such a request 400 (connection-
specific headers make an HTTP/2 request malformed): the case cannot
happen there, and that is what the test checks on them."""

import socket
import time

import h2.config
import h2.connection
import h2.events

from conftest import proxy_server
from lib.nginx import (free_port, nginx_version, status_server,
                       status_value, wait_port)

TOTAL = "nginx_ws_heartbeat_connections_total"
ACTIVE = "nginx_ws_heartbeat_connections_active"


def test_h2_upgrade_is_not_touched(nginx_factory, backend):
    b = backend(mode="silent")
    port = free_port()
    sport = free_port()
    # stock nginx logs an epoll [alert] on this path by itself (and then
    # ends the relay): check the log by hand below instead of the fixture's
    # generic check. The status endpoint tells whether the module engaged
    # (its connections_total), on any build of nginx.
    n = nginx_factory(http=status_server(sport) + proxy_server(
        port, b.port, """
            ws_heartbeat on;
            ws_heartbeat_interval 50ms;
            ws_heartbeat_timeout 100ms;""", listen_extra="http2"),
                      port=port, check=False)
    wait_port(sport)
    assert status_value(sport, TOTAL) == 0
    s = socket.create_connection(("127.0.0.1", port), 5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False, normalize_inbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, [
        (":method", "GET"), (":path", "/"), (":scheme", "http"),
        (":authority", "127.0.0.1:%d" % port),
        ("upgrade", "websocket"), ("connection", "upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13")], end_stream=True)
    s.sendall(conn.data_to_send())
    raw = b""
    status = None
    deadline = time.monotonic() + 5
    s.settimeout(0.2)
    while status is None and time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        raw += data
        for ev in conn.receive_data(data):
            if isinstance(ev, (h2.events.ResponseReceived,
                               h2.events.InformationalResponseReceived)):
                status = dict(ev.headers).get(b":status")
        s.sendall(conn.data_to_send())
    if nginx_version() >= (1, 31, 0):
        # the request is malformed: it never reaches the backend
        assert status == b"400", raw
        s.close()
        time.sleep(0.2)
        assert not b.all, "the malformed request was proxied"
        assert status_value(sport, TOTAL) == 0
        n.stop()
        assert "exited on signal" not in n.log()
        return
    # the 101 came from the backend: the h2 stream is in the upgraded relay
    assert status == b"101", raw
    b.accept()
    # well past interval + timeout: nothing of the module's may appear
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not data:
            break
        raw += data
    assert b"wshb" not in raw
    # the module never took the relay on, during it or after
    assert status_value(sport, TOTAL) == 0
    assert status_value(sport, ACTIVE) == 0
    s.close()
    time.sleep(0.1)
    assert status_value(sport, TOTAL) == 0
    n.stop()
    log = n.log()
    assert "exited on signal" not in log
    assert "ws heartbeat" not in log
