"""What a user building the module meets before it runs: a compiler whose
default language is older than C++17 gets one clear message, not the
first C++17 construct failing obscurely."""

import glob
import os
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MESSAGE = "ngx_ws_heartbeat needs C++17"


@pytest.mark.parametrize("header", sorted(
    os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "src", "*.hpp"))
    if not p.endswith("cxx17.hpp")))
def test_cxx14_gets_a_clear_first_error(header, tmp_path):
    """gcc <= 10 and clang <= 15 default to C++14: -std=gnu++14 stands for
    them. The first error is ours, whichever header comes first."""
    src = tmp_path / "use.cpp"
    src.write_text('#include "%s"\nint main() { return 0; }\n' % header)
    r = subprocess.run(["g++", "-std=gnu++14", "-fsyntax-only",
                        "-I", os.path.join(ROOT, "src"), str(src)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60)
    assert r.returncode != 0, r.stdout
    errors = [l for l in r.stdout.splitlines() if "error" in l]
    assert errors and MESSAGE in errors[0], r.stdout


def test_cxx17_compiles(tmp_path):
    src = tmp_path / "use.cpp"
    src.write_text("".join('#include "%s"\n' % os.path.basename(p)
                           for p in glob.glob(os.path.join(ROOT, "src",
                                                           "*.hpp")))
                   + "int main() { return 0; }\n")
    r = subprocess.run(["g++", "-std=gnu++17", "-fsyntax-only",
                        "-I", os.path.join(ROOT, "src"), str(src)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout
