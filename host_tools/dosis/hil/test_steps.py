"""The dispenser's acceptance steps, one test each, in order (see the package notes).

Each step gets its own dispenser from the `bench` fixture (conftest.py): on the virtual
dispenser a fresh one whose clock starts where the step says (`start_utc`); on a board the
board itself, on its own clock, so every time is computed from the device's `now`, never
assumed. Physical actions and observations go through the bench (sim hooks, rig, or the
technician), never straight to `sim.*`.
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

import dosiscore
from dosis import ops
from dosis.device import PROTO
from dosis.errors import DeviceError, DosisError
from dosis.schedules import load_schedule
from dosis.simhost import parse_start
from dosiscore import civil, logrec, planner, tz
from dosiscore.schedule import content_hash, validate

ZONE = "Europe/Copenhagen"
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "schedule.toml"
VERSION_RE = re.compile(r"\d+\.\d+\.\d+([-+.][0-9A-Za-z.+-]+)?")
TERMINAL = ("taken", "missed", "skipped")
OFFERED = ("available", "due", "opened")


# -- helpers -----------------------------------------------------------------------------------


def at_local(text: str, zone: str = ZONE) -> int:
    """UTC of the local time "YYYY-MM-DD HH:MM" in `zone` (as `dosis sim --start` reads it)."""
    return parse_start(text, {"tz_rule": tz.zone_rule(zone)})


def utc(text: str) -> int:
    """UTC seconds of "YYYY-MM-DDTHH:MM" in UTC."""
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def example() -> dict[str, Any]:
    if not EXAMPLE.is_file():
        pytest.fail(f"{EXAMPLE} is missing: run the suite from a Dosis checkout", pytrace=False)
    return load_schedule(EXAMPLE)


def one_dose(
    start: str,
    hhmm: str,
    *,
    early_min: int = 15,
    notify_min: int = 30,
    late_lock_min: int = 60,
) -> dict[str, Any]:
    """A valid schedule with one daily dose "hil" at local `hhmm` in Copenhagen."""
    return validate(
        {
            "schema": 1,
            "citizen": "hil-test",
            "timezone": ZONE,
            "start": start,
            "alerts": {
                "early_min": early_min,
                "notify_min": notify_min,
                "late_lock_min": late_lock_min,
            },
            "dose": [{"id": "hil", "time": hhmm, "items": [{"name": "HIL test", "count": 1}]}],
        }
    )


def dose_soon(
    now: int, *, lead_min: int = 3, notify_min: int = 30, late_lock_min: int = 120
) -> tuple[dict[str, Any], int]:
    """A schedule whose one dose falls `lead_min` local minutes (rounded down) after `now`,
    available one minute before it; (the schedule, the dose's instant)."""
    zone = tz.Tz(tz.zone_rule(ZONE))
    wall = zone.local(now)
    minute = (wall % civil.DAY) // 60 + lead_min
    doc = one_dose(
        civil.format_date(wall // civil.DAY - 1),
        civil.format_hhmm(minute % 1440),
        early_min=1,
        notify_min=notify_min,
        late_lock_min=late_lock_min,
    )
    nd = planner.next_due(planner.Plan(doc), now)
    assert nd is not None
    due = nd[0]
    assert 60 < due - now <= (lead_min + 1) * 60, (now, due)
    return doc, due


def of(recs: list[Any], occ: int, dose: int = 0) -> list[str]:
    """Kinds of the records about occurrence (occ, dose index), in log order."""
    return [r.kind for r in recs if r.occ == occ and r.dose == dose]


def never_offered_twice(recs: list[Any]) -> None:
    """No occurrence has two terminal records, or is shown (light, tone, an open compartment)
    after its terminal record."""
    ended: dict[tuple[int, int], int] = {}
    for r in recs:
        if r.dose is None or not r.occ:
            continue
        key = (r.occ, r.dose)
        if r.kind in TERMINAL:
            assert key not in ended, f"occurrence {key} ended twice (seq {ended[key]}, {r.seq})"
            ended[key] = r.seq
        elif r.kind in OFFERED:
            assert key not in ended, (
                f"occurrence {key} offered again ({r.kind}, seq {r.seq}) after it ended "
                f"(seq {ended[key]})"
            )


# -- the steps ---------------------------------------------------------------------------------


def test_01_boot_and_hello(bench: Any) -> None:
    b = bench(start_utc=at_local("2026-11-02 09:57"))
    h = b.hello()
    assert h["proto"] == PROTO == 1, h
    assert isinstance(h["fw"], str) and VERSION_RE.fullmatch(h["fw"]), h
    assert isinstance(h["device"], str) and h["device"], h
    assert h["board"] in ("sim", "esp32"), h
    again = b.hello()
    assert (again["device"], again["fw"]) == (h["device"], h["fw"])
    if b.is_sim:
        assert h["board"] == "sim"
        assert h["fw"] == dosiscore.VERSION  # the firmware of this checkout
        assert (h["paired"], h["pairing"]) == (False, False), "a new device, window shut"
        assert "Traceback" not in b.fw_log.read_text(errors="replace")


def test_02_pairing(bench: Any) -> None:
    b = bench(start_utc=at_local("2026-11-02 09:57"))
    h = b.hello()
    if not h["pairing"]:
        # Without a press of the service button nobody gets a key.
        with pytest.raises(DeviceError) as refused:
            b.dev.pair()
        assert refused.value.code == "not_pairing"
    device_id = b.pair()  # sim: an injected press; board: the rig or the technician
    assert device_id == h["device"]
    assert b.hil.keystore.get(device_id) is not None
    info = b.info()  # a signed request, and a signed reply that verified
    assert info["device"] == device_id
    if not h["pairing"]:
        assert info["refused"] >= 1  # the attempt before the press was counted
    after = b.hello()
    assert (after["paired"], after["pairing"]) == (True, False), "the window closes"
    assert "paired" in [r.kind for r in b.records()]


def test_03_schedule_push_and_read_back(bench: Any) -> None:
    b = bench(start_utc=at_local("2026-11-02 07:28"))
    b.ensure_paired()
    doc = example()
    want = content_hash(doc)
    plan = ops.plan_push(b.dev, doc)
    assert plan.hash == want
    if b.is_sim:
        assert plan.old_hash is None and plan.changes, "a new device: all of it is new"
    assert b.push(doc) == want  # sent, rebooted into, and read back by the hash
    got_hash, got_doc = ops.device_schedule(b.dev)
    assert got_hash == want
    assert got_doc == doc and content_hash(got_doc) == want
    assert b.info()["schedule"] == want
    assert ops.plan_push(b.dev, doc).same
    recs = b.records()
    boots = [r.seq for r in recs if r.kind == "boot"]
    loaded = [r for r in recs if r.kind == "schedule" and r.seq > boots[-1]]
    assert [r.detail for r in loaded] == [logrec.hash_prefix(want)], "the boot logs it"


def test_04_dose_due_light_tone_press_taken(bench: Any) -> None:
    b = bench(start_utc=at_local("2026-11-02 09:57"))
    b.ensure_paired()
    doc, due = dose_soon(b.now())
    b.push(doc)
    assert b.fill() >= 1
    b.watch()
    b.until(due - 60 + 1, "for the dose's light (1 min before it)")
    b.wait_event("available", dose="hil", occ=due)
    b.wait_event("opened", dose="hil", occ=due)
    b.check_opening(1)
    b.check_light(True)
    b.check_tone(False)  # the early window is light only
    b.until(due + 1, "for the dose's tone")
    b.wait_event("due", dose="hil", occ=due)
    b.check_tone(True)
    b.press("taken")
    ev = b.wait_event("taken", dose="hil", occ=due)
    assert ev["detail"] == "button"
    b.wait_event("closed")
    b.check_opening(None)
    b.check_tone(False)
    b.check_light(False)
    recs = b.records()
    kinds = of(recs, due)
    assert sorted(kinds) == ["available", "due", "opened", "taken"], kinds
    assert kinds.index("available") < kinds.index("due") < kinds.index("taken"), kinds
    (taken,) = [r for r in recs if r.kind == "taken" and r.occ == due]
    assert logrec.REASONS[taken.small & 0xFF] == "button"
    assert taken.utc >= due
    never_offered_twice(recs)


def test_05_missed_dose_locked_and_care_team_told(bench: Any) -> None:
    b = bench(start_utc=at_local("2026-11-02 09:57"))
    b.ensure_paired()
    doc, due = dose_soon(b.now(), notify_min=5, late_lock_min=6)
    b.push(doc)
    b.fill()
    b.watch()
    b.until(due + 1, "for the dose's time")
    b.wait_event("due", dose="hil", occ=due)
    b.check_opening(1)
    b.until(due + 5 * 60 + 1, "for the care-team notice (5 min after the dose time)")
    b.wait_event("notify", dose="hil", occ=due)
    b.check_tone(True)  # still reminding until the lock
    b.until(due + 6 * 60 + 1, "for the lock (6 min after the dose time)")
    b.wait_event("missed", dose="hil", occ=due)
    b.wait_event("closed")
    b.check_opening(None)  # the compartment is locked away
    b.check_tone(False)
    b.press("taken")  # too late: nothing happens
    ev = b.wait_event("press")
    assert "nothing due" in ev["detail"], ev
    recs = b.records()
    kinds = of(recs, due)
    assert kinds.count("notify") == 1 and kinds.count("missed") == 1, kinds
    assert "taken" not in kinds, kinds
    assert kinds.index("notify") < kinds.index("missed")
    (missed,) = [r for r in recs if r.kind == "missed" and r.occ == due]
    assert logrec.REASONS[missed.small & 0xFF] == "late"
    (opened,) = [r for r in recs if r.kind == "opened" and r.occ == due]
    assert any(r.kind == "closed" and r.seq > opened.seq for r in recs), "never closed again"
    never_offered_twice(recs)


@pytest.mark.needs_rig
def test_06_power_cut_during_a_carousel_move(bench: Any, note: Any) -> None:
    b = bench(start_utc=at_local("2026-11-02 07:28"))
    b.ensure_paired()
    if b.is_sim:
        # The longest move there is: after a refill the next dose opens compartment 1 again,
        # a turn round from where the morning dose left the carousel.
        doc = example()
        b.push(doc)
        b.fill()
        b.watch()
        morning, _ = planner.next_due(planner.Plan(doc), b.now()) or (0, "")
        b.until(morning + 30)
        b.press("taken")
        b.wait_event("taken", dose="morgen", occ=morning)
        b.wait_event("closed")
        b.fill()
        nxt = planner.next_due(planner.Plan(doc), morning + 1)
        assert nxt is not None
        due, dose_id = nxt
        early = next(d for d in doc["dose"] if d["id"] == dose_id)["early_min"]
        index = [d["id"] for d in doc["dose"]].index(dose_id)
    else:
        doc, due = dose_soon(b.now())
        b.push(doc)
        b.fill()
        dose_id, early, index, morning = "hil", 1, 0, 0
    last = b.info()["log"]["last"]
    landed = b.cut_power_during_next_move(due - early * 60)
    note(f"the cut landed {landed}")
    b.watch()
    after = b.records(since=last + 1)
    kinds = [r.kind for r in after]
    assert "boot" in kinds, kinds
    if landed == "mid-move":
        assert "recovered" in kinds, f"a cut mid-move must be recovered: {kinds}"
    # The carousel comes back to the dose's compartment (open again), nothing else.
    b.until(due + 30, "for the dose's time")
    b.wait_event("due", dose=dose_id, occ=due, timeout=20)
    b.check_opening(1)
    b.press("taken")
    b.wait_event("taken", dose=dose_id, occ=due)
    b.wait_event("closed")
    recs = b.records()
    assert [k for k in of(recs, due, index) if k in TERMINAL] == ["taken"]
    if morning:
        assert [k for k in of(recs, morning, 0) if k in TERMINAL] == ["taken"]
    never_offered_twice(recs)


@pytest.mark.needs_rig
def test_07_jam(bench: Any) -> None:
    b = bench(start_utc=at_local("2026-11-02 09:57"))
    b.ensure_paired()
    doc, due = dose_soon(b.now())
    b.push(doc)
    b.fill()
    b.watch()
    b.jam(True)
    rep = ops.selftest(b.dev)  # homing cannot finish: the motor turns, the carousel does not
    assert rep["carousel"][:2] in ("E1", "E2"), rep
    faults = set(b.info()["faults"])
    assert faults & {"E1", "E2"}, faults
    ev = b.wait_event("fault")
    assert ev["detail"][:2] in ("E1", "E2"), ev
    # The dose comes; the carousel stays shut (no retry that grinds), the light still reminds.
    b.until(due - 60 + 1, "for the dose's light")
    b.wait_event("available", dose="hil", occ=due)
    b.check_opening(None)
    b.check_light(True)
    assert not [e for e in b.seen if e["ev"] == "opened"], "opened while jammed"
    b.jam(False)
    rep = ops.selftest(b.dev)  # the technician cleared it; the self-test homes the carousel
    assert rep["carousel"] == "ok", rep
    assert not set(b.info()["faults"]) & {"E1", "E2"}
    b.wait_event("fault_cleared")
    b.wait_event("opened", dose="hil", occ=due)  # and the dose's compartment opens now
    b.check_opening(1)
    recs = b.records()
    assert [r for r in recs if r.kind in ("jam", "home_lost") and r.small in (1, 2)], [
        r.kind for r in recs
    ]
    assert "fault_cleared" in [r.kind for r in recs]


def test_08_log_pull_and_acknowledge(bench: Any) -> None:
    b = bench(start_utc=at_local("2026-11-02 07:28"))
    b.ensure_paired()
    b.push(example())
    b.fill()
    if b.is_sim:
        b.until(at_local("2026-11-02 08:01"))  # the morning dose is due: dose records
    before = b.info()["log"]
    got = ops.pull_log(b.dev)
    assert got.acked == before["acked"] and got.start == before["acked"] + 1
    seqs = [r.seq for r in got.rows]
    assert seqs == list(range(got.start, got.last + 1)), "the pull has every record, in order"
    assert got.ack_to == got.last
    kinds = {r.kind for r in got.rows}
    assert {"boot", "schedule", "filled"} <= kinds, kinds
    if b.is_sim:
        assert {"paired", "available", "due"} <= kinds, kinds
        assert {r.dose for r in got.rows if r.kind == "due"} == {"morgen"}
    acked = ops.ack_log(b.dev, got.ack_to)
    assert acked == got.last
    log = b.info()["log"]
    assert log["acked"] == acked
    if b.is_sim:
        assert log["last"] == acked  # nothing new came: everything is acknowledged
    again = ops.pull_log(b.dev)
    assert again.start == acked + 1
    assert all(r.seq > acked for r in again.rows)


def test_09_deploy_and_rollback(bench: Any, tmp_path: Path) -> None:
    try:
        deploy = importlib.import_module("dosis.deploy")
    except ModuleNotFoundError as e:
        if e.name != "dosis.deploy":
            raise
        pytest.fail("deploy not built: there is no dosis.deploy module", pytrace=False)
    deploy_bundle = getattr(deploy, "deploy_bundle", None)
    if deploy_bundle is None:
        pytest.fail("deploy not built: dosis.deploy has no deploy_bundle", pytrace=False)
    from dosis.bundle import build_bundle, default_firmware_dir

    b = bench(start_utc=at_local("2026-11-02 07:28"))
    b.ensure_paired()
    h = b.push(example())
    good = build_bundle(tmp_path / "good")
    b.release()  # the deploy needs the port
    res = deploy_bundle(b.port, tmp_path / "good", keystore=b.hil.keystore)
    assert res.version_after == good.version and not res.rolled_back, res
    assert b.hello()["fw"] == good.version
    assert b.info()["schedule"] == h  # the key, the schedule and the log stay

    # An app that cannot start: the previous one must come back by itself.
    src = tmp_path / "broken-src"
    fw = default_firmware_dir()
    for part in ("dosiscore", "dispenser"):
        shutil.copytree(fw / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for entry in ("boot.py", "main.py"):
        shutil.copy2(fw / entry, src / entry)
    init = src / "dosiscore" / "__init__.py"
    bad_version = good.version + "-hil-broken"
    init.write_text(
        re.sub(r'VERSION = "[^"]*"', f'VERSION = "{bad_version}"', init.read_text()),
        encoding="utf-8",
    )
    with open(src / "dispenser" / "runtime.py", "a", encoding="utf-8") as f:
        f.write('\nraise RuntimeError("an app that cannot start (dosis hil)")\n')
    build_bundle(tmp_path / "bad", firmware_dir=src)
    b.release()
    with pytest.raises(DosisError, match="rolled back"):
        deploy_bundle(b.port, tmp_path / "bad", keystore=b.hil.keystore, boot_wait=90)
    assert b.hello()["fw"] == good.version
    assert b.info()["schedule"] == h


@pytest.mark.sim_only
def test_10_dst_day(bench: Any) -> None:
    # Autumn: Sunday 25 October 2026 in Copenhagen, 03:00 CEST -> 02:00 CET at 01:00 UTC;
    # 02:30 local happens twice and the dose fires once, at the first (00:30 UTC).
    doc = one_dose("2026-10-01", "02:30")
    start = at_local("2026-10-25 01:30")
    assert start == utc("2026-10-24T23:30")
    first, second = utc("2026-10-25T00:30"), utc("2026-10-25T01:30")
    b = bench(start_utc=start, schedule=doc)
    b.ensure_paired()
    b.fill()
    b.watch()
    b.until(start + 6 * 3600)
    dues = [(e["dose"], e["occ"], e["t"]) for e in b.seen if e["ev"] == "due"]
    assert dues == [("hil", first, first)], dues
    shown = [(e["ev"], e["occ"]) for e in b.seen if e["ev"] in ("available", "due")]
    assert shown == [("available", first), ("due", first)], shown
    recs = b.records()
    assert of(recs, first).count("due") == 1
    assert [k for k in of(recs, first) if k in TERMINAL] == ["missed"]
    assert not of(recs, second), "the repeated 02:30 (CET) is not a second dose"
    never_offered_twice(recs)
    b.close()

    # Spring: Sunday 29 March 2026, 02:00 CET -> 03:00 CEST at 01:00 UTC; 02:30 does not
    # exist that day and the dose fires at the transition instant (03:00 CEST).
    spring = one_dose("2026-03-01", "02:30")
    start = at_local("2026-03-29 01:30")
    assert start == utc("2026-03-29T00:30")
    gap = utc("2026-03-29T01:00")
    s = bench(start_utc=start, schedule=spring)
    s.ensure_paired()
    s.fill()
    s.watch()
    s.until(start + 5 * 3600)
    dues = [(e["dose"], e["occ"], e["t"]) for e in s.seen if e["ev"] == "due"]
    assert dues == [("hil", gap, gap)], dues
    never_offered_twice(s.records())
