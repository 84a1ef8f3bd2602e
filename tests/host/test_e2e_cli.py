"""Every `dosis` device command end to end, as a nurse runs it: the installed `dosis` executable
in a subprocess, talking over a real pseudo-terminal to the virtual dispenser (the real firmware
on the MicroPython unix port, `dosis.simhost.VirtualDispenser`).

One firmware process serves the whole module (a second one only where a fresh device is
needed), so the tests run in file order and build on each other: discovery, pairing, info, the
clock, schedules, the loading map, settings, the live monitor, the screen, the dose log, then
the errors. Physical actions (a press of a button) go through the `sim.*` hooks with
`open_device` + `Device.call`, never through a nurse command; what the device holds afterwards
is read back through the same API.

Every subprocess gets its own keystore, run directory, XDG_RUNTIME_DIR and HOME under a
temporary directory, so the user's real keys and running dispensers are never touched.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import queue
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dosis import ops, ports
from dosis.device import Device, open_device
from dosis.keystore import Keystore
from dosis.simhost import VirtualDispenser

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
from dosisenv import clean_env  # noqa: E402

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals are POSIX only")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "schedule.toml"
DOSIS = Path(sys.executable).parent / "dosis"
DAY = 86400
START_BEHIND_S = 3 * DAY  # the virtual clock starts this far behind the host's
SCREEN_CHARS = set(" ▀▄█")


# -- the world: one virtual dispenser for the module ---------------------------------------------


@dataclass
class World:
    root: Path
    port: str
    keys: Path
    run_dir: Path
    sim: VirtualDispenser
    device_id: str
    firmware_log: Path
    env: dict[str, str]
    # what earlier stages learned, for the later ones
    state: dict[str, Any] = field(default_factory=dict)


def usb_boards() -> bool:
    """Whether a real ESP32 board is plugged in (auto-detection then sees it too)."""
    return any(p.kind == "esp32" for p in ports.find_ports())


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("e2e")
    for d in ("home", "xdg"):
        (root / d).mkdir(mode=0o700)
    with pytest.MonkeyPatch.context() as mp:
        # The dispenser registers (ports.run_dir) where the subprocesses look for it.
        mp.setenv("DOSIS_RUN_DIR", str(root / "run"))
        mp.setenv("XDG_RUNTIME_DIR", str(root / "xdg"))
        mp.setenv("DOSIS_KEYSTORE", str(root / "keys.json"))
        mp.delenv("DOSIS_PORT", raising=False)
        log_path = root / "firmware.log"
        with open(log_path, "wb") as fw_log:
            sim = VirtualDispenser(
                root / "state",
                speed=1,
                start_utc=int(time.time()) - START_BEHIND_S,
                stderr=fw_log,
            )
            port = sim.start()
            try:
                with open_device(port, keystore=Keystore(root / "keys.json"), timeout=10) as dev:
                    device_id = dev.hello()["device"]
                yield World(
                    root=root,
                    port=port,
                    keys=root / "keys.json",
                    run_dir=root / "run",
                    sim=sim,
                    device_id=device_id,
                    firmware_log=log_path,
                    env=clean_env(root, DOSIS_PORT=port),
                )
            finally:
                sim.stop()


# -- helpers -------------------------------------------------------------------------------------


@dataclass
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str
    elapsed: float

    def __str__(self) -> str:
        return (
            f"dosis {' '.join(self.args)} -> exit {self.code} in {self.elapsed:.1f} s\n"
            f"--- stdout\n{self.out}--- stderr\n{self.err}"
        )


def dosis(
    w: World,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Run:
    """Run the real `dosis` executable, as a nurse does (from the repository root)."""
    t0 = time.monotonic()
    p = subprocess.run(
        [str(DOSIS), *args],
        input=None if input is None else input.encode(),
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env=w.env if env is None else env,
        cwd=ROOT,
        timeout=timeout,
    )
    return Run(
        args,
        p.returncode,
        p.stdout.decode("utf-8"),
        p.stderr.decode("utf-8"),
        time.monotonic() - t0,
    )


def ok(r: Run) -> Run:
    assert r.code == 0, str(r)
    assert "Traceback" not in r.err, str(r)
    return r


def one_line_error(r: Run, code: int, *needles: str) -> str:
    """The failure is exactly one line on stderr, with the exit code and no traceback."""
    assert r.code == code, str(r)
    assert "Traceback" not in r.err + r.out, str(r)
    lines = r.err.splitlines()
    assert len(lines) == 1, str(r)
    for n in needles:
        assert n in lines[0], str(r)
    return lines[0]


@contextlib.contextmanager
def device(w: World, port: str | None = None) -> Iterator[Device]:
    """The API's own connection (closed at once: the port is exclusive)."""
    dev = open_device(port or w.port, keystore=Keystore(w.keys), timeout=10)
    try:
        yield dev
    finally:
        dev.close()


def api_info(w: World) -> dict[str, Any]:
    with device(w) as dev:
        return dev.call("info")


def api_hash(w: World) -> str | None:
    with device(w) as dev:
        return dev.call("schedule.get")["hash"]


def compiled_hash(w: World, file: Path) -> str:
    """The schedule's id as `dosis schedule compile` computes it: SHA-256 of the canonical
    JSON it prints (and whose first 12 digits it reports with -o)."""
    r = ok(dosis(w, "schedule", "compile", str(file)))
    data = r.out.encode("utf-8")
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    h = hashlib.sha256(data[:-1]).hexdigest()
    out = w.root / f"{file.stem}.compiled.json"
    r2 = ok(dosis(w, "schedule", "compile", str(file), "-o", str(out)))
    assert r2.out == ""
    assert r2.err.strip() == f"{out}: hash {h[:12]}"
    assert out.read_bytes() == data[:-1]
    return h


def inject(port: str, rid: int, cmd: str, args: dict[str, Any]) -> None:
    """A sim.* hook written straight onto the port while another program holds it (dosis
    monitor locks the port, so no second Device can open it). Its reply goes to that program,
    which drops it: a reply to an id it never sent."""
    line = json.dumps({"id": rid, "cmd": cmd, "args": args}, separators=(",", ":")).encode()
    fd = os.open(port, os.O_WRONLY | os.O_NOCTTY)
    try:
        os.write(fd, line + b"\n")
    finally:
        os.close(fd)


def dispensed_after(doc: dict[str, Any], fill_utc: int, n: int) -> list[tuple[int, str]]:
    """An independent oracle for the loading map (zoneinfo, not dosiscore): the first `n`
    dispensed dose instants at or after `fill_utc`, for a schedule of daily doses."""
    zone = ZoneInfo(doc["timezone"])
    doses = [d for d in doc["dose"] if not d["reminder_only"]]
    assert all(d["days"] == "daily" for d in doses), "the oracle knows daily doses only"
    first = dt.datetime.fromtimestamp(fill_utc, zone).date()
    start = dt.date.fromisoformat(doc["start"]) if doc.get("start") else first
    day = max(first, start)
    out: list[tuple[int, str]] = []
    while len(out) < n:
        today = []
        for d in doses:
            hh, mm = map(int, d["time"].split(":"))
            u = int(dt.datetime(day.year, day.month, day.day, hh, mm, tzinfo=zone).timestamp())
            if u >= fill_utc:
                today.append((u, d["id"]))
        out += sorted(today)
        day += dt.timedelta(days=1)
    return out[:n]


def iso_utc(u: int) -> str:
    return dt.datetime.fromtimestamp(u, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- discovery ---------------------------------------------------------------------------------


def test_01_devices_lists_the_virtual_dispenser(w: World) -> None:
    (entry,) = w.run_dir.glob("sim-*.json")  # registered in the test's own run directory
    assert json.loads(entry.read_text())["port"] == w.port
    r = ok(dosis(w, "devices"))
    lines = [line for line in r.out.splitlines() if "  sim  " in line]
    assert len(lines) == 1, str(r)
    port, kind, desc = lines[0].split(None, 2)
    assert (port, kind) == (w.port, "sim")
    assert f"virtual dispenser (pid {os.getpid()}, state {w.sim.state_dir})" == desc

    r = ok(dosis(w, "devices", "--json"))
    assert [p for p in json.loads(r.out) if p["kind"] == "sim"] == [
        {
            "port": w.port,
            "kind": "sim",
            "description": desc,
            "sim_pid": os.getpid(),
            "state": str(w.sim.state_dir),
        }
    ]


def test_02_auto_detect_and_none_registered(w: World) -> None:
    if usb_boards():
        pytest.skip("an ESP32 board is plugged in: auto-detection would see it")
    # No DOSIS_PORT: the one registered dispenser is found (it answers, so the error is about
    # the missing key of *this* device, exit 4, not about the link).
    env = dict(w.env)
    del env["DOSIS_PORT"]
    r = dosis(w, "info", env=env)
    one_line_error(r, 4, f"no key for device {w.device_id}", "dosis pair")

    # None registered (an empty run directory): one line, exit 3.
    empty = clean_env(w.root, DOSIS_RUN_DIR=str(w.root / "empty-run"))
    r = dosis(w, "info", env=empty)
    one_line_error(r, 3, "no dispenser found", "dosis sim", "--port")
    r = ok(dosis(w, "devices", env=empty))
    assert r.out == ""
    assert r.err.splitlines() == [
        "no dispensers found: plug one in, or start one with 'dosis sim'"
    ]
    r = ok(dosis(w, "devices", "--json", env=empty))
    assert json.loads(r.out) == []


# -- pairing -----------------------------------------------------------------------------------


def test_03_info_before_pairing_says_to_pair(w: World) -> None:
    r = dosis(w, "info")
    one_line_error(r, 4, "pair")
    assert r.out == ""


def test_04_pair_without_the_button_is_refused(w: World) -> None:
    r = dosis(w, "pair")
    line = one_line_error(r, 1, "press its service button")
    assert line.startswith("error: ")
    assert r.out == ""
    assert not w.keys.exists() or w.device_id not in Keystore(w.keys).device_ids()
    with device(w) as dev:
        assert dev.hello()["paired"] is False


def test_05_pair_after_the_service_button(w: World) -> None:
    with device(w) as dev:
        dev.call("sim.press", {"button": "service"})  # the nurse's finger
        deadline = time.monotonic() + 10
        while not dev.hello()["pairing"]:
            assert time.monotonic() < deadline, "the pairing window did not open"
            time.sleep(0.1)
    r = ok(dosis(w, "pair"))
    assert r.out == f"{w.device_id}\n"
    assert r.err == f"paired with dispenser {w.device_id}; its key is in the keystore\n"
    assert stat.S_IMODE(os.stat(w.keys).st_mode) == 0o600
    key = json.loads(w.keys.read_text())[w.device_id]["key"]
    assert len(key) == 64
    for text in (r.out, r.err):
        assert key not in text.lower()
        assert base64.b64encode(bytes.fromhex(key)).decode() not in text
    with device(w) as dev:
        hello = dev.hello()
        assert (hello["paired"], hello["pairing"]) == (True, False)
        assert dev.call("info")["device"] == w.device_id  # the key works through the API


# -- info and the clock ------------------------------------------------------------------------


def test_06_info_text_json_and_auto_detect(w: World) -> None:
    r = ok(dosis(w, "info", "--json"))
    info = json.loads(r.out)
    assert info["device"] == w.device_id
    assert info["board"] == "sim"
    assert info["proto"] == 1 and info["paired"] is True
    assert info["schedule"] is None  # a new device
    assert info["mode"] is None and info["next"] is None
    assert info["time_valid"] is True
    assert isinstance(info["time_source"], str) and info["time_source"]
    # its clock started START_BEHIND_S behind ours and has run since
    assert abs(info["utc"] - (time.time() - START_BEHIND_S)) < 30
    assert info["local"] is None  # no schedule: no time zone
    assert set(info["log"]) == {"first", "last", "acked"}
    assert info["log"]["acked"] == 0

    r = ok(dosis(w, "info"))
    rows = dict(line.split(None, 1) for line in r.out.splitlines() if "  " in line)
    assert rows["device"].strip() == w.device_id
    assert rows["schedule"].strip() == "-"
    assert "utc" in rows and rows["utc"].strip().endswith("Z")

    if not usb_boards():  # auto-detected, now that the key is there
        env = dict(w.env)
        del env["DOSIS_PORT"]
        r = ok(dosis(w, "info", "--json", env=env))
        assert json.loads(r.out)["device"] == w.device_id


def test_07_time_sync(w: World) -> None:
    before = api_info(w)["utc"]
    r = ok(dosis(w, "time", "sync"))
    assert r.out.startswith("clock set to ") and "; step +" in r.out, str(r)
    step = int(r.out.rsplit("step ", 1)[1].split()[0])
    assert abs(step - START_BEHIND_S) < 30
    info = api_info(w)
    assert info["utc"] > before
    assert abs(info["utc"] - time.time()) <= 3
    assert info["time_valid"] is True

    r = ok(dosis(w, "time", "sync", "--json"))
    got = json.loads(r.out)
    assert abs(got["utc"] - time.time()) <= 3
    assert abs(got["step"]) <= 3


# -- schedules ---------------------------------------------------------------------------------


def test_08_push_answered_no_changes_nothing(w: World) -> None:
    reboots = w.sim.reboots
    r = dosis(w, "schedule", "push", str(EXAMPLE), input="n\n")
    assert r.code == 1, str(r)
    assert "Traceback" not in r.err
    assert "+ dose morgen 08:00 daily" in r.out  # the diff was shown
    assert "Send it?" in r.err
    assert r.err.splitlines()[-1].endswith("aborted")
    assert api_hash(w) is None
    assert w.sim.reboots == reboots


def test_09_push_with_yes_reboots_and_verifies(w: World) -> None:
    want = compiled_hash(w, EXAMPLE)
    reboots = w.sim.reboots
    r = ok(dosis(w, "schedule", "push", str(EXAMPLE), "--yes"))
    assert "the device has no schedule yet" in r.out
    assert "+ dose nat 22:00 daily: ½ × Zopiclon 7,5 mg" in r.out
    assert f"now runs schedule {want[:12]} (verified after its restart)" in r.err
    assert w.sim.reboots == reboots + 1
    assert api_hash(w) == want
    w.state["hash"] = want

    r = ok(dosis(w, "schedule", "pull", "--json"))
    pulled = json.loads(r.out)
    assert pulled["hash"] == want
    assert f"schedule {want[:12]}: " in r.err
    r2 = ok(dosis(w, "schedule", "pull"))
    assert hashlib.sha256(r2.out.rstrip("\n").encode()).hexdigest() == want
    assert ok(dosis(w, "schedule", "compile", str(EXAMPLE))).out == r2.out
    w.state["doc"] = pulled["doc"]


def test_10_push_the_same_again_sends_nothing(w: World) -> None:
    reboots = w.sim.reboots
    r = ok(dosis(w, "schedule", "push", str(EXAMPLE), "--yes"))
    assert r.out == ""
    assert "already has this schedule" in r.err and "nothing sent" in r.err
    assert w.sim.reboots == reboots
    assert api_hash(w) == w.state["hash"]


def test_11_push_a_moved_dose_shows_it(w: World) -> None:
    moved = w.root / "moved.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    assert text.count('time = "12:00"') == 1
    moved.write_text(text.replace('time = "12:00"', 'time = "13:00"'), encoding="utf-8")
    want = compiled_hash(w, moved)
    reboots = w.sim.reboots
    r = ok(dosis(w, "schedule", "push", str(moved), "--yes"))
    assert r.out.splitlines() == ["~ dose middag moved: 12:00 daily → 13:00 daily"], str(r)
    assert f"(schedule {w.state['hash'][:12]} → {want[:12]})" in r.err
    assert w.sim.reboots == reboots + 1
    r = ok(dosis(w, "schedule", "pull", "--json"))
    assert json.loads(r.out)["hash"] == want
    assert api_hash(w) == want
    w.state["hash"] = want
    w.state["doc"] = json.loads(r.out)["doc"]


def test_12_push_an_invalid_schedule_changes_nothing(w: World) -> None:
    bad = w.root / "bad.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    bad.write_text(text.replace('time = "22:00"', 'time = "25:00"'), encoding="utf-8")
    reboots = w.sim.reboots
    r = dosis(w, "schedule", "push", str(bad), "--yes")
    assert r.code == 1, str(r)
    assert "Traceback" not in r.err and r.out == ""
    lines = r.err.splitlines()
    assert lines[-1] == f"error: {bad}: 1 problem; nothing was changed"
    assert lines[:-1] == [f'{bad}: dose[3].time: "25:00" is not a time of day (HH:MM)'], str(r)
    assert api_hash(w) == w.state["hash"]
    assert w.sim.reboots == reboots


def test_13_loading_map_from_the_device(w: World) -> None:
    doc = w.state["doc"]
    t0 = api_info(w)["utc"]
    r = ok(dosis(w, "schedule", "loading-map", "--json"))
    t1 = api_info(w)["utc"]
    m = json.loads(r.out)
    comps = m["compartments"]
    assert len(comps) == 28 == doc["compartments"]
    assert [c["compartment"] for c in comps] == list(range(1, 29))
    assert m["hash"] == w.state["hash"]
    got = [(c["utc"], c["dose"]) for c in comps]
    # the fill is "now" on the device's clock: somewhere between t0 and t1
    expect = [[(iso_utc(u), i) for u, i in dispensed_after(doc, t, 28)] for t in range(t0, t1 + 1)]
    assert got in expect, (got[:3], [e[:3] for e in expect])
    first = comps[0]
    assert first["dose"] != "ojendraaber"  # reminder-only doses take no compartment
    assert m["fill_by"] == first["local"]

    r = ok(dosis(w, "schedule", "loading-map"))
    lines = r.out.splitlines()
    assert lines[0].startswith(f"Loading map {first['date']} to {comps[-1]['date']} · ")
    table = [line for line in lines if line[:3].strip().isdigit()]
    assert len(table) == 28
    no, date, _day, hhmm, dose = table[0].split()[:5]
    assert (no, date, hhmm, dose) == ("1", first["date"], first["time"], first["dose"])


# -- settings ----------------------------------------------------------------------------------


def _settings_text(r: Run) -> dict[str, str]:
    return dict(line.split() for line in r.out.splitlines())


def api_settings(w: World) -> dict[str, Any]:
    with device(w) as dev:
        return dev.call("settings")


def test_14_settings_read_and_change(w: World) -> None:
    r = ok(dosis(w, "settings"))
    assert r.err == ""
    assert _settings_text(r) == {
        "language": "da",  # the schedule's language
        "volume": str(api_settings(w)["volume"]),
        "tone": "normal",
        "mode": "normal",
    }

    r = ok(dosis(w, "settings", "--volume", "2", "--tone", "low", "--language", "en"))
    assert r.err == "settings changed\n"
    want = {"language": "en", "volume": 2, "tone": "low", "mode": "normal"}
    assert _settings_text(r) == {k: str(v) for k, v in want.items()}
    assert json.loads(ok(dosis(w, "settings", "--json")).out) == want
    assert api_settings(w) == want


def test_15_settings_mode_paused_and_back(w: World) -> None:
    r = ok(dosis(w, "settings", "--mode", "paused", "--json"))
    assert json.loads(r.out)["mode"] == "paused"
    assert api_info(w)["mode"] == "paused"
    r = ok(dosis(w, "settings", "--mode", "normal", "--json"))
    assert json.loads(r.out)["mode"] == "normal"
    assert api_info(w)["mode"] == "normal"


def test_16_settings_bad_value_changes_nothing(w: World) -> None:
    before = api_settings(w)
    r = dosis(w, "settings", "--volume", "9")
    one_line_error(r, 1, "--volume", "9", "1<=x<=4")
    assert r.out == ""
    assert api_settings(w) == before


# -- the live monitor --------------------------------------------------------------------------


def test_17_monitor_prints_the_due_event_and_stops_on_ctrl_c(w: World) -> None:
    # Run the clock fast (before the monitor starts) to 06:00 local on a coming day: every
    # dose of the day before has locked by then and none has opened yet, so the first dose
    # after it, and whatever a press does at 06:00, are known.
    doc = w.state["doc"]
    zone = ZoneInfo(doc["timezone"])
    now = api_info(w)["utc"]
    day = dt.datetime.fromtimestamp(now, zone).date()
    while True:
        quiet = int(dt.datetime(day.year, day.month, day.day, 6, 0, tzinfo=zone).timestamp())
        if quiet > now + 60:
            break
        day += dt.timedelta(days=1)
    times = {d["time"]: d for d in doc["dose"]}  # one dose a time of day in the example
    assert len(times) == len(doc["dose"])
    first = min(t for t in times if t > "06:00")
    due_dose = times[first]
    hh, mm = map(int, first.split(":"))
    due_at = int(dt.datetime(day.year, day.month, day.day, hh, mm, tzinfo=zone).timestamp())
    early = due_dose.get("early_min", doc["alerts"]["early_min"])
    assert due_at - early * 60 > quiet + 600, "the example's first dose opens after 06:10"
    with device(w) as dev:
        while now < quiet:
            now = dev.call("sim.advance", {"s": min(604800, quiet - now)}, timeout=60)["utc"]
        assert dev.call("info")["next"] == due_at
    w.state["due_dose"] = due_dose["id"]

    proc = subprocess.Popen(
        [str(DOSIS), "monitor", "--json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=w.env,
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(b.decode("utf-8")) for b in iter(proc.stdout.readline, b"")],
        daemon=True,
    )
    events: list[dict[str, Any]] = []

    def next_event(timeout: float) -> dict[str, Any] | None:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            return None
        ev = json.loads(line)  # every stdout line is one JSON event
        events.append(ev)
        return ev

    try:
        assert proc.stderr is not None and proc.stdout is not None
        said = proc.stderr.readline().decode()
        assert said == f"watching {w.device_id}; Ctrl-C to stop\n"
        reader.start()
        # The port is locked by the monitor; a second command is told so.
        busy = dosis(w, "info")
        one_line_error(busy, 3, "busy")
        # Subscribed yet? A press of the big button (nothing due) is an event: press until
        # the monitor prints one.
        deadline = time.monotonic() + 15
        rid = 2_000_000_000
        while True:
            rid += 1
            inject(w.port, rid, "sim.press", {"button": "taken"})
            ev = next_event(0.5)
            if ev is not None:
                break
            assert time.monotonic() < deadline, "the monitor printed nothing"
        # across the dose instant
        inject(w.port, rid + 1, "sim.advance", {"s": due_at - quiet + 60})
        deadline = time.monotonic() + 20
        while not any(e.get("ev") == "due" for e in events):
            assert time.monotonic() < deadline, f"no due event: {events}"
            next_event(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    while next_event(0) is not None:
        pass
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert err == "stopped\n"
    due = [e for e in events if e["ev"] == "due"]
    assert [(e["dose"], e["t"], e["occ"]) for e in due] == [(due_dose["id"], due_at, due_at)]
    local = dt.datetime.fromtimestamp(due_at, zone).isoformat()
    assert due[0]["local"] == local, events
    assert isinstance(due[0]["seq"], int)
    assert (events[0]["ev"], events[0]["detail"]) == ("press", "taken: nothing due")
    assert "taken" not in [e["ev"] for e in events]
    # the port is free again
    assert api_info(w)["device"] == w.device_id


# -- the screen --------------------------------------------------------------------------------


def test_18_screen_text_png_and_json(w: World) -> None:
    r = ok(dosis(w, "screen"))
    assert r.err.startswith("screen: ")
    lines = r.out.splitlines()
    assert len(lines) == 34  # 32 lines of 128 columns in a border
    assert lines[0] == "┌" + "─" * 128 + "┐" and lines[-1] == "└" + "─" * 128 + "┘"
    inner = [line[1:-1] for line in lines[1:-1]]
    assert all(line[0] == line[-1] == "│" for line in lines[1:-1])
    assert all(len(s) == 128 and set(s) <= SCREEN_CHARS for s in inner)
    assert any(set(s) - {" "} for s in inner), "the screen is blank"

    png = w.root / "screen.png"
    r = ok(dosis(w, "screen", "--png", str(png)))
    assert r.out == ""
    assert r.err.endswith(", 512x256\n")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (512, 256)
    idat = data.index(b"IDAT")
    size = struct.unpack(">I", data[idat - 4 : idat])[0]
    raw = zlib.decompress(data[idat + 4 : idat + 4 + size])
    assert len(raw) == 256 * (1 + 512)

    r = ok(dosis(w, "screen", "--json"))
    snap = json.loads(r.out)
    assert (snap["w"], snap["h"]) == (128, 64)
    assert isinstance(snap["screen"], str) and snap["screen"]
    fb = base64.b64decode(snap["fb"])
    assert len(fb) == 1024
    assert len(snap["text"]) == 32 and all(len(s) == 128 for s in snap["text"])
    # the text is the framebuffer (MONO_VLSB: bit y%8 of byte (y//8)*128 + x)
    for y in (0, 20, 41, 63):
        for x in range(128):
            lit = fb[(y >> 3) * 128 + x] >> (y & 7) & 1
            ch = snap["text"][y // 2][x]
            assert lit == (ch in ("█", "▀" if y % 2 == 0 else "▄")), (x, y, ch)


# -- the dose log ------------------------------------------------------------------------------


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _contiguous(seqs: list[int]) -> None:
    assert seqs, "no records"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def test_19_log_pull_formats_ack_no_ack_and_since(w: World) -> None:
    info = api_info(w)
    log = info["log"]
    assert log["acked"] == 0 and log["first"] == 1

    out = w.root / "log.csv"
    r = ok(dosis(w, "log", "pull", "-o", str(out), "--format", "csv", "--no-ack"))
    assert r.out == ""
    assert "not acknowledged (--no-ack)" in r.err
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    seqs = [int(x["seq"]) for x in rows]
    _contiguous(seqs)
    assert seqs[0] == 1 and seqs[-1] >= log["last"]
    assert f"{len(rows)} records (seq 1..{seqs[-1]}) written to {out}" in r.err
    kinds = [x["kind"] for x in rows]
    assert {"paired", "boot", "schedule", "due"} <= set(kinds), kinds
    due = [x for x in rows if x["kind"] == "due"]
    assert due[-1]["dose"] == w.state["due_dose"]
    assert api_info(w)["log"]["acked"] == 0  # --no-ack leaves it

    out = w.root / "log.jsonl"
    r = ok(dosis(w, "log", "pull", "-o", str(out), "--format", "jsonl", "--no-ack"))
    recs = _jsonl(out.read_text(encoding="utf-8"))
    _contiguous([x["seq"] for x in recs])
    assert recs[0]["seq"] == 1 and len(recs) >= len(rows)
    assert [x["kind"] for x in recs[: len(rows)]] == kinds
    assert api_info(w)["log"]["acked"] == 0

    out = w.root / "log.json"
    r = ok(dosis(w, "log", "pull", "-o", str(out), "--format", "json"))
    recs = json.loads(out.read_text(encoding="utf-8"))
    seqs = [x["seq"] for x in recs]
    _contiguous(seqs)
    assert seqs[0] == 1
    assert r.err.splitlines()[-1] == f"acknowledged up to seq {seqs[-1]}"
    after = api_info(w)["log"]
    assert after["acked"] == seqs[-1]
    assert after["last"] >= seqs[-1]

    # Nothing new: the next pull starts after the acknowledged point.
    with device(w) as dev:
        dev.call("sim.press", {"button": "taken"})  # the citizen takes the due dose
        deadline = time.monotonic() + 10
        while dev.call("info")["log"]["last"] <= seqs[-1]:
            assert time.monotonic() < deadline, "the press changed nothing in the log"
            time.sleep(0.1)
    r = ok(dosis(w, "log", "pull", "--format", "jsonl"))
    new = _jsonl(r.out)
    assert new and new[0]["seq"] == seqs[-1] + 1
    _contiguous([x["seq"] for x in new])
    taken = [x for x in new if x["kind"] == "taken"]
    assert [x["dose"] for x in taken] == [w.state["due_dose"]], new
    last = new[-1]["seq"]
    assert api_info(w)["log"]["acked"] == last

    # --since 1 re-reads everything (to stdout); nothing more to acknowledge.
    r = ok(dosis(w, "log", "pull", "--since", "1", "--format", "jsonl"))
    again = _jsonl(r.out)
    _contiguous([x["seq"] for x in again])
    assert again[0]["seq"] == 1 and again[-1]["seq"] >= last
    assert [x["kind"] for x in again[: len(recs)]] == [x["kind"] for x in recs]
    assert api_info(w)["log"]["acked"] >= last


# -- errors ------------------------------------------------------------------------------------


def test_20_a_port_that_does_not_exist(w: World) -> None:
    r = dosis(w, "info", "--port", "/dev/nonexistent")
    one_line_error(r, 3, "/dev/nonexistent", "does not exist")
    assert r.out == ""


def test_21_a_port_nobody_answers_on(w: World) -> None:
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        r = dosis(w, "info", "--port", name)
        one_line_error(r, 3, "no answer", name)
        assert r.elapsed < 10, str(r)
    finally:
        os.close(slave)
        os.close(master)


def test_22_a_wrong_key(w: World) -> None:
    original = w.keys.read_bytes()
    refused = api_info(w)["refused"]
    doc = json.loads(original)
    doc[w.device_id]["key"] = "00" * 32
    w.keys.write_text(json.dumps(doc), encoding="utf-8")
    assert stat.S_IMODE(os.stat(w.keys).st_mode) == 0o600
    try:
        r = dosis(w, "info")
        one_line_error(r, 4, "refused our key", "dosis pair")
        r = dosis(w, "settings", "--volume", "4")
        one_line_error(r, 4, "refused our key")
    finally:
        w.keys.write_bytes(original)
    info = api_info(w)
    assert info["refused"] == refused + 2  # counted by the device
    assert api_settings(w)["volume"] == 2  # and nothing changed


def test_23_a_keystore_others_can_read(w: World) -> None:
    os.chmod(w.keys, 0o644)
    try:
        r = dosis(w, "info")
        one_line_error(r, 1, "can be read by other users", f"chmod 600 {w.keys}")
    finally:
        os.chmod(w.keys, 0o600)
    ok(dosis(w, "info"))


def test_24_two_dispensers_need_a_port(w: World) -> None:
    """A second, fresh device: auto-detect refuses to guess, and it has no key here."""
    with open(w.root / "firmware2.log", "wb") as fw_log:
        second = VirtualDispenser(w.root / "state2", speed=1, stderr=fw_log)
        port2 = second.start()
        try:
            found = json.loads(ok(dosis(w, "devices", "--json")).out)
            sims = sorted(p["port"] for p in found if p["kind"] == "sim")
            assert sims == sorted([w.port, port2])
            env = dict(w.env)
            del env["DOSIS_PORT"]
            r = dosis(w, "info", env=env)
            one_line_error(r, 3, "several dispensers found", w.port, port2, "--port")
            r = dosis(w, "info", "--port", port2)
            one_line_error(r, 4, "no key for device", "dosis pair")
            with device(w, port2) as dev:
                assert dev.device_id != w.device_id
                assert dev.hello()["paired"] is False
        finally:
            second.stop()
    found = json.loads(ok(dosis(w, "devices", "--json")).out)
    assert [p["port"] for p in found if p["kind"] == "sim"] == [w.port]


def test_25_the_firmware_never_crashed(w: World) -> None:
    assert w.sim.crashes == 0, w.firmware_log.read_text(errors="replace")[-3000:]
    assert w.sim.running


# -- fill and self-test (a second dispenser: a jam must not disturb the module's one) -----------


def test_26_fill_and_selftest(w: World, tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = open(tmp_path / "firmware.log", "wb")  # noqa: SIM115
    sim = VirtualDispenser(
        state, speed=1, schedule=ROOT / "examples" / "schedule.toml", stderr=log
    )
    port = sim.start()
    try:
        env = dict(w.env, DOSIS_PORT=port)
        with device(w, port) as dev:
            ops.pair_virtual(dev)
        r = dosis(w, "fill", input="n\n", env=env)
        assert r.code == 1 and "aborted" in r.err, str(r)
        r = ok(dosis(w, "fill", "--yes", env=env))
        assert r.out.strip() == "fill recorded: 28 doses in the carousel", str(r)

        r = ok(dosis(w, "selftest", "--json", env=env))
        report = json.loads(r.out)
        for part in ("carousel", "rtc", "buzzer", "display", "storage"):
            assert report[part] == "ok", report
        # a jammed motor: the self-test says so, exit 1, one line naming the part
        with device(w, port) as dev:
            dev.call("sim.jam", {"on": True})
        r = dosis(w, "selftest", env=env)
        # (a motor that cannot turn never reaches home: E2 when homing, E1 on a move)
        line = one_line_error(r, 1, "self-test found faults", "carousel: E")
        assert "carousel" in r.out, line
        with device(w, port) as dev:
            assert {"E1", "E2"} & set(dev.call("info")["faults"])
            dev.call("sim.jam", {"on": False})
        # the technician cleared the jam: the self-test homes it and the fault is gone
        ok(dosis(w, "selftest", env=env))
        with device(w, port) as dev:
            assert not {"E1", "E2"} & set(dev.call("info")["faults"])
    finally:
        sim.stop()
        log.close()
    assert "Traceback" not in (tmp_path / "firmware.log").read_text()
