"""Backends in processes of their own: the independent implementations in
t/backends and any helper program that prints its port, so that a test can
freeze (SIGSTOP) or kill (SIGKILL) the backend without touching itself."""

import os
import selectors
import signal
import subprocess

T = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"
# Node.js and Debian's node-ws, for the backend here and test_clients' client
NODE_BIN = os.environ.get("NODE_BIN", "/usr/bin/node")
NODE_PATH = os.environ.get("NODE_WS_PATH", "/usr/share/nodejs")
PY_ECHO = os.path.join(T, "backends", "py_echo.py")
NODE_ECHO = os.path.join(T, "backends", "node_echo.js")


def py_echo_argv(host=None, unix=None):
    """t/backends/py_echo.py (Debian's python3-websockets), on host, or on
    the unix socket at the path unix."""
    argv = [PYTHON, PY_ECHO]
    if host:
        argv += ["--host", host]
    if unix:
        argv += ["--unix", unix]
    return argv


class BackendProcess:
    """A backend in its own process (and process group): the first line of
    its stdout is the port it listens on, or the path of its unix socket
    (self.port is then that path, a str); readline() reads the lines it
    prints after that. env: its environment (None: this one's); stdin:
    give it a pipe on stdin, for tell(). Its stderr goes to stderr_path,
    for the messages of a failed check."""

    def __init__(self, argv, stderr_path, env=None, stdin=False,
                 start_timeout=15.0):
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                     stdin=subprocess.PIPE if stdin
                                     else None,
                                     stderr=self.stderr, env=env,
                                     start_new_session=True)
        self.pid = self.proc.pid
        line = self.readline(start_timeout)
        if not line.isdigit() and not line.startswith("/"):
            raise AssertionError("backend did not start (%r): %s"
                                 % (line, self.errors()))
        self.port = int(line) if line.isdigit() else line

    def readline(self, timeout=10.0):
        """The next line the process prints, stripped."""
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                raise AssertionError("%s said nothing in %.0fs: %s"
                                     % (self.proc.args, timeout,
                                        self.errors()))
        finally:
            sel.close()
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise AssertionError("%s ended: %s" % (self.proc.args,
                                                   self.errors()))
        return line

    def tell(self, line):
        """A line on its stdin (stdin=True)."""
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def errors(self):
        self.stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self):
        """SIGCONT (a test may have left it stopped) and SIGTERM to its
        group, SIGKILL if it lingers; whatever it left in its group is
        killed too."""
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        else:
            # whatever it left in its group
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for f in (self.proc.stdout, self.proc.stdin):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self.stderr.close()
