"""Observability: the shared-memory counters behind ws_heartbeat_status
(Prometheus text and JSON) and the $ws_heartbeat_* variables, on a real
nginx with the real module. The counters must add up to exactly what
happened on the wire, summed over all workers and kept across reloads; the
variables must tell the same story per connection in the access log."""

import collections
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from prometheus_client.parser import text_string_to_metric_families

from lib.nginx import (REASONS, Nginx, free_port, proxy_server, slow,
                       wait_for, wait_port)
from lib.wsproto import (CLOSE, PONG, TEXT, Backend, Client, close_payload,
                         encode_frame)

P = "nginx_ws_heartbeat_"

FAMILIES = {
    P + "connections_total": "counter",
    P + "connections_active": "gauge",
    P + "pings_total": "counter",
    P + "pongs_total": "counter",
    P + "closes_total": "counter",
    P + "close_frames_total": "counter",
    P + "discarded_frames_total": "counter",
    P + "closing_timeouts_total": "counter",
    P + "rtt_seconds": "histogram",
    P + "connection_duration_seconds": "histogram",
}

PEERS = ("client", "upstream")
CODES = tuple(str(c) for c in range(1000, 1016)) + ("other",)
LE = ("0.001000", "0.002500", "0.005000", "0.010000", "0.025000",
      "0.050000", "0.100000", "0.250000", "0.500000", "1.000000",
      "2.500000", "5.000000", "10.000000", "+Inf")
AGE_LE = ("1.000000", "5.000000", "30.000000", "60.000000", "300.000000",
          "900.000000", "3600.000000", "14400.000000", "43200.000000",
          "86400.000000", "+Inf")

PROM_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# one access log line per finished WebSocket connection
LOG_FORMAT = ("$pid $uri reason=$ws_heartbeat_close_reason "
              "pings=$ws_heartbeat_pings pongs=$ws_heartbeat_pongs "
              "rtt=$ws_heartbeat_rtt rtt_min=$ws_heartbeat_rtt_min "
              "rtt_avg=$ws_heartbeat_rtt_avg "
              "up_rtt=$ws_heartbeat_upstream_rtt "
              "up_pings=$ws_heartbeat_upstream_pings "
              "up_pongs=$ws_heartbeat_upstream_pongs")

MS = re.compile(r"^\d+\.\d{3}$")   # milliseconds, microsecond precision


# -- helpers ------------------------------------------------------------------

def fetch(port, path="/status", method="GET", headers=None):
    """(status, {lowercase header: value}, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


def key(name, **labels):
    return name, frozenset(labels.items())


def parse_prom(text, by_group=False):
    """{(sample name, frozenset(labels)): value}; also checks that no sample
    appears twice and that each has a group label. Without by_group the
    group label is left out and the values summed over the groups."""
    out, seen = {}, set()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            k = key(s.name, **s.labels)
            assert k not in seen, "duplicate sample %r" % (k,)
            seen.add(k)
            assert "group" in s.labels, k
            if not by_group:
                labels = dict(s.labels)
                del labels["group"]
                k = key(s.name, **labels)
            # the values have microseconds at most: a sum of floats, rounded
            out[k] = round(out.get(k, 0) + s.value, 6)
    return out


def json_to_samples(doc):
    """The JSON document as the Prometheus samples it must equal."""
    out = {
        key(P + "connections_total"): doc["connections"]["total"],
        key(P + "connections_active"): doc["connections"]["active"],
    }
    for peer in PEERS:
        out[key(P + "pings_total", peer=peer)] = doc["pings"][peer]
        out[key(P + "pongs_total", peer=peer)] = doc["pongs"][peer]
        h = doc["rtt_seconds"][peer]
        for le, v in h["buckets"].items():
            out[key(P + "rtt_seconds_bucket", peer=peer, le=le)] = v
        out[key(P + "rtt_seconds_sum", peer=peer)] = h["sum"]
        out[key(P + "rtt_seconds_count", peer=peer)] = h["count"]
    for reason, v in doc["closes"].items():
        out[key(P + "closes_total", reason=reason)] = v
    for frm, codes in doc["close_frames"].items():
        for code, v in codes.items():
            out[key(P + "close_frames_total", code=code, **{"from": frm})] = v
    for frm, v in doc["discarded_frames"].items():
        out[key(P + "discarded_frames_total", **{"from": frm})] = v
    for reason, v in doc["closing_timeouts"].items():
        out[key(P + "closing_timeouts_total", reason=reason)] = v
    h = doc["connection_duration_seconds"]
    for le, v in h["buckets"].items():
        out[key(P + "connection_duration_seconds_bucket", le=le)] = v
    out[key(P + "connection_duration_seconds_sum")] = h["sum"]
    out[key(P + "connection_duration_seconds_count")] = h["count"]
    return out


class Status:
    """The ws_heartbeat_status endpoint of one nginx."""

    def __init__(self, port, path="/status"):
        self.port = port
        self.path = path

    def text(self):
        st, hdr, body = fetch(self.port, self.path)
        assert st == 200, (st, body)
        assert hdr["content-type"] == PROM_TYPE, hdr
        return body.decode()

    def get(self):
        return parse_prom(self.text())

    def json(self, suffix="?format=json", headers=None):
        st, hdr, body = fetch(self.port, self.path + suffix, headers=headers)
        assert st == 200, (st, body)
        assert hdr["content-type"] == "application/json", hdr
        return json.loads(body)

    def wait(self, predicate, what, timeout=10.0):
        """Poll until predicate(samples) holds; return those samples."""
        last = {}

        def ok():
            last["s"] = s = self.get()
            return s if predicate(s) else None

        try:
            return wait_for(ok, timeout, interval=0.05, what=what)
        except TimeoutError:
            raise AssertionError("timed out waiting for %s; last scrape:\n%s"
                                 % (what, dump(last.get("s", {}))))


def dump(s):
    return "\n".join("%s%s %g" % (n, dict(sorted(l)), v)
                     for (n, l), v in sorted(s.items(), key=str) if v)


def val(s, name, **labels):
    return s[key(P + name, **labels)]


def closes(s):
    return {r: val(s, "closes_total", reason=r) for r in REASONS}


def frames(s):
    """{(from, code): n} of the close frame counters that are not 0."""
    out = {}
    for frm in PEERS:
        for code in CODES:
            v = val(s, "close_frames_total", code=code, **{"from": frm})
            if v:
                out[frm, code] = v
    return out


def read_log(path, status=False):
    """Access log lines in LOG_FORMAT as dicts; those of the status
    requests only if status is true."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        pid, uri, *kv = line.split()
        d = dict(x.split("=", 1) for x in kv)
        d["pid"], d["uri"], d["line"] = int(pid), uri, line
        if status or uri != "/status":
            out.append(d)
    return out


def server_conf(port, bport, log, extra="", listen="", locations=""):
    """A WebSocket proxy server logging LOG_FORMAT, plus a status location."""
    return """
    server {
        listen 127.0.0.1:%(port)d %(listen)s;
        access_log %(log)s wshb;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        %(extra)s
        location /ws/ {
            proxy_pass http://127.0.0.1:%(bport)d;
        }
        %(locations)s
    }
""" % dict(port=port, listen=listen, log=log, extra=extra, bport=bport,
           locations=locations)


def logged_proxy(nginx_factory, b, tmp_path, extra, locations="",
                 http_extra="", **kw):
    """nginx with server_conf() toward backend b, logging to tmp_path (and
    http_extra after it): (nginx, its port, the access log's path)."""
    port = free_port()
    log = str(tmp_path / "ws.log")
    n = nginx_factory(LOG_FORMAT_CONF + server_conf(port, b.port, log, extra,
                                                    locations=locations)
                      + http_extra, port=port, **kw)
    return n, port, log


def status_conf(port, listen=""):
    return """
    server {
        listen 127.0.0.1:%d %s;
        location = /status {
            ws_heartbeat_status;
            add_header X-Worker $pid always;
        }
    }
""" % (port, listen)


LOG_FORMAT_CONF = "log_format wshb '%s';\n" % LOG_FORMAT


@contextlib.contextmanager
def pumping(clients):
    """Each client reads and answers Pings in its own thread until the
    block ends or its connection is closed."""
    stop = threading.Event()

    def run(c):
        while not stop.is_set() and not c.closed:
            try:
                c.pump(0.05)
            except OSError:
                return

    threads = [threading.Thread(target=run, args=(c,), daemon=True)
               for c in clients]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def client_closes(c, conn, code=1000):
    """The client starts the closing handshake; the backend (answer_close
    off) answers it the way a server does and closes the TCP connection."""
    c.send_frame(CLOSE, close_payload(code, b"bye"))
    f = conn.next_frame(timeout=5)
    assert f is not None and f.opcode == CLOSE and f.close_code == code, f
    conn.send_frame(CLOSE, close_payload(code))
    conn.close()
    f = c.recv_frame(timeout=5)
    assert f is not None and f.opcode == CLOSE and f.close_code == code, f
    assert c.wait_closed(5)


def reply(c, f):
    """Echo a Close; nginx may have closed the connection already."""
    try:
        c.send_frame(CLOSE, f.payload[:2])
    except OSError:
        pass


# -- 1. a scripted scenario on two workers ------------------------------------

def test_counters_add_up_across_two_workers(nginx_factory, backend, tmp_path):
    """N live and M dead clients, and one connection for each other way to
    end, over two workers: the counters equal what happened, exactly, and
    so does the access log, line by line."""
    N, M = 4, 3                   # live clients, dead clients
    b = backend(answer_close=False)
    silent = backend(answer_close=False, answer_pings=False, mode="silent")
    port, sport = free_port(), free_port()
    log = str(tmp_path / "ws.log")
    n = nginx_factory(LOG_FORMAT_CONF + status_conf(sport, "reuseport")
                      + server_conf(port, b.port, log, listen="reuseport",
                                    extra="""
        ws_heartbeat on;
        ws_heartbeat_interval 200ms;
        ws_heartbeat_timeout 500ms;""", locations="""
        location /rt/ {
            proxy_pass http://127.0.0.1:%d;
            ws_heartbeat_read_timeout 600ms;
        }
        location /updead/ {
            proxy_pass http://127.0.0.1:%d;
            ws_heartbeat_upstream on;
        }
        location /other/ {
            proxy_pass http://127.0.0.1:%d;
            ws_heartbeat_interval 10s;
            proxy_read_timeout 800ms;
        }""" % (b.port, silent.port, b.port)), port=port, workers=2)
    wait_port(sport)
    status = Status(sport)
    s = status.get()
    assert val(s, "connections_total") == 0, dump(s)

    opened = []

    def open_ws(path, be=b, **kw):
        c = Client(port, path, **kw)
        assert c.status == 101, c.head
        opened.append(c)
        return c, be.accept()

    try:
        live = [open_ws("/ws/live/%d" % i) for i in range(N)]
        dead = [open_ws("/ws/dead/%d" % i, answer_pings=False)
                for i in range(M)]
        rt, _ = open_ws("/rt/idle")                 # answers, sends no data
        updead, _ = open_ws("/updead/x", be=silent)  # backend never answers
        # nginx's own proxy_read_timeout ends it, no Close frame at all
        quiet, _ = open_ws("/other/quiet", answer_pings=False)
        with pumping([c for c, _ in live] + [rt, updead]):
            # the client starts the closing handshake
            c, conn = open_ws("/ws/client-close")
            client_closes(c, conn)

            # the backend starts it, with an application code
            c, conn = open_ws("/ws/upstream-close")
            conn.send_frame(CLOSE, close_payload(4000, b"app going away"))
            f = c.recv_frame(timeout=5)
            assert f is not None and f.close_code == 4000, f
            c.send_frame(CLOSE, f.payload[:2])
            g = conn.next_frame(timeout=5)
            assert g is not None and g.close_code == 4000, g
            conn.close()
            assert c.wait_closed(5)

            # an unmasked client frame: the module steps aside at once
            c, conn = open_ws("/ws/invalid")
            c.send_raw(encode_frame(TEXT, b"unmasked", mask=False))
            assert c.recv_frame(timeout=5).payload == b"unmasked"  # echo
            n.wait_log(r"client sent invalid WebSocket frame")
            c.close()
            # counted once, when the connection ends
            status.wait(lambda s: val(s, "closes_total",
                                      reason="invalid_frame") == 1,
                        "invalid_frame counted")

            expected = dict.fromkeys(REASONS, 0)
            expected.update(client_heartbeat_timeout=M, read_timeout=1,
                            upstream_heartbeat_timeout=1, client_close=1,
                            upstream_close=1, invalid_frame=1, other=1)
            total = N + M + 6
            s = status.wait(lambda s: closes(s) == expected
                            and val(s, "connections_active") == N,
                            "every scripted end counted")

            # phase A, the live clients still open
            assert val(s, "connections_total") == total
            assert val(s, "connections_active") == N
            assert closes(s) == expected
            # Close frames of the endpoints only: the module's own Closes
            # (heartbeat, read timeout) are not counted
            assert frames(s) == {("client", "1000"): 1,
                                 ("upstream", "1000"): 1,
                                 ("upstream", "other"): 1,
                                 ("client", "other"): 1}, dump(s)
            pings = val(s, "pings_total", peer="client")
            pongs = val(s, "pongs_total", peer="client")
            assert pings >= pongs > 0, dump(s)
            # the upstream heartbeat only ran on /updead/: one Ping, no Pong
            assert val(s, "pings_total", peer="upstream") == 1, dump(s)
            assert val(s, "pongs_total", peer="upstream") == 0, dump(s)
            assert val(s, "rtt_seconds_count", peer="upstream") == 0

            # the dead clients got exactly one Ping each and then the Close
            for c, _ in dead:
                assert c.wait_closed(5)
                assert len(c.pings) == 1, c.pings
            assert quiet.wait_closed(5)
            assert quiet.recv_frame(timeout=0) is None, "no Close frame"

            # the connections so far must have been spread over both
            # workers; if the kernel put them all on one, add more
            extra = 0
            while len({d["pid"] for d in read_log(log)}) < 2 and extra < 40:
                c, conn = open_ws("/ws/more/%d" % extra)
                client_closes(c, conn)
                extra += 1
                wait_for(lambda: len(read_log(log)) == M + 6 + extra,
                         what="log line of /ws/more/%d" % extra)

        # (read by their pump threads, now stopped)
        f = rt.recv_frame(timeout=5)
        assert f is not None and f.close_code == 1001, f
        assert f.payload[2:] == b"read timeout"
        f = updead.recv_frame(timeout=5)
        assert f is not None and f.close_code == 1011, f
        assert f.payload[2:] == b"upstream timeout"

        # phase B: the live clients close; nothing is left open
        for c, conn in live:
            client_closes(c, conn)
        expected["client_close"] += N + extra
        total += extra
        s = status.wait(lambda s: val(s, "connections_active") == 0
                        and closes(s) == expected, "all connections ended")
    finally:
        for c in opened:
            c.close()

    assert val(s, "connections_total") == total
    assert sum(closes(s).values()) == total, "each connection ends once"
    assert frames(s) == {("client", "1000"): 1 + N + extra,
                         ("upstream", "1000"): 1 + N + extra,
                         ("upstream", "other"): 1,
                         ("client", "other"): 1}, dump(s)

    # the access log: one line per connection, the reason its URI scripted
    lines = read_log(log)
    assert len(lines) == total, "\n".join(d["line"] for d in lines)
    want = {"live": "client_close", "dead": "client_heartbeat_timeout",
            "idle": "read_timeout", "x": "upstream_heartbeat_timeout",
            "client-close": "client_close", "upstream-close": "upstream_close",
            "invalid": "invalid_frame", "more": "client_close",
            "quiet": "other"}
    for d in lines:
        part = d["uri"].split("/")[2]
        assert d["reason"] == want[part], d["line"]
    assert collections.Counter(d["reason"] for d in lines) == \
        {r: v for r, v in expected.items() if v}
    pids = {d["pid"] for d in lines}
    assert len(pids) >= 2, "all connections on one worker: %s" % pids
    assert pids <= set(n.worker_pids()), (pids, n.worker_pids())

    # per-connection figures add up to the shared counters
    assert sum(int(d["pings"]) for d in lines) == \
        val(s, "pings_total", peer="client")
    assert sum(int(d["pongs"]) for d in lines) == \
        val(s, "pongs_total", peer="client")
    assert sum(int(d["up_pings"]) for d in lines) == 1
    for d in lines:
        part = d["uri"].split("/")[2]
        if part == "dead":
            assert (d["pings"], d["pongs"], d["rtt"]) == ("1", "0", "-"), \
                d["line"]
        if part in ("live", "idle", "x"):
            assert int(d["pongs"]) >= 1 and MS.match(d["rtt"]), d["line"]
        if part == "x":
            assert (d["up_pings"], d["up_pongs"], d["up_rtt"]) == \
                ("1", "0", "-"), d["line"]
        else:
            assert (d["up_pings"], d["up_pongs"], d["up_rtt"]) == \
                ("0", "0", "-"), d["line"]

    # every Pong answered the latest Ping: one RTT sample each
    assert val(s, "rtt_seconds_count", peer="client") == \
        val(s, "pongs_total", peer="client")
    assert val(s, "rtt_seconds_bucket", peer="client", le="+Inf") == \
        val(s, "rtt_seconds_count", peer="client")

    # both workers answer the status request with the same sums
    body, seen = status.text(), {}
    for _ in range(60):
        st, hdr, got = fetch(sport)
        assert st == 200
        seen[int(hdr["x-worker"])] = got.decode()
        if len(seen) == 2:
            break
    assert len(seen) == 2, "status always served by %s" % list(seen)
    for pid, got in seen.items():
        assert got == body, "worker %d reports other sums" % pid


# -- 2. the exposition formats ------------------------------------------------

def check_exposition(text):
    """Families in one block each, HELP and TYPE first; the parser's view."""
    families, current = [], None
    lines = text.splitlines()
    assert text.endswith("\n") and all(lines), "no blank or missing lines"
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert lines[i + 1].startswith("# TYPE %s " % name), line
            assert name not in families, "%s twice" % name
            families.append(name)
            current = name
        elif line.startswith("# TYPE "):
            assert line.split()[2] == current, line
        else:
            sample = re.split(r"[{ ]", line, 1)[0]
            suffixes = ("_bucket", "_sum", "_count") \
                if FAMILIES.get(current) == "histogram" else ("",)
            assert sample in [current + x for x in suffixes], line
    assert families == list(FAMILIES), families

    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(parsed) == len(FAMILIES)
    for name, typ in FAMILIES.items():
        f = parsed[name[:-len("_total")] if typ == "counter" else name]
        assert f.type == typ, (name, f.type)
        assert f.documentation, name


def test_prometheus_and_json_agree(nginx_factory, backend, tmp_path):
    """The Prometheus text parses, family by family, the histograms are
    cumulative up to +Inf == _count, and the JSON carries the same values
    one to one."""
    b = backend()
    _, port, _ = logged_proxy(nginx_factory, b, tmp_path, """
        ws_heartbeat on;
        ws_heartbeat_upstream on;
        ws_heartbeat_interval 100ms;
        ws_heartbeat_timeout 300ms;""",
                                locations="""
        location = /status { ws_heartbeat_status; }""")
    status = Status(port)

    # a fresh nginx: every sample there, all 0
    text = status.text()
    check_exposition(text)
    s = parse_prom(text)
    assert set(s.values()) == {0}, dump(s)
    assert len(s) == 2 + 2 * 2 + len(REASONS) + 2 * len(CODES) + 2 \
        + 2 + 2 * (len(LE) + 2) + len(AGE_LE) + 2

    # some activity on both peers, then nothing open: the values hold still
    c = Client(port, "/ws/live")
    d = Client(port, "/ws/dead", answer_pings=False)
    try:
        c.pump(0.6)
        c.send_frame(CLOSE, close_payload(1000))
        assert c.wait_closed(5)
        assert d.wait_closed(5)
    finally:
        c.close()
        d.close()
    status.wait(lambda s: val(s, "connections_active") == 0
                and sum(closes(s).values()) == 2, "both connections ended")

    text = status.text()
    check_exposition(text)
    s = parse_prom(text)
    for peer in PEERS:
        buckets = [val(s, "rtt_seconds_bucket", peer=peer, le=le)
                   for le in LE]
        assert len([k for k in s if k[0] == P + "rtt_seconds_bucket"
                    and dict(k[1])["peer"] == peer]) == len(LE)
        assert buckets == sorted(buckets), "cumulative: %s" % buckets
        count = val(s, "rtt_seconds_count", peer=peer)
        assert buckets[-1] == count > 0, (peer, buckets, count)
        assert 0 < val(s, "rtt_seconds_sum", peer=peer) < 0.5 * count
        pongs = val(s, "pongs_total", peer=peer)
        assert val(s, "pings_total", peer=peer) >= pongs >= count
    # a label value for every reason, sender and code
    assert {dict(k[1])["reason"] for k in s
            if k[0] == P + "closes_total"} == set(REASONS)
    assert {(dict(k[1])["from"], dict(k[1])["code"]) for k in s
            if k[0] == P + "close_frames_total"} == \
        {(f, c) for f in PEERS for c in CODES}
    assert closes(s)["client_close"] == 1
    assert closes(s)["client_heartbeat_timeout"] == 1
    # how long they lived: both counted, cumulative, in seconds
    ages = [val(s, "connection_duration_seconds_bucket", le=le)
            for le in AGE_LE]
    assert ages == sorted(ages) and ages[-1] == 2, ages
    assert val(s, "connection_duration_seconds_count") == 2
    assert 0.2 < val(s, "connection_duration_seconds_sum") < 20

    # JSON, however asked for, is one document with the same values
    docs = [status.json("?format=json"), status.json("?format=JSON"),
            status.json("", {"Accept": "application/json"}),
            status.json("", {"Accept": "text/html, application/json;q=0.9"})]
    for doc in docs[1:]:
        assert doc == docs[0]
    doc = docs[0]
    assert set(doc) == {"version", "connections", "pings", "pongs", "closes",
                        "close_frames", "discarded_frames",
                        "closing_timeouts", "rtt_seconds",
                        "connection_duration_seconds", "groups"}
    assert doc["version"] == 2 and list(doc["groups"]) == [""]
    assert json_to_samples(doc["groups"][""]) == s
    assert list(doc["connection_duration_seconds"]["buckets"]) == \
        list(AGE_LE)
    assert list(doc["closes"]) == list(REASONS)
    assert list(doc["close_frames"]["client"]) == list(CODES)
    assert list(doc["rtt_seconds"]["upstream"]["buckets"]) == list(LE)
    assert json_to_samples(doc) == s
    # the format argument wins over Accept
    st, hdr, body = fetch(port, "/status?format=prometheus",
                          headers={"Accept": "application/json"})
    assert st == 200 and hdr["content-type"] == PROM_TYPE
    assert parse_prom(body.decode()) == s

    # HEAD: the headers of GET, no body
    st, hdr, body = fetch(port, "/status", "HEAD")
    assert st == 200 and body == b""
    assert int(hdr["content-length"]) == len(text.encode())


# -- 3. the variables ---------------------------------------------------------

def test_variables_in_access_log(nginx_factory, backend, tmp_path):
    """$ws_heartbeat_* in the access log of a dead and of a live client,
    with the upstream heartbeat on, and of a request the module does not
    manage."""
    b = backend()
    _, port, log = logged_proxy(nginx_factory, b, tmp_path, """
        ws_heartbeat on;
        ws_heartbeat_upstream on;
        ws_heartbeat_interval 100ms;
        ws_heartbeat_timeout 400ms;""",
                                locations="""
        location = /status { ws_heartbeat_status; }""")

    dead = Client(port, "/ws/dead", answer_pings=False)
    live = Client(port, "/ws/live")
    try:
        t0 = time.monotonic()
        live.pump(0.8)
        assert not live.closed
        live.send_frame(CLOSE, close_payload(1000))
        f = live.recv_frame(timeout=5)
        assert f is not None and f.close_code == 1000, f
        assert live.wait_closed(5)
        assert dead.wait_closed(max(0.1, 5 - (time.monotonic() - t0)))
    finally:
        live.close()
        dead.close()
    # a request the module does not manage: every variable is "-"
    st, _, _ = fetch(port, "/status")
    assert st == 200
    lines = wait_for(lambda: len(read_log(log, True)) == 3
                     and read_log(log, True),
                     what="3 access log lines")
    by = {d["uri"]: d for d in lines}

    d = by["/ws/dead"]
    assert d["reason"] == "client_heartbeat_timeout", d["line"]
    assert int(d["pings"]) == len(dead.pings) == 1, d["line"]
    assert d["pongs"] == "0", d["line"]
    assert d["rtt"] == d["rtt_min"] == d["rtt_avg"] == "-", d["line"]
    # the backend answers the upstream Pings all the same
    assert int(d["up_pings"]) >= 1 and int(d["up_pongs"]) >= 1, d["line"]
    assert int(d["up_pongs"]) <= int(d["up_pings"]), d["line"]
    assert MS.match(d["up_rtt"]), d["line"]

    d = by["/ws/live"]
    assert d["reason"] == "client_close", d["line"]
    assert int(d["pings"]) == len(live.pings) >= 4, d["line"]
    assert 1 <= int(d["pongs"]) <= int(d["pings"]) <= int(d["pongs"]) + 1, \
        d["line"]
    for v in ("rtt", "rtt_min", "rtt_avg", "up_rtt"):
        assert MS.match(d[v]), d["line"]
        assert float(d[v]) < 1000, d["line"]
    assert float(d["rtt_min"]) <= float(d["rtt"]), d["line"]
    assert float(d["rtt_min"]) <= float(d["rtt_avg"]), d["line"]
    assert 1 <= int(d["up_pongs"]) <= int(d["up_pings"]), d["line"]

    d = by["/status"]
    for v in ("reason", "pings", "pongs", "rtt", "rtt_min", "rtt_avg",
              "up_rtt", "up_pings", "up_pongs"):
        assert d[v] == "-", d["line"]


# -- 4. reload, restart, methods ----------------------------------------------

def test_counters_survive_reload(nginx_factory, backend, tmp_path):
    """nginx -s reload keeps the counters (the old worker's drain included),
    a restart resets them; the status handler answers GET and HEAD only."""
    b = backend()
    n, port, log = logged_proxy(nginx_factory, b, tmp_path, """
        ws_heartbeat on;
        ws_heartbeat_interval 10s;
        ws_heartbeat_drain_timeout 3s;
        ws_heartbeat_drain_spread 0;""",
                                locations="""
        location = /status { ws_heartbeat_status; }""", workers=2)
    status = Status(port)

    c = Client(port, "/ws/before")
    c.send_frame(CLOSE, close_payload(1000))
    assert c.wait_closed(5)
    c.close()
    live = Client(port, "/ws/live")
    try:
        before = status.wait(lambda s: val(s, "connections_total") == 2
                             and val(s, "connections_active") == 1
                             and closes(s)["client_close"] == 1,
                             "two connections, one open")
        old = set(n.worker_pids())
        assert len(old) == 2

        # a real change of configuration, then nginx -s reload
        with open(n.conf) as f:
            conf = f.read()
        with open(n.conf, "w") as f:
            f.write(conf.replace("ws_heartbeat_interval 10s",
                                 "ws_heartbeat_interval 9s"))
        n.signal(signal.SIGHUP)

        # the old worker drains the open connection
        f = live.recv_frame(timeout=5)
        assert f is not None and f.close_code == 1001, f
        reply(live, f)
        assert live.wait_closed(5)
        wait_for(lambda: not any(os.path.exists("/proc/%d" % p)
                                 for p in old),
                 timeout=10, what="the old workers to exit")
    finally:
        live.close()

    # only new workers are left to answer: the counters are those of before,
    # plus the drain the old worker counted on its way out
    after = status.get()
    assert set(n.worker_pids()).isdisjoint(old)
    assert val(after, "connections_total") == \
        val(before, "connections_total") == 2
    assert val(after, "connections_active") == 0
    assert closes(after) == dict(closes(before), drain=1)
    assert [d["reason"] for d in read_log(log)] == ["client_close", "drain"]

    c = Client(port, "/ws/after")
    c.send_frame(CLOSE, close_payload(1000))
    assert c.wait_closed(5)
    c.close()
    s = status.wait(lambda s: val(s, "connections_active") == 0
                    and val(s, "connections_total") == 3,
                    "the new worker counts on")
    assert closes(s)["client_close"] == 2

    # only GET and HEAD
    for method in ("POST", "PUT", "DELETE"):
        st, _, _ = fetch(port, "/status", method)
        assert st == 405, method
    st, _, body = fetch(port, "/status?format=json", "POST")
    assert st == 405 and b"connections" not in body
    assert status.get() == s

    # a full restart (new shared memory) is what resets them
    n.stop()
    n.start(port)
    s = status.get()
    assert val(s, "connections_total") == 0 and set(s.values()) == {0}


# -- 5. each connection ends once; invalid frames -----------------------------
#
# closes_total counts each connection once, when it ends, by the reason
# it ended for: an invalid frame (the module stepped aside, nginx relayed
# the rest as stock nginx) or the drain it was already in.

def test_invalid_frames_both_ways_count_one_end(nginx_factory, backend,
                                                tmp_path):
    """One connection with an invalid frame from each side is one end,
    not one per direction."""
    b = backend(answer_close=False)
    n, port, log = logged_proxy(nginx_factory, b, tmp_path, """
        ws_heartbeat on;
        ws_heartbeat_interval 10s;""",
                                locations="""
        location = /status { ws_heartbeat_status; }""")
    status = Status(port)
    c = Client(port, "/ws/x")
    try:
        conn = b.accept()
        c.send_raw(encode_frame(TEXT, b"unmasked", mask=False))
        assert c.recv_frame(timeout=5).payload == b"unmasked"
        conn.send(b"\x83\x00")          # reserved opcode from the backend
        f = c.recv_frame(timeout=5)      # passed through as it is
        assert f is not None and f.opcode == 3, f
        # one info line for the connection, not one per direction
        n.wait_log(r"client sent invalid WebSocket frame")
        assert "upstream sent invalid WebSocket frame" not in n.log()
        c.close()
        s = status.wait(lambda s: val(s, "connections_active") == 0,
                        "the connection ended")
    finally:
        c.close()
    assert [d["reason"] for d in read_log(log)] == ["invalid_frame"]
    assert val(s, "connections_total") == 1
    assert closes(s) == dict(dict.fromkeys(REASONS, 0), invalid_frame=1), \
        dump(s)


def invalid_frame_while_draining(nginx_factory, backend, tmp_path):
    """Reload with one connection open; once the backend has the drain's
    Close 1001, the client sends an unmasked frame.
    -> (nginx, status, client, log)."""
    b = backend(answer_close=False, mode="silent")
    n, port, log = logged_proxy(nginx_factory, b, tmp_path, """
        ws_heartbeat on;
        ws_heartbeat_interval 10s;
        ws_heartbeat_drain_timeout 1s;
        ws_heartbeat_drain_spread 0;""",
                                locations="""
        location = /status { ws_heartbeat_status; }""")
    status = Status(port)
    c = Client(port, "/ws/x")
    try:
        conn = b.accept()
        status.wait(lambda s: val(s, "connections_active") == 1, "open")
        n.signal(signal.SIGHUP)
        g = conn.next_frame(timeout=5)
        assert g is not None and g.close_code == 1001, g
        c.send_raw(encode_frame(TEXT, b"unmasked", mask=False))
        n.wait_log(r"client sent invalid WebSocket frame")
    except BaseException:
        c.close()
        raise
    return n, status, c, log


def test_invalid_frame_while_draining_counts_one_end(nginx_factory, backend,
                                                     tmp_path):
    """The connection ends once, as drain (what its log line says), not
    as both invalid_frame and drain."""
    n, status, c, log = invalid_frame_while_draining(nginx_factory, backend,
                                                     tmp_path)
    try:
        c.close()
        s = status.wait(lambda s: val(s, "connections_active") == 0,
                        "the connection ended")
    finally:
        c.close()
    assert [d["reason"] for d in read_log(log)] == ["drain"]
    assert val(s, "connections_total") == 1
    assert closes(s) == dict(dict.fromkeys(REASONS, 0), drain=1), dump(s)


def test_drain_timeout_still_ends_it_after_invalid_frame(nginx_factory,
                                                         backend, tmp_path):
    """ws_heartbeat_drain_timeout 1s bounds the connection all the same
    (the invalid frame must not cancel the drain's grace timer)."""
    n, status, c, log = invalid_frame_while_draining(nginx_factory, backend,
                                                     tmp_path)
    t0 = time.monotonic()
    try:
        closed = c.wait_closed(3)
        took = time.monotonic() - t0
    finally:
        c.close()
    assert closed, "still open %.1fs after the drain's Close (timeout 1s)" \
        % took


# -- 6. the send timeout; the status handler at server level ------------------

def test_send_timeout_counted_and_logged(nginx_factory, backend, tmp_path):
    """A client that stops reading while the backend floods it: the module
    closes it at ws_heartbeat_send_timeout, and the counters and
    $ws_heartbeat_close_reason say send_timeout."""
    b = backend(mode="silent")
    n, port, log = logged_proxy(nginx_factory, b, tmp_path, """
        ws_heartbeat on;
        ws_heartbeat_interval 10s;
        ws_heartbeat_send_timeout 500ms;
        send_timeout 30s;""",
                                locations="""
        location = /status { ws_heartbeat_status; }""")
    status = Status(port)
    c = Client(port, "/ws/slow")
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn = b.accept()
        # the client never reads: nginx's writes to it block, then the
        # backend's writes to nginx
        blob = b"z" * 65536
        conn.sock.settimeout(0.2)
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 10 and not conn.closed.is_set():
                conn.send_frame(TEXT, blob)
        except OSError:
            pass
        f = conn.next_frame(timeout=10)
        assert f is not None and f.opcode == CLOSE and f.close_code == 1001, f
        assert f.payload[2:] == b"send timeout"
        n.wait_log(r"ws heartbeat: closing, client send timeout")
        s = status.wait(lambda s: val(s, "connections_active") == 0,
                        "the connection ended")
    finally:
        c.close()
    assert val(s, "connections_total") == 1
    assert closes(s) == dict(dict.fromkeys(REASONS, 0), send_timeout=1), \
        dump(s)
    lines = wait_for(lambda: read_log(log), what="the access log line")
    assert [d["reason"] for d in lines] == ["send_timeout"], lines


def test_status_at_server_level(nginx_factory, backend, tmp_path):
    """ws_heartbeat_status in a server block: every request to that server
    is answered with the counters, which count the other server's
    WebSocket connections."""
    b = backend(answer_close=False)
    sport = free_port()
    _, port, _ = logged_proxy(nginx_factory, b, tmp_path, """
        ws_heartbeat on;
        ws_heartbeat_interval 10s;""", http_extra="""
    server {
        listen 127.0.0.1:%d;
        ws_heartbeat_status;
    }
""" % sport)
    wait_port(sport)
    paths = ("/", "/status", "/any/where")
    for path in paths:
        s = Status(sport, path).get()
        assert set(s.values()) == {0}, (path, dump(s))
    c = Client(port, "/ws/x")
    try:
        conn = b.accept()
        for path in paths:
            s = Status(sport, path).wait(
                lambda s: val(s, "connections_total") == 1
                and val(s, "connections_active") == 1, "one open")
            assert Status(sport, path).json()["connections"] == \
                {"total": 1, "active": 1}, path
        client_closes(c, conn)
        s = Status(sport).wait(lambda s: val(s, "connections_active") == 0,
                               "the connection ended")
    finally:
        c.close()
    assert closes(s) == dict(dict.fromkeys(REASONS, 0), client_close=1), \
        dump(s)


# -- 7. forged, replayed and late Pongs; Close frames once a direction -------

def forged_proxy(nginx_factory, backend):
    """nginx with Pings every 100ms on one port, its status on another."""
    b = backend(mode="echo")
    port, status_port = free_port(), free_port()
    n = nginx_factory(proxy_server(port, b.port, """
            ws_heartbeat on;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 5s;""") + """
    server {
        listen 127.0.0.1:%d;
        location = /status { ws_heartbeat_status; }
    }""" % status_port, port=port)
    return n, port, b, Status(status_port)


def module_ping(c, timeout=5.0):
    """The next Ping of the module's the client gets (not answered)."""
    seen = len(c.pings)
    wait_for(lambda: c._fill(0.05) is None or len(c.pings) > seen,
             slow(timeout), interval=0.0, what="a Ping of the module's")
    return c.pings[seen][1]


def test_ping_payload_tells_no_clock(nginx_factory, backend):
    """Three Pings far apart in time differ in their sequence only: the
    payload carries no clock (it told the host's uptime)."""
    n, port, b, status = forged_proxy(nginx_factory, backend)
    c = Client(port, "/ws/clock")
    try:
        first = module_ping(c)
        time.sleep(0.35)      # the clock moves on (what is being checked)
        later = [module_ping(c) for _ in range(2)]
    finally:
        c.close()
    for p in later:
        assert len(p.payload) == len(first.payload) == 16
        assert p.payload[:4] == first.payload[:4] == b"wshb"
        assert p.payload[8:] == first.payload[8:], (first, p)
        assert p.payload[4:8] != first.payload[4:8]


def test_forged_pong_is_not_measured(nginx_factory, backend):
    """A Pong with the module's tag and sequence but other bytes after
    them (the old payload's send time, forged) answers nothing: it is
    relayed as the client's own, and neither counted nor measured."""
    n, port, b, status = forged_proxy(nginx_factory, backend)
    c = Client(port, "/ws/forge", answer_pings=False)
    conn = b.accept()
    try:
        ping = module_ping(c)
        forged = ping.payload[:8] + b"\x00\x00\x00\x00\x7f\xff\xff\xff"
        c.send_frame(PONG, forged)
        f = conn.next_frame(timeout=slow(5))
        assert f is not None and f.opcode == PONG and f.payload == forged, f
        s = status.get()
        assert val(s, "pongs_total", peer="client") == 0, dump(s)
        assert val(s, "rtt_seconds_count", peer="client") == 0, dump(s)
        # the true answer is one, measured from nginx's own clock
        c.send_frame(PONG, module_ping(c).payload)
        s = status.wait(lambda s: val(s, "pongs_total", peer="client") == 1,
                        "the answer counted")
        assert val(s, "rtt_seconds_count", peer="client") == 1
        assert val(s, "rtt_seconds_sum", peer="client") < slow(1.0)
    finally:
        c.close()


def test_replayed_pong_counts_once(nginx_factory, backend):
    """One Pong sent 300 times: swallowed every time (the backend never
    sees the module's Pongs), counted and measured once."""
    n, port, b, status = forged_proxy(nginx_factory, backend)
    c = Client(port, "/ws/replay", answer_pings=False)
    conn = b.accept()
    try:
        pong = encode_frame(PONG, module_ping(c).payload)
        c.send_raw(pong * 300)
        c.send_frame(TEXT, b"after the replays")
        f = conn.next_frame(timeout=slow(5))
        assert f is not None and f.payload == b"after the replays", f
        s = status.get()
        assert val(s, "pongs_total", peer="client") == 1, dump(s)
        assert val(s, "rtt_seconds_count", peer="client") == 1, dump(s)
        assert val(s, "pongs_total", peer="client") <= \
            val(s, "pings_total", peer="client")
    finally:
        c.close()


def test_late_pong_is_swallowed_not_counted(nginx_factory, backend):
    """A Pong to an earlier Ping, once a later one is out: the module's,
    so swallowed, but no answer to the latest Ping."""
    n, port, b, status = forged_proxy(nginx_factory, backend)
    c = Client(port, "/ws/late", answer_pings=False)
    conn = b.accept()
    try:
        old = module_ping(c)
        # bytes prove the client alive: the next Ping comes all the same
        c.send_frame(TEXT, b"alive")
        assert conn.next_frame(timeout=slow(5)).payload == b"alive"
        module_ping(c)
        c.send_frame(PONG, old.payload)
        c.send_frame(TEXT, b"next")
        f = conn.next_frame(timeout=slow(5))
        assert f is not None and f.payload == b"next", f
        s = status.get()
        assert val(s, "pongs_total", peer="client") == 0, dump(s)
        assert val(s, "rtt_seconds_count", peer="client") == 0, dump(s)
    finally:
        c.close()


def test_close_frames_count_once_a_direction(nginx_factory, backend):
    """A client that sends 200 Close frames counts one."""
    n, port, b, status = forged_proxy(nginx_factory, backend)
    c = Client(port, "/ws/closes")
    try:
        c.send_raw(encode_frame(CLOSE, close_payload(1000)) * 200)
        s = status.wait(lambda s: val(s, "connections_active") == 0,
                        "the connection ended")
    finally:
        c.close()
    sent = sum(v for (name, labels), v in s.items()
               if name == P + "close_frames_total"
               and dict(labels)["from"] == "client")
    assert sent == 1, dump(s)


# -- 8. groups (ws_heartbeat_metrics_group) -----------------------------------

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "docs", "status.schema.json")


def check_schema(doc):
    """The JSON document against docs/status.schema.json (Debian's
    python3-jsonschema)."""
    import jsonschema
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


def by_group(s):
    """{group: {(name, labels without group): value}} of parse_prom(...,
    by_group=True)."""
    out = collections.defaultdict(dict)
    for (name, labels), v in s.items():
        d = dict(labels)
        g = d.pop("group")
        out[g][key(name, **d)] = v
    return dict(out)


def group_locations(bport, groups=("chat", "feed")):
    """/<group>/ locations with their group, toward bport."""
    return "".join("""
        location /%s/ {
            ws_heartbeat_metrics_group %s;
            proxy_pass http://127.0.0.1:%d;
        }""" % (g, g, bport) for g in groups) + """
        location = /status { ws_heartbeat_status; }"""


def test_groups_count_apart(nginx_factory, backend, tmp_path):
    """Each group of ws_heartbeat_metrics_group counts its own connections
    (the locations without one under group=""), in both workers; the JSON
    has the same values per group, and their sum at its top; ?group=
    serves one group, a group the configuration lacks is 404; the JSON
    matches docs/status.schema.json."""
    b = backend()
    _, port, _ = logged_proxy(nginx_factory, b, tmp_path, """
        ws_heartbeat on;
        ws_heartbeat_interval 100ms;
        ws_heartbeat_timeout 300ms;""",
                              locations=group_locations(b.port), workers=2)
    status = Status(port)

    fresh = status.json()
    check_schema(fresh)
    assert list(fresh["groups"]) == ["", "chat", "feed"]

    chat = [Client(port, "/chat/a"), Client(port, "/chat/b")]
    dead = Client(port, "/chat/dead", answer_pings=False)
    feed = Client(port, "/feed/a")
    plain = Client(port, "/ws/a")
    try:
        with pumping(chat + [feed, plain]):
            status.wait(lambda s: val(s, "rtt_seconds_count", peer="client")
                        >= 4 and val(s, "closes_total",
                                     reason="client_heartbeat_timeout") == 1,
                        "RTTs and the dead client's end")
        for c in (chat[0], feed, plain):
            c.send_frame(CLOSE, close_payload(1000))
            assert c.wait_closed(5)
        s = status.wait(lambda s: val(s, "connections_active") == 1
                        and val(s, "connections_total") == 5,
                        "one connection left open")
        g = by_group(parse_prom(status.text(), by_group=True))
        assert set(g) == {"", "chat", "feed"}
        assert val(g["chat"], "connections_active") == 1
        assert val(g["feed"], "connections_active") == 0
        assert val(g[""], "connections_active") == 0
    finally:
        for c in chat + [dead, feed, plain]:
            c.close()
    s = status.wait(lambda s: val(s, "connections_active") == 0,
                    "every connection ended")

    g = by_group(parse_prom(status.text(), by_group=True))
    assert {k: val(g[k], "connections_total") for k in g} == \
        {"": 1, "chat": 3, "feed": 1}
    # the dead one, then one Close, one hang-up
    assert closes(g["chat"])["client_heartbeat_timeout"] == 1
    assert closes(g["chat"])["client_close"] == 2
    assert sum(closes(g["chat"]).values()) == 3
    assert closes(g["feed"]) == dict(dict.fromkeys(REASONS, 0),
                                     client_close=1)
    assert closes(g[""]) == dict(dict.fromkeys(REASONS, 0), client_close=1)
    assert val(g[""], "pings_total", peer="client") == 0 or \
        val(g[""], "rtt_seconds_count", peer="client") <= \
        val(g[""], "pongs_total", peer="client")
    for name in ("chat", "feed"):
        assert val(g[name], "rtt_seconds_count", peer="client") >= 1, name
    for name, n in (("", 1), ("chat", 3), ("feed", 1)):
        assert val(g[name], "connection_duration_seconds_count") == n
        assert val(g[name], "connection_duration_seconds_bucket",
                   le="+Inf") == n
    # the parts add up to the whole
    assert sum(g[k][key(P + "connections_total")] for k in g) == \
        val(s, "connections_total")

    # the JSON: the same values per group, the sum at the top
    doc = status.json()
    check_schema(doc)
    assert doc["version"] == 2
    assert list(doc["groups"]) == ["", "chat", "feed"]
    for name, d in doc["groups"].items():
        assert json_to_samples(d) == g[name], name
    assert json_to_samples(doc) == parse_prom(status.text())

    # one group
    st, _, body = fetch(port, "/status?group=chat")
    assert st == 200
    one = parse_prom(body.decode(), by_group=True)
    assert {dict(k[1])["group"] for k in one} == {"chat"}
    assert by_group(one)["chat"] == g["chat"]
    doc = status.json("?group=chat&format=json")
    check_schema(doc)
    assert list(doc["groups"]) == ["chat"]
    assert json_to_samples(doc) == json_to_samples(doc["groups"]["chat"]) \
        == g["chat"]
    st, _, body = fetch(port, "/status?group=")
    assert st == 200
    assert by_group(parse_prom(body.decode(), by_group=True)) == {"": g[""]}
    for unknown in ("nope", "Chat", "chat2"):
        st, _, _ = fetch(port, "/status?group=" + unknown)
        assert st == 404, unknown


def reload_to(n, conf):
    """Write conf, SIGHUP, wait until only new workers are left."""
    old = set(n.worker_pids())
    with open(n.conf, "w") as f:
        f.write(conf)
    n.signal(signal.SIGHUP)
    wait_for(lambda: not any(os.path.exists("/proc/%d" % p) for p in old)
             and n.worker_pids(), timeout=slow(15),
             what="the old workers to exit")


def test_groups_across_reloads(nginx_factory, backend, tmp_path):
    """A reload keeps the counters of the groups that remain; a group the
    new configuration drops is not shown (its name is 404), one it adds
    starts at 0; the old worker counts the drain of a dropped group's
    connection in that group's own counters, which come back with its
    name."""
    b = backend()
    n, port, _ = logged_proxy(nginx_factory, b, tmp_path, """
        ws_heartbeat on;
        ws_heartbeat_interval 10s;
        ws_heartbeat_drain_timeout 2s;
        ws_heartbeat_drain_spread 0;""",
                              locations=group_locations(b.port))
    status = Status(port)
    with open(n.conf) as f:
        conf_a = f.read()

    for path in ("/chat/1", "/feed/1"):
        c = Client(port, path)
        c.send_frame(CLOSE, close_payload(1000))
        assert c.wait_closed(5)
        c.close()
    live = Client(port, "/feed/live")
    try:
        status.wait(lambda s: val(s, "connections_total") == 3
                    and val(s, "connections_active") == 1, "one open")
        before = by_group(parse_prom(status.text(), by_group=True))

        # feed goes, news comes: the old worker drains the feed connection
        reload_to(n, conf_a.replace("feed", "news"))
        f = live.recv_frame(timeout=5)
        assert f is not None and f.close_code == 1001, f
        reply(live, f)
        assert live.wait_closed(5)
    finally:
        live.close()
    reload_to(n, conf_a.replace("feed", "news"))   # old workers gone, surely

    after = by_group(parse_prom(status.text(), by_group=True))
    assert set(after) == {"", "chat", "news"}
    assert after["chat"] == before["chat"]
    assert after[""] == before[""]
    assert set(after["news"].values()) == {0}
    st, _, _ = fetch(port, "/status?group=feed")
    assert st == 404
    assert list(status.json()["groups"]) == ["", "chat", "news"]

    # feed is back, with its counters and the drain counted meanwhile
    reload_to(n, conf_a)
    again = by_group(parse_prom(status.text(), by_group=True))
    assert set(again) == {"", "chat", "feed"}
    assert again["chat"] == before["chat"]
    feed = again["feed"]
    assert val(feed, "connections_total") == 2
    assert val(feed, "connections_active") == 0
    assert closes(feed) == dict(dict.fromkeys(REASONS, 0), client_close=1,
                                drain=1)
    assert val(feed, "connection_duration_seconds_count") == 2


# -- 9. a real Prometheus: the docs' queries, the dashboard, the alerts ------
#
# One Prometheus (Debian's) for the module: it scrapes a real nginx every
# second while a scenario runs (two groups and the unnamed one, RTTs, a
# dead client, a reload whose drain is cut at its deadline in one group),
# with the example alert rules loaded; the tests then ask it, through its
# HTTP API, what docs/metrics.md and the Grafana dashboard ask.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
RULES = os.path.join(ROOT, "examples", "prometheus", "ws-heartbeat-alerts.yml")
RULE_TESTS = os.path.join(ROOT, "examples", "prometheus",
                          "ws-heartbeat-alerts.test.yml")
DASHBOARD = os.path.join(ROOT, "examples", "grafana",
                         "ws-heartbeat-dashboard.json")
METRICS_MD = os.path.join(ROOT, "docs", "metrics.md")

needs_prometheus = pytest.mark.skipif(
    not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)),
    reason="Debian's prometheus (prometheus, promtool) is not installed: "
           "t/deps.sh installs it")


def doc_queries():
    """{check name: PromQL} of docs/metrics.md: each ```promql block with
    the <!-- check: name --> comment above it."""
    with open(METRICS_MD) as f:
        text = f.read()
    found = re.findall(r"<!-- check: (\w+) -->\s*```promql\n(.*?)```", text,
                       re.S)
    assert len(found) == text.count("```promql"), \
        "a promql block in docs/metrics.md without its check comment"
    out = dict(found)
    assert len(out) == len(found), "a check name used twice"
    return out


class Prometheus:
    """Debian's prometheus with a config and data dir of its own under
    workdir, on 127.0.0.1, scraping target (host:port) at path every
    second, the example alert rules loaded."""

    def __init__(self, workdir, target, path):
        os.makedirs(workdir, exist_ok=True)
        self.port = free_port()
        conf = os.path.join(workdir, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: nginx
    metrics_path: %s
    static_configs:
      - targets: ['%s']
""" % (RULES, path, target))
        self.log_path = os.path.join(workdir, "prometheus.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, "--config.file=" + conf,
             "--storage.tsdb.path=" + os.path.join(workdir, "data"),
             "--web.listen-address=127.0.0.1:%d" % self.port,
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            wait_for(self.ready, slow(30), interval=0.1,
                     what="prometheus to be ready")
        except BaseException:
            self.stop()
            raise

    def errors(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def ready(self):
        assert self.proc.poll() is None, \
            "prometheus exited: %s" % self.errors()
        try:
            return self.get("/-/ready")[0] == 200
        except OSError:
            return False

    def api(self, path, **params):
        st, body = self.get("/api/v1/" + path + "?"
                            + urllib.parse.urlencode(params))
        doc = json.loads(body)
        assert st == 200 and doc["status"] == "success", (path, params, doc)
        return doc["data"]

    def query(self, expr):
        """An instant vector as {frozenset(labels): value}."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return {frozenset(r["metric"].items()): float(r["value"][1])
                for r in data["result"]}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def by(result, *labels):
    """{tuple of label values: value}; a label Prometheus left out (the
    empty group) is ""."""
    return {tuple(dict(k).get(n, "") for n in labels): v
            for k, v in result.items()}


class Scenario:
    pass


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """nginx (2 workers: groups chat and feed, and the unnamed /ws/) and
    the Prometheus that scrapes it, after:
    - chat: two clients that answer Pings, one dead one (heartbeat timeout);
      feed: one client that answers; unnamed: one that closes with 4000;
    - a reload: the old workers drain chat's two (their backend answers
      the Close) and feed's one, whose backend does not answer: cut at
      ws_heartbeat_drain_timeout;
    - then one chat client, open until the end of the module.
    Prometheus has scraped the state before the first connection and after
    the last change."""
    if not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)):
        pytest.skip("Debian's prometheus is not installed: t/deps.sh "
                    "installs it")
    tmp = tmp_path_factory.mktemp("prometheus")
    sc = Scenario()
    stops = []
    n = None
    try:
        echo = Backend()
        stops.append(echo.stop)
        mute = Backend(answer_close=False)
        stops.append(mute.stop)
        port, sport = free_port(), free_port()
        http = """
    ws_heartbeat on;
    ws_heartbeat_interval 200ms;
    ws_heartbeat_timeout 400ms;
    ws_heartbeat_drain_timeout 600ms;
    ws_heartbeat_drain_spread 0;
    server {
        listen 127.0.0.1:%(port)d;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        location /chat/ {
            ws_heartbeat_metrics_group chat;
            proxy_pass http://127.0.0.1:%(echo)d;
        }
        location /feed/ {
            ws_heartbeat_metrics_group feed;
            proxy_pass http://127.0.0.1:%(mute)d;
        }
        location /ws/ {
            proxy_pass http://127.0.0.1:%(echo)d;
        }
    }
    server {
        listen 127.0.0.1:%(sport)d;
        location = /metrics { ws_heartbeat_status; }
    }
""" % dict(port=port, sport=sport, echo=echo.port, mute=mute.port)
        n = Nginx(tmp / "nginx", http, workers=2)
        stops.append(n.stop)
        n.start(port)
        wait_port(sport)
        sc.nginx, sc.sport = n, sport
        status = Status(sport, "/metrics")

        prom = Prometheus(str(tmp / "prom"), "127.0.0.1:%d" % sport,
                          "/metrics")
        stops.append(prom.stop)
        sc.prom = prom

        # Prometheus has the zeros: rate() sees every event that follows
        wait_for(lambda: set(by(prom.query(
            "count_over_time(nginx_ws_heartbeat_connections_total[1m]) >= 2"),
            "group")) == {(g,) for g in GROUPS},
            slow(30), interval=0.2, what="two scrapes of the fresh nginx")

        chat = [Client(port, "/chat/a"), Client(port, "/chat/b")]
        dead = Client(port, "/chat/dead", answer_pings=False)
        feed = Client(port, "/feed/a")
        plain = Client(port, "/ws/a")
        clients = chat + [dead, feed, plain]
        stops.extend(c.close for c in clients)
        with pumping(chat + [feed, plain]):
            status.wait(lambda s: val(s, "closes_total",
                                      reason="client_heartbeat_timeout") == 1
                        and val(s, "rtt_seconds_count", peer="client") >= 8,
                        "RTTs and the dead client's end", slow(10))
        plain.send_frame(CLOSE, close_payload(4000))
        assert plain.wait_closed(5)

        with open(n.conf) as f:
            conf = f.read()
        reload_to(n, conf.replace("ws_heartbeat_interval 200ms",
                                  "ws_heartbeat_interval 250ms"))

        last = Client(port, "/chat/last")
        stops.append(last.close)
        sc.pumping = pumping([last])
        sc.pumping.__enter__()
        stops.append(lambda: sc.pumping.__exit__(None, None, None))

        s = status.wait(lambda s: val(s, "connections_active") == 1
                        and sum(closes(s).values()) == 5, "one left open")
        assert closes(s)["drain"] == 3 and \
            val(s, "closing_timeouts_total", reason="drain") == 1, dump(s)

        # Prometheus has the end state
        def scraped():
            ends = prom.query("sum(nginx_ws_heartbeat_closes_total)")
            cut = prom.query(
                "sum(nginx_ws_heartbeat_closing_timeouts_total)")
            active = by(prom.query("nginx_ws_heartbeat_connections_active"),
                        "group")
            return list(ends.values()) == [5] and list(cut.values()) == [1] \
                and active == {("",): 0, ("chat",): 1, ("feed",): 0}
        wait_for(scraped, slow(30), interval=0.2,
                 what="Prometheus to scrape the end state")
        yield sc
    finally:
        for stop in reversed(stops):
            stop()
    if n is not None:
        n.check_log()


QUERY_CHECKS = {}


def query_check(f):
    QUERY_CHECKS[f.__name__[len("q_"):]] = f
    return f


GROUPS = {"", "chat", "feed"}


def finite(v):
    return v == v and v not in (float("inf"), float("-inf"))


@query_check
def q_new_connections(r):
    r = by(r, "group")
    assert set(r) == {(g,) for g in GROUPS}
    assert all(v > 0 for v in r.values())


@query_check
def q_open_connections(r):
    assert by(r, "group") == {("",): 0, ("chat",): 1, ("feed",): 0}


@query_check
def q_dead_share(r):
    r = by(r, "group")
    # chat: one dead client out of three ends
    assert 0.15 < r["chat", ] < 0.6
    assert r["feed", ] == 0 and r["", ] == 0


@query_check
def q_heartbeat_closes(r):
    r = by(r, "group", "reason")
    assert set(r) == {(g, x) for g in GROUPS for x in
                      ("client_heartbeat_timeout",
                       "upstream_heartbeat_timeout")}
    assert r["chat", "client_heartbeat_timeout"] > 0
    assert all(v == 0 for k, v in r.items()
               if k != ("chat", "client_heartbeat_timeout"))


@query_check
def q_rtt_p99(r):
    r = by(r, "group")
    assert set(r) == {(g,) for g in GROUPS}
    for g in GROUPS:
        assert finite(r[g, ]) and 0 < r[g, ] <= 10, (g, r)


@query_check
def q_rtt_mean(r):
    r = by(r, "group")
    for g in GROUPS:
        assert 0 < r[g, ] < 1, (g, r)


@query_check
def q_pong_ratio(r):
    r = by(r, "group")
    # chat: the dead client had a Ping and never answered
    assert 0 < r["chat", ] < 1
    assert 0 < r["feed", ] <= 1 and 0 < r["", ] <= 1


@query_check
def q_ends_by_reason(r):
    r = by(r, "group", "reason")
    assert set(r) == {(g, x) for g in GROUPS for x in REASONS}
    ended = {k for k, v in r.items() if v > 0}
    assert ended == {("chat", "client_heartbeat_timeout"), ("chat", "drain"),
                     ("feed", "drain"), ("", "client_close")}, ended
    assert all(v == 0 for k, v in r.items() if k not in ended)


@query_check
def q_unusual_close_frames(r):
    r = by(r, "group", "from", "code")
    codes = [c for c in CODES if c not in ("1000", "1001")]
    assert set(r) == {(g, f, c) for g in GROUPS for f in PEERS
                      for c in codes}
    # the 4000 of the unnamed client, and the backend's echo of it
    assert r["", "client", "other"] > 0
    assert all(v == 0 for k, v in r.items()
               if k not in (("", "client", "other"),
                            ("", "upstream", "other")))


@query_check
def q_duration_p50(r):
    r = by(r, "group")
    for g in GROUPS:
        assert finite(r[g, ]) and 0 < r[g, ] <= 86400, (g, r)


@query_check
def q_duration_mean(r):
    r = by(r, "group")
    for g in GROUPS:
        assert 0 < r[g, ] < 60, (g, r)
    # feed's lived through the scenario and the drain's 600ms
    assert r["feed", ] > 0.6


@query_check
def q_closing_timeouts(r):
    r = by(r, "group", "reason")
    assert set(r) == {(g, x) for g in GROUPS for x in ("drain", "max_age")}
    assert r["feed", "drain"] > 0
    assert all(v == 0 for k, v in r.items() if k != ("feed", "drain"))


def test_every_query_in_the_docs_is_checked():
    assert set(doc_queries()) == set(QUERY_CHECKS)


@needs_prometheus
@pytest.mark.parametrize("name", sorted(QUERY_CHECKS))
def test_query_in_docs_returns_what_they_say(scenario, name):
    """Each PromQL expression of docs/metrics.md, as written there, on the
    real Prometheus, returns what the text above it says."""
    expr = doc_queries()[name]
    result = scenario.prom.query(expr)
    try:
        QUERY_CHECKS[name](result)
    except (AssertionError, KeyError) as e:
        raise AssertionError("%s\n%s\nreturned %s: %r"
                             % (name, expr, sorted(by(result, "group")
                                                   .items()), e))


@needs_prometheus
def test_exposition_passes_promtool(scenario):
    """promtool check metrics on the status endpoint's text, with groups
    and after the scenario: no error, no lint finding."""
    _, _, body = fetch(scenario.sport, "/metrics")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=body,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=30)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout.decode()


@needs_prometheus
def test_status_json_of_the_scenario_matches_schema(scenario):
    """The JSON after drains, cuts and RTTs, whole and by group, against
    docs/status.schema.json; its top is the sum of its groups."""
    for path in ("/metrics?format=json", "/metrics?format=json&group=feed"):
        st, _, body = fetch(scenario.sport, path)
        assert st == 200
        doc = json.loads(body)
        check_schema(doc)
        total = collections.Counter()
        for g in doc["groups"].values():
            total.update(json_to_samples(g))
        assert {k: round(v, 6) for k, v in total.items()} == \
            json_to_samples(doc), path
    assert doc["closing_timeouts"] == {"drain": 1, "max_age": 0}


@needs_prometheus
def test_alert_rules_run_in_prometheus(scenario):
    """The example rules load and evaluate without error in the real
    Prometheus; the drain cut at its deadline fires for feed alone."""
    def rules():
        groups = scenario.prom.api("rules")["groups"]
        assert [g["name"] for g in groups] == ["ws-heartbeat"], groups
        rs = groups[0]["rules"]
        return rs if all(r["health"] == "ok" for r in rs) else None
    rs = wait_for(rules, slow(20), interval=0.2, what="rules evaluated")
    assert [r["name"] for r in rs] == [
        "WsHeartbeatDeadClientSurge", "WsHeartbeatRttP99High",
        "WsHeartbeatGroupNoConnections", "WsHeartbeatDrainDeadlineHit"]
    assert not any(r.get("lastError") for r in rs), rs

    def firing():
        alerts = scenario.prom.api("alerts")["alerts"]
        return [a for a in alerts if a["state"] == "firing"] or None
    alerts = wait_for(firing, slow(20), interval=0.2, what="an alert")
    assert [(a["labels"]["alertname"], a["labels"]["group"])
            for a in alerts] == [("WsHeartbeatDrainDeadlineHit", "feed")]


@needs_prometheus
def test_alert_rules_unit_tests():
    """promtool check rules and promtool test rules on the examples; the
    unit tests fail on a rule with another threshold."""
    r = subprocess.run([PROMTOOL, "check", "rules", RULES],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60)
    assert r.returncode == 0 and b"SUCCESS: 4 rules found" in r.stdout, \
        r.stdout.decode()
    r = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60, cwd=os.path.dirname(RULE_TESTS))
    assert r.returncode == 0 and b"SUCCESS" in r.stdout, r.stdout.decode()


@needs_prometheus
def test_alert_rules_unit_tests_can_fail(tmp_path):
    """The same unit tests against rules with other thresholds fail: they
    test the thresholds."""
    with open(RULES) as f:
        rules = f.read()
    for old, new in ((") > 0.1", ") > 0.9"), ("> 1\n", "> 5\n"),
                     ("[1h])) > 0", "[10m])) > 0"),
                     ("[10m])) > 0", "[1m])) > 1")):
        assert old in rules, old
        (tmp_path / "ws-heartbeat-alerts.yml").write_text(
            rules.replace(old, new, 1))
        with open(RULE_TESTS) as f:
            (tmp_path / "t.yml").write_text(f.read())
        r = subprocess.run([PROMTOOL, "test", "rules", "t.yml"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60, cwd=str(tmp_path))
        assert r.returncode != 0 and b"FAILED" in r.stdout, \
            (old, new, r.stdout.decode())


def grafana_expr(expr, group):
    """A panel's expr with Grafana's variables as Grafana substitutes
    them for a range of a few minutes."""
    expr = expr.replace("$__rate_interval", "1m")
    expr = re.sub(r"\$\{group(?::regex)?\}|\$group\b", group, expr)
    assert "$" not in expr, expr
    return expr


@needs_prometheus
def test_grafana_dashboard_panels_have_data(scenario):
    """The dashboard imports into Grafana 10+ (a datasource input, the
    datasource and group variables); every panel's query, variables
    substituted, returns data from the real Prometheus, for one group and
    for All."""
    with open(DASHBOARD) as f:
        dash = json.load(f)
    assert [(i["name"], i["type"], i["pluginId"]) for i in dash["__inputs"]] \
        == [("DS_PROMETHEUS", "datasource", "prometheus")]
    assert any(r["id"] == "grafana" and int(r["version"].split(".")[0]) >= 10
               for r in dash["__requires"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == {"datasource", "group"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    group = variables["group"]
    assert group["type"] == "query" and group["includeAll"] \
        and group["allValue"] == ".*"
    assert group["datasource"]["uid"] == "${datasource}"
    m = re.fullmatch(r"label_values\((\w+), group\)", group["definition"])
    assert m and group["query"]["query"] == group["definition"]
    values = scenario.prom.api("label/group/values",
                               **{"match[]": m.group(1)})
    assert set(values) >= {"chat", "feed"}, values

    panels = dash["panels"]
    assert len(panels) >= 9
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            for g in ("chat", ".*"):
                expr = grafana_expr(t["expr"], g)
                result = scenario.prom.query(expr)
                assert result, "%s: no data for %s:\n%s" % (p["title"], g,
                                                             expr)
                assert any(finite(v) for v in result.values()), \
                    "%s: only NaN for %s:\n%s" % (p["title"], g, expr)
