"""What python3-websockets read and wrote, frame by frame, from its debug
log: the library answers Pings by itself and tells nobody else."""

import logging


class FrameLog(logging.Handler):
    """websockets 10.4 answers Pings inside its protocol and has no Ping
    callback; at DEBUG level it logs every frame read ("< %s") and written
    ("> %s") with the Frame object as the argument. Keep those."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.frames = []          # ("<" or ">", Frame)

    def emit(self, record):
        if record.msg in ("< %s", "> %s") and record.args and \
                hasattr(record.args[0], "opcode"):
            self.frames.append((record.msg[0], record.args[0]))

    def opcode(self, direction, op):
        return [f for d, f in self.frames if d == direction and f.opcode == op]
