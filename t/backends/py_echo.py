"""A real WebSocket echo backend: Debian's python3-websockets (10.4, the
asyncio "legacy" server), run as its own process by the integration tests.

    /usr/bin/python3 py_echo.py [--host 127.0.0.1] [--port 0] [--unix PATH]

Prints the port it listens on (with --unix: the path of its unix socket)
as the first line of stdout, then echoes
every message (text as text, binary as binary). It never pings by itself
(ping_interval=None) and answers every Ping with a Pong, as the library
does on its own. One extra: the text message "__stats__" is answered with
a JSON line {"pings": N, "wshb_pings": M} counting the Pings this
connection received (M: those whose payload starts with b"wshb", the
module's), so a test can see that the Pings did reach a live backend."""

import argparse
import asyncio
import json
import os
import signal
import sys

import websockets
from websockets.frames import Opcode
from websockets.legacy.server import WebSocketServerProtocol


class CountingProtocol(WebSocketServerProtocol):
    # not "pings": the library keeps its own pending Pings there
    received_pings = 0
    received_wshb_pings = 0

    async def read_frame(self, max_size):
        frame = await super().read_frame(max_size)
        if frame.opcode == Opcode.PING:
            self.received_pings += 1
            if frame.data[:4] == b"wshb":
                self.received_wshb_pings += 1
        return frame


async def echo(ws, path=None):
    try:
        async for message in ws:
            if message == "__stats__":
                await ws.send(json.dumps(dict(
                    pings=ws.received_pings,
                    wshb_pings=ws.received_wshb_pings)))
            else:
                await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def main(host, port, unix):
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(
            sig, lambda: stop.done() or stop.set_result(None))
    kw = dict(ping_interval=None, create_protocol=CountingProtocol,
              max_size=None)
    if unix:
        serving = websockets.unix_serve(echo, unix, **kw)
    else:
        serving = websockets.serve(echo, host, port, **kw)
    async with serving as server:
        if unix:
            os.chmod(unix, 0o777)   # nginx's workers may be "nobody"
        sock = server.sockets[0]
        print(unix or sock.getsockname()[1], flush=True)
        await stop


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--unix", help="listen on a unix socket at this path")
    args = ap.parse_args()
    try:
        asyncio.run(main(args.host, args.port, args.unix))
    except KeyboardInterrupt:
        sys.exit(0)
