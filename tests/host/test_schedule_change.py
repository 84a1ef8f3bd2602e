"""A schedule change on the simulated device (the real firmware under the MicroPython VM).

A new schedule makes the device reboot into it, with the same dose state and dose log. A dose
already taken that day must not be offered again when the new schedule moves it to a later
time: a second noon dose would be a double dose. Helpers as in test_scenarios.py.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
from scenariorun import example_doc, scenario, write_schedule  # noqa: E402

TODAY = "2026-11-23"
TOMORROW = "2026-11-24"


@pytest.fixture
def example(tmp_path):
    return write_schedule(tmp_path / "schedule.json", example_doc())


@pytest.fixture
def noon_at_13(tmp_path):
    """The example schedule with the noon dose ("middag") moved from 12:00 to 13:00."""
    doc = example_doc()
    middag = [d for d in doc["dose"] if d["id"] == "middag"]
    assert len(middag) == 1 and middag[0]["time"] == "12:00"
    middag[0]["time"] = "13:00"
    return write_schedule(tmp_path / "noon13.json", doc)


def _offered(run, dose, day):
    return [e for e in run.about(dose, day) if e[1] in ("opened", "available", "due")]


def test_a_taken_dose_moved_later_is_not_offered_again_that_day(tmp_path, example, noon_at_13):
    r1 = scenario(
        tmp_path,
        example,
        f"start {TODAY} 06:00\nend {TODAY} 14:00\nfill\n"
        f"08:03 press\n12:05 press\n12:30 schedule {noon_at_13}",
        script="before",
    )
    assert r1.at("taken", "morgen") == "08:03"
    assert r1.at("taken", "middag") == "12:05"
    assert r1.find("opened", "middag")[0][3] == "compartment 2"
    assert r1.find("schedule_update") and r1.end == "END reboot"

    # The device reboots into the new schedule: same state dir, same flash.
    r2 = scenario(
        tmp_path,
        noon_at_13,
        f"start {TODAY} 12:31\nend {TOMORROW} 13:10\n12:40 screen\n+1d 13:05 press",
        script="after",
    )
    assert r2.find("schedule")  # booted with the new schedule
    # the screen's "next dose" is the evening one, not the noon dose already given
    screen = r2.find("screen")[0][3]
    assert "next=17:30" in screen or "next=18:00" in screen, screen
    # neither dose given today comes back: no light, no tone, no compartment, no record
    assert _offered(r2, "middag", TODAY) == [], r2.about("middag", TODAY)
    assert _offered(r2, "morgen", TODAY) == []
    assert r2.about("middag", TODAY) == [] and r2.about("morgen", TODAY) == []
    # the rest of the day goes on: the evening dose is in compartment 3, as it was filled
    assert r2.find("opened", "aften", TODAY)[0][3] == "compartment 3"
    assert r2.at("due", "aften", TODAY) == "18:00"
    # tomorrow the noon dose is offered at its new time, from compartment 6
    assert r2.at("available", "middag", TOMORROW) == "12:30"
    assert r2.at("due", "middag", TOMORROW) == "13:00"
    assert r2.find("opened", "middag", TOMORROW)[0][3] == "compartment 6"
    assert r2.at("taken", "middag", TOMORROW) == "13:05"
    both = r1.events + r2.events
    for dose in ("morgen", "middag"):
        today = [e[1] for e in both if e[2] == dose and e[0].startswith(TODAY)]
        assert today.count("taken") == 1, (dose, today)
        assert today.count("opened") == 1 and today.count("due") == 1, (dose, today)
    assert not r2.find("replayed")  # the stored state already had every fact


def test_a_dose_not_yet_given_is_offered_at_its_new_time(tmp_path, example, noon_at_13):
    r1 = scenario(
        tmp_path,
        example,
        f"start {TODAY} 06:00\nend {TODAY} 14:00\nfill\n08:03 press\n10:30 schedule {noon_at_13}",
        script="before",
    )
    assert r1.at("taken", "morgen") == "08:03" and r1.end == "END reboot"
    r2 = scenario(
        tmp_path,
        noon_at_13,
        f"start {TODAY} 10:31\nend {TODAY} 13:30\n13:05 press",
        script="after",
    )
    assert r2.at("available", "middag", TODAY) == "12:30"
    assert r2.at("due", "middag", TODAY) == "13:00"
    assert r2.find("opened", "middag", TODAY)[0][3] == "compartment 2"
    assert r2.at("taken", "middag", TODAY) == "13:05"
    assert r2.about("morgen", TODAY) == []
