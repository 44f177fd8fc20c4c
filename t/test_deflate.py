"""permessage-deflate negotiated end to end by two real implementations
(python3-websockets client and server, both offer it by default): the
compressed data frames carry RSV1 and pass untouched, the module keeps
injecting Pings and swallowing the Pongs on both sides."""

import asyncio
import logging

import websockets
from websockets.frames import Opcode

from conftest import proxy_server
from lib.backend import py_echo_argv
from lib.nginx import free_port, wait_for
from lib.wslog import FrameLog


def body_bytes_sent(n):
    """$body_bytes_sent of the upgraded request (combined log format)."""
    try:
        with open(n.access_log) as f:
            for line in f:
                if '" 101 ' in line:
                    return int(line.split('" 101 ')[1].split()[0])
    except FileNotFoundError:
        pass
    return None


def test_permessage_deflate_end_to_end(nginx_factory, procs):
    backend = procs(py_echo_argv())
    port = free_port()
    n = nginx_factory(proxy_server(port, backend.port, """
            ws_heartbeat on;
            ws_heartbeat_upstream on;
            ws_heartbeat_interval 100ms;
            ws_heartbeat_timeout 2s;"""), port=port)
    frames = FrameLog()
    logger = logging.getLogger("test_deflate.%d" % port)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(frames)
    messages = [("message %d " % i) * 400 for i in range(40)]

    async def run():
        async with websockets.connect(
                "ws://127.0.0.1:%d/" % port, ping_interval=None,
                logger=logger) as ws:
            ext = ws.response_headers.get("Sec-WebSocket-Extensions", "")
            echoes = []
            for i, m in enumerate(messages):
                await ws.send(m)
                echoes.append(await ws.recv())
                if i % 8 == 7:
                    # idle longer than the interval: Pings come in
                    await asyncio.sleep(0.3)
            return ext, echoes

    ext, echoes = asyncio.run(run())
    assert ext.startswith("permessage-deflate"), ext
    assert echoes == messages
    got = [f for d, f in frames.frames if d == "<"]
    # compressed on the wire (the library logs frames after inflating
    # them): nginx sent the client far fewer bytes than the text
    total = sum(len(m) for m in messages)
    sent = wait_for(lambda: body_bytes_sent(n), 10, what="access log")
    assert 0 < sent < total / 4, (sent, total)
    pings = [f for f in got if f.opcode == Opcode.PING]
    assert len(pings) >= 3 and all(f.data[:4] == b"wshb" for f in pings)
    # the backend's Pongs to the module never reach the client
    assert not [f for f in got if f.opcode == Opcode.PONG]
