"""The firmware entry point on the real MicroPython VM agrees with the host on a schedule."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from dosis import schedules
from dosiscore import civil, planner, schedule, tz

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"


def _run_main(cwd):
    env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT / 'firmware'}")
    return subprocess.run(
        [str(MICROPYTHON), str(ROOT / "firmware" / "main.py")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_device_hash_and_next_dose_match_host(tmp_path):
    doc = schedules.load_schedule(ROOT / "examples" / "schedule.toml")
    (tmp_path / "schedule.json").write_bytes(schedule.canonical(doc))
    before = int(time.time())
    out = _run_main(tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"schedule {schedule.content_hash(doc)[:12]}" in out.stdout
    m = re.search(r"next dose (\S+) at (\S+)", out.stdout)
    assert m, out.stdout
    # The host plans the same next dose from the same instant. (Only a dose falling due in the
    # second the VM took to start could differ; the example has none at a whole minute + 1 s.)
    want_utc, want_id = planner.next_due(doc, before)
    assert (m.group(1), m.group(2)) == (
        want_id,
        civil.format_iso(want_utc, tz.Tz(doc["tz_rule"]).offset(want_utc)),
    )


def test_device_refuses_bad_stored_schedule(tmp_path):
    out = _run_main(tmp_path)
    assert "no schedule stored" in out.stdout
    (tmp_path / "schedule.json").write_text('{"schema": 1, "citizen": "0101701234"}')
    out = _run_main(tmp_path)
    assert out.returncode == 0  # the script reports; it does not crash
    assert "stored schedule is invalid: citizen: looks like a CPR number" in out.stdout
    (tmp_path / "schedule.json").write_text("{not json")
    out = _run_main(tmp_path)
    assert "stored schedule is not JSON" in out.stdout
