"""The planner (which dose is due when): runs under pytest and under MicroPython."""

from dosiscore import civil, planner, schedule


def _utc(y, mo, d, h=0, mi=0):
    return civil.days_from_civil(y, mo, d) * civil.DAY + h * 3600 + mi * 60


def _sched(doses, start="2026-01-01", end=None, timezone="Europe/Copenhagen"):
    doc = {
        "schema": 1,
        "citizen": "borger-0042",
        "start": start,
        "timezone": timezone,
        "dose": doses,
    }
    if end:
        doc["end"] = end
    return schedule.validate(doc)


def _dose(id_, time, days="daily", **kw):
    d = {"id": id_, "time": time, "days": days, "items": ["Metformin 500 mg"]}
    d.update(kw)
    return d


FOUR = [
    _dose("morgen", "08:00"),
    _dose("middag", "12:00"),
    _dose("aften", "18:00"),
    _dose("nat", "22:00", early_min=15, late_lock_min=60),
]


def test_a_plain_day():
    s = _sched(FOUR)
    occ = planner.occurrences(s, _utc(2026, 1, 5), _utc(2026, 1, 6))
    # January: CET = UTC+1; 22:00 on the 4th is 21:00Z on the 4th (outside), so:
    assert occ == [
        (_utc(2026, 1, 5, 7), "morgen"),
        (_utc(2026, 1, 5, 11), "middag"),
        (_utc(2026, 1, 5, 17), "aften"),
        (_utc(2026, 1, 5, 21), "nat"),
    ]


def test_summer_time_keeps_wall_clock():
    s = _sched(FOUR)
    occ = planner.occurrences(s, _utc(2026, 7, 1, 0), _utc(2026, 7, 1, 12))
    assert occ == [(_utc(2026, 7, 1, 6), "morgen"), (_utc(2026, 7, 1, 10), "middag")]


def test_spring_day_gap_dose_fires_once_at_transition():
    s = _sched([_dose("nat", "02:30", early_min=0, late_lock_min=20), _dose("morgen", "08:00")])
    occ = planner.occurrences(s, _utc(2026, 3, 28, 12), _utc(2026, 3, 30, 0))
    assert occ == [(_utc(2026, 3, 29, 1), "nat"), (_utc(2026, 3, 29, 6), "morgen")]


def test_autumn_day_repeated_hour_fires_once_first_occurrence():
    s = _sched([_dose("nat", "02:30", early_min=0, late_lock_min=20)])
    occ = planner.occurrences(s, _utc(2026, 10, 24, 12), _utc(2026, 10, 26, 0))
    assert occ == [(_utc(2026, 10, 25, 0, 30), "nat")]


def test_every_local_day_has_each_daily_dose_once_through_dst_days():
    s = _sched(FOUR + [_dose("sent", "02:30", early_min=0, late_lock_min=30)])
    plan = planner.Plan(s)
    occ = planner.occurrences(plan, _utc(2026, 1, 1), _utc(2027, 1, 1))
    seen = {}
    for u, i in occ:
        key = (plan.local_day(u), i)
        assert key not in seen, key
        seen[key] = u
    days = civil.days_from_civil(2027, 1, 1) - civil.days_from_civil(2026, 1, 1)
    assert len(occ) == days * 5
    assert occ == sorted(occ)


def test_bounds_weekdays_and_every_n():
    s = _sched(
        [_dose("man", "09:00", ["mon"]), _dose("hver3", "20:00", {"every": 3})],
        start="2026-02-26",
        end="2026-03-09",
    )
    occ = planner.occurrences(s, _utc(2026, 1, 1), _utc(2026, 12, 31))
    got = [(civil.format_date((u + 3600) // civil.DAY), i) for u, i in occ]
    assert got == [
        ("2026-02-26", "hver3"),
        ("2026-03-01", "hver3"),
        ("2026-03-02", "man"),
        ("2026-03-04", "hver3"),
        ("2026-03-07", "hver3"),
        ("2026-03-09", "man"),
    ]


def test_leap_day_and_year_end():
    s = _sched([_dose("aften", "23:30", early_min=0, late_lock_min=20)], start="2027-12-30")
    occ = planner.occurrences(s, _utc(2028, 2, 28), _utc(2028, 3, 2))
    assert [civil.format_iso(u, 3600) for u, _ in occ] == [
        "2028-02-28T23:30:00+01:00",
        "2028-02-29T23:30:00+01:00",
        "2028-03-01T23:30:00+01:00",
    ]
    occ = planner.occurrences(s, _utc(2027, 12, 31, 12), _utc(2028, 1, 1, 23))
    assert [civil.format_iso(u, 3600) for u, _ in occ] == [
        "2027-12-31T23:30:00+01:00",
        "2028-01-01T23:30:00+01:00",
    ]


def test_next_due():
    s = _sched(FOUR, start="2026-03-01", end="2026-03-31")
    t = _utc(2026, 3, 10, 7)  # exactly at morgen (08:00 CET)
    assert planner.next_due(s, t) == (t, "morgen")
    assert planner.next_due(s, t + 1) == (_utc(2026, 3, 10, 11), "middag")
    assert planner.next_due(s, _utc(2026, 3, 10, 21, 1)) == (_utc(2026, 3, 11, 7), "morgen")
    assert planner.next_due(s, _utc(2026, 2, 1)) == (_utc(2026, 3, 1, 7), "morgen")
    # the last dose (22:00 CEST on the 31st), then nothing
    assert planner.next_due(s, _utc(2026, 3, 31, 19)) == (_utc(2026, 3, 31, 20), "nat")
    assert planner.next_due(s, _utc(2026, 3, 31, 20, 1)) is None


def test_next_due_sparse_pattern():
    s = _sched([_dose("b12", "10:00", {"every": 90})], start="2026-01-05")
    assert planner.next_due(s, _utc(2026, 1, 5, 10)) == (_utc(2026, 4, 5, 8), "b12")


def test_empty_and_reversed_ranges():
    s = _sched(FOUR)
    assert planner.occurrences(s, _utc(2026, 5, 1), _utc(2026, 5, 1)) == []
    assert planner.occurrences(s, _utc(2026, 5, 2), _utc(2026, 5, 1)) == []


def test_prn_allowed_at():
    rule = {"id": "smerte", "name": "Pamol", "min_interval_h": 6, "max_per_24h": 3}
    now = _utc(2026, 5, 1, 12)
    assert planner.prn_allowed_at(rule, [], now) == now
    assert planner.prn_allowed_at(rule, [now - 3600], now) == now + 5 * 3600
    # three in the last 24 h: the oldest must leave the window
    taken = [now - 20 * 3600, now - 13 * 3600, now - 7 * 3600]
    assert planner.prn_allowed_at(rule, taken, now) == now + 4 * 3600
    # a future-dated record (the clock went back) counts as taken just now, never as absent
    assert planner.prn_allowed_at(rule, [now + 3600], now) == now + 6 * 3600
