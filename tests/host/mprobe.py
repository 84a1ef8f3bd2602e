"""Test helper: run a script on the real MicroPython VM (the unix port) with the firmware on its
path, to its end, and return its stdout lines once it exited cleanly and printed no error."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"


def run(script, *args, heap=None, timeout=30, bad=("error", "Traceback")):
    """`script`: a path, or source text run with -c. Fails the test on a non-zero exit or a
    line starting with one of `bad`."""
    cmd = [str(MICROPYTHON)]
    if heap:
        cmd += ["-X", "heapsize=" + heap]
    cmd += ["-c", script] if "\n" in str(script) else [str(script)]
    out = subprocess.run(
        cmd + [str(a) for a in args],
        cwd=ROOT,
        env=dict(os.environ, MICROPYPATH=f".frozen:{ROOT / 'firmware'}"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = out.stdout.splitlines()
    assert out.returncode == 0, (lines, out.stderr)
    assert not any(x.startswith(bad) for x in lines), lines
    return lines
