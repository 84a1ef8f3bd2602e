"""Calendar arithmetic: runs under pytest (CPython) and tests/fw/mprun.py (MicroPython)."""

from dosiscore import civil


def test_epoch_and_known_days():
    assert civil.days_from_civil(1970, 1, 1) == 0
    assert civil.days_from_civil(2000, 3, 1) == 11017
    assert civil.days_from_civil(2026, 11, 23) == 20780
    assert civil.civil_from_days(20780) == (2026, 11, 23)
    assert civil.civil_from_days(-1) == (1969, 12, 31)


def test_round_trip_across_leap_years_and_month_ends():
    z = civil.days_from_civil(2023, 12, 25)
    end = civil.days_from_civil(2036, 1, 5)
    prev = None
    while z < end:
        y, m, d = civil.civil_from_days(z)
        assert civil.days_from_civil(y, m, d) == z
        assert 1 <= d <= civil.days_in_month(y, m)
        if prev is not None:
            # consecutive days: either the next day of the month or the 1st of the next month
            py, pm, pd = prev
            assert (y, m, d) == (py, pm, pd + 1) or (d == 1 and pd == civil.days_in_month(py, pm))
        prev = (y, m, d)
        z += 1


def test_leap_days_and_weekdays():
    assert civil.parse_date("2028-02-29") == civil.days_from_civil(2028, 2, 29)
    assert civil.parse_date("2027-02-29") is None
    assert civil.parse_date("2100-02-29") is None
    assert civil.parse_date("2000-02-29") is not None
    # 2026-03-29 is a Sunday (6); 1970-01-01 a Thursday (3)
    assert civil.weekday(civil.days_from_civil(2026, 3, 29)) == 6
    assert civil.weekday(0) == 3


def test_parse_date_rejects_non_dates():
    for bad in (
        "",
        "2026-1-01",
        "2026/01/01",
        "2026-00-10",
        "2026-13-01",
        "2026-04-31",
        "20260101",
        "abcd-ef-gh",
        None,
        20260101,
        "2026-01-011",
    ):
        assert civil.parse_date(bad) is None, bad


def test_parse_hhmm():
    assert civil.parse_hhmm("00:00") == 0
    assert civil.parse_hhmm("8:05") == 485
    assert civil.parse_hhmm("23:59") == 1439
    for bad in ("24:00", "25:00", "12:60", "1200", "12:5", ":30", "-1:00", "", None, 8, "ab:cd"):
        assert civil.parse_hhmm(bad) is None, bad
    assert civil.format_hhmm(485) == "08:05"


def test_format_iso():
    t = civil.days_from_civil(2026, 3, 29) * civil.DAY + 3600
    assert civil.format_iso(t) == "2026-03-29T01:00:00Z"
    assert civil.format_iso(t, 7200) == "2026-03-29T03:00:00+02:00"
    assert civil.format_iso(t, -12600) == "2026-03-28T21:30:00-03:30"
    assert civil.format_iso(-1) == "1969-12-31T23:59:59Z"
