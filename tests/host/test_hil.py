"""`dosis hil run`: the hardware-in-the-loop suite shipped in `dosis.hil`.

The whole suite runs once on the virtual dispenser (all steps but the deploy, which has its
own tests), through the command, in a subprocess with its own HOME, run directory and
keystore; its JUnit file and summary are checked. Which steps run on a board is checked on
the selection logic itself, on the suite's real markers, and by collecting the suite for a
board (nothing opens a port while collecting).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from dosis.cli_hil import hil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
from dosis.errors import InputError
from dosis.hil import runner
from dosis.hil.runner import (
    NEEDS_RIG,
    SIM_ONLY,
    RigNotBuilt,
    StepResult,
    Where,
    load_rig,
    select,
    summary_lines,
)
from dosisenv import clean_env  # noqa: E402

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals are POSIX only")

ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "hardware" / "rig.example.json"
# The suite's steps and their markers, read from its source (importing it here would apply
# its markers outside the suite's plugin, where --strict-markers does not know them).
_TREE = ast.parse((runner.HIL_DIR / "test_steps.py").read_text(encoding="utf-8"))
MARKERS = {
    f.name: {
        d.attr
        for d in f.decorator_list
        if isinstance(d, ast.Attribute) and ast.unparse(d.value) == "pytest.mark"
    }
    for f in _TREE.body
    if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")
}
STEPS = list(MARKERS)
TITLES = {
    "test_01_boot_and_hello": "01 boot and hello",
    "test_02_pairing": "02 pairing",
    "test_03_schedule_push_and_read_back": "03 schedule push and read back",
    "test_04_dose_due_light_tone_press_taken": "04 dose due light tone press taken",
    "test_05_missed_dose_locked_and_care_team_told": "05 missed dose locked and care team told",
    "test_06_power_cut_during_a_carousel_move": "06 power cut during a carousel move",
    "test_07_jam": "07 jam",
    "test_08_log_pull_and_acknowledge": "08 log pull and acknowledge",
    "test_09_deploy_and_rollback": "09 deploy and rollback",
    "test_10_dst_day": "10 dst day",
}


def _markers(name: str) -> set[str]:
    return MARKERS[name]


def _pytest(root: Path, *args: str, pre: str = "") -> subprocess.CompletedProcess[str]:
    """pytest on the suite's directory, in a subprocess (`pre`: Python run before it)."""
    code = f"{pre}\nimport sys, pytest\nsys.exit(pytest.main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, str(runner.HIL_DIR), "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        env=clean_env(root),
        cwd=root,
        timeout=120,
    )


# -- the suite on the virtual dispenser, through the command -----------------------------------


def test_hil_run_sim_writes_junit_and_a_summary(tmp_path: Path) -> None:
    junit = tmp_path / "hil.xml"
    p = subprocess.run(
        [sys.executable, "-m", "dosis.cli_hil", "run", "--sim", "--junit", str(junit)]
        + ["-k", "not deploy"],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        cwd=tmp_path,
        timeout=150,
    )
    out = p.stdout
    assert p.returncode == 0, out[-6000:] + p.stderr[-3000:]
    assert f"JUnit report written to {junit}" in p.stderr

    want = [s for s in STEPS if "deploy" not in s]
    assert len(want) == 9
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("name") == "dosis-hil"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == want
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("9", "0", "0")
    assert suite.get("skipped") == "0"
    assert all(c.find("failure") is None and c.find("error") is None for c in cases)
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props.get("dosis_target") == "sim"

    summary = out[out.index("Dosis HIL summary") :].splitlines()[1:]
    for name in want:
        line = next((s for s in summary if s[9:].startswith(TITLES[name])), None)
        assert line is not None and line.startswith("passed   "), (name, summary)
    cut = next(s for s in summary if TITLES["test_06_power_cut_during_a_carousel_move"] in s)
    assert re.search(r"\(the cut landed (mid-move|after the move)\)$", cut), cut
    assert "9 passed, 0 failed, 0 not run on the virtual dispenser" in summary
    assert not any("deploy" in s for s in summary), "-k chose: not listed as not run"


# -- what runs where ---------------------------------------------------------------------------


def test_the_suite_steps_and_their_markers() -> None:
    assert STEPS == list(TITLES), "one test per step, in order"
    assert [runner.step_title(s) for s in STEPS] == list(TITLES.values())
    rig = [s for s in STEPS if NEEDS_RIG in _markers(s)]
    assert rig == ["test_06_power_cut_during_a_carousel_move", "test_07_jam"]
    assert [s for s in STEPS if SIM_ONLY in _markers(s)] == ["test_10_dst_day"]


def test_a_board_without_a_rig_does_not_run_the_rig_steps() -> None:
    steps = [(s, _markers(s)) for s in STEPS]
    run, not_run = select(steps, Where(sim=False, rig=False))
    assert not_run == {
        "test_06_power_cut_during_a_carousel_move": "need a rig",
        "test_07_jam": "need a rig",
        "test_10_dst_day": "sim only",
    }
    assert run == [s for s in STEPS if s not in not_run]
    # with a rig only the sim-only step stays out; the virtual dispenser runs them all
    assert select(steps, Where(sim=False, rig=True))[1] == {"test_10_dst_day": "sim only"}
    assert select(steps, Where(sim=True)) == (STEPS, {})

    results = [StepResult(s, "passed") for s in run]
    results += [StepResult(s, "not run", why) for s, why in not_run.items()]
    lines = summary_lines(results, Where(sim=False, rig=False))
    assert "not run  06 power cut during a carousel move  (need a rig)" in lines
    assert "not run  07 jam  (need a rig)" in lines
    assert "not run  10 dst day  (sim only)" in lines
    assert "7 passed, 0 failed, 3 not run on this board" in lines
    assert any(s.startswith("2 steps not run on this board: need a rig") for s in lines)
    assert any(s.startswith("1 step not run on this board: sim only") for s in lines)
    one = summary_lines([StepResult("test_07_jam", "not run", "need a rig")], Where(False))
    assert any(s.startswith("1 step not run on this board: need a rig") for s in one)


def test_a_board_suite_deselects_the_rig_steps_and_says_so(tmp_path: Path) -> None:
    """Collected for a board (no port is opened to collect): the rig steps are deselected,
    the summary names them and counts them."""
    p = _pytest(tmp_path, "--dosis-port", "/dev/nonexistent-dosis-board", "--collect-only")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "7/10 tests collected (3 deselected)" in p.stdout
    assert "dosis hil: the board on /dev/nonexistent-dosis-board, no rig" in p.stdout
    assert "not run  06 power cut during a carousel move  (need a rig)" in p.stdout
    assert "not run  07 jam  (need a rig)" in p.stdout
    assert "not run  10 dst day  (sim only)" in p.stdout
    assert "2 steps not run on this board: need a rig" in p.stdout

    p = _pytest(tmp_path, "--dosis-port", "/dev/x", "--dosis-rig", str(RIG), "--collect-only")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "9/10 tests collected (1 deselected)" in p.stdout
    assert "need a rig" not in p.stdout


def test_the_suite_needs_a_target(tmp_path: Path) -> None:
    p = _pytest(tmp_path, "--collect-only")
    assert p.returncode == 4, p.stdout + p.stderr
    assert "--dosis-sim" in p.stderr and "--dosis-port" in p.stderr
    p = _pytest(tmp_path, "--dosis-sim", "--dosis-rig", str(RIG), "--collect-only")
    assert p.returncode == 4 and "needs none" in p.stderr


def test_deploy_missing_is_a_failure_not_a_skip(tmp_path: Path) -> None:
    p = _pytest(
        tmp_path,
        "--dosis-sim",
        "-k",
        "deploy",
        pre="import sys; sys.modules['dosis.deploy'] = None",
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "failed   09 deploy and rollback  (deploy not built: " in p.stdout
    assert "0 passed, 1 failed, 0 not run" in p.stdout


# -- the rig's wiring file ---------------------------------------------------------------------


def test_the_example_rig_file_loads_and_the_driver_is_a_stub(tmp_path: Path) -> None:
    rig = load_rig(RIG)
    assert set(rig.actions) == set(runner.RIG_ACTIONS)
    assert set(rig.senses) == set(runner.RIG_SENSES)
    with pytest.raises(RigNotBuilt, match="rig support not built"):
        rig.act("power", off_s=3)
    with pytest.raises(RigNotBuilt, match="rig support not built"):
        rig.sense("led")
    with pytest.raises(InputError, match="no 'teleport' action"):
        rig.act("teleport")

    bad = json.loads(RIG.read_text(encoding="utf-8"))
    bad["schema"] = 2
    bad["actions"]["press_taken"]["gpio"] = "sixteen"
    bad["actions"]["shake"] = {"gpio": 4}
    del bad["actions"]["jam"]["gpio"]
    path = tmp_path / "rig.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(InputError) as e:
        load_rig(path)
    msg = str(e.value)
    for part in ("schema", "actions.press_taken.gpio", "actions.shake: unknown", "actions.jam"):
        assert part in msg, msg


# -- the command's own checks ------------------------------------------------------------------


def test_hil_run_needs_one_target() -> None:
    r = CliRunner().invoke(hil, ["run"])
    assert r.exit_code == 2 and "give --port PORT (a board) or --sim" in r.output
    r = CliRunner().invoke(hil, ["run", "--sim", "--port", "/dev/ttyUSB0"])
    assert r.exit_code == 2
    r = CliRunner().invoke(hil, ["run", "--sim", "--rig", str(RIG)])
    assert r.exit_code == 2 and "needs none" in r.output
    r = CliRunner().invoke(hil, ["run", "--port", "/dev/x", "--rig", "/nonexistent/rig.json"])
    assert r.exit_code == 1 and "cannot be read" in r.output
