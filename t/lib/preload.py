"""LD_PRELOAD shims of t/preload/, compiled for a test module."""

import os
import subprocess

PRELOAD_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "preload")


def build(name, tmp_path_factory):
    """t/preload/<name>.c as a shared object in a temp dir: its path."""
    out = str(tmp_path_factory.mktemp("shim") / (name + ".so"))
    subprocess.run(["cc", "-shared", "-fPIC", "-O", "-Wall", "-Werror",
                    "-o", out, os.path.join(PRELOAD_DIR, name + ".c"),
                    "-ldl"], check=True)
    return out
