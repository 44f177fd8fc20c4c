"""Headless Chromium (Debian's chromium package) driven over the DevTools
protocol, with python3-websockets for the DevTools socket and urllib for
/json. No playwright: the protocol is three calls.

    with Chromium(tmpdir) as browser:
        value = browser.evaluate("(async () => 42)()")

Chromium runs in its own session (its own process group); stop() kills the
whole group, so no renderer, GPU or zygote process outlives a test."""

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.request

import websockets

CHROMIUM_BIN = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")

FLAGS = [
    "--headless",
    "--no-sandbox",              # root in CI: the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",   # small /dev/shm in containers
    "--no-proxy-server",         # ws://127.0.0.1 straight to nginx
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-port=0",
]


class ChromiumError(RuntimeError):
    pass


class Chromium:
    def __init__(self, workdir, binary=CHROMIUM_BIN, start_timeout=30.0):
        self.workdir = str(workdir)
        self.profile = os.path.join(self.workdir, "profile")
        self.log_path = os.path.join(self.workdir, "chromium.log")
        self.binary = binary
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None
        self.page_ws = None
        self._ids = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        os.makedirs(self.profile, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary] + FLAGS +
            ["--user-data-dir=" + self.profile, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.port = self._wait_port()
            self.page_ws = self._wait_page()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_port(self):
        """Chromium writes the port it bound to DevToolsActivePort."""
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChromiumError("chromium exited with %s:\n%s" % (
                    self.proc.returncode, self.log_tail()))
            try:
                with open(path) as f:
                    lines = f.read().splitlines()
                if len(lines) >= 2 and lines[0].strip().isdigit():
                    return int(lines[0])
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise ChromiumError("no DevToolsActivePort after %.0fs:\n%s" % (
            self.start_timeout, self.log_tail()))

    def _json(self, path):
        # no proxy from the environment for the loopback DevTools endpoint
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open("http://127.0.0.1:%d%s" % (self.port, path),
                         timeout=5) as r:
            return json.loads(r.read().decode())

    def _wait_page(self):
        """webSocketDebuggerUrl of the about:blank page target."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for t in self._json("/json/list"):
                if t.get("type") == "page" and t.get("url") == "about:blank" \
                        and t.get("webSocketDebuggerUrl"):
                    return t["webSocketDebuggerUrl"]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise ChromiumError("no about:blank page target:\n" +
                            self.log_tail())

    def stop(self):
        if self.proc is None:
            return
        pgid = self.proc.pid   # start_new_session: the group is Chromium's
        # TERM the whole group (browser, zygotes, renderers, GPU/utility
        # processes), then KILL whatever is left of it
        self._killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 2
        while self._group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self._log.close()

    @staticmethod
    def _killpg(pgid, sig):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    @staticmethod
    def _group_alive(pgid):
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- DevTools protocol -------------------------------------------------

    async def _call(self, method, params, timeout):
        async with websockets.connect(self.page_ws, max_size=None,
                                      ping_interval=None,
                                      open_timeout=timeout) as cdp:
            mid = next(self._ids)
            await cdp.send(json.dumps(
                {"id": mid, "method": method, "params": params}))
            while True:   # skip events; wait for our answer
                msg = json.loads(await cdp.recv())
                if msg.get("id") == mid:
                    return msg

    def call(self, method, params=None, timeout=30.0):
        msg = asyncio.run(asyncio.wait_for(
            self._call(method, params or {}, timeout), timeout))
        if "error" in msg:
            raise ChromiumError("%s: %s" % (method, msg["error"]))
        return msg["result"]

    def evaluate(self, expression, timeout=30.0):
        """Runtime.evaluate with awaitPromise; the JSON value it returns."""
        r = self.call("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True,
            "returnByValue": True}, timeout)
        if "exceptionDetails" in r:
            raise ChromiumError("page exception: %s" %
                                json.dumps(r["exceptionDetails"])[:2000])
        return r["result"].get("value")
