"""The firmware on the real MicroPython VM agrees with the host on a schedule's hash and plan."""

import os
import subprocess
import sys
from pathlib import Path

from dosis import schedules
from dosiscore import civil, planner, schedule, tz

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"
ENV = dict(os.environ, MICROPYPATH=f".frozen:{ROOT / 'firmware'}")


def _scenario(tmp_path, doc_bytes, body):
    (tmp_path / "s.json").write_bytes(doc_bytes)
    (tmp_path / "state").mkdir()
    script = tmp_path / "s.txt"
    script.write_text(f"schedule {tmp_path / 's.json'}\n{body}\n")
    return subprocess.run(
        [str(MICROPYTHON), "-m", "sim.scenario", str(script), str(tmp_path / "state")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_device_hash_and_first_dose_match_host(tmp_path):
    doc = schedules.load_schedule(ROOT / "examples" / "schedule.toml")
    out = _scenario(
        tmp_path, schedule.canonical(doc), "start 2026-11-23 05:00\nend 2026-11-23 08:10\nfill"
    )
    assert out.returncode == 0, out.stderr
    assert f" schedule - {schedule.content_hash(doc)[:12]}" in out.stdout
    zone = tz.Tz(doc["tz_rule"])
    start = zone.utc(civil.parse_date("2026-11-23") * civil.DAY + 5 * 3600)
    t, dose_id = planner.next_due(doc, start)
    due = [x for x in out.stdout.splitlines() if " due " in x]
    assert due and due[0].split()[1:4] == [civil.format_iso(t, zone.offset(t)), "due", dose_id]


def test_device_refuses_a_bad_stored_schedule(tmp_path):
    out = _scenario(
        tmp_path,
        b'{"schema": 1, "citizen": "0101701234"}',
        "start 2026-11-23 05:00\nend 2026-11-23 06:00",
    )
    assert out.returncode == 0, out.stderr
    assert "stored schedule invalid: citizen: looks like a CPR number" in out.stdout
    assert " due " not in out.stdout


def test_main_py_on_the_unix_port_points_to_the_simulator(tmp_path):
    out = subprocess.run(
        [str(MICROPYTHON), str(ROOT / "firmware" / "main.py")],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and "dosis sim" in out.stdout
