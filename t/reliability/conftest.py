"""Fixtures of the reliability suite.

The suite is opt-in: every test module carries rlib.gate, which skips it
unless RELIABILITY=quick or RELIABILITY=full is set. The Makefile's
reliability targets set it; `make integration` (pytest t) collects these
files too but runs none of them, so the integration suite keeps its
duration and never runs the namespace, signal and load tests twice (it
also runs once more under ASan)."""

import os
import selectors
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))



def pytest_configure(config):
    config.addinivalue_line(
        "markers", "valgrind_ok: also runs with nginx under valgrind")


def pytest_collection_modifyitems(config, items):
    from . import rlib      # after pytest_configure: its marks are known
    # under valgrind only the scenarios chosen for it run
    if not rlib.VALGRIND:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    skip = pytest.mark.skip(reason="not a valgrind scenario")
    for item in items:
        if str(item.fspath).startswith(here) and \
                item.get_closest_marker("valgrind_ok") is None:
            item.add_marker(skip)


@pytest.fixture
def rnginx(tmp_path):
    """rnginx(http, **kw) -> started rlib.RNginx (start=False: not
    started). Stopped at teardown; its log must be clean (rlib.RNginx.
    check_log)."""
    from . import rlib
    made = []

    def make(http, start=True, port=None, **kw):
        n = rlib.RNginx(tmp_path / ("nginx%d" % len(made)), http, **kw)
        made.append(n)
        if start:
            n.start(port)
        return n

    yield make
    for n in made:
        n.stop()
    for n in made:
        n.check_log()


@pytest.fixture
def raw_backend():
    from . import rlib
    made = []

    def make(**kw):
        b = rlib.RawBackend(**kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def netlab():
    from . import rlib
    lab = rlib.NetLab()
    try:
        yield lab
    finally:
        lab.close()


class Proc:
    """A helper process in its own process group; the first line of its
    stdout is the port it listens on (or "ready")."""

    def __init__(self, argv, stderr_path, start_timeout=15.0):
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                     stdin=subprocess.PIPE,
                                     stderr=self.stderr,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.first = self.readline(start_timeout)

    def readline(self, timeout=10.0):
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

    @property
    def port(self):
        return int(self.first)

    def tell(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def errors(self):
        self.stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self):
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
        for f in (self.proc.stdout, self.proc.stdin):
            try:
                f.close()
            except OSError:
                pass
        self.stderr.close()


@pytest.fixture
def procs(tmp_path):
    """procs(argv) -> started Proc; all stopped at teardown (SIGCONT first:
    a test may have left one stopped)."""
    made = []

    def make(argv):
        p = Proc(argv, str(tmp_path / ("proc%d.err" % len(made))))
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
