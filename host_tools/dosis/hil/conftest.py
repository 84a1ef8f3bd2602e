"""The HIL suite's fixtures: the `bench` a step uses to reach a dispenser. The options,
markers, selection and summary are the plugin in runner.py, registered here.

    pytest host_tools/dosis/hil --dosis-sim                   the virtual dispenser
    pytest host_tools/dosis/hil --dosis-port /dev/ttyUSB0     a board (a technician at it)
    pytest host_tools/dosis/hil --dosis-port P --dosis-rig hardware/rig.example.json
    pytest -p dosis.hil.runner --pyargs dosis.hil --dosis-sim   (installed; see runner.py)

A `Bench` is one dispenser as a step sees it: the protocol (`dev`, a `dosis.device.Device`),
hands (press, jam, power cut: the `sim.*` hooks on the virtual dispenser; on a board the rig
if its wiring file has the action, else the technician at the terminal), eyes and ears (light,
tone, the opening: `sim.outputs`, or the rig's senses, or a question to the technician), and
time (`until`: the virtual clock runs fast; a board's clock is waited for).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from dosis import ops
from dosis.device import Device, open_device
from dosis.errors import AuthError, LinkError
from dosis.hil import runner
from dosis.hil.runner import Rig, Where
from dosis.keystore import Keystore
from dosiscore import logrec
from dosiscore.schedule import canonical

TIMEOUT = 10.0  # seconds for a reply from the dispenser


# -- the plugin ----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Register the suite's plugin (runner.py: options, markers, selection, summary) unless
    it came already (`-p dosis.hil.runner`, or an entry point): its own pytest_addoption then
    adds the options (a historic hook reaches a plugin registered late)."""
    if not pluginmanager.is_registered(runner):
        pluginmanager.register(runner, "dosis-hil")


@pytest.fixture(scope="session", autouse=True)
def _dosis_junit_properties(
    pytestconfig: pytest.Config, record_testsuite_property: Callable[[str, object], None]
) -> None:
    st = runner.state(pytestconfig)
    assert st is not None
    record_testsuite_property("dosis_target", "sim" if st.where.sim else f"board {st.port}")
    if st.not_run:
        record_testsuite_property(
            "dosis_not_run", "; ".join(f"{k}: {v}" for k, v in st.not_run.items())
        )


@pytest.fixture
def note(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """`note(text)`: a word for the summary line of this step (when it passes)."""

    def add(text: str) -> None:
        request.node.stash.setdefault(runner.NOTES, []).append(text)
        print(text)

    return add


# -- the technician ------------------------------------------------------------------------


class Technician:
    """The person at the board: instructions and questions at the terminal (with pytest's
    capture suspended, so they are seen and answered)."""

    def __init__(self, config: pytest.Config) -> None:
        self._capman = config.pluginmanager.getplugin("capturemanager")

    @contextlib.contextmanager
    def _terminal(self) -> Iterator[None]:
        if self._capman is None:
            yield
            return
        self._capman.suspend_global_capture(in_=True)  # stdin too, as pytest's pdb does
        try:
            yield
        finally:
            self._capman.resume_global_capture()

    def say(self, text: str) -> None:
        with self._terminal():
            print(f"\n[dosis hil] {text}", flush=True)

    def ask(self, text: str) -> str:
        with self._terminal():
            stdin = sys.stdin
            if stdin is None or not stdin.isatty():
                pytest.fail(
                    f"this step needs a technician at the dispenser ({text}), and there is no "
                    "terminal to ask: run 'dosis hil run' in a terminal, or wire the action "
                    "in a rig file (--rig)",
                    pytrace=False,
                )
            return input(f"\n[dosis hil] {text} ")

    def do(self, instruction: str) -> None:
        self.ask(f"{instruction}, then press Enter.")

    def yes(self, question: str) -> bool:
        while True:
            a = self.ask(f"{question} [y/n]").strip().lower()
            if a in ("y", "yes", "j", "ja"):
                return True
            if a in ("n", "no", "nej"):
                return False


# -- the dispenser as a step sees it --------------------------------------------------------


@dataclass
class Hil:
    where: Where
    port: str | None
    rig: Rig | None
    keystore: Keystore
    technician: Technician
    filled_once: bool = False


@dataclass(frozen=True)
class Rec:
    """A dose-log record (log.read, decoded with dosiscore.logrec)."""

    seq: int
    utc: int
    kind: str
    occ: int
    dose: int | None  # index in the schedule's dose list
    detail: int
    small: int


def _brief(evs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e.get('ev')}({e.get('dose') or ''})" for e in evs[-12:]) or "none"


class Bench:
    """One dispenser for one step (see the module notes)."""

    def __init__(
        self,
        hil: Hil,
        port: str,
        sim: Any = None,
        fw_log: Path | None = None,
        fw_file: IO[bytes] | None = None,
    ) -> None:
        self.hil = hil
        self.port = port
        self.sim = sim  # a dosis.simhost.VirtualDispenser, or None on a board
        self.fw_log = fw_log
        self._fw_file = fw_file
        self._dev: Device | None = None
        self.seen: list[dict[str, Any]] = []  # events since watch()

    @property
    def is_sim(self) -> bool:
        return self.sim is not None

    # -- the link --------------------------------------------------------------------------

    def connect(self) -> Device:
        return open_device(self.port, keystore=self.hil.keystore, timeout=TIMEOUT)

    @property
    def dev(self) -> Device:
        if self._dev is None:
            self._dev = self.connect()
        return self._dev

    def release(self) -> None:
        """Close the port (another program needs it, or the device rebooted)."""
        if self._dev is not None:
            with contextlib.suppress(Exception):
                self._dev.close()
            self._dev = None

    def close(self) -> None:
        self.release()
        if self.sim is not None:
            self.sim.stop()
        if self._fw_file is not None:
            self._fw_file.close()

    def hello(self) -> dict[str, Any]:
        return self.dev.hello()

    def info(self) -> dict[str, Any]:
        return self.dev.call("info")

    def now(self) -> int:
        info = self.info()
        assert info["time_valid"], f"the dispenser has no valid time: {info}"
        return int(info["utc"])

    # -- pairing and provisioning ----------------------------------------------------------

    def pair(self) -> str:
        """Open the pairing window with the service button, then pair."""
        self.press("service")
        deadline = time.monotonic() + 10
        while not self.dev.hello().get("pairing"):
            assert time.monotonic() < deadline, (
                "the pairing window did not open after a press of the service button"
            )
            time.sleep(0.1)
        return self.dev.pair()

    def ensure_paired(self) -> None:
        h = self.dev.hello()
        if h.get("paired") and self.hil.keystore.get(h["device"]) is not None:
            with contextlib.suppress(AuthError):
                self.dev.call("info")
                return
        self.pair()
        if not self.is_sim and not self.info()["time_valid"]:
            ops.sync_time(self.dev)

    def push(self, doc: dict[str, Any]) -> str:
        """Send a schedule (ops.plan_push, ops.push_schedule); the device reboots into it."""
        plan = ops.plan_push(self.dev, doc)
        if plan.same:
            return plan.hash
        dev, self._dev = self._dev, None
        assert dev is not None
        self.seen.clear()  # a reboot ends the subscription
        return ops.push_schedule(dev, plan, self.connect)

    def fill(self) -> int:
        """The carousel is filled (on a board the technician fills it, once a session)."""
        if not self.is_sim and not self.hil.filled_once:
            self.hil.technician.do(
                "Fill the carousel: put something in every compartment (the beam must see "
                "it) and close the lid"
            )
            self.hil.filled_once = True
        return int(self.dev.call("fill")["doses_left"])

    # -- hands -----------------------------------------------------------------------------

    def press(self, button: str, hold_s: float = 0.3) -> None:
        """A press of the 'taken' or the 'service' button."""
        if self.is_sim:
            self.dev.call("sim.press", {"button": button, "hold_s": hold_s})
            return
        rig = self.hil.rig
        if rig is not None and f"press_{button}" in rig.actions:
            rig.act(f"press_{button}", hold_s=hold_s)
            return
        label = {"taken": "the big 'taken' button", "service": "the service button"}[button]
        self.hil.technician.do(f"Press {label} on the dispenser now")

    def jam(self, on: bool) -> None:
        """Block the carousel (or free it)."""
        if self.is_sim:
            self.dev.call("sim.jam", {"on": on})
            return
        assert self.hil.rig is not None, "a jam on a board needs a rig (needs_rig)"
        self.hil.rig.act("jam", on=on)

    def cut_power_during_next_move(self, starts_at: int, timeout: float = 30.0) -> str:
        """Cut the power while the carousel turns for the opening due at `starts_at` (UTC);
        returns when the dispenser answers again: "mid-move", or "after the move" when the cut
        came too late to catch the motor turning.

        The virtual dispenser: its clock runs fast to 7 s before, then at real speed (its RTC
        file is saved every 5 s, so the restart keeps the time); the motor's step count is
        polled and the firmware process is killed (SIGKILL) the moment it changes. The
        supervisor restarts it after 1 s, on the same flash. A board: the rig's power action."""
        if not self.is_sim:
            rig = self.hil.rig
            assert rig is not None, "a power cut on a board needs a rig (needs_rig)"
            self.until(starts_at, "for the carousel to move")
            rig.act("power", off_s=3.0)
            self.release()
            self._wait_back(60.0)
            return "mid-move"
        self.until(starts_at - 7)
        base = self.outputs()
        crashes = self.sim.crashes
        deadline = time.monotonic() + timeout
        while True:
            o = self.outputs()
            if o["steps"] != base["steps"] or o["moves"] != base["moves"]:
                pid = self.sim.pid
                assert pid is not None, "the firmware process is gone"
                os.kill(pid, signal.SIGKILL)  # VirtualDispenser has no kill(): see the report
                landed = "mid-move" if o["moves"] == base["moves"] else "after the move"
                break
            assert time.monotonic() < deadline, (
                f"the carousel did not move within {timeout:g} s of real time"
            )
        deadline = time.monotonic() + 10
        while self.sim.crashes == crashes:
            assert time.monotonic() < deadline, "the supervisor did not see the firmware die"
            time.sleep(0.02)
        self._wait_back(20.0)
        return landed

    def _wait_back(self, timeout: float) -> None:
        self.seen.clear()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.dev.hello(timeout=1.0)
                return
            except LinkError:
                self.release()
                assert time.monotonic() < deadline, (
                    f"the dispenser did not answer within {timeout:g} s of the power cut"
                )
                time.sleep(0.2)

    # -- eyes and ears ---------------------------------------------------------------------

    def outputs(self) -> dict[str, Any]:
        """The virtual dispenser's light, tone and opening (sim.outputs)."""
        return self.dev.call("sim.outputs")

    def _poll(self, key: str, want: Callable[[Any], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if want(self.outputs()[key]):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def check_light(self, on: bool) -> None:
        """The light is on (steady or blinking with the tone) or off."""
        if self.is_sim:
            if on:  # blinking with the tone: 0.5 s on in every 2 s
                assert self._poll("led", bool, 2.5), "the light is not on"
            else:
                assert not self._poll("led", bool, 2.2), "the light is on"
            return
        rig = self.hil.rig
        if rig is not None and "led" in rig.senses:
            seen = rig.sense("led")
        else:
            seen = self.hil.technician.yes("Is the dispenser's light on (steady or blinking)?")
        assert seen == on, f"the technician sees the light {'off' if on else 'on'}"

    def check_tone(self, on: bool) -> None:
        """The buzzer beeps (0.5 s in every 2 s), or is silent."""
        if self.is_sim:
            if on:
                assert self._poll("buzzer_duty", lambda d: d > 0, 2.5), "no tone"
            else:
                assert not self._poll("buzzer_duty", lambda d: d > 0, 2.2), "a tone sounds"
            return
        rig = self.hil.rig
        if rig is not None and "buzzer" in rig.senses:
            heard = rig.sense("buzzer")
        else:
            heard = self.hil.technician.yes("Is the dispenser beeping?")
        assert heard == on, f"the technician {'hears no' if on else 'hears a'} tone"

    def check_opening(self, compartment: int | None) -> None:
        """Compartment `compartment` is at the opening (None: the opening is closed)."""
        if self.is_sim:
            at = self.outputs()["at"]
            assert at == compartment, f"compartment {at} is at the opening, not {compartment}"
            return
        if compartment is None:
            q = "Is the opening closed (no compartment under it)?"
        else:
            q = f"Is compartment {compartment} under the opening?"
        assert self.hil.technician.yes(q), f"the technician answered no to: {q}"

    # -- time and events -------------------------------------------------------------------

    def until(self, utc: int, why: str = "") -> int:
        """Bring the dispenser's clock to `utc`: the virtual clock runs fast (every timer fires
        in order); a board's is waited for. Events keep arriving in `seen`."""
        now = self.now()
        if self.is_sim:
            while now < utc:
                r = self.dev.call("sim.advance", {"s": min(604800, utc - now)}, timeout=120)
                now = int(r["utc"])
            self._pump(0.05)
            return now
        if utc - now > 5:
            m, s = divmod(utc - now, 60)
            self.hil.technician.say(f"waiting {m} min {s:02d} s {why}".rstrip())
        m0 = time.monotonic()
        while True:
            left = utc - (now + (time.monotonic() - m0))
            if left <= 0:
                break
            self._pump(min(left, 1.0))
        return self.now()

    def watch(self) -> None:
        """Subscribe to the dispenser's events (again after a reboot)."""
        self.dev.call("monitor", {"on": True})

    def _pump(self, timeout: float) -> None:
        for ev in self.dev.events(timeout=timeout):
            self.seen.append(ev)

    def wait_event(
        self,
        kind: str,
        *,
        dose: str | None = None,
        occ: int | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """The first event `kind` (for `dose`, `occ`) seen since watch(), waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.seen:
                if (
                    ev.get("ev") == kind
                    and (dose is None or ev.get("dose") == dose)
                    and (occ is None or ev.get("occ") == occ)
                ):
                    return ev
            left = deadline - time.monotonic()
            assert left > 0, f"no '{kind}' event within {timeout:g} s (seen: {_brief(self.seen)})"
            self._pump(min(left, 0.5))

    # -- the dose log ----------------------------------------------------------------------

    def records(self, since: int = 1) -> list[Rec]:
        """The dose log from seq `since`: log.read, each record decoded (and its CRC checked)
        with dosiscore.logrec."""
        last = int(self.info()["log"]["last"])
        out: list[Rec] = []
        frm = since
        while frm <= last:
            r = self.dev.call("log.read", {"from": frm, "n": ops.LOG_READ_MAX})
            blob = base64.b64decode(r.get("recs") or "")
            assert len(blob) % logrec.RECORD_SIZE == 0, "log.read sent a partial record"
            for off in range(0, len(blob), logrec.RECORD_SIZE):
                t = logrec.decode(blob, off)
                assert t is not None, f"a record fails its CRC (log.read from {frm})"
                seq, utc, kind, o, dose, detail, small = t
                out.append(Rec(seq, utc, logrec.NAMES[kind], o, dose, detail, small))
            nxt = int(r["next"])
            if nxt <= frm:
                break
            frm = nxt
        return out


@pytest.fixture(scope="session")
def hil(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Hil:
    st = runner.state(pytestconfig)
    assert st is not None
    if st.where.sim:
        keys = Keystore(tmp_path_factory.mktemp("keys") / "keys.json")
    else:
        keys = Keystore()  # the technician's own ($DOSIS_KEYSTORE or ~/.config/dosis)
    return Hil(st.where, st.port, st.rig, keys, Technician(pytestconfig))


@pytest.fixture
def bench(
    hil: Hil, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Bench]]:
    """`bench(start_utc=None, schedule=None)`: the dispenser for this step.

    On the virtual dispenser each call starts a fresh one (new flash in a temporary
    directory, speed 1) whose clock starts at `start_utc` (like `dosis sim --start`), with
    `schedule` (a normalised schedule) provisioned. On a board it is the board, on its own
    clock; `schedule`, if given, is pushed."""
    made: list[Bench] = []

    def make(start_utc: int | None = None, schedule: dict[str, Any] | None = None) -> Bench:
        if hil.where.sim:
            from dosis.simhost import VirtualDispenser

            n = len(made)
            sched = None
            if schedule is not None:
                sched = tmp_path / f"schedule{n}.json"
                sched.write_bytes(canonical(schedule))
            log = tmp_path / f"firmware{n}.log"
            fh = open(log, "wb")  # noqa: SIM115  (closed by Bench.close)
            vd = VirtualDispenser(
                tmp_path / f"state{n}", speed=1, start_utc=start_utc, schedule=sched, stderr=fh
            )
            try:
                port = vd.start()
            except BaseException:
                fh.close()
                raise
            b = Bench(hil, port, vd, log, fh)
            made.append(b)
            return b
        assert hil.port is not None
        b = Bench(hil, hil.port)
        made.append(b)
        if schedule is not None:
            b.ensure_paired()
            b.push(schedule)
        return b

    yield make
    reports = request.node.stash.get(runner.REPORTS, {})
    failed = any(r.failed for r in reports.values())
    for b in made:
        b.close()
        if failed and b.fw_log is not None and b.fw_log.exists():
            tail = b.fw_log.read_text(errors="replace").splitlines()[-40:]
            print(f"--- the firmware's last messages ({b.fw_log})")
            print("\n".join(tail))


__all__ = ["Bench", "Hil", "Rec", "Technician"]
