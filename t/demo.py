"""make demo: nginx with ngx_ws_heartbeat in front of a WebSocket echo
backend, on 127.0.0.1, with the heartbeat visible.

Two demo clients connect: "alive" answers Pings like a browser does;
"dead" goes silent, like a phone that lost its network. You see the Pings
nginx injects, their round trips, and nginx closing the dead one with a
Close 1001 that reaches the backend. Stops everything on Ctrl-C or after
--seconds."""

import argparse
import os
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib.nginx import Nginx, free_port, proxy_server  # noqa: E402
from lib.wsproto import Backend, Client, CLOSE  # noqa: E402

# the location's own lines, after the proxy block of lib.nginx.proxy_server
CONF = """proxy_read_timeout 5s;    # stock nginx would cut idle sockets

            ws_heartbeat on;
            ws_heartbeat_interval 2s;
            ws_heartbeat_timeout 1500ms;"""


def say(who, text):
    with OUT:
        print("%8.3fs  %-8s %s" % (time.monotonic() - T0, who, text),
              flush=True)


T0 = time.monotonic()
OUT = threading.Lock()


def alive_client(port, stop):
    c = Client(port, "/ws", answer_pings=True, timeout=5)
    say("alive", "connected (answers Pings, sends nothing else)")
    seen = 0
    while not stop.is_set() and not c.closed:
        c.pump(0.2)
        while seen < len(c.pings):
            t, f = c.pings[seen]
            seq = int.from_bytes(f.payload[4:8], "big")
            say("alive", "<- Ping #%d from nginx, answered with Pong" % seq)
            seen += 1
    if c.closed:
        say("alive", "closed by nginx (unexpected)")
    c.close()


def dead_client(port, stop):
    c = Client(port, "/ws", answer_pings=False, timeout=5)
    say("dead", "connected, then goes silent (never reads, never answers)")
    while not stop.is_set():
        if c.wait_closed(0.2):
            say("dead", "connection closed by nginx")
            break
    c.close()


def watch_backend(b, stop):
    while not stop.is_set():
        try:
            conn = b.accept(timeout=0.2)
        except Exception:
            continue
        threading.Thread(target=watch_conn, args=(conn, stop),
                         daemon=True).start()


def watch_conn(conn, stop):
    while not stop.is_set():
        f = conn.next_frame(timeout=0.2)
        if f is None and conn.closed.is_set():
            say("backend", "connection from nginx closed")
            return
        if f is not None and f.opcode == CLOSE:
            say("backend", "<- Close %d %r from nginx: the client is gone"
                % (f.close_code, f.payload[2:].decode()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=0,
                    help="stop after this long (0: until Ctrl-C)")
    args = ap.parse_args()

    b = Backend(mode="echo")
    port = int(os.environ.get("DEMO_PORT") or 0) or free_port()
    prefix = tempfile.mkdtemp(prefix="ws-heartbeat-demo-")
    n = Nginx(prefix, proxy_server(port, b.port, CONF, location="/ws"))
    rc, out = n.test_config()
    print(out.strip())
    if rc != 0:
        sys.exit(1)
    n.start(port)
    print("""
nginx %s with ngx_ws_heartbeat is listening on 127.0.0.1:%d
  WebSocket echo through the module:  ws://127.0.0.1:%d/ws
  (try: /usr/bin/python3 -m websockets ws://127.0.0.1:%d/ws)
  backend (echo):                     127.0.0.1:%d
  nginx prefix and logs:              %s
Ping after 2s of silence, dead 1.5s after an unanswered Ping; stock nginx
would close idle connections after proxy_read_timeout (5s).
""" % (n.cmd()[0], port, port, port, b.port, prefix), flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in
               ((watch_backend, (b, stop)), (alive_client, (port, stop)),
                (dead_client, (port, stop)))]
    for t in threads:
        t.start()

    deadline = time.monotonic() + args.seconds if args.seconds else None
    log_pos = 0
    try:
        while not stop.is_set():
            if deadline and time.monotonic() >= deadline:
                break
            stop.wait(0.25)
            log = n.log()
            for line in log[log_pos:].splitlines():
                if "ws heartbeat" in line:
                    say("nginx", line.split("] ", 1)[-1])
            log_pos = len(log)
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        n.stop()
        b.stop()
        print("stopped nginx (pid file in %s) and the backend" % prefix)
        bad = [l for l in n.log().splitlines()
               if "[alert]" in l or "[emerg]" in l or "exited on signal" in l]
        if bad:
            print("\n".join(bad))
            sys.exit(1)


if __name__ == "__main__":
    main()
