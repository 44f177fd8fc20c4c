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

from lib import fixtures  # noqa: E402


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
    yield from fixtures.nginxes(tmp_path, rlib.RNginx)


@pytest.fixture
def raw_backend():
    from . import rlib
    yield from fixtures.made(rlib.RawBackend)


@pytest.fixture
def netlab():
    from lib.netns import NetLab
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()
