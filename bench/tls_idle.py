#!/usr/bin/python3
"""Worker memory per idle WebSocket with TLS on both sides (wss:// to
nginx, proxy_pass https:// to the backend): stock nginx (A), the module
with its relay and TLS buffers released while idle (C, the default), and
with them kept (K). One nginx at a time, one worker; N connections, each
relays one 100-byte frame both ways and stays open; the worker's RssAnon
before and after them, per connection. The clients and the backend are
this script's threads (t/lib), so N stays in the low thousands.

    NGX_WS_HEARTBEAT_MODULE=build/ngx_ws_heartbeat_module.so \\
        /usr/bin/python3 bench/tls_idle.py [N]
"""

import os
import pathlib
import shutil
import ssl
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "t"))

from lib.nginx import Nginx, free_port, proxy_server  # noqa: E402
from lib.tls import self_signed  # noqa: E402
from lib.wsproto import BINARY, Backend, Client  # noqa: E402

CONFIGS = [("A", False, ""),
           ("C", True, "ws_heartbeat on;"),
           ("K", True, "ws_heartbeat on; ws_heartbeat_idle_buffers keep;")]


def rss_anon_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon for %d" % pid)


def main():
    n_conns = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    work = pathlib.Path(ROOT) / "build" / "bench" / "tls-idle"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    crt, key = self_signed(work, "127.0.0.1")
    for name, load, extra in CONFIGS:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        b = Backend(tls_context=ctx)
        port = free_port()
        n = Nginx(work / ("nginx-" + name),
                  "ssl_certificate %s; ssl_certificate_key %s;" % (crt, key)
                  + proxy_server(port, b.port, extra, scheme="https",
                                 listen_extra="ssl"),
                  load_module=load)
        n.start(port)
        clients = []
        try:
            (worker,) = n.worker_pids()

            def one():
                c = Client(port, tls=True, timeout=30)
                b.accept()
                c.send_frame(BINARY, b"x" * 100)
                f = c.recv_frame()
                assert f is not None and f.payload == b"x" * 100
                clients.append(c)

            one()                   # the worker's one-time allocations
            before = rss_anon_kb(worker)
            for _ in range(n_conns):
                one()
            after = rss_anon_kb(worker)
            print("%s  %d idle TLS connections: %.0f B per connection"
                  % (name, n_conns, (after - before) * 1024 / n_conns),
                  flush=True)
        finally:
            for c in clients:
                c.close()
            n.stop()
            b.stop()


if __name__ == "__main__":
    main()
