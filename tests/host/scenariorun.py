"""The scenario runner as the host tests drive it: the whole firmware on the simulated board
under the real `micropython` binary (firmware/sim/scenario.py), and its event stream parsed.

Shared by test_scenarios.py, test_schedule_change.py and test_refill_after_change.py (pytest's
importlib mode puts no test directory on the path: each adds its own folder first)."""

import os
import subprocess
import sys
from pathlib import Path

from dosis import schedules
from dosiscore import schedule

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"


def write_schedule(path, doc):
    """`doc` validated and written as a device stores it (canonical JSON); returns `path`."""
    path.write_bytes(schedule.canonical(schedule.validate(doc)))
    return path


def example_doc():
    return schedules.load_document(ROOT / "examples" / "schedule.toml")


class Run:
    """A run's output: events (local time, kind, dose id, detail), HW totals, the END line."""

    def __init__(self, out):
        self.out = out
        self.events = []
        self.hw = {}
        self.end = None
        for line in out.splitlines():
            if line.startswith("EV "):
                parts = line.split(" ", 4)
                self.events.append(
                    (parts[1], parts[2], parts[3], parts[4] if len(parts) > 4 else "")
                )
            elif line.startswith("HW "):
                self.hw = {k: int(v) for k, v in (x.split("=") for x in line.split()[1:])}
            elif line.startswith("END"):
                self.end = line

    def kinds(self, dose=None):
        return [e[1] for e in self.events if dose is None or e[2] == dose]

    def find(self, kind, dose=None, day=None):
        return [
            e
            for e in self.events
            if e[1] == kind
            and (dose is None or e[2] == dose)
            and (day is None or e[0].startswith(day))
        ]

    def about(self, dose, day):
        """Every event of `dose` on local day `day`."""
        return [e for e in self.events if e[2] == dose and e[0].startswith(day)]

    def at(self, kind, dose=None, day=None):
        """Local HH:MM of the one event of this kind (asserts there is exactly one)."""
        found = self.find(kind, dose, day)
        assert len(found) == 1, (kind, dose, found)
        return found[0][0][11:16]


def scenario(tmp_path, sched, body, state="state", script=None):
    """Run `body` (script lines after the schedule line) on the state dir `state`; the
    script file is named after `script` (default: the state dir), so runs can share a dir."""
    d = tmp_path / state
    d.mkdir(exist_ok=True)
    path = tmp_path / ((script or state) + ".txt")
    path.write_text(f"schedule {sched}\n{body}\n")
    env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT / 'firmware'}")
    out = subprocess.run(
        [str(MICROPYTHON), "-m", "sim.scenario", str(path), str(d)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stdout + out.stderr, out.stdout[-3000:] + out.stderr
    run = Run(out.stdout)
    assert run.end is not None, out.stdout[-2000:]
    return run
