"""Fixtures of the reliability suite.

The suite is opt-in: every test module carries rlib.gate, which skips it
unless RELIABILITY=quick or RELIABILITY=full is set. The Makefile's
reliability targets set it; `make integration` (pytest t) collects these
files too but runs none of them, so the integration suite keeps its
duration and never runs the namespace, signal and load tests twice (it
also runs once more under ASan)."""

import os
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
    from lib.netns import NetLab
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()
