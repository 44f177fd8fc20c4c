#!/usr/bin/python3
"""The ngx_ws_heartbeat benchmark (make bench).

One run starts the echo backend (build/bench/wsbench server) and the same
nginx binary (Debian's /usr/sbin/nginx) in every configuration, each in its
own prefix on 127.0.0.1 ports, and drives them with build/bench/wsbench
client, alternating the configurations round by round:

  A  stock nginx, module not loaded
  B  module loaded, ws_heartbeat off
  C  ws_heartbeat on, client side, interval 50ms (Pings really flow)
  D  as C plus ws_heartbeat_upstream on
  L  a Lua frame-by-frame proxy (ngx_lua + resty.websocket) with Pings

Sections: throughput (64 B and 64 KiB messages, 1 and 100 connections, flat
out), latency at a fixed moderate rate, idle heartbeat connections (worker
CPU and RSS per connection from /proc, with and without the module, and with
the backend pinging instead), mass dead-peer detection in network namespaces
made here, a reload (nginx -s reload) with idle connections whose clients
reconnect at once (the old workers' drain spread over
ws_heartbeat_drain_spread, and all at once), a callgrind profile of the
relay, and sizeof of the module's per-connection state. Everything is written as JSON to --out and summarised
as text (and Markdown tables, and a gnuplot plot) there.

Only processes started here are stopped, by pid. Traffic stays on
127.0.0.0/8 or inside the namespaces this script creates and deletes.
"""

import argparse
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "t"))

from lib.nginx import free_port, http_get, wait_for, wait_port  # noqa: E402

BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
WSBENCH = os.path.join(BUILD, "bench", "wsbench")
SIZEOF = os.path.join(BUILD, "bench", "sizeof_ctx")
FLOOR = os.path.join(BUILD, "bench", "floor")
MODULE = os.path.abspath(os.environ.get(
    "NGX_WS_HEARTBEAT_MODULE",
    os.path.join(BUILD, "ngx_ws_heartbeat_module.so")))
NGINX_BIN = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
LUA_MODULES = "/usr/lib/nginx/modules"
LUA_PROXY = os.path.join(ROOT, "bench", "lua_proxy.lua")

HB_FAST = ("ws_heartbeat on; ws_heartbeat_interval 50ms; "
           "ws_heartbeat_timeout 1s;")
CONFIGS = [
    ("A", "stock nginx, module not loaded", dict(module=False, loc="")),
    ("B", "module loaded, ws_heartbeat off",
     dict(module=True, loc="ws_heartbeat off;")),
    ("C", "heartbeat on, client side (50ms)", dict(module=True, loc=HB_FAST)),
    ("D", "heartbeat on, client + upstream (50ms)",
     dict(module=True, loc=HB_FAST + " ws_heartbeat_upstream on;")),
    ("L", "Lua frame proxy with Pings (50ms)", dict(lua=True)),
]
# not in the relay table: C with the relay buffers kept for the whole
# connection (ws_heartbeat_idle_buffers keep), the base that isolates what
# releasing them costs (--pair-base K)
KEEP = ("K", "as C, ws_heartbeat_idle_buffers keep",
        dict(module=True, loc=HB_FAST + " ws_heartbeat_idle_buffers keep;"))
# nor: the heartbeat at its default interval (30 s: no Ping within a
# window), what the relay path alone adds (--pair-c-interval default)
DEFAULT_INTERVAL = ("E", "heartbeat on, default interval (30 s)",
                    dict(module=True, loc="ws_heartbeat on;"))

WORK = None   # set in main(): build/bench/run
LOG = None


def say(*a):
    line = " ".join(str(x) for x in a)
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


# ----------------------------------------------------------------- processes

class Proc:
    """A process started here (optionally inside a network namespace: `ip
    netns exec` execs the program, so the pid is the program's)."""

    def __init__(self, argv, log, ns=None, cpus=None):
        if ns:
            argv = ["ip", "netns", "exec", ns] + argv
        self.argv = argv
        self.logf = open(log, "w")
        self.log = log
        pin = None
        if cpus is not None:
            def pin():
                os.sched_setaffinity(0, cpus)
        self.p = subprocess.Popen(argv, stdout=self.logf,
                                  stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, preexec_fn=pin)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def send(self, sig):
        if self.alive():
            os.kill(self.p.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.alive():
            os.kill(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.logf.close()
        return self.p.returncode


def read_json(path):
    with open(path) as f:
        return json.load(f)


def wait_file(path, timeout, proc=None, what=None):
    def ok():
        if proc is not None and not proc.alive():
            raise RuntimeError("%s exited early:\n%s" % (
                what or proc.argv[0], tail(proc.log)))
        return os.path.exists(path)
    wait_for(ok, timeout, 0.01, what or path)


def tail(path, n=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


class Backend:
    """wsbench server: echo, Pong, optional Pings (ping_ms), optional
    numbered messages to every connection (push_ms)."""

    def __init__(self, name, ports, threads=1, ping_ms=0, ns=None,
                 host="127.0.0.1", cpus=None, push_ms=0):
        self.name = name
        self.ports = ports
        base = os.path.join(WORK, name)
        self.ready = base + ".ready"
        self.json = base + ".json"
        for f in (self.ready, self.json):
            if os.path.exists(f):
                os.unlink(f)
        argv = [WSBENCH, "server", "-t", str(threads), "--ready-file",
                self.ready, "--json", self.json]
        for p in ports:
            argv += ["--listen", "%s:%d" % (host, p)]
        if ping_ms:
            argv += ["--ping-interval", str(ping_ms)]
        if push_ms:
            argv += ["--push-interval", str(push_ms)]
        self.proc = Proc(argv, base + ".log", ns, cpus)
        wait_file(self.ready, 10, self.proc, "backend " + name)

    def stop(self):
        self.proc.stop()
        try:
            return read_json(self.json)
        except (OSError, ValueError):
            return {}


class Workers:
    """CPU and memory of a server's worker processes (worker_pids())."""

    def cpu_ns(self):
        """Worker CPU time so far (ns, /proc/PID/schedstat), all workers."""
        return sum(int(t.split()[0]) for t in
                   filter(None, (proc_read(pid, "schedstat")
                                 for pid in self.worker_pids())))

    def user_sys(self):
        """(user, system) CPU seconds of the workers (/proc/PID/stat)."""
        hz = os.sysconf("SC_CLK_TCK")
        stats = list(filter(None, map(proc_stat, self.worker_pids())))
        return (sum(int(f[11]) for f in stats) / hz,
                sum(int(f[12]) for f in stats) / hz)

    def rss_kb(self):
        """Anonymous resident memory of the workers (kB), all workers."""
        return sum(int(line.split()[1]) for t in
                   filter(None, (proc_read(pid, "status")
                                 for pid in self.worker_pids()))
                   for line in t.splitlines() if line.startswith("RssAnon:"))


class Floor(Workers):
    """bench/floor.cpp: the floor of an idle heartbeat (a prebuilt Ping
    sent, the Pong received, timers on the module's grain), in `procs`
    processes sharing one listening socket like nginx's workers; the same
    CPU and memory readings as Nginx's, over those processes."""

    def __init__(self, name, port, interval_ms, procs):
        self.name, self.port = name, port
        base = os.path.join(WORK, name)
        self.ready = base + ".ready"
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        self.proc = Proc([FLOOR, "--port", str(port), "--interval-ms",
                          str(interval_ms), "--procs", str(procs),
                          "--ready-file", self.ready], base + ".log")
        wait_file(self.ready, 10, self.proc, "floor " + name)

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                             stdout=subprocess.PIPE, text=True).stdout
        return [int(x) for x in out.split()]

    def stop(self):
        self.proc.stop()


class Nginx(Workers):
    """One nginx in its own prefix (t/lib/nginx.py style): own pid, logs and
    temp paths, 127.0.0.1 listeners (or a namespace's addresses)."""

    def __init__(self, name, cfg, backends, port, workers=1, wc=4096,
                 log_level="warn", listen=None, ns=None, master=True,
                 wrapper=None, hb=None, cpus=None, shutdown="5s"):
        self.name = name
        self.prefix = os.path.join(WORK, "nginx-" + name)
        shutil.rmtree(self.prefix, ignore_errors=True)
        os.makedirs(os.path.join(self.prefix, "logs"))
        tmp = os.path.join(self.prefix, "tmp")
        os.makedirs(tmp)
        self.port = port
        self.ns = ns
        self.conf = os.path.join(self.prefix, "nginx.conf")
        self.error_log = os.path.join(self.prefix, "logs", "error.log")
        main = cfg.get("main", "")
        if cfg.get("module"):
            main += "load_module %s;\n" % MODULE
        if cfg.get("lua"):
            main += ("load_module %s/ndk_http_module.so;\n"
                     "load_module %s/ngx_http_lua_module.so;\n"
                     % (LUA_MODULES, LUA_MODULES))
        listen = listen or ["127.0.0.1"]
        listens = "".join(
            "        listen %s:%d reuseport backlog=4096;\n" % (a, port)
            for a in listen)
        upstream = "".join("        server 127.0.0.1:%d;\n" % p
                           for p in backends)
        loc = cfg.get("loc", "")
        if hb is not None and cfg.get("module") and "ws_heartbeat on" in loc:
            loc = hb
        if cfg.get("lua"):
            iv, to = (hb_lua(hb) if hb else (0.05, 1))
            body = """
            set $hb_interval %s;
            set $hb_timeout %s;
            set $hb_backends "%s";
            content_by_lua_file %s;
""" % (iv, to, ",".join("ws://127.0.0.1:%d/" % p for p in backends),
                LUA_PROXY)
            http_extra = ('    lua_package_path "/usr/share/lua/5.1/?.lua;;";\n'
                          "    lua_socket_log_errors off;\n")
        else:
            body = """
            proxy_pass http://wsbe;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            %s
""" % loc
            http_extra = "    upstream wsbe {\n%s    }\n" % upstream
        http_extra += cfg.get("http", "")
        status = ("        location = /ws_heartbeat_status "
                  "{ ws_heartbeat_status; }\n" if cfg.get("module") else "")
        with open(self.conf, "w") as f:
            f.write("""%(main)s
worker_processes %(workers)d;
worker_rlimit_nofile 20000;
worker_shutdown_timeout %(shutdown)s;
daemon off;
master_process %(master)s;
pid %(prefix)s/nginx.pid;
error_log %(prefix)s/logs/error.log %(log_level)s;
events { worker_connections %(wc)d; }
http {
    access_log off;
    client_body_temp_path %(tmp)s/body;
    proxy_temp_path %(tmp)s/proxy;
    fastcgi_temp_path %(tmp)s/fastcgi;
    uwsgi_temp_path %(tmp)s/uwsgi;
    scgi_temp_path %(tmp)s/scgi;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
%(http_extra)s
    server {
%(listens)s
        location / {
%(body)s
        }
%(status)s    }
}
""" % dict(main=main, workers=workers, master="on" if master else "off",
                prefix=self.prefix, log_level=log_level, wc=wc, tmp=tmp,
                shutdown=shutdown,
                http_extra=http_extra, listens=listens, body=body,
                status=status))
        argv = [NGINX_BIN, "-p", self.prefix + "/", "-c", self.conf]
        if wrapper:
            argv = wrapper + argv
        self.proc = Proc(argv, os.path.join(self.prefix, "stderr.log"), ns,
                         cpus)
        if ns is None:
            try:
                wait_port(port, 60 if wrapper else 10)
            except TimeoutError:
                self.proc.stop(signal.SIGKILL)
                raise RuntimeError("nginx %s did not start:\n%s" % (
                    name, tail(self.error_log) + tail(self.proc.log)))
        self.master = master

    def worker_pids(self):
        if not self.master:
            return [self.proc.pid]
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                             stdout=subprocess.PIPE, text=True).stdout
        return [int(x) for x in out.split()]

    def log(self):
        return tail(self.error_log, 10 ** 8)

    def stop(self):
        workers = [(pid, start_time(pid)) for pid in
                   (self.worker_pids() if self.master else [])]
        if self.proc.alive():
            self.proc.stop(signal.SIGQUIT, 30)
        # worker_shutdown_timeout ends them; if a worker still outlives its
        # master (killed after the timeout), end it: the same process (pid
        # and start time) that this run started
        for pid, t in workers:
            if t is not None and start_time(pid) == t:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        bad = [l for l in self.log().splitlines()
               if "[alert]" in l or "[emerg]" in l or "[crit]" in l
               or "exited on signal" in l]
        if bad:
            say("  !! nginx %s error.log:\n    %s" % (
                self.name, "\n    ".join(bad[:10])))
        return bad


def proc_read(pid, name):
    """/proc/PID/NAME, None if the process is gone."""
    try:
        with open("/proc/%s/%s" % (pid, name)) as f:
            return f.read()
    except OSError:
        return None


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name: [1] the parent,
    [11] and [12] user and system time, [19] the start time (clock ticks);
    None if the process is gone."""
    text = proc_read(pid, "stat")
    return text.rsplit(")", 1)[1].split() if text else None


def start_time(pid):
    """A process's start time (clock ticks since boot), None if gone."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def ws_status(address, path="/ws_heartbeat_status"):
    """The module's counters (ws_heartbeat_status as JSON) from a unix
    socket path or a (host, port)."""
    return json.loads(http_get(address, path + "?format=json", timeout=5)[1])


def hb_lua(hb):
    """(interval, timeout) in seconds from a ws_heartbeat directive line."""
    def val(key):
        s = hb.split(key)[1].split(";")[0].strip()
        if s.endswith("ms"):
            return float(s[:-2]) / 1000
        if s.endswith("s"):
            return float(s[:-1])
        return float(s)
    return val("ws_heartbeat_interval"), val("ws_heartbeat_timeout")


class Client:
    """One wsbench client process."""

    n = 0

    def __init__(self, url, label, conns, size=64, rate=0, inflight=1,
                 warmup=1.0, duration=3.0, idle=False, threads=1, srcs=None,
                 ns=None, connect_timeout=120, cpus=None, reconnect=False):
        Client.n += 1
        base = os.path.join(WORK, "client-%03d-%s" % (
            Client.n, "".join(ch if ch.isalnum() else "_" for ch in label)))
        self.ready, self.json, self.snap, self.events = (
            base + ".ready", base + ".json", base + ".snap", base + ".events")
        argv = [WSBENCH, "client", "--url", url, "-c", str(conns), "-t",
                str(threads), "--size", str(size), "--warmup", str(warmup),
                "--duration", str(duration), "--label", label,
                "--json", self.json, "--ready-file", self.ready,
                "--snapshot", self.snap,
                "--connect-timeout", str(connect_timeout)]
        if rate:
            argv += ["--rate", str(rate)]
        else:
            argv += ["--inflight", str(inflight)]
        if idle:
            argv += ["--idle"]
        if reconnect:
            argv += ["--reconnect", "--events", self.events]
        if srcs:
            argv += ["--src", ",".join(srcs)]
        self.proc = Proc(argv, base + ".log", ns, cpus)
        self.idle = idle
        self.timeout = connect_timeout + 10

    def wait_ready(self):
        wait_file(self.ready, self.timeout, self.proc, "client")
        with open(self.ready) as f:
            opened, total, secs = f.read().split()
        return int(opened), int(total), float(secs)

    def snapshot(self):
        if os.path.exists(self.snap):
            os.unlink(self.snap)
        self.proc.send(signal.SIGUSR1)
        wait_file(self.snap, 10, self.proc, "client snapshot")
        return read_json(self.snap)

    def result(self, timeout=60):
        try:
            self.proc.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.stop()
        self.proc.logf.close()
        return read_json(self.json)

    def stop(self):
        self.proc.stop()
        return read_json(self.json)


# ------------------------------------------------------------------ machine

def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    with open("/proc/meminfo") as f:
        mem = f.readline().split(":")[1].strip()
    nginx_v = subprocess.run([NGINX_BIN, "-v"], stderr=subprocess.PIPE,
                             text=True).stderr.strip()
    lua_v = subprocess.run(["dpkg-query", "-W", "-f", "${Version}",
                            "libnginx-mod-http-lua"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True).stdout
    def git(*a):
        return subprocess.run(["git", "-C", ROOT] + list(a),
                              stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout
    import hashlib
    try:
        with open(MODULE, "rb") as f:
            so_sha = hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        so_sha = None
    module = dict(
        head=git("rev-parse", "--short", "HEAD").strip(),
        modified=git("status", "--porcelain", "--", "ngx_ws_heartbeat_module.cpp",
                     "ngx", "src", "config").split("\n")[:-1],
        so_sha256=so_sha)
    return dict(cpu=cpu, cores=os.cpu_count(), mem=mem, module=module,
                kernel=platform.release(), nginx=nginx_v,
                ngx_lua=lua_v, loadavg=os.getloadavg(),
                nofile_hard=__import__("resource").getrlimit(
                    __import__("resource").RLIMIT_NOFILE)[1])


# --------------------------------------------------------------- statistics

def ratios(runs, scen, metric, configs):
    """{cfg: (median ratio to A, min, max)} over the rounds of a scenario:
    each round's value divided by A's value of the same round."""
    by_round = {}
    for r in runs:
        if r["scenario"] == scen:
            by_round.setdefault(r["round"], {})[r["config"]] = r
    out = {}
    for cfg in configs:
        vals = []
        for rnd in by_round.values():
            a, x = rnd.get("A"), rnd.get(cfg)
            if a and x and metric(a) and metric(x) is not None:
                vals.append(metric(x) / metric(a))
        if vals:
            out[cfg] = (statistics.median(vals), min(vals), max(vals))
    return out


def med(runs, scen, cfg, metric):
    vals = [metric(r) for r in runs
            if r["scenario"] == scen and r["config"] == cfg]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


# ------------------------------------------------------ throughput / latency

def measure(n, label, conns, size, rate, inflight, warm, dur, cpus=None):
    """One client run against nginx n: the client's result plus the
    worker's CPU (schedstat, user/sys) over the measured window."""
    c = Client("ws://127.0.0.1:%d/ws" % n.port, label, conns, size, rate,
               inflight, warm, dur, cpus=cpus)
    c.wait_ready()
    t_ready = time.monotonic()
    time.sleep(max(0, t_ready + warm - time.monotonic()))
    cpu0, us0 = n.cpu_ns(), n.user_sys()
    time.sleep(max(0, t_ready + warm + dur - time.monotonic()))
    cpu1, us1 = n.cpu_ns(), n.user_sys()
    res = c.result(dur + 30)
    res.update(nginx_cpu_s=(cpu1 - cpu0) / 1e9,
               nginx_user_s=us1[0] - us0[0],
               nginx_sys_s=us1[1] - us0[1],
               loadavg=os.getloadavg()[0])
    res["cpu_us_per_msg"] = ((cpu1 - cpu0) / 1e3 / res["messages"]
                             if res["messages"] else None)
    return res


def section_relay(args, results):
    q = args.quick
    rounds = 1 if q else args.rounds
    warm, dur = (0.5, 1.5) if q else (1.0, 2.0)
    scenarios = [
        # name, conns, size, inflight, rate
        ("64B x1", 1, 64, 1, 0),
        ("64B x100", 100, 64, 4, 0),
        ("64KiB x1", 1, 65536, 2, 0),
        ("64KiB x100", 100, 65536, 1, 0),
        ("latency 64B x100 @1000/s", 100, 64, 1, 1000),
    ]
    # nginx (its one worker) alone on the last CPU, the load generator and
    # the backend on the others: nginx's own cost is what the relay
    # measures, without the scheduler moving it around
    ncpu = len(os.sched_getaffinity(0))
    ngx_cpus = {ncpu - 1} if ncpu > 1 and args.pin else None
    load_cpus = set(range(ncpu - 1)) if ngx_cpus else None
    results["relay_pinning"] = dict(nginx=sorted(ngx_cpus or []),
                                    load=sorted(load_cpus or []))
    bports = [free_port()]
    be = Backend("relay-backend", bports, cpus=load_cpus)
    ngx = {}
    try:
        for name, _, cfg in CONFIGS:
            ngx[name] = Nginx("relay-" + name, cfg, bports, free_port(),
                              cpus=ngx_cpus)
        runs = []
        for rnd in range(rounds):
            for sname, conns, size, inflight, rate in scenarios:
                order = [c[0] for c in CONFIGS]
                k = (rnd + len(runs)) % len(order)
                order = order[k:] + order[:k]
                if rnd % 2:
                    order.reverse()
                for cfg in order:
                    res = measure(ngx[cfg], "%s %s r%d" % (sname, cfg, rnd),
                                  conns, size, rate, inflight, warm, dur,
                                  load_cpus)
                    res.update(scenario=sname, config=cfg, round=rnd)
                    runs.append(res)
                    say("  r%d %-26s %s  %9.0f msg/s %8.2f MB/s  p50 %7.1f "
                        "p99 %8.1f us  nginx %5.2f us/msg  pings %d  err %d"
                        % (rnd, sname, cfg, res["msgs_per_s"],
                           res["mb_per_s"], res["latency_us"]["p50"],
                           res["latency_us"]["p99"],
                           res["cpu_us_per_msg"] or 0, res["pings"],
                           res["errors"]))
    finally:
        for n in ngx.values():
            n.stop()
        be_stats = be.stop()
    results["relay"] = dict(scenarios=[s[0] for s in scenarios], runs=runs,
                            rounds=rounds, warmup_s=warm, duration_s=dur,
                            backend=be_stats)
    return runs


def summarize_relay(results):
    runs = results["relay"]["runs"]
    cfgs = [c[0] for c in CONFIGS]
    summary = {}
    lines = []
    for scen in results["relay"]["scenarios"]:
        thr = ratios(runs, scen, lambda r: r["msgs_per_s"], cfgs)
        p99 = ratios(runs, scen, lambda r: r["latency_us"]["p99"], cfgs)
        p50 = ratios(runs, scen, lambda r: r["latency_us"]["p50"], cfgs)
        cpu = ratios(runs, scen, lambda r: r["cpu_us_per_msg"], cfgs)
        summary[scen] = {}
        for cfg in cfgs:
            summary[scen][cfg] = dict(
                msgs_per_s=med(runs, scen, cfg, lambda r: r["msgs_per_s"]),
                mb_per_s=med(runs, scen, cfg, lambda r: r["mb_per_s"]),
                p50_us=med(runs, scen, cfg, lambda r: r["latency_us"]["p50"]),
                p99_us=med(runs, scen, cfg, lambda r: r["latency_us"]["p99"]),
                p999_us=med(runs, scen, cfg,
                            lambda r: r["latency_us"]["p999"]),
                cpu_us_per_msg=med(runs, scen, cfg,
                                   lambda r: r["cpu_us_per_msg"]),
                pings=sum(r["pings"] for r in runs
                          if r["scenario"] == scen and r["config"] == cfg),
                errors=sum(r["errors"] for r in runs
                           if r["scenario"] == scen and r["config"] == cfg),
                thr_ratio=thr.get(cfg), p99_ratio=p99.get(cfg),
                p50_ratio=p50.get(cfg), cpu_ratio=cpu.get(cfg))
    results["relay"]["summary"] = summary
    return summary


# ----------------------------------------------------------- paired A and C

def median_ci(xs, seed=1):
    """The median and a 95% bootstrap interval of it."""
    rnd = random.Random(seed)
    boots = sorted(statistics.median(rnd.choice(xs) for _ in xs)
                   for _ in range(2000))
    return statistics.median(xs), boots[50], boots[1949]


def hist_value(i, sub=32):
    """A bucket's value in ns, as wsbench's Histogram::value()."""
    if i < 64:
        return float(i)
    e = (i - 64) // sub + 6
    k = (i - 64) % sub
    return math.ldexp(sub + k, e - 5) + math.ldexp(1.0, e - 5) / 2


def hist_pct(counts, q, max_ns):
    """The q quantile (us) of a histogram {bucket: count}, as wsbench's
    Histogram::pct()."""
    n = sum(counts.values())
    if n == 0:
        return 0.0
    want = max(1, math.ceil(q * n))
    acc = 0
    for i in sorted(counts):
        acc += counts[i]
        if acc >= want:
            return min(hist_value(i), max_ns) / 1000.0
    return max_ns / 1000.0


def pooled_ratio(rows, base, q, seed=1):
    """The q quantile of all of C's windows together over all of base's,
    and a 95% bootstrap interval that resamples whole pairs: each pair's
    two windows stay together, as they ran back to back. The median of
    the per-pair ratios weighs a window's p99 (its ~20 slowest samples)
    as much as any other; pooling takes the p99 of every sample."""
    def pooled(idx, arm):
        counts, mx = {}, 0
        for k in idx:
            h = rows[k][arm]["hist"]
            mx = max(mx, h["max_ns"])
            for i, c in h["buckets"]:
                counts[i] = counts.get(i, 0) + c
        return hist_pct(counts, q, mx)
    every = range(len(rows))
    est = pooled(every, "C") / pooled(every, base)
    rnd = random.Random(seed)
    boots = []
    for _ in range(1000):
        idx = [rnd.randrange(len(rows)) for _ in every]
        boots.append(pooled(idx, "C") / pooled(idx, base))
    boots.sort()
    return est, boots[25], boots[974]


def section_pairs(args, results):
    """Stock nginx (A) against the heartbeat on (C) in many short windows,
    A and C back to back in alternating order: the median of the paired
    ratios resolves a few percent where the seven rounds of the relay
    table, each a few seconds apart, cannot on a shared 2-CPU machine."""
    n_pairs = 4 if args.quick else args.pairs
    warm, dur = 0.5, 1.0
    # name, connections, size, inflight, open-loop rate (0: flat out),
    # pairs (a multiple of n_pairs), window (s). The 64 KiB case has twice
    # the pairs (its per-pair spread is wider); the latency case is the
    # relay table's (100 connections, 1000 msg/s in all, C's 50 ms Pings
    # in nearly every gap) with 2 s windows, ~2000 samples a p99.
    # (QUICK: the same pairs for all, 1 s windows, within its 3 minutes)
    q = args.quick
    scenarios = [("64B x100", 100, 64, 4, 0, 1, dur),
                 ("64KiB x100", 100, 65536, 1, 0, 1 if q else 2, dur),
                 ("latency 64B x100 @1000/s", 100, 64, 1, 1000, 1,
                  dur if q else 2.0)]
    if args.pair_scenarios:
        want = args.pair_scenarios.split(",")
        scenarios = [x for x in scenarios
                     if any(w in x[0] for w in want)]
    cfgs = {c[0]: c[2] for c in CONFIGS + [KEEP]}
    if args.pair_c_interval == "default":
        cfgs["C"] = DEFAULT_INTERVAL[2]
    base = args.pair_base
    bports = [free_port()]
    be = Backend("pairs-backend", bports)
    ngx = {}
    out = dict(pairs=n_pairs, warmup_s=warm, duration_s=dur, scenarios={},
               base=base, c_interval=args.pair_c_interval)
    try:
        for name in (base, "C"):
            ngx[name] = Nginx("pairs-" + name, cfgs[name], bports,
                              free_port())
        for sname, conns, size, inflight, rate, mult, wdur in scenarios:
            rows = []
            for i in range(n_pairs * mult):
                pair = {}
                for cfg in ((base, "C") if i % 2 == 0 else ("C", base)):
                    r = measure(ngx[cfg], "pair %s %s %d" % (sname, cfg, i),
                                conns, size, rate, inflight, warm, wdur)
                    if not r["messages"] or r["errors"]:
                        raise RuntimeError("pair %s %s: %d messages, %d "
                                           "errors" % (sname, cfg,
                                                       r["messages"],
                                                       r["errors"]))
                    pair[cfg] = dict(msgs_per_s=r["msgs_per_s"],
                                     cpu_us_per_msg=r["cpu_us_per_msg"],
                                     p50_us=r["latency_us"]["p50"],
                                     p99_us=r["latency_us"]["p99"],
                                     hist=r["latency_hist"])
                rows.append({
                    base: pair[base], "C": pair["C"],
                    "thr_ratio": pair["C"]["msgs_per_s"]
                    / pair[base]["msgs_per_s"],
                    "cpu_ratio": pair["C"]["cpu_us_per_msg"]
                    / pair[base]["cpu_us_per_msg"],
                    "p50_ratio": pair["C"]["p50_us"] / pair[base]["p50_us"],
                    "p99_ratio": pair["C"]["p99_us"] / pair[base]["p99_us"]})
            thr = median_ci([r["thr_ratio"] for r in rows])
            cpu = median_ci([r["cpu_ratio"] for r in rows])
            p50 = median_ci([r["p50_ratio"] for r in rows])
            p99 = median_ci([r["p99_ratio"] for r in rows])
            p99_pooled = pooled_ratio(rows, base, 0.99)
            out["scenarios"][sname] = dict(
                rows=rows, pairs=len(rows), duration_s=wdur, rate=rate,
                thr_ratio=thr, cpu_ratio=cpu, p50_ratio=p50, p99_ratio=p99,
                p99_pooled_ratio=p99_pooled,
                p99_a_us=statistics.median(r[base]["p99_us"] for r in rows),
                p99_c_us=statistics.median(r["C"]["p99_us"] for r in rows))
            say("  %-10s C/%s over %d pairs: throughput %.3f [%.3f-%.3f], "
                "nginx CPU per message %.3f [%.3f-%.3f], p99 %.3f "
                "[%.3f-%.3f] (median, 95%% CI), pooled p99 %.3f "
                "[%.3f-%.3f]"
                % ((sname, base, len(rows)) + thr + cpu + p99 + p99_pooled))
    finally:
        for n in ngx.values():
            n.stop()
        be.stop()
    results["pairs"] = out


# ------------------------------------------------------------ idle heartbeat

def section_idle(args, results):
    q = args.quick
    sizes = [5000] if q else [int(x) for x in args.idle_sizes.split(",")]
    interval = 2 if q else 10
    window = 2 * interval
    settle = interval + 2
    rounds = 1 if q else args.idle_rounds
    kinds = [("A", "stock nginx, no heartbeat", dict(module=False)),
             ("C", "module, ws_heartbeat_interval %ds (idle buffers "
                   "released, the default)" % interval,
              dict(module=True,
                   loc="ws_heartbeat on; ws_heartbeat_interval %ds; "
                       "ws_heartbeat_timeout 10s;" % interval)),
             ("K", "module, ws_heartbeat_interval %ds, "
                   "ws_heartbeat_idle_buffers keep" % interval,
              dict(module=True,
                   loc="ws_heartbeat on; ws_heartbeat_interval %ds; "
                       "ws_heartbeat_timeout 10s; "
                       "ws_heartbeat_idle_buffers keep;" % interval)),
             ("P", "stock nginx, backend Pings every %ds" % interval,
              dict(module=False)),
             ("F", "floor: bench/floor.cpp, a Ping every %ds" % interval,
              None)]
    kinds = [k for k in kinds if k[0] in args.idle_kinds.split(",")]
    runs = []
    for n_conns in sizes:
        for rnd in range(rounds if n_conns <= 10000
                         else args.idle_rounds_large):
            order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]
            for kind, _, cfg in order:
                res = idle_run(kind, cfg, n_conns, interval, window, settle,
                               rnd)
                runs.append(res)
    results["idle"] = dict(runs=runs, interval_s=interval, window_s=window,
                           kinds={k: d for k, d, _ in kinds})
    return runs


def idle_run(kind, cfg, n_conns, interval, window, settle, rnd):
    per_proc = 10000
    nproc = max(1, math.ceil(n_conns / per_proc))
    workers = max(2, math.ceil(n_conns / 8000))
    bports = [free_port() for _ in range(nproc)]
    bes, clients, n = [], [], None
    label = "idle %d %s r%d" % (n_conns, kind, rnd)
    say("  %s: %d backend + %d client processes, %d workers"
        % (label, 0 if kind == "F" else nproc, nproc, workers))
    try:
        if kind == "F":
            # no backend: the floor answers the handshake itself
            n = Floor("idle-F", free_port(), interval * 1000, workers)
        else:
            for i, p in enumerate(bports):
                bes.append(Backend(
                    "idle-be%d" % i, [p],
                    ping_ms=interval * 1000 if kind == "P" else 0))
            n = Nginx("idle-" + kind, cfg, bports, free_port(),
                      workers=workers, wc=19000)
        time.sleep(0.5)
        rss0 = n.rss_kb()
        t0 = time.monotonic()
        share = [n_conns // nproc + (1 if i < n_conns % nproc else 0)
                 for i in range(nproc)]
        for i in range(nproc):
            srcs = ["127.0.0.%d" % (10 + 2 * i), "127.0.0.%d" % (11 + 2 * i)]
            clients.append(Client("ws://127.0.0.1:%d/ws" % n.port,
                                  "%s c%d" % (label, i), share[i], idle=True,
                                  duration=0, srcs=srcs, warmup=0))
        opened = sum(c.wait_ready()[0] for c in clients)
        connect_s = time.monotonic() - t0
        time.sleep(settle)
        s0 = [c.snapshot() for c in clients]
        cpu0, tc0, us0 = n.cpu_ns(), time.monotonic(), n.user_sys()
        time.sleep(window)
        cpu1, tc1, us1 = n.cpu_ns(), time.monotonic(), n.user_sys()
        s1 = [c.snapshot() for c in clients]
        rss1 = n.rss_kb()
        results = [c.stop() for c in clients]
        clients = []
    finally:
        for c in clients:
            c.proc.stop(signal.SIGKILL)
        if n:
            n.stop()
        be_stats = [b.stop() for b in bes]
    secs = tc1 - tc0
    rts = sum(b["pings"] for b in s1) - sum(a["pings"] for a in s0)
    cpu = (cpu1 - cpu0) / 1e9
    lost = sum(r["peer_closes"] + r["disconnects"] for r in results)
    res = dict(kind=kind, conns=n_conns, round=rnd, opened=opened,
               workers=workers, connect_s=connect_s, window_s=secs,
               rss0_kb=rss0, rss1_kb=rss1,
               rss_per_conn_b=(rss1 - rss0) * 1024 / max(1, opened),
               cpu_s=cpu, cpu_core_pct=100 * cpu / secs,
               user_s=us1[0] - us0[0], sys_s=us1[1] - us0[1],
               round_trips=rts, rts_per_s=rts / secs,
               us_per_rt=cpu * 1e6 / rts if rts else None,
               cpu_ns_per_conn_s=cpu * 1e9 / secs / max(1, opened),
               lost=lost, backend=be_stats, loadavg=os.getloadavg()[0])
    say("    opened %d in %.1fs; RSS %.0f B/conn; worker CPU %.3f%% of a "
        "core (user %.2fs sys %.2fs); %d Ping/Pong (%.0f/s) -> %s us each; "
        "lost %d"
        % (opened, connect_s, res["rss_per_conn_b"], res["cpu_core_pct"],
           res["user_s"], res["sys_s"],
           rts, res["rts_per_s"],
           "%.2f" % res["us_per_rt"] if res["us_per_rt"] else "-", lost))
    return res


def summarize_idle(results):
    runs = results["idle"]["runs"]
    out = {}
    for n_conns in sorted(set(r["conns"] for r in runs)):
        rs = [r for r in runs if r["conns"] == n_conns]
        by = {}
        for k in ("A", "C", "K", "P", "F"):
            ks = [r for r in rs if r["kind"] == k]
            if not ks:
                continue
            by[k] = dict(
                rss_per_conn_b=statistics.median(
                    r["rss_per_conn_b"] for r in ks),
                cpu_core_pct=statistics.median(r["cpu_core_pct"] for r in ks),
                rts_per_s=statistics.median(r["rts_per_s"] for r in ks),
                lost=sum(r["lost"] for r in ks),
                opened=min(r["opened"] for r in ks))
        if "A" in by:
            for k in ("C", "K", "P"):
                if k in by:
                    b = by[k]
                    b["extra_rss_per_conn_b"] = (b["rss_per_conn_b"]
                                                 - by["A"]["rss_per_conn_b"])
                    b["extra_cpu_core_pct"] = (b["cpu_core_pct"]
                                               - by["A"]["cpu_core_pct"])
                    b["net_us_per_rt"] = (
                        b["extra_cpu_core_pct"] / 100 * 1e6 / b["rts_per_s"]
                        if b["rts_per_s"] else None)
        # the floor's CPU is all heartbeat (it has nothing else to do):
        # its us per round trip as they are, and the module's net ones
        # over them
        if "F" in by and by["F"]["rts_per_s"]:
            f = by["F"]
            f["net_us_per_rt"] = (f["cpu_core_pct"] / 100 * 1e6
                                  / f["rts_per_s"])
            if by.get("C", {}).get("net_us_per_rt"):
                by["C"]["vs_floor"] = (by["C"]["net_us_per_rt"]
                                       / f["net_us_per_rt"])
            if by.get("P", {}).get("net_us_per_rt"):
                by["P"]["vs_floor"] = (by["P"]["net_us_per_rt"]
                                       / f["net_us_per_rt"])
        out[str(n_conns)] = by
    results["idle"]["summary"] = out
    return out


# ------------------------------------------------------- mass dead-peer test

def ip(*a):
    return subprocess.run(["ip"] + list(a), check=True,
                          stdout=subprocess.PIPE, text=True).stdout


def section_deadpeer(args, results):
    q = args.quick
    ndead, nlive = (1000, 200) if q else (10000, 1000)
    interval, timeout = 1, 1
    tag = secrets.token_hex(3)
    ns_s, ns_c = "wsb-s-" + tag, "wsb-c-" + tag
    if_s, if_c = "wbs" + tag, "wbc" + tag
    x = 1 + secrets.randbelow(250)
    addr_s, addr_c = "10.214.%d.1" % x, "10.214.%d.2" % x
    made = []
    procs = []
    n = None
    res = {}
    try:
        for ns in (ns_s, ns_c):
            ip("netns", "add", ns)
            made.append(ns)
        ip("-n", ns_s, "link", "add", if_s, "type", "veth", "peer", "name",
           if_c, "netns", ns_c)
        for ns, ifn, addr in ((ns_s, if_s, addr_s), (ns_c, if_c, addr_c)):
            ip("-n", ns, "addr", "add", addr + "/30", "dev", ifn)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", ifn, "up")
        for ns in (ns_s, ns_c):
            routes = ip("-n", ns, "-4", "route", "show", "table", "all")
            assert "default" not in routes, routes
        bports = [19100, 19101]
        be = Backend("dead-be", bports, ns=ns_s)
        procs.append(be.proc)
        port = 19080
        # the module's own counters, on a unix socket (no network
        # namespace confines it): a cheap poll, unlike listing 10k sockets
        sock = os.path.join(WORK, "deadpeer-status.sock")
        if os.path.exists(sock):
            os.unlink(sock)
        cfg = dict(module=True,
                   loc="ws_heartbeat on; ws_heartbeat_interval %ds; "
                       "ws_heartbeat_timeout %ds;" % (interval, timeout),
                   http="    server {\n        listen unix:%s;\n"
                        "        location / { ws_heartbeat_status; }\n"
                        "    }\n" % sock)
        n = Nginx("deadpeer", cfg, bports, port, workers=2, wc=19000,
                  log_level="info", listen=[addr_s, "127.0.0.1"], ns=ns_s)
        procs.append(n.proc)

        def status():
            return ws_status(sock, "/")

        def established(dst):
            out = subprocess.run(
                ["ss", "-N", ns_s, "-Htn", "state", "established",
                 "( sport = :%d )" % port, "dst", dst],
                stdout=subprocess.PIPE, text=True).stdout
            return out.count("\n")

        wait_for(lambda: subprocess.run(
            ["ss", "-N", ns_s, "-Htln", "( sport = :%d )" % port],
            stdout=subprocess.PIPE, text=True).stdout.count("\n") > 0,
            15, 0.05, "nginx in " + ns_s)
        live = Client("ws://127.0.0.1:%d/ws" % port, "deadpeer live", nlive,
                      idle=True, duration=0, ns=ns_s)
        procs.append(live.proc)
        dead = Client("ws://%s:%d/ws" % (addr_s, port), "deadpeer doomed",
                      ndead, idle=True, duration=0, ns=ns_c)
        procs.append(dead.proc)
        lo, _, _ = live.wait_ready()
        do, _, _ = dead.wait_ready()
        time.sleep(2 * interval + 1)
        before = established(addr_c)
        active0 = status()["connections"]["active"]
        say("  dead peers: %d doomed + %d live connections, interval %ds, "
            "timeout %ds; %d established from %s before the cut"
            % (do, lo, interval, timeout, before, addr_c))
        t0 = time.monotonic()
        ip("-n", ns_c, "link", "set", if_c, "down")
        marks = {}
        left = before
        series = []
        while time.monotonic() - t0 < 30:
            left = before - (active0 - status()["connections"]["active"])
            t = time.monotonic() - t0
            series.append((round(t, 3), left))
            closed = before - left
            for frac in (0.01, 0.5, 0.99, 1.0):
                if frac not in marks and closed >= math.ceil(frac * before):
                    marks[frac] = t
            if left <= 0:
                break
            time.sleep(0.01)
        left = established(addr_c)     # the sockets themselves agree
        final_status = status()
        time.sleep(2 * interval)
        live_res = live.stop()
        dead.proc.stop(signal.SIGKILL)
        nlog = n.log()
        res = dict(
            doomed=do, live=lo, interval_s=interval, timeout_s=timeout,
            established_before=before, left_after=left,
            first_s=marks.get(0.01), half_s=marks.get(0.5),
            p99_s=marks.get(0.99), all_s=marks.get(1.0),
            bound_s=interval + timeout,
            live_wrongly_closed=live_res["peer_closes"]
            + live_res["disconnects"],
            live_alive_at_end=live_res["alive_at_end"],
            live_pings=live_res["pings"],
            log_heartbeat_closes=nlog.count("client heartbeat timeout"),
            status_closes=final_status.get("closes"),
            series=series)
        say("    all %d closed after %s s (first %s, half %s, 99%% %s; bound "
            "interval+timeout = %d s); %d closes logged as heartbeat "
            "timeout; live connections wrongly closed: %d of %d"
            % (before, num(res["all_s"]), num(res["first_s"]),
               num(res["half_s"]), num(res["p99_s"]), res["bound_s"],
               res["log_heartbeat_closes"], res["live_wrongly_closed"], lo))
    finally:
        for p in reversed(procs):
            if p.alive():
                p.stop(signal.SIGKILL if p is not (n and n.proc)
                       else signal.SIGQUIT, 30)
        for ns in reversed(made):
            pids = subprocess.run(["ip", "netns", "pids", ns],
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL,
                                  text=True).stdout.split()
            mine = {p.pid for p in procs}
            for pid in pids:
                # only what this run started (nginx workers are children)
                fields = proc_stat(pid)
                if fields is None:
                    continue
                if int(pid) in mine or int(fields[1]) in mine:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            subprocess.run(["ip", "netns", "del", ns],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        left_ns = subprocess.run(["ip", "netns", "list"],
                                 stdout=subprocess.PIPE, text=True).stdout
        assert ns_s not in left_ns and ns_c not in left_ns, left_ns
    results["deadpeer"] = res
    return res


# ------------------------------------------------------- reload, the drain

DRAIN_TIMEOUT = 5   # ws_heartbeat_drain_timeout's default, seconds
BIN = 0.1           # the arrivals histogram's bin, seconds
PUSH_MS = 1000      # the backend sends each connection a message this often


def section_reload(args, results):
    """N idle connections through nginx, the backend pushing each a
    numbered message every second, a client that reconnects as soon as a
    connection ends (Close or EOF); then SIGHUP to the master. The old
    workers drain their connections, each at its own moment in
    ws_heartbeat_drain_spread (the default, 10 s; 4 s in QUICK), and,
    beside it, all at once (spread 0)."""
    n_conns, spread = (2000, 4) if args.quick else (10000, 10)
    runs = []
    for s in (spread, 0):
        # the default spread without the directive: what an operator gets
        directive = ("" if s == 10 else
                     "ws_heartbeat_drain_spread %s;" % ("%ds" % s if s else 0))
        runs.append(reload_run(n_conns, s, directive, spread))
    results["reload"] = dict(runs=runs, bin_s=BIN,
                             drain_timeout_s=DRAIN_TIMEOUT)
    return runs


def reload_run(n_conns, spread, directive, window):
    """One reload: the connections, SIGHUP, the old workers' exit, every
    connection open again; what the client, the backend and the module
    counted, and the histogram of the reconnects, against the uniform
    rate over `window` seconds."""
    label = "reload spread %ds" % spread
    workers = math.ceil(n_conns / 8000)  # 2 fds a connection, 20,000 a process
    bports = [free_port()]
    be = Backend("reload-be-%d" % spread, bports, push_ms=PUSH_MS)
    n = c = None
    try:
        # worker_shutdown_timeout above spread + drain timeout: not cut
        n = Nginx("reload-%d" % spread,
                  dict(module=True, loc="ws_heartbeat on; " + directive),
                  bports, free_port(), workers=workers, wc=19000,
                  log_level="info",
                  shutdown="%ds" % (spread + DRAIN_TIMEOUT + 15))
        c = Client("ws://127.0.0.1:%d/ws" % n.port, label, n_conns,
                   idle=True, duration=0, warmup=0, reconnect=True,
                   srcs=["127.0.0.30", "127.0.0.31"])
        events = c.events
        opened = c.wait_ready()[0]
        time.sleep(2.5)                 # a few pushed messages on each
        old = [(pid, start_time(pid)) for pid in n.worker_pids()]
        t0 = time.monotonic()
        n.proc.send(signal.SIGHUP)
        exit_s = None
        while time.monotonic() - t0 < spread + DRAIN_TIMEOUT + 15:
            if all(start_time(pid) != t for pid, t in old):
                exit_s = time.monotonic() - t0
                break
            time.sleep(0.01)
        # every connection open again (on the new workers), then stop
        wait_for(lambda: c.snapshot()["open"] >= opened, 30, 0.2,
                 "the reconnects")
        status = ws_status(("127.0.0.1", n.port))
        client = c.stop()
        c = None
    finally:
        if c:
            c.proc.stop(signal.SIGKILL)
        if n:
            n.stop()
        backend = be.stop()
    # times since the SIGHUP: the end seen (Close or EOF; the reconnect
    # starts at once), the new connection open; the Close code (0: EOF)
    with open(events) as f:
        ev = [(float(a) - t0, float(b) - t0 if float(b) else None, int(k))
              for a, b, k in (line.split() for line in f)]
    ends = sorted(e[0] for e in ev)
    delays = sorted(e[1] - e[0] for e in ev if e[1] is not None)
    nbins = int(max(ends + [spread + DRAIN_TIMEOUT]) / BIN) + 1
    arrivals, reopened = [0] * nbins, [0] * nbins
    for end, op, _ in ev:
        arrivals[min(nbins - 1, max(0, int(end / BIN)))] += 1
        if op is not None:
            reopened[min(nbins - 1, max(0, int(op / BIN)))] += 1
    # the uniform rate over the spread (spread 0: the other run's, for
    # scale)
    uniform = opened * BIN / window
    nlog = n.log()
    res = dict(
        spread_s=spread, directive=directive or "(default)", conns=n_conns,
        opened=opened, workers=workers, old_worker_exit_s=exit_s,
        bound_s=spread + DRAIN_TIMEOUT,
        reconnects=len(ev), not_reopened=len(ev) - len(delays),
        first_s=ends[0] if ends else None, last_s=ends[-1] if ends else None,
        max_bin=max(arrivals), uniform_per_bin=uniform,
        max_bin_ratio=max(arrivals) / uniform,
        # the busiest second (10 bins in a row), against the uniform rate
        max_1s_ratio=max(sum(arrivals[i:i + 10])
                         for i in range(len(arrivals))) / (10 * uniform),
        bins_99=bins_holding(arrivals, 0.99),
        reopen_delay_ms={k: 1000 * pct(delays, q) for k, q in
                         (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
        closes_with_frame=client["peer_closes"],
        eof_without_close=client["disconnects"],
        close_codes=client["close_codes"],
        closes_counted=client["closes_counted"],
        closes_short=client["closes_short"],
        msgs_missing=client["msgs_missing"],
        msgs_received=client["echoed_total"],
        verify_errors=client["verify_errors"],
        push_latency_us=client["latency_us"], backend=backend,
        module_closes=status["closes"],
        discarded_frames=status["discarded_frames"],
        log_drain_timeouts=nlog.count("drain timeout"),
        arrivals=arrivals, reopened=reopened)
    say("  spread %ds: %d connections, %d workers; old workers gone %s s "
        "after SIGHUP (bound spread + drain timeout %d s); %d reconnects, "
        "first %s s, last %s s; max %d per 100 ms against a uniform %.0f "
        "(%.2fx; the busiest second %.2fx), 99%% in %d bins; reopened after p50 %.1f p99 %.1f max "
        "%.1f ms; Close before EOF %d, EOF without Close %d, codes %s; "
        "messages received %d, missing %d on %d connections (%d counted); "
        "drain timeouts %d"
        % (spread, n_conns, workers, num(exit_s), res["bound_s"], len(ev),
           num(res["first_s"]), num(res["last_s"]), res["max_bin"], uniform,
           res["max_bin_ratio"], res["max_1s_ratio"], res["bins_99"],
           res["reopen_delay_ms"]["p50"], res["reopen_delay_ms"]["p99"],
           res["reopen_delay_ms"]["max"], res["closes_with_frame"],
           res["eof_without_close"], client["close_codes"],
           res["msgs_received"], res["msgs_missing"], res["closes_short"],
           res["closes_counted"], res["log_drain_timeouts"]))
    return res


def pct(xs, q):
    """The q quantile of sorted xs (nearest rank), 0 for none."""
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] \
        if xs else 0


def bins_holding(counts, frac):
    """How many of the fullest bins hold `frac` of the counts."""
    need, got = frac * sum(counts), 0
    for k, v in enumerate(sorted(counts, reverse=True)):
        got += v
        if got >= need:
            return k + 1
    return len(counts)


def reload_dat(runs, out_dir):
    """reload.dat: per 100 ms bin since the SIGHUP, the reconnect arrivals
    and the connections open again, of each run; and its plot."""
    nbins = max(len(r["arrivals"]) for r in runs)
    with open(os.path.join(out_dir, "reload.dat"), "w") as f:
        f.write("# t_s " + " ".join(
            "arrivals_spread%d reopened_spread%d" % (r["spread_s"],
                                                     r["spread_s"])
            for r in runs) + "  (per %g s bin since the SIGHUP)\n" % BIN)
        for i in range(nbins):
            f.write("%.1f %s\n" % (i * BIN, " ".join(
                "%d %d" % ((r["arrivals"][i], r["reopened"][i])
                           if i < len(r["arrivals"]) else (0, 0))
                for r in runs)))
    if shutil.which("gnuplot"):
        r0 = runs[0]
        subprocess.run(["gnuplot", "-e", "outdir='%s'; spread=%d; "
                        "uniform=%g; n=%d" % (out_dir, r0["spread_s"],
                                              r0["uniform_per_bin"],
                                              r0["opened"]),
                        os.path.join(ROOT, "bench", "reload.gp")],
                       check=False)


# ------------------------------------------------------------------ profile

def section_profile(args, results):
    """callgrind on a single-process nginx (master_process off): A and C
    under the same load, instructions per relayed message and the top
    functions; then idle connections, instructions per Ping/Pong round
    trip, the module's Pings (C) against the backend's own relayed by
    stock nginx (P). QUICK: the same with a shorter window."""
    window = 2 if args.quick else 6     # seconds of callgrind counts
    out = dict(window_s=window)
    for cfg_name in ("A", "C", "K"):
        # C here: ws_heartbeat on with its default interval (30s), so that
        # the window holds the per-frame relay path only; K: the same with
        # the relay buffers kept (what releasing them costs per message)
        cfg = (dict(module=True, loc="ws_heartbeat on;") if cfg_name == "C"
               else dict(module=True, loc="ws_heartbeat on; "
                         "ws_heartbeat_idle_buffers keep;")
               if cfg_name == "K" else dict(module=False))
        p, echoed, r = callgrind_run(
            args, cfg_name, cfg, settle=1.5, window=window,
            client=dict(conns=10, size=64, rate=400, warmup=1.5,
                        duration=window))
        p.update(echoed=echoed, errors=r["errors"], pings=r["pings"],
                 ir_per_msg=p["total_ir"] / echoed if echoed else None,
                 relayed=p["sends"] / 2)
        p["ir_per_relayed"] = (p["total_ir"] / p["relayed"]
                               if p["relayed"] else None)
        out[cfg_name] = p
        say("  callgrind %s: %d messages, %.0f instructions per message "
            "(all of nginx, user space); per message counted by the "
            "worker's sends (%d): %.0f, module %.0f"
            % (cfg_name, echoed, p["ir_per_msg"], p["sends"],
               p["ir_per_relayed"] or 0,
               p["module_ir"] / p["relayed"] if p["relayed"] else 0))
        for ir, pct, fn in p["top"][:12]:
            say("    %5.1f%%  %s" % (pct, fn))
    out["module_ir_per_msg"] = out["C"]["module_ir"] / out["C"]["echoed"]
    if out["C"]["relayed"]:
        out["module_ir_per_relayed"] = (out["C"]["module_ir"]
                                        / out["C"]["relayed"])

    # 64 KiB messages: the module's work per frame does not grow with its
    # size; this shows that it is no worse there either (fewer messages).
    # Not in QUICK, which must stay within its 3 minutes.
    for cfg_name in () if args.quick else ("A", "C"):
        cfg = (dict(module=True, loc="ws_heartbeat on;") if cfg_name == "C"
               else dict(module=False))
        p, echoed, r = callgrind_run(
            args, cfg_name + "-64k", cfg, settle=1.5, window=window,
            client=dict(conns=10, size=65536, rate=40, warmup=1.5,
                        duration=window))
        p.update(echoed=echoed, errors=r["errors"],
                 ir_per_msg=p["total_ir"] / echoed if echoed else None)
        out[cfg_name + "_64k"] = p
        say("  callgrind %s 64 KiB: %d messages, %.0f instructions per "
            "message, module %.0f" % (
                cfg_name, echoed, p["ir_per_msg"] or 0,
                p["module_ir"] / echoed if echoed else 0))

    for kind in ("C", "P"):
        cfg = (dict(module=True, loc="ws_heartbeat on; "
                    "ws_heartbeat_interval 1s; ws_heartbeat_timeout 10s;")
               if kind == "C" else dict(module=False))
        p, rts, r = callgrind_run(
            args, "idle-" + kind, cfg, settle=2.5, window=window,
            ping_ms=1000 if kind == "P" else 0,
            client=dict(conns=1000, idle=True, duration=0))
        p.update(round_trips=rts, window_rts=rts,
                 ir_per_rt=p["total_ir"] / rts if rts else None,
                 lost=r["peer_closes"] + r["disconnects"])
        out["idle_" + kind] = p
        say("  callgrind idle %s: %d Ping/Pong, %.0f instructions each "
            "(all of nginx, user space), module %.0f; worker's sends %d"
            % (kind, rts, p["ir_per_rt"] or 0,
               p["module_ir"] / rts if rts else 0, p["sends"]))
    results["profile"] = out
    return out


def callgrind_run(args, name, cfg, client, settle, window, ping_ms=0):
    """One callgrind measurement: a single-process nginx (master_process
    off, configuration cfg) under callgrind, a backend of its own (Pings
    every ping_ms) and a Client (keyword arguments `client`). The counts
    are zeroed `settle` s after the client is ready and dumped `window` s
    later; the annotated listing is written to
    OUT/callgrind-NAME.txt. Returns (total_ir, module_ir and top in a
    dict; what the client counted in the window: Ping/Pong round trips
    from an idle client's snapshots, else the messages of its own
    window; its result)."""
    bports = [free_port()]
    be = Backend("prof-be-" + name, bports, ping_ms=ping_ms)
    cg = os.path.join(WORK, "callgrind-%s.out" % name)
    wrapper = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + cg,
               "--compress-strings=no", "--dump-instr=no"]
    n = None
    try:
        n = Nginx("prof-" + name, cfg, bports, free_port(),
                  master=False, wrapper=wrapper)
        c = Client("ws://127.0.0.1:%d/ws" % n.port,
                   "profile " + name.replace("-", " "), **client)
        c.wait_ready()
        time.sleep(settle)
        s0 = c.snapshot() if c.idle else None
        cg_control(n.proc.pid, "-z")
        time.sleep(window)
        cg_control(n.proc.pid, "-d")
        if c.idle:
            count = c.snapshot()["pings"] - s0["pings"]
            r = c.stop()
        else:
            r = c.result(60)
            count = r["messages"]
    finally:
        if n:
            n.stop()
        be.stop()
    ann = cg_annotate(cg + ".1")
    total, top = parse_callgrind(ann)
    with open(os.path.join(args.out, "callgrind-%s.txt" % name), "w") as f:
        f.write(ann)
    return dict(total_ir=total, module_ir=module_ir(top), top=top[:25],
                sends=cg_calls(cg + ".1", "ngx_unix_send")), count, r


def cg_calls(path, fn):
    """How many times fn was called in a callgrind dump (uncompressed
    names). The worker's ngx_unix_send() calls in the window count the
    frames it wrote: two per relayed 64 B message (to the upstream, back
    to the client), one per module Ping. The client's own count covers a
    window of its own, a few % off the dump's (1.73 to 1.87 sends per
    message it counted, from one run to the next); per send, the figures
    of two runs compare."""
    n = 0
    cfn = None
    with open(path) as f:
        for line in f:
            if line.startswith("cfn="):
                cfn = line[4:].strip()
            elif line.startswith("calls=") and cfn == fn:
                n += int(line.split()[0][6:])
    return n


def label_static(fn):
    """Debian's nginx is stripped of its static functions: name the two
    kinds that dominate the relay by disassembly. 4 tiny handlers
    (ngx_http_upstream_upgraded_{read,write}_{downstream,upstream}) that
    tail-jump into ngx_http_upstream_process_upgraded(), which callgrind
    then bills to the stub; and the epoll module's process_events."""
    import re
    m = re.match(r"\?\?\?:0x([0-9a-f]+) \[(/usr/sbin/nginx)\]", fn)
    if not m:
        return fn
    a = int(m.group(1), 16)
    out = subprocess.run(
        ["objdump", "-d", "--start-address=%#x" % a,
         "--stop-address=%#x" % (a + 0x400), m.group(2)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    ins = [l for l in out.splitlines() if re.match(r"^\s+[0-9a-f]+:\t", l)]
    head = " ".join(ins[:3])
    if "jmp" in head and len(ins) > 2:
        return fn + " (handler stub: ngx_http_upstream_process_upgraded)"
    body = []
    for l in ins:
        body.append(l)
        if "\tret" in l:
            break
    if any("epoll_wait@plt" in l for l in body[:40]):
        return fn + " (ngx_epoll_process_events)"
    return fn


def is_module(fn):
    """A callgrind_annotate line billed to the module: its object, or one
    of its source files (inlined code listed without an object)."""
    import re
    if "ngx_ws_heartbeat_module.so" in fn:
        return True
    return "[" not in fn and re.match(
        r"(src/|ngx/|ngx_ws_heartbeat_module\.cpp)", fn) is not None


def module_ir(top):
    """The module's share of a parse_callgrind() listing."""
    return sum(ir for ir, pct, fn in top if is_module(fn))


def cg_control(pid, cmd):
    """callgrind_control -z (zero) / -d (dump) on a process under
    callgrind; a dump is written as OUT.1, OUT.2, ..."""
    subprocess.run(["callgrind_control", cmd, str(pid)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)


def cg_annotate(path):
    return subprocess.run(["callgrind_annotate", "--inclusive=no",
                           "--threshold=100", path], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True).stdout


def parse_callgrind(text):
    """(program total Ir, [(Ir, percent, function)]) from callgrind_annotate
    output."""
    import re
    total = 0
    top = []
    rx = re.compile(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$")
    for line in text.splitlines():
        m = rx.match(line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        if m.group(3).strip() == "PROGRAM TOTALS":
            total = ir
            continue
        # after callgrind_control -z, the frames that were active (main,
        # the event loop's callers) show the whole total: not self cost
        if total and ir < total:
            top.append((ir, float(m.group(2)),
                        label_static(m.group(3).strip())))
    return total, top


# ------------------------------------------------------------------- sizeof

def section_sizeof(results):
    try:
        out = subprocess.run([SIZEOF], stdout=subprocess.PIPE, text=True,
                             check=True).stdout
        results["sizeof"] = json.loads(out)
        say("  sizeof(ngx_http_ws_heartbeat_ctx_t) = %d bytes, %d allocated "
            "with ws_heartbeat_upstream off (+ %d for its pool cleanup "
            "record)" % (results["sizeof"]["ctx"],
                         results["sizeof"].get("ctx_upstream_off", 0),
                         results["sizeof"]["ngx_pool_cleanup_t"]))
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        say("  sizeof: %s" % e)


# ------------------------------------------------------------------- report

def table(title, head, align, rows):
    """Markdown lines: the title and a blank line, a table (head: the
    column names; align: "l" or "r" a column; rows: the cells, as text)
    and a blank line."""
    return ([title, "",
             "| " + " | ".join(head) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def report(results, out_dir):
    """Markdown tables (summary.md) and gnuplot data + plot."""
    md = []
    cfg_desc = {c[0]: c[1] for c in CONFIGS}
    m = results["machine"]
    md.append("Run: %s, %s; %s cores, %s; kernel %s; %s; ngx_lua %s; load "
              "average at start %.2f, at the end %.2f (the run's own "
              "processes count in it); %s; %.0f s."
              % (results["started"], m["cpu"] or "unknown CPU", m["cores"],
                 m["mem"], m["kernel"], m["nginx"], m["ngx_lua"] or "-",
                 m["loadavg"][0], results["loadavg_end"][0],
                 "QUICK" if results["quick"] else "full",
                 results["runtime_s"]))
    mod = m.get("module", {})
    md.append("Module: commit %s%s, .so sha256 %s." % (
        mod.get("head"), " with local changes to %s" % ", ".join(
            x[3:] for x in mod.get("modified", [])) if mod.get("modified")
        else "", mod.get("so_sha256")))
    md.append("")
    if "pairs" in results:
        pr = results["pairs"]
        base = pr.get("base", "A")
        md += table(
            "### Paired %s/C: heartbeat on against %s, short windows "
            "back to back"
            % (base, "stock nginx" if base == "A" else KEEP[1]),
            ["scenario", "pairs", "window", "throughput C/%s" % base,
             "nginx CPU per message C/%s" % base, "p50 C/%s" % base,
             "p99 C/%s" % base, "pooled p99 C/%s" % base,
             "p99 %s / C us" % base], "lrrrrrrrr",
            [(scen, "%d" % v.get("pairs", pr["pairs"]),
              "%.1f s" % v.get("duration_s", pr["duration_s"]),
              rt(v["thr_ratio"]) if not v.get("rate") else "(open loop)",
              rt(v["cpu_ratio"]),
              rt(v["p50_ratio"]) if "p50_ratio" in v else "-",
              rt(v["p99_ratio"]) if "p99_ratio" in v else "-",
              rt(v["p99_pooled_ratio"]) if "p99_pooled_ratio" in v else "-",
              "%.0f / %.0f" % (v["p99_a_us"], v["p99_c_us"])
              if "p99_a_us" in v else "-")
             for scen, v in pr["scenarios"].items()])
        md.append("Median of the per-pair ratios [95%% bootstrap interval "
                  "of the median]. Pooled p99: the p99 of all of C's "
                  "samples over that of all of %s's [95%% bootstrap "
                  "interval, whole pairs resampled]." % base)
        md.append("")
    if "relay" in results:
        s = results["relay"]["summary"]
        md += table(
            "### Relay: ratios to A (median over %d alternating rounds, "
            "[min-max])" % results["relay"]["rounds"],
            ["scenario", "config", "msg/s", "MB/s", "throughput vs A",
             "p50 us", "p99 us", "p99 vs A", "nginx CPU us/msg", "CPU vs A",
             "Pings", "errors"], "llrrrrrrrrrr",
            [(scen, cfg, num(row["msgs_per_s"], 0), num(row["mb_per_s"]),
              rt(row["thr_ratio"]), num(row["p50_us"], 1),
              num(row["p99_us"], 1), rt(row["p99_ratio"]),
              num(row["cpu_us_per_msg"]), rt(row["cpu_ratio"]),
              "%d" % row["pings"], "%d" % row["errors"])
             for scen in results["relay"]["scenarios"]
             for cfg, row in s[scen].items()])
        md.append("Configurations: " + "; ".join(
            "%s = %s" % kv for kv in cfg_desc.items()) + ".")
        md.append("")
    if "idle" in results:
        s = results["idle"]["summary"]
        md += table(
            "### Idle heartbeat connections (interval %ds, CPU over %ds)"
            % (results["idle"]["interval_s"], results["idle"]["window_s"]),
            ["connections", "config", "worker RSS B/conn", "extra vs A",
             "worker CPU % of a core", "extra vs A", "Ping/Pong per s",
             "net us per round trip", "vs floor F", "connections lost"],
            "rlrrrrrrrr",
            [(nconn, "%s %s" % (k, results["idle"]["kinds"][k]),
              num(row["rss_per_conn_b"], 0),
              num(row.get("extra_rss_per_conn_b"), 0),
              num(row["cpu_core_pct"], 3),
              num(row.get("extra_cpu_core_pct"), 3),
              num(row["rts_per_s"], 0), num(row.get("net_us_per_rt")),
              num(row.get("vs_floor"), 2) if k != "F" else "1",
              "%d" % row["lost"])
             for nconn, by in s.items() for k, row in by.items()])
    if "deadpeer" in results and results["deadpeer"]:
        d = results["deadpeer"]
        md += table(
            "### Mass dead-peer detection",
            ["doomed", "live", "interval", "timeout", "first closed", "half",
             "99%", "all", "bound", "left open", "live wrongly closed",
             "heartbeat closes logged"], "r" * 12,
            [["%d" % d["doomed"], "%d" % d["live"], "%ds" % d["interval_s"],
              "%ds" % d["timeout_s"]]
             + ["%s s" % num(d[k]) for k in ("first_s", "half_s", "p99_s",
                                             "all_s")]
             + ["%d s" % d["bound_s"]]
             + ["%d" % d[k] for k in ("left_after", "live_wrongly_closed",
                                      "log_heartbeat_closes")]])
    if "reload" in results:
        runs = results["reload"]["runs"]
        md += table(
            "### Reload: the old workers' drain, %d idle connections, a "
            "client that reconnects at once" % runs[0]["opened"],
            ["ws_heartbeat_drain_spread", "old workers gone", "bound",
             "reconnects", "first", "last", "max per 100 ms",
             "uniform per 100 ms", "max / uniform", "busiest 1 s / uniform",
             "bins with 99%",
             "open again after p50 / p99 / max", "Close before EOF",
             "EOF without Close", "messages received", "missing",
             "pushed message p99", "drain closes (module)",
             "drain timeouts"], "l" + "r" * 18,
            [("%d s%s" % (r["spread_s"], " (default)" if r["directive"]
                          == "(default)" else ""),
              "%s s" % num(r["old_worker_exit_s"]), "%d s" % r["bound_s"],
              "%d" % r["reconnects"], "%s s" % num(r["first_s"]),
              "%s s" % num(r["last_s"]), "%d" % r["max_bin"],
              num(r["uniform_per_bin"], 0), num(r["max_bin_ratio"]),
              num(r["max_1s_ratio"]), "%d" % r["bins_99"],
              "%.0f / %.0f / %.0f ms" % tuple(
                  r["reopen_delay_ms"][k] for k in ("p50", "p99", "max")),
              "%d" % r["closes_with_frame"], "%d" % r["eof_without_close"],
              "%d" % r["msgs_received"], "%d" % r["msgs_missing"],
              "%.1f ms" % (r["push_latency_us"]["p99"] / 1000),
              "%d" % r["module_closes"]["drain"],
              "%d" % r["log_drain_timeouts"]) for r in runs])
        md.append("Times from the SIGHUP to the master. Bound: spread + "
                  "ws_heartbeat_drain_timeout (%d s). Uniform: connections "
                  "x 100 ms / spread (for spread 0, the other row's). "
                  "Missing: messages the backend sent (the count in its "
                  "Close) that the client did not receive. Pushed message "
                  "p99: the backend's messages, sent to the client's "
                  "receipt, over the client's whole run. Arrivals per "
                  "100 ms: reload.dat, reload.png." %
                  results["reload"]["drain_timeout_s"])
        md.append("")
    if "profile" in results:
        p = results["profile"]
        md += table(
            "### callgrind: user-space instructions of the nginx worker per "
            "relayed 64 B message (10 connections, 400 msg/s, a %g s "
            "window; C = ws_heartbeat on, default interval)"
            % p.get("window_s", 6),
            ["config", "instructions/msg", "vs A"], "lrr",
            [(k, "%.0f" % p[k]["ir_per_msg"],
              "%.3f" % (p[k]["ir_per_msg"] / p["A"]["ir_per_msg"]))
             for k in ("A", "C")])
        md.append("Module functions in C: %.0f instructions per message."
                  % p["module_ir_per_msg"])
        if p.get("module_ir_per_relayed"):
            md.append("Per message counted by the worker's own sends (two "
                      "a message, the same window as the counts): A %.0f, "
                      "C %.0f, the module %.0f." % (
                          p["A"]["ir_per_relayed"], p["C"]["ir_per_relayed"],
                          p["module_ir_per_relayed"]))
        md.append("")
        if p.get("A_64k", {}).get("ir_per_msg") and \
                p.get("C_64k", {}).get("ir_per_msg"):
            a, c = p["A_64k"], p["C_64k"]
            md.append("64 KiB messages (10 connections, 40 msg/s): A %.0f, "
                      "C %.0f instructions per message (%.3fx), of which "
                      "the module %.0f." % (
                          a["ir_per_msg"], c["ir_per_msg"],
                          c["ir_per_msg"] / a["ir_per_msg"],
                          c["module_ir"] / c["echoed"]))
            md.append("")
        for k in ("idle_C", "idle_P"):
            if k in p and p[k]["ir_per_rt"]:
                md.append("Idle heartbeat, %s: %.0f instructions per Ping/Pong "
                          "round trip in the nginx worker (%.0f in the "
                          "module)." % (
                              "module Pings (C)" if k == "idle_C"
                              else "backend Pings relayed by stock nginx (P)",
                              p[k]["ir_per_rt"],
                              p[k]["module_ir"] / p[k]["round_trips"]))
                md.append("")
        md += table(
            "Top functions with the module on (C), self cost:",
            ["%", "function"], "rl",
            [("%.1f" % pct, "`%s`" % fn.replace("|", "\\|"))
             for ir, pct, fn in p["C"]["top"][:15]])
    if "sizeof" in results:
        z = results["sizeof"]
        md += table(
            "### Per-connection module state (sizeof)", ["type", "bytes"],
            "lr", [(k, "%d" % z[k]) for k in (
                "ctx", "ctx_upstream_off", "side", "outbound", "heartbeat",
                "frame_scanner16", "ngx_pool_cleanup_t") if k in z])
    text = "\n".join(md) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    plot(results, out_dir)
    if "reload" in results:
        reload_dat(results["reload"]["runs"], out_dir)
    return text


def plot(results, out_dir):
    if "relay" not in results or not shutil.which("gnuplot"):
        return
    s = results["relay"]["summary"]
    cfgs = [c[0] for c in CONFIGS]
    scen = results["relay"]["scenarios"]

    def ratios_dat(name, col, note, metric, lat_label, lat_metric):
        """per scenario, for each config: a ratio to A (median, min, max);
        for the latency scenario, lat_metric under lat_label"""
        with open(os.path.join(out_dir, name), "w") as f:
            f.write("# scenario " + " ".join(
                "%s_%s %s_lo %s_hi" % (c, col, c, c) for c in cfgs)
                + note + "\n")
            for sc in scen:
                lat = "latency" in sc
                row = ['"%s"' % (lat_label if lat else sc)]
                for c in cfgs:
                    r = s[sc][c][lat_metric if lat else metric]
                    row += ["%.4f %.4f %.4f" % r if r else "NaN NaN NaN"]
                f.write(" ".join(row) + "\n")

    ratios_dat("relay.dat", "thr", "", "thr_ratio",
               "p99 @1000/s", "p99_ratio")
    ratios_dat("cpu.dat", "cpu",
               "  (nginx worker CPU per message, ratio to A)", "cpu_ratio",
               "@1000/s", "cpu_ratio")
    lat = os.path.join(out_dir, "latency.dat")
    lsc = [x for x in scen if "latency" in x][0]
    with open(lat, "w") as f:
        f.write("# config p50_us p99_us p999_us\n")
        for c in cfgs:
            r = s[lsc][c]
            f.write("%s %.2f %.2f %.2f\n" % (c, r["p50_us"] or 0,
                                            r["p99_us"] or 0,
                                            r["p999_us"] or 0))
    thr = os.path.join(out_dir, "throughput.dat")
    with open(thr, "w") as f:
        f.write("# scenario " + " ".join(cfgs) + "  (msg/s, median)\n")
        for sc in scen:
            if "latency" in sc:
                continue
            f.write('"%s" %s\n' % (sc, " ".join(
                "%.1f" % (s[sc][c]["msgs_per_s"] or 0) for c in cfgs)))
    gp = os.path.join(ROOT, "bench", "plot.gp")
    subprocess.run(["gnuplot", "-e", "outdir='%s'" % out_dir, gp],
                   check=False)


def num(v, digits=2):
    """A figure with `digits` decimals, "-" for none."""
    return "-" if v is None else "%.*f" % (digits, v)


def rt(r):
    """A ratio and its range, "-" for none."""
    return "-" if not r else "%.3f [%.3f-%.3f]" % tuple(r)


# --------------------------------------------------------------------- main

def save(results, out_dir):
    """The summaries of the sections that ran, then OUT/results.json."""
    if "relay" in results:
        summarize_relay(results)
    if "idle" in results:
        summarize_idle(results)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


def report_only(out_dir):
    with open(os.path.join(out_dir, "results.json")) as f:
        results = json.load(f)
    p = results.get("profile")
    if p:
        # the module's share, again from the saved listings
        for key, name in (("C", "callgrind-C.txt"),
                          ("idle_C", "callgrind-idle-C.txt")):
            path = os.path.join(out_dir, name)
            if key in p and os.path.exists(path):
                with open(path) as f:
                    p[key]["module_ir"] = module_ir(
                        parse_callgrind(f.read())[1])
        if "C" in p:
            p["module_ir_per_msg"] = p["C"]["module_ir"] / p["C"]["echoed"]
    results.setdefault("loadavg_end", results["machine"]["loadavg"])
    results.setdefault("runtime_s", 0)
    save(results, out_dir)
    print(report(results, out_dir))
    return 0


def main():
    global WORK, LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pin", action="store_true",
                    help="relay scenarios: nginx on the last CPU, the load "
                         "generator and backend on the others (useful with "
                         "4+ CPUs; on 2 the load side becomes the "
                         "bottleneck)")
    ap.add_argument("--idle-rounds", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--pair-base", default="A", choices=["A", "K"],
                    help="what C is paired with: A (stock nginx) or K (C "
                         "with ws_heartbeat_idle_buffers keep)")
    ap.add_argument("--pair-scenarios", default="",
                    help="pairs section: only the scenarios whose names "
                         "contain one of these (comma-separated), e.g. "
                         "latency")
    ap.add_argument("--pair-c-interval", default="50ms",
                    choices=["50ms", "default"],
                    help="pairs section: C's ws_heartbeat_interval, 50ms "
                         "(a Ping in nearly every gap) or the default "
                         "(30 s: the relay path alone)")
    ap.add_argument("--idle-sizes", default="10000,50000",
                    help="idle section: the numbers of connections")
    ap.add_argument("--idle-rounds-large", type=int, default=1,
                    help="idle section: rounds above 10,000 connections")
    ap.add_argument("--idle-kinds", default="A,C,K,P,F",
                    help="idle section: which of A, C, K, P, F to run")
    ap.add_argument("--only",
                    default="relay,pairs,idle,deadpeer,reload,profile,"
                            "sizeof")
    ap.add_argument("--max-load", type=float, default=0)
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild summary.md and the plot from "
                         "OUT/results.json (and OUT/callgrind-*.txt)")
    args = ap.parse_args()
    if args.report_only:
        return report_only(args.out)
    # SIGTERM (timeout, kill) unwinds like ^C: every section stops the
    # nginx, backend and client processes it started in its finally blocks
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
    only = set(args.only.split(","))
    WORK = os.path.join(BUILD, "bench", "run")
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    # one module for the whole run: a rebuild of build/*.so during the run
    # (others work in this checkout) must not change it between sections
    global MODULE
    if os.path.exists(MODULE):
        copy = os.path.join(WORK, os.path.basename(MODULE))
        shutil.copy2(MODULE, copy)
        MODULE = copy
    os.makedirs(args.out, exist_ok=True)
    LOG = open(os.path.join(args.out, "run.log"), "w")
    t_start = time.monotonic()
    load = os.getloadavg()[0]
    say("bench: load average %.2f %s" % (
        load, "(busy machine: figures are noisy; ratios are measured "
              "within the run)" if load > 1 else ""))
    if args.max_load and load > args.max_load:
        say("bench: load average above %.2f, not running" % args.max_load)
        return 3
    results = dict(started=time.strftime("%Y-%m-%d %H:%M:%S"),
                   quick=args.quick, machine=machine(),
                   argv=sys.argv[1:])
    sections = [("sizeof", lambda: section_sizeof(results)),
                ("relay", lambda: section_relay(args, results)),
                ("pairs", lambda: section_pairs(args, results)),
                ("idle", lambda: section_idle(args, results)),
                ("deadpeer", lambda: section_deadpeer(args, results)),
                ("reload", lambda: section_reload(args, results)),
                ("profile", lambda: section_profile(args, results))]
    for name, fn in sections:
        if name not in only:
            continue
        t = time.monotonic()
        say("== %s" % name)
        fn()
        results.setdefault("timing_s", {})[name] = time.monotonic() - t
        say("   (%.0f s)" % (time.monotonic() - t))
    results["runtime_s"] = time.monotonic() - t_start
    results["loadavg_end"] = os.getloadavg()
    save(results, args.out)
    say("")
    say(report(results, args.out))
    say("bench: %.0f s in all; results in %s" % (results["runtime_s"],
                                                  args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
