"""A schedule change that changes what the carousel's compartments must hold (the real firmware
under the MicroPython VM, on the simulated board).

The nurse loaded the carousel for the old schedule's order of doses. A new schedule that puts
another dose where a compartment still to be opened holds the old one (here: the evening dose
moved before the noon dose) would, counting from the fill, open compartments whose pills are
another dose's. The device must open none of them, keep reminding, say "refill" and log it;
after the nurse refills, the doses come from the compartments of the new loading map.
Helpers as in test_schedule_change.py.
"""

import sys
from pathlib import Path

import pytest

from dosis import ops
from dosiscore import logrec, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
from scenariorun import example_doc, scenario, write_schedule  # noqa: E402

TODAY = "2026-11-23"
TOMORROW = "2026-11-24"


def _changed(**times):
    doc = example_doc()
    for d in doc["dose"]:
        if d["id"] in times:
            d["time"] = times[d["id"]]
    return doc


@pytest.fixture
def example(tmp_path):
    return write_schedule(tmp_path / "schedule.json", example_doc())


@pytest.fixture
def reordered(tmp_path):
    """The evening dose ("aften") at 12:00 and the noon dose ("middag") at 15:00."""
    return write_schedule(tmp_path / "reordered.json", _changed(aften="12:00", middag="15:00"))


@pytest.fixture
def noon_at_13(tmp_path):
    return write_schedule(tmp_path / "noon13.json", _changed(middag="13:00"))


def _log(state):
    """Every record of the dose log on the simulated flash, in seq order."""
    recs = []
    for p in sorted((state / "log").glob("*.seg")):
        raw = p.read_bytes()
        for off in range(0, len(raw) - len(raw) % logrec.RECORD_SIZE, logrec.RECORD_SIZE):
            r = logrec.decode(raw, off)
            assert r is not None, (p, off)
            recs.append(r)
    return sorted(recs)


def test_a_reordering_change_opens_nothing_until_the_refill(tmp_path, example, reordered):
    r1 = scenario(
        tmp_path,
        example,
        f"start {TODAY} 06:00\nend {TODAY} 14:00\nfill\n08:03 press\n10:00 schedule {reordered}",
        script="before",
    )
    assert r1.find("opened", "morgen")[0][3] == "compartment 1"
    assert r1.at("taken", "morgen") == "08:03" and r1.end == "END reboot"

    r2 = scenario(
        tmp_path,
        reordered,
        f"start {TODAY} 10:01\nend {TOMORROW} 19:00\n"
        "10:30 screen\n12:05 screen\n12:06 press\n13:00 fill\n13:01 screen\n"
        "15:05 press\n22:05 press\n+1d 08:05 press\n+1d 12:05 press\n+1d 15:05 press",
        script="after",
    )
    # at boot the fill is found loaded for the old order: said, logged, a refill fault (E6)
    said = r2.find("empty")
    assert said == [
        (
            f"{TODAY}T10:01:00+01:00",
            "empty",
            "-",
            "compartments 2..28 were loaded for another schedule",
        )
    ], r2.events
    assert [e[3] for e in r2.find("fault")] == ["E6 carousel empty"]
    assert r2.find("screen")[0][3] == "refill left=0"
    # the evening dose, now at noon: reminded (light, tone), shown as "refill", opens nothing
    assert r2.at("available", "aften", TODAY) == "11:30"
    assert r2.at("due", "aften", TODAY) == "12:00"
    assert r2.find("screen")[1][3] == "refill left=0"
    assert r2.at("taken", "aften", TODAY) == "12:06"
    before_fill = [e for e in r2.events if e[0] < f"{TODAY}T13:00"]
    assert [e for e in before_fill if e[1] in ("opened", "closed")] == []
    # the nurse refills with the new loading map: the fault clears, the doses come again
    assert r2.at("filled") == "13:00"
    assert r2.find("fault_cleared")[0][3] == "E6"
    assert r2.find("screen")[2][3] != "refill left=0"
    opened = [(e[2], e[0][:16], e[3]) for e in r2.find("opened")]
    assert opened == [
        ("middag", f"{TODAY}T14:30", "compartment 1"),
        ("nat", f"{TODAY}T21:45", "compartment 2"),
        ("morgen", f"{TOMORROW}T07:30", "compartment 3"),
        ("aften", f"{TOMORROW}T11:30", "compartment 4"),
        ("middag", f"{TOMORROW}T14:30", "compartment 5"),
    ], opened
    # ... as the new loading map for a fill at 13:00 says
    doc = schedule.validate(_changed(aften="12:00", middag="15:00"))
    lmap = ops.loading_map(doc, ops.fill_instant(doc, TODAY, "13:00"))
    assert [(c.dose, f"compartment {c.n}") for c in lmap.compartments[:5]] == [
        (o[0], o[2]) for o in opened
    ]
    assert [e[2] for e in r2.find("taken")] == [
        "aften",
        "middag",
        "nat",
        "morgen",
        "aften",
        "middag",
    ]

    # the dose log on the flash says it too: EMPTY after the new schedule's boot, no OPENED
    # between it and FILLED, and the openings after the fill
    recs = _log(tmp_path / "state")
    kinds = [r[2] for r in recs]
    boots = [k for k, r in enumerate(recs) if r[2] == logrec.BOOT]
    assert len(boots) == 2
    after = kinds[boots[1] :]
    assert logrec.EMPTY in after
    e = after.index(logrec.EMPTY)
    f = after.index(logrec.FILLED)
    assert e < f and logrec.OPENED not in after[e:f]
    assert after[f:].count(logrec.OPENED) == 5


def test_moved_times_keep_the_fill(tmp_path, example, noon_at_13):
    r1 = scenario(
        tmp_path,
        example,
        f"start {TODAY} 06:00\nend {TODAY} 14:00\nfill\n08:03 press\n10:00 schedule {noon_at_13}",
        script="before",
    )
    assert r1.end == "END reboot"
    r2 = scenario(
        tmp_path,
        noon_at_13,
        f"start {TODAY} 10:01\nend {TODAY} 19:00\n13:05 press\n18:05 press",
        script="after",
    )
    assert r2.find("empty") == [] and r2.find("refill") == []
    assert r2.find("opened", "middag")[0][3] == "compartment 2"
    assert r2.find("opened", "aften")[0][3] == "compartment 3"


def test_a_moved_dose_given_before_a_lost_state_is_found_in_the_old_schedules_records(
    tmp_path, example, noon_at_13
):
    """The stored dose state is lost across the change (doses.json gone): the log's records of
    the noon dose, written under the old schedule, still keep it from being offered again at
    its new time. They are read with the old schedule's dose list (its A/B copy)."""
    r1 = scenario(
        tmp_path,
        example,
        f"start {TODAY} 06:00\nend {TODAY} 14:00\nfill\n"
        f"08:03 press\n12:05 press\n12:30 schedule {noon_at_13}",
        script="before",
    )
    assert r1.at("taken", "middag") == "12:05" and r1.end == "END reboot"
    (tmp_path / "state" / "doses.json").unlink()
    r2 = scenario(
        tmp_path,
        noon_at_13,
        f"start {TODAY} 12:31\nend {TODAY} 19:00\n18:05 press",
        script="after",
    )
    assert r2.find("replayed") and int(r2.find("replayed")[0][3]) >= 2
    offered = [e for e in r2.events if e[2] in ("morgen", "middag")]
    assert offered == [], offered
    assert r2.at("due", "aften", TODAY) == "18:00"


# -- the host says so before the push: the same rule, from dosiscore.doses ---------------------


class _Device:
    """Just enough of a dispenser for ops.plan_push: its schedule, and info."""

    device_id = "dsp-0042"
    board = "sim"

    def __init__(self, doc, utc, fill=None):
        self.doc, self.utc, self.fill = doc, utc, fill

    def call(self, cmd, args=None, *, timeout=None):
        if cmd == "schedule.get":
            return {"hash": schedule.content_hash(self.doc), "doc": self.doc}
        if cmd == "info":
            out = {"utc": self.utc, "time_valid": True}
            if self.fill is not None:
                out["fill"] = self.fill
            return out
        raise AssertionError(cmd)


def _at(day, hhmm):
    return ops.fill_instant(schedule.validate(example_doc()), day, hhmm)


def test_push_plan_warns_of_a_refill_only_when_the_order_changes():
    old = schedule.validate(example_doc())
    ten = _at(TODAY, "10:00")
    moved = ops.plan_push(_Device(old, ten), schedule.validate(_changed(middag="13:00")))
    assert moved.refill is None and [c.kind for c in moved.changes] == ["moved"]
    # a time moved across the present (at 11:00, noon, not yet given, to 10:45) keeps the
    # fill too: the device offers it late, from compartment 2, as loaded
    eleven = _at(TODAY, "11:00")
    early = ops.plan_push(_Device(old, eleven), schedule.validate(_changed(middag="10:45")))
    assert early.refill is None
    plan = ops.plan_push(
        _Device(old, ten), schedule.validate(_changed(aften="12:00", middag="15:00"))
    )
    n = plan.refill
    assert n is not None and not n.fill_known
    assert plan.changes[-1].kind == "refill" and plan.changes[-1].text == n.text
    assert n.text.startswith("! if the carousel is filled, it must be refilled after this change")
    assert "from aften at 2026-11-23 12:00 on" in n.text
    # every change that gives a compartment another dose
    for new in (
        _changed(middag="05:00"),  # before the morning dose
        {**example_doc(), "dose": [d for d in example_doc()["dose"] if d["id"] != "middag"]},
        {
            **example_doc(),
            "dose": [
                {**d, "items": [{"name": "Metformin 850 mg", "count": 1}]}
                if d["id"] == "middag"
                else d
                for d in example_doc()["dose"]
            ],
        },
        {
            **example_doc(),
            "dose": [
                {**d, "reminder_only": True} if d["id"] == "middag" else d
                for d in example_doc()["dose"]
            ],
        },
    ):
        assert ops.plan_push(_Device(old, ten), schedule.validate(new)).refill is not None


def test_host_and_device_agree_on_the_first_compartment_loaded_for_the_old_schedule():
    from dosiscore import doses

    old = schedule.validate(example_doc())
    new = schedule.validate(_changed(aften="12:00", middag="15:00"))
    fill = _at(TODAY, "06:00")
    now = _at(TODAY, "07:00")  # nothing given yet: the device compares from compartment 1
    plan = ops.plan_push(_Device(old, now, fill), new)
    n = plan.refill
    assert n is not None and n.fill_known and n.fill == fill
    assert (n.first, n.last, n.dose, n.was) == (2, 28, "aften", "middag")
    assert n.text.startswith(
        "! the carousel must be refilled after this change: compartments 2..28 were loaded "
        "for the old schedule (compartment 2 holds middag pills, the new schedule would open "
        "it for aften at 2026-11-23 12:00)"
    )
    m = doses.Doses(old, None, fill)
    m.refilled(fill)
    m.update(now)
    device = doses.Doses(new, m.state(), None)
    assert device.fill_upto == n.first - 1
