"""Real, independent WebSocket clients through nginx with the module:
python3-websockets, Node.js ws (Debian's node-ws) and headless Chromium.

Each keeps an idle WebSocket open well past proxy_read_timeout (1s) and
then uses it. None of them sends a byte of its own while idle, so what
keeps the connection open is the module's Pings and the client's automatic
Pongs: with ws_heartbeat_timeout 1s an idle client that did not answer
would be closed by the module, and without the module nginx closes it at
proxy_read_timeout (test_node_ws_closed_at_proxy_read_timeout_without_module
shows that the same setup does fail). The backend is the raw echo Backend
of lib/wsproto.py: it records every frame that crossed nginx, so it can
show that none of the clients' Pongs got through."""

import asyncio
import json
import logging
import os
import subprocess
import time

import pytest
import websockets
from websockets.frames import Opcode

from clients.chromium import Chromium
from lib.backend import NODE_BIN, NODE_PATH
from lib.wslog import FrameLog
from lib.wsproto import PONG, TEXT

HERE = os.path.dirname(os.path.abspath(__file__))
WS_CLIENT_JS = os.path.join(HERE, "clients", "ws_client.js")

PROXY_READ_TIMEOUT = 1.0
IDLE = 2.5 * PROXY_READ_TIMEOUT   # how long each client stays idle
CONF = """
            ws_heartbeat on;
            ws_heartbeat_interval 300ms;
            ws_heartbeat_timeout 1s;
            proxy_read_timeout 1s;"""
CONF_OFF = """
            ws_heartbeat off;
            proxy_read_timeout 1s;"""
MIN_PINGS = 4        # ~8 expected in 2.5s at a 300ms interval


def backend_conn(b, message):
    """The one backend connection; it got the client's message and no
    Pong."""
    conn = b.accept(timeout=5)
    texts = [f.payload for f in conn.received if f.opcode == TEXT]
    assert texts == [message.encode()], conn.received
    pongs = [f for f in conn.received if f.opcode == PONG]
    assert not pongs, "client Pongs reached the backend: %r" % pongs
    return conn


# -- python3-websockets ------------------------------------------------------

def test_python_websockets_outlives_proxy_read_timeout(ws_proxy):
    n, port, b = ws_proxy(CONF)
    frames = FrameLog()
    logger = logging.getLogger("test_clients.websockets.%d" % port)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(frames)
    message = "hello from python3-websockets"

    async def run():
        # leaving the block does the closing handshake; the raw backend
        # keeps TCP open after it, so nginx ends it at proxy_read_timeout
        # ("upstream timed out" at [info]), well within close_timeout
        async with websockets.connect(
                "ws://127.0.0.1:%d/" % port, ping_interval=None,
                open_timeout=5, close_timeout=5, logger=logger) as ws:
            t0 = time.monotonic()
            try:    # idle, but notice at once if the connection closes
                await asyncio.wait_for(ws.wait_closed(), IDLE)
                return dict(closed_early=True, after=time.monotonic() - t0,
                            code=ws.close_code)
            except asyncio.TimeoutError:
                pass
            await ws.send(message)
            echo = await asyncio.wait_for(ws.recv(), 5)
            # before our Close: a Ping that crosses it goes unanswered
            return dict(closed_early=False, echo=echo, open=ws.open,
                        after=time.monotonic() - t0,
                        pings=frames.opcode("<", Opcode.PING),
                        pongs=frames.opcode(">", Opcode.PONG))

    try:
        r = asyncio.run(run())
    finally:
        logger.removeHandler(frames)
    assert not r["closed_early"], r
    assert r["echo"] == message and r["open"], r
    assert r["after"] >= IDLE, r
    pings, pongs = r["pings"], r["pongs"]
    assert len(pings) >= MIN_PINGS, r
    for f in pings:
        assert len(f.data) == 16 and f.data[:4] == b"wshb", f
    # the library answered each Ping with a Pong carrying its payload...
    assert [f.data for f in pongs] == [f.data for f in pings]
    # ...and none of them reached the backend
    backend_conn(b, message)


# -- Node.js ws (Debian's node-ws) -------------------------------------------

def run_node_client(port, idle_ms, message, timeout=20):
    env = dict(os.environ, NODE_PATH=NODE_PATH)
    p = subprocess.run(
        [NODE_BIN, WS_CLIENT_JS, "ws://127.0.0.1:%d/" % port, str(idle_ms),
         message], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, timeout=timeout)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_node_ws_gets_pings_and_outlives_proxy_read_timeout(ws_proxy):
    n, port, b = ws_proxy(CONF)
    message = "hello from node ws"
    r = run_node_client(port, int(IDLE * 1000), message)
    assert r["opened"] and r["error"] is None, r
    assert not r["closed_early"], r
    assert r["echo"] == message, r
    assert r["ready_state"] == 1, r          # OPEN
    assert r["pings"] >= MIN_PINGS, r
    assert r["ping_payload_lengths"] == [16] * r["pings"], r
    assert r["ping_payload_prefixes"] == ["wshb"] * r["pings"], r
    backend_conn(b, message)


def test_node_ws_closed_at_proxy_read_timeout_without_module(ws_proxy):
    """Same setup, ws_heartbeat off: stock nginx closes the idle client
    at proxy_read_timeout. Shows the test above can fail."""
    n, port, b = ws_proxy(CONF_OFF)
    r = run_node_client(port, int(IDLE * 1000), "never sent")
    assert r["opened"], r
    assert r["closed_early"] and r["echo"] is None, r
    assert r["pings"] == 0, r
    assert r["close_code"] == 1006, r        # TCP closed, no Close frame
    after = r["close_after_ms"] / 1000.0
    assert 0.8 * PROXY_READ_TIMEOUT <= after <= PROXY_READ_TIMEOUT + 1.5, r
    n.wait_log(r"upstream timed out")
    conn = b.accept(timeout=5)
    assert conn.closed.wait(5)
    assert not [f for f in conn.received if f.opcode == TEXT]


# -- headless Chromium over the DevTools protocol ----------------------------

# Runs in the about:blank page. Browsers answer Pings themselves and show
# them to no script; what the page can see is whether the socket stayed
# open and still works.
BROWSER_JS = """
(async (url, idleMs, message) => {
    const ws = new WebSocket(url);
    let closeCode = null, closedAfter = null, openedAt = null;
    const closed = new Promise((resolve) => {
        ws.onclose = (e) => {
            closeCode = e.code;
            if (openedAt !== null) closedAfter = performance.now() - openedAt;
            resolve("closed");
        };
    });
    const sleep = (ms, v) => new Promise((r) => setTimeout(() => r(v), ms));
    const opened = await Promise.race([
        new Promise((r) => { ws.onopen = () => r("open"); }),
        closed, sleep(10000, "timeout")]);
    const result = {opened: opened === "open", echo: null, closedEarly: false,
                    closeCode: null, closedAfterMs: null, readyState: null,
                    idledMs: null};
    if (opened !== "open") {
        result.closedEarly = true;
        result.readyState = ws.readyState;
        result.closeCode = closeCode;
        return result;
    }
    openedAt = performance.now();
    // idle past proxy_read_timeout, but stop at once on a close
    if (await Promise.race([closed, sleep(idleMs, "idle")]) === "closed") {
        Object.assign(result, {closedEarly: true, closeCode: closeCode,
                               closedAfterMs: closedAfter,
                               readyState: ws.readyState});
        return result;
    }
    result.idledMs = performance.now() - openedAt;
    const echo = new Promise((r) => { ws.onmessage = (e) => r(e.data); });
    ws.send(message);
    const got = await Promise.race([echo, closed, sleep(5000, "timeout")]);
    result.readyState = ws.readyState;
    if (got === "closed") {
        Object.assign(result, {closedEarly: true, closeCode: closeCode,
                               closedAfterMs: closedAfter});
        return result;
    }
    result.echo = got === "timeout" ? null : got;
    // the raw backend echoes the Close but keeps TCP open; the module is
    // done after a Close, so nginx ends it at proxy_read_timeout (1s)
    ws.close(1000, "done");
    await Promise.race([closed, sleep(5000)]);
    result.closeCode = closeCode;
    return result;
})(%s, %d, %s)
"""


@pytest.fixture
def chromium(tmp_path):
    with Chromium(tmp_path / "chromium") as browser:
        yield browser


def test_chromium_keeps_websocket_open_past_proxy_read_timeout(
        ws_proxy, chromium):
    n, port, b = ws_proxy(CONF)
    message = "hello from headless chromium"
    r = chromium.evaluate(BROWSER_JS % (
        json.dumps("ws://127.0.0.1:%d/" % port), int(IDLE * 1000),
        json.dumps(message)), timeout=30)
    assert r["opened"], r
    assert not r["closedEarly"], r
    assert r["idledMs"] >= IDLE * 1000 - 50, r
    assert r["echo"] == message, r
    assert r["readyState"] == 1, r           # WebSocket.OPEN
    assert r["closeCode"] == 1000, r         # our own clean close, at the end
    backend_conn(b, message)
