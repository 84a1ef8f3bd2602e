"""Schedule validation, normalisation and hashing: runs under pytest and under MicroPython."""

from dosiscore import schedule


def _doc(**over):
    d = {
        "schema": 1,
        "citizen": "borger-0042",
        "start": "2026-11-01",
        "dose": [
            {"id": "morgen", "time": "08:00", "items": [{"name": "Metformin 500 mg"}]},
            {"id": "aften", "time": "18:00", "items": [{"name": "Simvastatin 40 mg"}]},
        ],
    }
    d.update(over)
    return d


def _problems(doc):
    try:
        schedule.validate(doc)
    except schedule.ScheduleError as e:
        return ["%s: %s" % p for p in e.problems]
    raise AssertionError("accepted an invalid schedule")


def _has(problems, text):
    for p in problems:
        if text in p:
            return True
    raise AssertionError("%r not in %r" % (text, problems))


def test_defaults_filled_and_sorted():
    n = schedule.validate(
        _doc(
            dose=[
                {"id": "aften", "time": "18:00", "items": ["Simvastatin 40 mg"]},
                {
                    "id": "morgen",
                    "time": "8:00",
                    "days": ["tor", "mon"],
                    "items": [{"name": "Furix 40 mg", "count": 0.5}],
                },
            ]
        )
    )
    assert n["timezone"] == "Europe/Copenhagen"
    assert n["tz_rule"] == "CET-1CEST,M3.5.0,M10.5.0/3"
    assert n["language"] == "da" and n["compartments"] == 28
    assert n["alerts"] == {
        "early_min": 30,
        "late_lock_min": 120,
        "notify_min": 30,
        "louder_every_min": 10,
    }
    assert [d["id"] for d in n["dose"]] == ["morgen", "aften"]
    m = n["dose"][0]
    assert m["time"] == "08:00" and m["days"] == ["mon", "thu"]
    assert m["items"] == [{"name": "Furix 40 mg", "count": 0.5}]
    assert (m["early_min"], m["late_lock_min"], m["notify_min"]) == (30, 120, 30)
    assert n["dose"][1]["items"] == [{"name": "Simvastatin 40 mg", "count": 1}]


def test_normalised_is_a_fixed_point_and_hash_is_stable():
    n = schedule.validate(_doc())
    again = schedule.validate(n)
    assert again == n
    assert schedule.canonical(again) == schedule.canonical(n)
    h = schedule.content_hash(n)
    assert len(h) == 64
    swapped = _doc()
    swapped["dose"] = list(reversed(swapped["dose"]))
    assert schedule.content_hash(schedule.validate(swapped)) == h
    changed = _doc()
    changed["dose"][0]["time"] = "08:01"
    assert schedule.content_hash(schedule.validate(changed)) != h


def test_canonical_encoding_is_exact():
    enc = schedule.canonical({"b": [1, 0.5, 2.5, True, None], "a": 'q"\\\n', "æ": "ø"})
    assert enc == '{"a":"q\\"\\\\\\u000a","b":[1,0.5,2.5,true,null],"æ":"ø"}'.encode()


def test_issue_example_message():
    doc = _doc()
    doc["dose"].append({"id": "nat", "time": "25:00", "items": ["Zopiclon 7,5 mg"]})
    assert _problems(doc) == ['dose[2].time: "25:00" is not a time of day (HH:MM)']


def test_every_problem_reported():
    doc = _doc(
        schema=2,
        citizen="",
        timezone="Europe/Paris",
        language="sv",
        start="2026-02-30",
        compartments=0,
        alerts={"early_min": 301, "louder": 5},
    )
    doc["dose"][0]["days"] = ["mon", "funday"]
    doc["dose"][1]["itmes"] = doc["dose"][1].pop("items")
    p = _problems(doc)
    _has(p, "schema: 2 is not a schema")
    _has(p, "citizen: must not be empty")
    _has(
        p,
        'timezone: "Europe/Paris" is not a known zone; use one of: Europe/Berlin, '
        "Europe/Copenhagen",
    )
    _has(p, "language:")
    _has(p, 'start: "2026-02-30" is not a date')
    _has(p, "compartments: 0 is out of range (1 to 56)")
    _has(p, "alerts.early_min: 301 is out of range (0 to 300 min)")
    _has(p, 'alerts.louder: unknown key; did you mean "louder_every_min"?')
    _has(p, 'dose[0].days[1]: "funday" is not a weekday')
    _has(p, 'dose[1].itmes: unknown key; did you mean "items"?')
    _has(p, "dose[1].items: give at least one item")
    assert len(p) >= 11


def test_cpr_numbers_rejected_everywhere():
    for cpr in ("010170-1234", "0101701234", "010170 1234", "borger 010170-1234"):
        _has(_problems(_doc(citizen=cpr)), "citizen: looks like a CPR number")
    doc = _doc()
    doc["dose"][0]["items"] = [{"name": "til 1212121212"}]
    _has(_problems(doc), "dose[0].items[0].name: looks like a CPR number")
    assert not schedule.looks_like_cpr("+45 12 34 56 78")
    assert not schedule.looks_like_cpr("Metformin 500 mg")
    assert not schedule.looks_like_cpr("12345678901")  # 11 digits: not a CPR shape
    assert schedule.looks_like_cpr("x311299-9999y")


def test_structural_rejections():
    _has(_problems(_doc(dose=[])), "dose: the schedule has no doses")
    _has(_problems(_doc(end="2026-10-01")), 'end: "2026-10-01" is before the start')
    d = _doc()
    d["dose"][1]["id"] = "morgen"
    _has(_problems(d), 'dose[1].id: "morgen" is already used by dose[0]')
    d = _doc()
    d["dose"][1]["time"] = "08:00"
    _has(_problems(d), '"morgen" and "aften" are both at 08:00')
    d = _doc(prn=[{"id": "morgen", "name": "Pamol", "min_interval_h": 6, "max_per_24h": 4}])
    _has(_problems(d), 'prn[0].id: "morgen" is already used')
    d = _doc()
    d["dose"][0]["notify_min"] = 200
    _has(_problems(d), "dose[0].notify_min: the care team would hear of a miss")
    for junk in (None, [], "schema = 1", 7, {"": 1}, {1: 2}):
        _problems(junk)


def test_overlapping_windows_rejected():
    d = _doc()
    d["dose"][1]["time"] = "09:30"  # 08:00 is open until 10:00; 09:30 opens at 09:00
    _has(_problems(d), '"morgen" (08:00) and "aften" (09:30) overlap on the same day')
    d["dose"][0]["late_lock_min"] = 60  # 08:00-09:00, then 09:00-11:30: touching is fine
    schedule.validate(d)
    # across midnight: 23:30 open until 01:30 next day; 01:00 opens at 00:30
    d = _doc()
    d["dose"][0]["time"] = "23:30"
    d["dose"][1]["time"] = "01:00"
    _has(_problems(d), "overlap when aften falls on the next day")


def test_overlap_respects_day_patterns():
    # same minute but never on the same day: allowed
    d = _doc()
    d["dose"][0]["days"] = ["mon", "wed"]
    d["dose"][1]["days"] = ["tue", "thu"]
    d["dose"][1]["time"] = "08:00"
    schedule.validate(d)
    # every 2 days from the start vs. every 2 days: they always meet on day 0
    d["dose"][0]["days"] = {"every": 2}
    d["dose"][1]["days"] = {"every": 3}
    _has(_problems(d), "are both at 08:00")
    # Monday 23:30 and Tuesday 00:30 meet across midnight; Monday 00:30 does not follow
    d = _doc()
    d["dose"][0].update({"time": "23:30", "days": ["mon"]})
    d["dose"][1].update({"time": "00:30", "days": ["mon"]})
    schedule.validate(d)
    d["dose"][1]["days"] = ["tue"]
    _has(_problems(d), "overlap when aften falls on the next day")


def test_reminders_may_sit_inside_a_dose_window():
    d = _doc()
    d["dose"].append(
        {"id": "dropper", "time": "08:30", "reminder_only": True, "items": ["Xalatan øjendråber"]}
    )
    n = schedule.validate(d)
    assert [x["reminder_only"] for x in n["dose"]] == [False, True, False]
    d["dose"][2]["time"] = "08:00"
    _has(_problems(d), "are both at 08:00")


def test_spring_forward_squeeze_rejected():
    # 01:30 open until 03:30 wall; 04:00 opens at 03:30 wall: touching on the wall clock,
    # but on the spring day 01:30 CET + 120 min is 04:30 CEST, so both would be open.
    d = _doc()
    d["dose"][0]["time"] = "01:30"
    d["dose"][1]["time"] = "04:00"
    _has(_problems(d), "would overlap on a day the clocks change")
    # the same pair in UTC (no daylight saving) is fine
    d["timezone"] = "UTC"
    schedule.validate(d)
    # 01:50 open until 02:00 wall; 02:40 is in the gap and fires at 03:00: fine
    d = _doc()
    d["dose"][0].update({"time": "01:50", "late_lock_min": 10})
    d["dose"][1].update({"time": "02:40", "early_min": 0})
    schedule.validate(d)
    # but 01:50 open until 02:30 wall: on the spring day, 01:50 CET + 40 min = 03:30 CEST,
    # after 02:40 has fired at 03:00
    d["dose"][0]["late_lock_min"] = 40
    _has(_problems(d), "would overlap on a day the clocks change")


def test_day_patterns_normalised():
    for given, want in (
        ("daily", "daily"),
        ("dagligt", "daily"),
        (None, "daily"),
        (["Mon", "tir", "søn"], ["mon", "tue", "sun"]),
        (["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "daily"),
        ({"every": 1}, "daily"),
        ({"every": 14}, {"every": 14}),
    ):
        d = _doc()
        d["dose"][0]["days"] = given
        assert schedule.validate(d)["dose"][0]["days"] == want, given
    for bad in ("weekly", [], ["mon", "mon"], {"every": 0}, {"every": 91}, {"each": 2}, 3):
        d = _doc()
        d["dose"][0]["days"] = bad
        _has(_problems(d), "dose[0].days")


def test_counts():
    for bad in (0, 0.25, 21, -1, "1", True):
        d = _doc()
        d["dose"][0]["items"] = [{"name": "Furix", "count": bad}]
        _has(_problems(d), "dose[0].items[0].count")


def test_validation_survives_odd_values():
    odd = (None, True, 1.5, -7, "", "x" * 500, [], {}, [[[]]], {"a": {"b": {}}}, float("inf"))
    for v in odd:
        for key in (
            "schema",
            "citizen",
            "timezone",
            "language",
            "start",
            "end",
            "compartments",
            "alerts",
            "dose",
            "prn",
            "tz_rule",
        ):
            try:
                schedule.validate(_doc(**{key: v}))
            except schedule.ScheduleError as e:
                assert e.problems
        d = _doc()
        for key in ("id", "time", "days", "items", "reminder_only", "early_min"):
            d["dose"][0][key] = v
            try:
                schedule.validate(d)
            except schedule.ScheduleError as e:
                assert e.problems


def test_two_doses_in_the_spring_gap_rejected_even_reminders():
    # 02:15 and 02:45 both fire at 03:00 on the spring day: one would be lost
    d = _doc()
    d["dose"][0].update({"time": "02:15", "reminder_only": True})
    d["dose"][1].update({"time": "02:45", "reminder_only": True})
    _has(_problems(d), "would fire at the same instant on the day the clocks go forward")
    d["dose"][1]["time"] = "03:00"
    _has(_problems(d), "would fire at the same instant")
    d["dose"][1]["time"] = "03:01"
    schedule.validate(d)


def test_empty_key_named_in_path():
    _has(_problems(_doc(**{"": 1})), '"": unknown key')
