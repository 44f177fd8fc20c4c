"""A small, exact RFC 6455 implementation for tests: frame codec, a raw
client over a real socket and a raw backend server. Raw on purpose: the
tests must see every frame byte as it crossed nginx, including the Pings
the module injects and the frames it must never alter."""

import base64
import contextlib
import hashlib
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# the first bytes of the payload of every Ping the module sends
PING_TAG = b"wshb"


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def encode_frame(opcode, payload=b"", fin=True, mask=True, rsv=0, key=None,
                 form=None, declared=None):
    """A frame, masked with key (random if None) when mask is true. Also
    any frame that is not well formed: form "7", "16" or "64" forces the
    length encoding, declared overrides the length field."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if declared is None else declared
    if form is None:
        form = "7" if n < 126 else "16" if n < 65536 else "64"
    mbit = 0x80 if mask else 0
    if form == "7":
        head = struct.pack("!BB", b0, mbit | n)
    elif form == "16":
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = key if key is not None else os.urandom(4)
    return head + key + xor_mask(payload, key)


def xor_mask(data, key):
    if not data:
        return b""
    k = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")) \
        .to_bytes(len(data), "big")


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "masked", "key", "payload", "raw")

    def __init__(self, fin, rsv, opcode, masked, key, payload, raw):
        self.fin, self.rsv, self.opcode = fin, rsv, opcode
        self.masked, self.key, self.payload, self.raw = \
            masked, key, payload, raw

    @property
    def close_code(self):
        if self.opcode != CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]

    @property
    def is_module_ping(self):
        return self.opcode == PING and self.payload[:4] == PING_TAG

    def __repr__(self):
        return "Frame(op=%d fin=%d len=%d%s)" % (
            self.opcode, self.fin, len(self.payload),
            " masked" if self.masked else "")


class Parser:
    """Incremental frame parser; keeps each frame's raw bytes."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            f = self._one()
            if f is None:
                return out
            out.append(f)

    def _one(self):
        b = self.buf
        if len(b) < 2:
            return None
        fin, rsv, op = b[0] >> 7, (b[0] >> 4) & 7, b[0] & 15
        masked, n = b[1] >> 7, b[1] & 127
        i = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, i = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, i = struct.unpack("!Q", b[2:10])[0], 10
        key = None
        if masked:
            if len(b) < i + 4:
                return None
            key, i = bytes(b[i:i + 4]), i + 4
        if len(b) < i + n:
            return None
        payload = bytes(b[i:i + n])
        if masked:
            payload = xor_mask(payload, key)
        raw = bytes(b[:i + n])
        del b[:i + n]
        return Frame(fin, rsv, op, masked, key, payload, raw)


class Boundary:
    """Where a byte stream of frames stands: at_boundary() when what was
    fed ends on the end of a frame (headers parsed, payloads counted, no
    payload kept)."""

    def __init__(self):
        self.head = bytearray()   # a frame header received in part
        self.left = 0             # payload bytes of the current frame

    def at_boundary(self):
        return not self.head and self.left == 0

    def feed(self, data):
        i = 0
        while i < len(data):
            if self.left:
                n = min(self.left, len(data) - i)
                self.left -= n
                i += n
                continue
            self.head.append(data[i])
            i += 1
            h = self.head
            if len(h) < 2:
                continue
            n, need = h[1] & 127, 2 + (4 if h[1] & 128 else 0)
            need += 2 if n == 126 else 8 if n == 127 else 0
            if len(h) < need:
                continue
            if n == 126:
                n = struct.unpack("!H", h[2:4])[0]
            elif n == 127:
                n = struct.unpack("!Q", h[2:10])[0]
            self.head = bytearray()
            self.left = n


def read_http_head(sock, buf=b"", limit=65536):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed in HTTP head: %r" % buf)
        buf += chunk
        if len(buf) > limit:
            raise ValueError("HTTP head too long")
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def parse_head(head):
    """An HTTP head as read_http_head() returns it: (its first line,
    {lower-case header name: value})."""
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers


def handshake_request(path, host, upgrade="websocket", headers=None):
    """A client's opening handshake, with host as its Host header: (the
    request's bytes, its Sec-WebSocket-Key)."""
    key = base64.b64encode(os.urandom(16))
    lines = ["GET %s HTTP/1.1" % path, "Host: %s" % host,
             "Upgrade: %s" % upgrade, "Connection: Upgrade",
             "Sec-WebSocket-Key: " + key.decode(),
             "Sec-WebSocket-Version: 13"]
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def client_handshake(sock, path, host, upgrade="websocket", headers=None,
                     extra=b""):
    """The client's side of the opening handshake on sock (extra: bytes
    sent in the same write, right behind the request). A 101 must carry the
    right Sec-WebSocket-Accept. Returns (head, status, {lower-case header
    name: value}, the bytes read behind the head)."""
    req, key = handshake_request(path, host, upgrade, headers)
    sock.sendall(req + extra)
    head, rest = read_http_head(sock)
    start, resp_headers = parse_head(head)
    status = int(start.split()[1])
    if status == 101:
        assert resp_headers.get("sec-websocket-accept") == \
            accept_key(key).decode(), head
    return head, status, resp_headers, rest


def read_request(sock):
    """The server's side: read a request head; returns (path, {lower-case
    header name: value}, the bytes read behind the head)."""
    head, rest = read_http_head(sock)
    start, headers = parse_head(head)
    return start.split()[1], headers, rest


def handshake_response(headers, upgrade="websocket", status=101,
                       extensions=None):
    """The answer to an opening handshake whose headers (as parse_head()
    gives them) are these, as bytes."""
    key = headers.get("sec-websocket-key", "").encode()
    resp = ["HTTP/1.1 %d Switching Protocols" % status,
            "Upgrade: " + upgrade, "Connection: Upgrade",
            "Sec-WebSocket-Accept: " + accept_key(key).decode()]
    if extensions:
        resp.append("Sec-WebSocket-Extensions: " + extensions)
    return ("\r\n".join(resp) + "\r\n\r\n").encode()


def _connected(sock):
    try:
        sock.getpeername()
        return True
    except OSError:
        return False


def connect(port, host="127.0.0.1", timeout=10.0, sock=None):
    """A stream socket connected to host:port, or to the unix socket at the
    path port (a str). sock: a socket made elsewhere (inside a network
    namespace, with a small receive buffer...), connected here unless it
    is connected already."""
    unix = isinstance(port, str)
    if sock is None and not unix:
        return socket.create_connection((host, port), timeout)
    made = sock is None
    if made:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if not _connected(sock):
        sock.settimeout(timeout)
        try:
            sock.connect(port if unix else (host, port))
        except OSError:
            if made:
                sock.close()
            raise
    return sock


def send_until(sock, data, stop):
    """Send data on sock again and again until the event stop is set or
    the connection breaks. What the peer does not take at once is sent
    from where it stopped, so data is never cut but where stop comes in
    the middle of it; stop is seen within 0.1s whatever the socket's
    timeout (not for an SSL socket)."""
    while not stop.is_set():
        view = memoryview(data)
        while view:
            if stop.is_set():
                return
            if not select.select([], [sock], [], 0.1)[1]:
                continue
            try:
                view = view[sock.send(view, socket.MSG_DONTWAIT):]
            except (BlockingIOError, socket.timeout):
                continue
            except OSError:
                return


@contextlib.contextmanager
def streaming(peer, size=65536):
    """peer, a Client or a Backend's Conn, sends size-byte binary frames as
    fast as nginx takes them, from a thread, for the duration of the block,
    holding its writer's lock all along (a Client's Pongs and a Backend's
    answers wait for it). A frame may be cut where the block ends: the
    connection is then good for reading and closing only."""
    frame = encode_frame(BINARY, b"s" * size, mask=peer.MASK)
    stop = threading.Event()

    def run():
        with peer.lock:
            send_until(peer.sock, frame, stop)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


class Client:
    """A raw WebSocket client. answer_pings: reply to the module's Pings
    (and the backend's) with a Pong echoing the payload, as browsers do.
    port: nginx's TCP port on host, or the path of its unix socket (a str,
    "listen unix:"); sock: see connect(). A slow reader: at most read_size
    bytes a read, after a pause of read_pause seconds (both may be changed
    at any time)."""

    MASK = True                   # a client masks its frames

    def __init__(self, port, path="/", host="127.0.0.1", headers=None,
                 tls=False, timeout=10.0, answer_pings=True, extra=b"",
                 upgrade="websocket", sock=None, read_size=1 << 20,
                 read_pause=0.0):
        self.sock = connect(port, host, timeout, sock)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock)
        self.sock.settimeout(timeout)
        self.answer_pings = answer_pings   # True, False or "module"
        self.lock = threading.Lock()
        self.sent = []            # raw frames sent, with is-module-pong
        self.record = False
        self.pending = []         # Pongs waiting for the writer's lock
        self.tx = Boundary()      # or for the end of a frame sent in parts
        self.parser = Parser()
        self.frames = []          # received, not yet returned
        self.pings = []           # (monotonic time, Frame) of module Pings
        self.read_size = read_size
        self.read_pause = read_pause
        authority = "localhost" if isinstance(port, str) \
            else "%s:%d" % (host, port)
        self.head, self.status, self.headers, rest = client_handshake(
            self.sock, path, authority, upgrade, headers, extra)
        self.frames += self.parser.feed(rest)
        self.closed = False

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, key=None):
        self.send_raw(encode_frame(opcode, payload, fin, self.MASK, rsv,
                                   key))

    def send_raw(self, data, module_pong=False):
        with self.lock:
            self._send_locked(data, module_pong)

    def _send_locked(self, data, module_pong):
        # a Pong goes between frames only: never inside a frame of which
        # the test has sent a part (send_raw of a cut frame)
        self._flush_pending()
        self._send_one(data, module_pong)
        self.tx.feed(data)
        self._flush_pending()

    def _flush_pending(self):
        while self.pending and self.tx.at_boundary():
            data, module_pong = self.pending.pop(0)
            self._send_one(data, module_pong)

    def _send_one(self, data, module_pong):
        self.sock.sendall(data)
        if self.record:
            self.sent.append((data, module_pong))

    def _answer(self, data, module_pong):
        # never block the reader behind a writer that waits for the peer
        self.pending.append((data, module_pong))
        if self.lock.acquire(blocking=False):
            try:
                self._flush_pending()
            finally:
                self.lock.release()

    def send_text(self, text):
        self.send_frame(TEXT, text.encode())

    def _fill(self, timeout):
        if self.read_pause:
            time.sleep(min(self.read_pause, timeout))
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(self.read_size)
        except socket.timeout:
            return False
        if not data:
            self.closed = True
            return False
        for f in self.parser.feed(data):
            if f.opcode == PING and f.is_module_ping:
                self.pings.append((time.monotonic(), f))
            if f.opcode == PING and (self.answer_pings is True or (
                    self.answer_pings == "module" and f.is_module_ping)):
                self._answer(encode_frame(PONG, f.payload),
                             f.is_module_ping)
            self.frames.append(f)
        return True

    def recv_frame(self, timeout=10.0, skip_module_pings=True):
        """Next frame (module Pings skipped by default); None on close or
        timeout."""
        deadline = time.monotonic() + timeout
        while True:
            while self.frames:
                f = self.frames.pop(0)
                if skip_module_pings and f.is_module_ping:
                    continue
                return f
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return None
            self._fill(left)

    def pump(self, seconds):
        """Read (and answer Pings) for this long; frames are kept."""
        deadline = time.monotonic() + seconds
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._fill(left)

    def wait_closed(self, timeout=10.0):
        """Read until the server closes the TCP connection; True if so."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._fill(left)
            except (ConnectionResetError, BrokenPipeError):
                self.closed = True
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Conn:
    """One backend-side connection: the frames it received, in order.
    reading cleared: the backend reads nothing more until it is set."""

    MASK = False                  # a server's frames are not masked

    def __init__(self, sock, path, headers):
        self.sock = sock
        self.path = path
        self.headers = headers
        self.frames = queue.Queue()   # Frame, or None at EOF
        self.received = []
        self.raw = bytearray()        # every byte received after the 101
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.reading = threading.Event()
        self.reading.set()

    def send(self, data):
        with self.lock:
            self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0):
        self.send(encode_frame(opcode, payload, fin, self.MASK, rsv))

    def next_frame(self, timeout=10.0, skip_module_pings=True):
        deadline = time.monotonic() + timeout
        while True:
            try:
                f = self.frames.get(timeout=max(0.0,
                                               deadline - time.monotonic()))
            except queue.Empty:
                return None
            if f is None:
                self.frames.put(None)
                return None
            if skip_module_pings and f.is_module_ping:
                continue
            return f

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Listener:
    """A TCP server on 127.0.0.1, on the unix socket at the path unix
    (self.port is then that path, a str), or on lsock, a socket bound
    elsewhere (e.g. inside a network namespace): one thread accepts, and
    each connection is served by self._serve(sock) in a thread of its own.
    A subclass sets its attributes before calling __init__: a connection
    may come at once. rcvbuf: SO_RCVBUF of the accepted connections (set
    on the listening socket, so that the window is that small from the
    SYN on): a reader that stops holds at most about that much, whatever
    the machine's tcp_rmem lets the kernel grow a buffer to."""

    def __init__(self, lsock=None, backlog=512, unix=None, rcvbuf=None):
        if lsock is None and unix:
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lsock.bind(unix)
            os.chmod(unix, 0o777)     # nginx's workers may run as "nobody"
        elif lsock is None:
            lsock = socket.socket()
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(("127.0.0.1", 0))
        if rcvbuf:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        lsock.listen(backlog)
        self.lsock = lsock
        name = lsock.getsockname()
        self.port = name if isinstance(name, str) else name[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,),
                             daemon=True).start()


class Backend(Listener):
    """A raw WebSocket backend on 127.0.0.1 (or on a unix socket, or on
    lsock, see Listener). mode "echo": every frame comes back as received,
    unmasked (fragments and control frames included); "silent": frames are
    only recorded. Pings from nginx are answered with a Pong unless
    answer_pings is False. A Close is answered with a Close and the
    connection is then shut down, unless answer_close is False. A slow
    reader: at most read_size bytes a read, with read_pause seconds
    before each (and no reads while a Conn's reading is cleared)."""

    def __init__(self, mode="echo", answer_pings=True, extensions=None,
                 upgrade="websocket", status=101, tls_context=None,
                 answer_close=True, lsock=None, unix=None,
                 read_size=1 << 20, read_pause=0.0, rcvbuf=None):
        self.mode = mode
        self.read_size = read_size
        self.read_pause = read_pause
        self.answer_close = answer_close
        self.answer_pings = answer_pings
        self.extensions = extensions
        self.upgrade = upgrade
        self.status = status
        self.tls_context = tls_context
        self.conns = queue.Queue()
        self.all = []
        super().__init__(lsock, unix=unix, rcvbuf=rcvbuf)

    def _serve(self, s):
        try:
            if self.tls_context:
                s = self.tls_context.wrap_socket(s, server_side=True)
            path, headers, rest = read_request(s)
        except (OSError, ConnectionError, ValueError, ssl.SSLError):
            s.close()
            return
        s.sendall(handshake_response(headers, self.upgrade, self.status,
                                     self.extensions))
        conn = Conn(s, path, headers)
        self.all.append(conn)
        self.conns.put(conn)
        parser = Parser()
        data = rest
        try:
            while True:
                if data:
                    conn.raw += data
                    for f in parser.feed(data):
                        self._frame(conn, f)
                conn.reading.wait()
                if self.read_pause:
                    time.sleep(self.read_pause)
                data = s.recv(self.read_size)
                if not data:
                    break
        except OSError:
            pass
        conn.frames.put(None)
        conn.closed.set()
        try:
            s.close()
        except OSError:
            pass

    def _frame(self, conn, f):
        conn.received.append(f)
        conn.frames.put(f)
        if f.opcode == PING and self.answer_pings and f.is_module_ping:
            conn.send_frame(PONG, f.payload)
            return
        if f.opcode == CLOSE:
            if self.answer_close:
                # the closing handshake as a server does it: reply, then
                # close the TCP connection first (RFC 6455 7.1.1)
                conn.send_frame(CLOSE, f.payload[:2])
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            return
        if self.mode == "echo":
            conn.send_frame(f.opcode, f.payload, f.fin, f.rsv)

    def accept(self, timeout=10.0):
        return self.conns.get(timeout=timeout)

    def stop(self):
        self.stopping = True
        self.lsock.close()
        for c in self.all:
            c.reading.set()
            try:
                c.close()
            except OSError:
                pass
