"""A WebSocket backend in a process of its own, for process faults
(SIGKILL, SIGSTOP): prints its port, then serves until killed.

    backend_proc.py echo       echo every frame, answer Pings and Closes
    backend_proc.py midframe   on each connection, send the first
                               MIDFRAME_SENT bytes of midframe_bytes()
                               (one unfinished frame), print "sent N",
                               then nothing (a backend in the middle of
                               a frame cannot answer a Ping)
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from lib import wsproto  # noqa: E402

MIDFRAME_SENT = 300000


def midframe_bytes():
    """A 1 MiB binary frame; its first MIDFRAME_SENT bytes are sent."""
    payload = bytes(range(256)) * 4096
    return wsproto.encode_frame(wsproto.BINARY, payload, mask=False)


def main():
    mode = sys.argv[1]
    if mode == "echo":
        b = wsproto.Backend(mode="echo")
    else:
        b = wsproto.Backend(mode="silent", answer_pings=False,
                            answer_close=False)
    print(b.port, flush=True)
    if mode == "echo":
        while True:
            time.sleep(3600)
    data = midframe_bytes()[:MIDFRAME_SENT]
    while True:
        conn = b.accept(timeout=3600)
        conn.send(data)
        print("sent %d" % len(data), flush=True)


if __name__ == "__main__":
    main()
