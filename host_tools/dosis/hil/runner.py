"""Running the hardware-in-the-loop suite: which steps run where, the rig's wiring file, the
human summary, and `run()` (behind `dosis hil run`), which calls pytest on this package.

Where the suite runs:

- the virtual dispenser (`--dosis-sim`): every step runs; each starts a fresh dispenser and
  stands in for hands with the `sim.*` hooks (a press, a jam, a power cut is a SIGKILL of
  the firmware process);
- a board (`--dosis-port PORT`): steps marked `sim_only` never run (they need the virtual
  clock); steps marked `needs_rig` (a power cut, a jam: nothing a technician can do on cue
  by hand) run only with a rig's wiring file (`--dosis-rig FILE`). Other physical actions
  ask the technician at the terminal, or use the rig when its file wires that action.

Steps that cannot run are deselected, never skipped in silence: the summary lists each one
with the reason and says "N steps not run on this board: need a rig".

This module is also the suite's pytest plugin (its options, markers, the selection and the
summary). The package's conftest registers it when pytest is pointed at the package's
directory (as `run()` does). For `pytest --pyargs dosis.hil --dosis-sim` pytest must know
the options before it finds the package: load the plugin with `-p dosis.hil.runner`, or
install it as a `pytest11` entry point (`dosis-hil = "dosis.hil.runner"`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..errors import DosisError, InputError

__all__ = [
    "HIL_DIR",
    "NEEDS_RIG",
    "RIG_ACTIONS",
    "RIG_SENSES",
    "SIM_ONLY",
    "Rig",
    "RigNotBuilt",
    "StepResult",
    "Where",
    "load_rig",
    "not_run_reason",
    "suite_args",
    "run",
    "select",
    "state",
    "step_results",
    "step_title",
    "summary_lines",
]

HIL_DIR = Path(__file__).resolve().parent
SIM_ONLY = "sim_only"
NEEDS_RIG = "needs_rig"
WHY_RIG = "need a rig"
WHY_SIM = "sim only"

# What a rig can do to the dispenser (actions) and read from it (senses), by name.
RIG_ACTIONS = {
    "press_taken": "press the big 'taken' button",
    "press_service": "press the service button",
    "power": "cut all power (mains and battery) and restore it",
    "mains": "cut the mains adapter only (the battery takes over)",
    "beam": "break the IR beam at the opening",
    "jam": "block the carousel",
}
RIG_SENSES = {
    "led": "the light-stage LED line",
    "buzzer": "the buzzer's PWM line",
}


# -- where, and what runs there ----------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """The target: the virtual dispenser, or a board (with or without a rig)."""

    sim: bool
    rig: bool = False

    @property
    def label(self) -> str:
        if self.sim:
            return "the virtual dispenser"
        return "this board" + (" with its rig" if self.rig else "")


def not_run_reason(markers: Iterable[str], where: Where) -> str | None:
    """Why a step with these markers cannot run at `where` (None: it runs)."""
    names = set(markers)
    if where.sim:
        return None
    if SIM_ONLY in names:
        return WHY_SIM
    if NEEDS_RIG in names and not where.rig:
        return WHY_RIG
    return None


def select(
    steps: Iterable[tuple[str, Iterable[str]]], where: Where
) -> tuple[list[str], dict[str, str]]:
    """(steps that run, {step: why it does not}) for (name, marker names) pairs, in order."""
    run_here: list[str] = []
    not_run: dict[str, str] = {}
    for name, markers in steps:
        why = not_run_reason(markers, where)
        if why is None:
            run_here.append(name)
        else:
            not_run[name] = why
    return run_here, not_run


def step_title(name: str) -> str:
    """ "test_04_dose_due_light_tone_taken" -> "04 dose due light tone taken"."""
    base = name.split("[", 1)[0]
    base = base.removeprefix("test_")
    return base.replace("_", " ")


@dataclass
class StepResult:
    name: str  # the test function's name
    outcome: str  # passed, failed, error, skipped, not run
    detail: str = ""  # the first line of a failure, or why it did not run


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary_lines(results: Sequence[StepResult], where: Where) -> list[str]:
    """One line a step (outcome, title, detail), then the totals and what did not run."""
    lines = []
    for r in results:
        line = f"{r.outcome:<8} {step_title(r.name)}"
        if r.detail:
            line += f"  ({r.detail})"
        lines.append(line)
    count = {k: sum(1 for r in results if r.outcome == k) for k in ("passed", "not run")}
    failed = sum(1 for r in results if r.outcome in ("failed", "error"))
    skipped = sum(1 for r in results if r.outcome == "skipped")
    totals = f"{count['passed']} passed, {failed} failed, {count['not run']} not run"
    if skipped:
        totals += f", {skipped} skipped"
    lines.append(f"{totals} on {where.label}")
    rig = sum(1 for r in results if r.outcome == "not run" and r.detail == WHY_RIG)
    sim = sum(1 for r in results if r.outcome == "not run" and r.detail == WHY_SIM)
    if rig:
        lines.append(
            f"{_plural(rig, 'step')} not run on this board: {WHY_RIG} "
            "(give --rig FILE, see hardware/rig.example.json)"
        )
    if sim:
        lines.append(
            f"{_plural(sim, 'step')} not run on this board: sim only (run them with --sim)"
        )
    return lines


# -- the rig ------------------------------------------------------------------------------------


class RigNotBuilt(DosisError):
    """The rig's wiring file was read, but nothing drives a rig controller yet."""


@dataclass(frozen=True)
class Rig:
    """A test rig as its wiring file describes it (see hardware/rig.example.json).

    Only the file is real so far: `act` and `sense` raise RigNotBuilt, because no driver for
    a rig controller exists yet."""

    path: str
    controller: Mapping[str, Any]
    actions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    senses: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.actions or name in self.senses

    def _not_built(self, what: str) -> RigNotBuilt:
        return RigNotBuilt(
            f"rig support not built: {self.path} wires '{what}', but dosis has no driver for "
            "a rig controller yet; do this step by hand or on the virtual dispenser (--sim)"
        )

    def act(self, name: str, **how: Any) -> None:
        """Do action `name` (press_taken, power, jam...)."""
        if name not in self.actions:
            raise InputError(f"{self.path}: the rig has no '{name}' action")
        raise self._not_built(name)

    def sense(self, name: str) -> bool:
        """Read sense `name` (led, buzzer): whether it is active."""
        if name not in self.senses:
            raise InputError(f"{self.path}: the rig has no '{name}' sense")
        raise self._not_built(name)


def _gpio_or_relay(where: str, entry: Any, problems: list[str]) -> None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a table")
        return
    gpio, relay = entry.get("gpio"), entry.get("relay")
    if gpio is None and relay is None:
        problems.append(f'{where}: needs "gpio" (a pin of the rig controller) or "relay"')
    for key, v in (("gpio", gpio), ("relay", relay)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            problems.append(f"{where}.{key}: must be a whole number, not {v!r}")
    active = entry.get("active", "high")
    if active not in ("high", "low"):
        problems.append(f'{where}.active: must be "high" or "low", not {active!r}')


def load_rig(path: str | os.PathLike[str]) -> Rig:
    """Read and check a rig's wiring file; InputError listing every problem."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{p}: a rig file is a JSON object")
    problems: list[str] = []
    if doc.get("schema") != 1:
        problems.append("schema: must be 1")
    controller = doc.get("controller")
    if not isinstance(controller, dict) or not isinstance(controller.get("kind"), str):
        problems.append('controller: a table with "kind" (e.g. "micropython-gpio")')
        controller = {}
    tables: dict[str, dict[str, Any]] = {}
    for section, known in (("actions", RIG_ACTIONS), ("senses", RIG_SENSES)):
        got = doc.get(section, {})
        if not isinstance(got, dict):
            problems.append(f"{section}: must be a table")
            got = {}
        for name, entry in got.items():
            if name not in known:
                problems.append(f"{section}.{name}: unknown (known: {', '.join(known)})")
                continue
            _gpio_or_relay(f"{section}.{name}", entry, problems)
        tables[section] = {k: v for k, v in got.items() if k in known and isinstance(v, dict)}
    for key in doc:
        if key not in ("schema", "description", "controller", "actions", "senses", "notes"):
            problems.append(f"{key}: unknown key")
    if problems:
        raise InputError(f"{p}: " + "; ".join(problems))
    return Rig(str(p), controller, tables["actions"], tables["senses"])


# -- the pytest plugin ---------------------------------------------------------------------------


@dataclass
class State:
    """What the plugin knows in a pytest session (`state(config)`)."""

    where: Where
    port: str | None
    rig: Rig | None
    order: list[str] = field(default_factory=list)  # the steps selected by -k, in order
    not_run: dict[str, str] = field(default_factory=dict)  # step -> why it cannot run here
    results: dict[str, StepResult] = field(default_factory=dict)


_STATE = pytest.StashKey[State]()
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()  # item.stash: phase -> report
NOTES = pytest.StashKey[list[str]]()  # item.stash: what a passed step says in the summary


def state(config: pytest.Config) -> State | None:
    """The session's target and results; None when no --dosis-sim or --dosis-port was given."""
    return config.stash.get(_STATE, None)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("dosis", "Dosis hardware-in-the-loop suite (dosis hil run)")
    g.addoption(
        "--dosis-sim",
        action="store_true",
        default=False,
        help="Run on the virtual dispenser: a fresh one for each step.",
    )
    g.addoption(
        "--dosis-port",
        metavar="PORT",
        default=None,
        help="Run on the board on PORT (a test board: its schedule, key and fill are replaced).",
    )
    g.addoption(
        "--dosis-rig",
        metavar="FILE",
        default=None,
        help="The rig's wiring file (see hardware/rig.example.json): steps marked needs_rig run.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{SIM_ONLY}: runs only on the virtual dispenser (needs its virtual clock)"
    )
    config.addinivalue_line(
        "markers",
        f"{NEEDS_RIG}: on a board, runs only with a rig (--dosis-rig): a power cut, a jam",
    )
    port = config.getoption("dosis_port", None)
    sim = bool(config.getoption("dosis_sim", False))
    rig_file = config.getoption("dosis_rig", None)
    if port and sim:
        raise pytest.UsageError("give --dosis-sim or --dosis-port, not both")
    if not port and not sim:
        if rig_file:
            raise pytest.UsageError("--dosis-rig is for a board: give --dosis-port too")
        return  # no target: the suite's steps refuse to run (pytest_collection_modifyitems)
    rig = None
    if rig_file:
        if sim:
            raise pytest.UsageError("--dosis-rig is for a board: the virtual dispenser needs none")
        try:
            rig = load_rig(rig_file)
        except InputError as e:
            raise pytest.UsageError(str(e)) from None
    config.stash[_STATE] = State(Where(sim, rig is not None), port, rig)


def _ours(item: pytest.Item) -> bool:
    try:
        return Path(item.path).resolve().is_relative_to(HIL_DIR)
    except (OSError, ValueError):
        return False


@pytest.hookimpl(trylast=True)  # after -k and -m have chosen
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if _ours(item)]
    if not ours:
        return
    st = state(config)
    if st is None:
        raise pytest.UsageError(
            "the Dosis HIL suite runs on --dosis-sim (the virtual dispenser) or on "
            "--dosis-port PORT (a board): give one of them"
        )
    drop = []
    for item in ours:
        st.order.append(item.name)
        why = not_run_reason((m.name for m in item.iter_markers()), st.where)
        if why is not None:
            st.not_run[item.name] = why
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item not in drop]


def pytest_report_header(config: pytest.Config) -> list[str]:
    st = state(config)
    if st is None:
        return []
    if st.where.sim:
        return ["dosis hil: the virtual dispenser (a fresh one for each step, speed 1)"]
    rig = f", rig {st.rig.path}" if st.rig else ", no rig: steps that need one are not run"
    return [f"dosis hil: the board on {st.port}{rig}"]


def _first_line(rep: pytest.TestReport) -> str:
    crash = getattr(rep.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None)
    if text is None and isinstance(rep.longrepr, tuple) and len(rep.longrepr) == 3:
        text = str(rep.longrepr[2])  # a skip: (path, line, reason)
    if text is None:
        text = str(rep.longrepr or "")
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.removeprefix("Failed: ").removeprefix("Skipped: ")
    return line if len(line) <= 140 else line[:137] + "..."


def _record(st: State, name: str, rep: pytest.TestReport, notes: list[str]) -> None:
    if rep.when == "call":
        outcome = rep.outcome
    elif rep.failed:
        outcome = "error"  # in the set-up or the tear-down
    elif rep.skipped:
        outcome = "skipped"
    else:
        return
    have = st.results.get(name)
    if have is not None and have.outcome in ("failed", "error"):
        return  # the first failure is the one to show
    detail = _first_line(rep) if outcome != "passed" else "; ".join(notes)
    st.results[name] = StepResult(name, outcome, detail)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    item.stash.setdefault(REPORTS, {})[rep.when] = rep
    st = state(item.config)
    if st is not None and _ours(item):
        _record(st, item.name, rep, item.stash.get(NOTES, []))
    return rep


def step_results(config: pytest.Config) -> list[StepResult]:
    """Every step selected by -k, in order: its outcome, or "not run" and why."""
    st = state(config)
    if st is None:
        return []
    out = []
    for name in st.order:
        if name in st.not_run:
            out.append(StepResult(name, "not run", st.not_run[name]))
        elif name in st.results:
            out.append(st.results[name])
        elif config.getoption("collectonly", False):
            out.append(StepResult(name, "to run"))
        else:
            out.append(StepResult(name, "not run", "the run stopped before it"))
    return out


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    st = state(config)
    if st is None or not st.order:
        return
    terminalreporter.write_sep("=", "Dosis HIL summary")
    for line in summary_lines(step_results(config), st.where):
        terminalreporter.write_line(line)


# -- running it -----------------------------------------------------------------------------------


def suite_args(
    *,
    port: str | None = None,
    sim: bool = False,
    junit: str | os.PathLike[str] | None = None,
    rig: str | os.PathLike[str] | None = None,
    keyword: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The pytest command line for this package's suite."""
    args = [str(HIL_DIR), "-p", "no:cacheprovider", "-o", "junit_suite_name=dosis-hil"]
    if sim:
        args.append("--dosis-sim")
    if port is not None:
        args += ["--dosis-port", port]
    if rig is not None:
        args += ["--dosis-rig", os.path.abspath(rig)]
    if junit is not None:
        args.append(f"--junitxml={os.path.abspath(junit)}")
    if keyword:
        args += ["-k", keyword]
    args += list(extra)
    return args


def run(**kw: Any) -> int:
    """Run the suite (the arguments of `suite_args`); pytest's exit code."""
    import pytest

    return int(pytest.main(suite_args(**kw)))
