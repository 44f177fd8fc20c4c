"""Network namespaces for tests that cut links: namespaces joined by veth
pairs or by a userspace link with delay and loss (TunLink), sockets made
inside a namespace, and ip(8). Needs root."""

import ctypes
import fcntl
import heapq
import os
import random
import secrets
import select
import signal
import socket
import struct
import subprocess
import threading
import time

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(ns, fn):
    """Run fn() in a thread that has joined network namespace ns (sockets
    and TUN devices it makes stay in ns); returns its result."""
    out = {}

    def run():
        try:
            fd = os.open("/var/run/netns/" + ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns(%s)" % ns)
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as e:  # handed to the caller
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def ns_socket(ns, family=socket.AF_INET, type=socket.SOCK_STREAM):
    return in_netns(ns, lambda: socket.socket(family, type))


def ns_listener(ns, addr, port=0):
    def make():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(512)
        return s
    return in_netns(ns, make)


def ip(*args, check=True):
    """Run ip(8); with check, any failure (no permission for namespaces...)
    fails the test, never skips it."""
    r = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    if check:
        assert r.returncode == 0, "ip %s: %s" % (" ".join(args), r.stdout)
    return r.stdout


TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


class TunLink:
    """A point-to-point link between two namespaces made of two TUN
    devices and a pump thread in this process: a userspace netem. Each
    direction has its own delay (s) and loss (probability); down drops
    everything (a cable pulled: no FIN, no RST, nothing)."""

    def __init__(self, fd_a, fd_b, seed=1):
        self.fds = (fd_a, fd_b)
        self.rng = random.Random(seed)
        self.conf = {0: dict(delay=0.0, loss=0.0, down=False),
                     1: dict(delay=0.0, loss=0.0, down=False)}
        self.stats = {0: [0, 0], 1: [0, 0]}      # [forwarded, dropped]
        self.lock = threading.Lock()
        for fd in self.fds:
            os.set_blocking(fd, False)
        self.wake_r, self.wake_w = os.pipe()
        self.stopping = False
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def set(self, direction=None, **kw):
        """direction 0: a -> b, 1: b -> a, None: both."""
        with self.lock:
            for d in ((0, 1) if direction is None else (direction,)):
                self.conf[d].update(kw)
        os.write(self.wake_w, b"x")

    def _pump(self):
        queue = []
        seq = 0
        while not self.stopping:
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, _, fd, pkt = heapq.heappop(queue)
                try:
                    os.write(fd, pkt)
                except OSError:
                    pass
            timeout = max(0.0, queue[0][0] - now) if queue else 0.5
            r, _, _ = select.select(list(self.fds) + [self.wake_r], [], [],
                                    timeout)
            for fd in r:
                if fd == self.wake_r:
                    os.read(self.wake_r, 4096)
                    continue
                d = 0 if fd == self.fds[0] else 1
                out = self.fds[1 - d]
                while True:
                    try:
                        pkt = os.read(fd, 65536)
                    except (BlockingIOError, OSError):
                        break
                    with self.lock:
                        c = dict(self.conf[d])
                    if c["down"] or (c["loss"] and
                                     self.rng.random() < c["loss"]):
                        self.stats[d][1] += 1
                        continue
                    self.stats[d][0] += 1
                    seq += 1
                    heapq.heappush(queue, (time.monotonic() + c["delay"],
                                           seq, out, pkt))

    def close(self):
        self.stopping = True
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        self.thread.join(5)
        for fd in self.fds + (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


class NetLab:
    """Network namespaces and links made by this test and removed at the
    end, whatever happened: private addresses (net.x.y/30, 10.214 unless
    told) exist only inside them, no namespace has a default route or any
    link to the host, so no packet of a test can go anywhere else.
    Namespaces are named prefix-role-tag."""

    def __init__(self, net="10.214", prefix="wshbr"):
        self.prefix = prefix
        self.tag = secrets.token_hex(3)
        self.net = "%s.%d" % (net, secrets.randbelow(256))
        self.next_subnet = 0
        self.namespaces = []
        self.tuns = []

    def namespace(self, role):
        ns = "%s-%s-%s" % (self.prefix, role, self.tag)
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def _subnet(self):
        k = self.next_subnet
        self.next_subnet += 1
        assert k < 64
        base = self.net + ".%d"
        return base % (4 * k + 1), base % (4 * k + 2)

    def veth(self, ns_a, ns_b):
        """A veth pair; returns (if_a, addr_a, if_b, addr_b)."""
        k = self.next_subnet
        if_a, if_b = "wra%d%s" % (k, self.tag), "wrb%d%s" % (k, self.tag)
        addr_a, addr_b = self._subnet()
        ip("-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name",
           if_b, "netns", ns_b)
        for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            ip("-n", ns, "addr", "add", addr + "/30", "dev", ifname)
            ip("-n", ns, "link", "set", ifname, "up")
        self.check_routes()
        return if_a, addr_a, if_b, addr_b

    def tun(self, ns_a, ns_b, seed=1):
        """A TunLink; returns (link, addr_a, addr_b)."""
        k = self.next_subnet
        names = ("wta%d%s" % (k, self.tag), "wtb%d%s" % (k, self.tag))
        addr_a, addr_b = self._subnet()
        fds = []
        for ns, name in zip((ns_a, ns_b), names):
            def make(name=name):
                fd = os.open("/dev/net/tun", os.O_RDWR)
                fcntl.ioctl(fd, TUNSETIFF, struct.pack(
                    "16sH", name.encode(), IFF_TUN | IFF_NO_PI))
                return fd
            fds.append(in_netns(ns, make))
        for ns, name, me, peer in ((ns_a, names[0], addr_a, addr_b),
                                   (ns_b, names[1], addr_b, addr_a)):
            ip("-n", ns, "addr", "add", me, "peer", peer, "dev", name)
            ip("-n", ns, "link", "set", name, "up")
        link = TunLink(fds[0], fds[1], seed)
        self.tuns.append(link)
        self.check_routes()
        return link, addr_a, addr_b

    def check_routes(self):
        for ns in self.namespaces:
            routes = ip("-n", ns, "-4", "route", "show", "table", "all")
            assert "default" not in routes, routes

    def close(self):
        for link in self.tuns:
            link.close()
        for ns in reversed(self.namespaces):
            pids = subprocess.run(["ip", "netns", "pids", ns],
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            # deleting a namespace takes its end of a veth pair, and the
            # pair goes with it
            subprocess.run(["ip", "netns", "del", ns],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        left = ip("netns", "list", check=False)
        for ns in self.namespaces:
            assert ns not in left, left
