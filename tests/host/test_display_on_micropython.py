"""Run the display tests (tests/mp/test_display.py) on the real MicroPython VM, under pytest."""

# The display code needs framebuf, which only MicroPython has, so its tests cannot be collected
# by pytest itself; this test runs them with tests/fw/mprun.py and passes only if all of them
# do. mprun prints every test's PASS/FAIL line, which the assertion message carries.

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"


def test_display_tests_pass_on_micropython():
    env = dict(
        os.environ,
        MICROPYPATH=f".frozen:{ROOT / 'firmware'}:{ROOT / 'tests' / 'fw'}",
    )
    out = subprocess.run(
        [str(MICROPYTHON), "tests/fw/mprun.py", "tests/mp/test_display.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = out.stdout + out.stderr
    m = re.search(r"^(\d+) passed, (\d+) failed$", out.stdout, re.MULTILINE)
    assert m, report
    assert int(m.group(2)) == 0, report
    assert int(m.group(1)) >= 20, report  # the file was found and its tests ran
    assert out.returncode == 0, report
