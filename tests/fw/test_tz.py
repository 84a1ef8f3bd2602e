"""POSIX TZ rules and the DST dose policy: runs under pytest and under MicroPython."""

from dosiscore import civil, tz

CPH = "CET-1CEST,M3.5.0,M10.5.0/3"


def _utc(y, mo, d, h=0, mi=0, s=0):
    return civil.days_from_civil(y, mo, d) * civil.DAY + h * 3600 + mi * 60 + s


def _wall(y, mo, d, h=0, mi=0):
    return _utc(y, mo, d, h, mi)


def test_parse_forms():
    z = tz.Tz(CPH)
    assert (z.std_off, z.dst_off, z.std_name, z.dst_name) == (3600, 7200, "CET", "CEST")
    assert tz.Tz("UTC0").offset(123456789) == 0
    assert not tz.Tz("UTC0").has_dst
    assert tz.Tz("<+0330>-3:30").std_off == 12600
    assert tz.Tz("EST5EDT,M3.2.0,M11.1.0").std_off == -18000
    # explicit DST offset, Julian day rules, negative and >24 h rule times
    z = tz.Tz("XXX3YYY2,J60/-1,300/25")
    assert z.std_off == -10800 and z.dst_off == -7200
    assert z.transitions(2025) is not None


def test_parse_errors_are_tzerror():
    bad = (
        "",
        "C",
        "CET",
        "CET-1CEST",
        "CET-1CEST,M3.5.0",
        "CET-1CEST,M13.5.0,M10.5.0",
        "CET-1CEST,M3.6.0,M10.5.0",
        "CET-1CEST,M3.5.7,M10.5.0",
        "CET-1CEST,J0,J100",
        "CET-1CEST,M3.5.0,M10.5.0/3x",
        "CET-25",
        "<CET-1",
        "CET-1CEST-1,M3.5.0,M10.5.0",
        7,
    )
    for rule in bad:
        try:
            tz.Tz(rule)
        except tz.TzError:
            continue
        raise AssertionError("accepted %r" % (rule,))


def test_copenhagen_transitions():
    z = tz.Tz(CPH)
    assert z.transitions(2026) == (_utc(2026, 3, 29, 1), _utc(2026, 10, 25, 1))
    assert z.transitions(2024) == (_utc(2024, 3, 31, 1), _utc(2024, 10, 27, 1))
    # a year where the last Sunday is the 25th of March
    assert z.transitions(2029) == (_utc(2029, 3, 25, 1), _utc(2029, 10, 28, 1))
    t = _utc(2026, 3, 29, 1)
    assert z.offset(t - 1) == 3600 and z.offset(t) == 7200
    t = _utc(2026, 10, 25, 1)
    assert z.offset(t - 1) == 7200 and z.offset(t) == 3600


def test_other_zones():
    london = tz.Tz(tz.ZONES["Europe/London"])
    assert london.transitions(2026) == (_utc(2026, 3, 29, 1), _utc(2026, 10, 25, 1))
    helsinki = tz.Tz(tz.ZONES["Europe/Helsinki"])
    assert helsinki.transitions(2026) == (_utc(2026, 3, 29, 1), _utc(2026, 10, 25, 1))
    assert helsinki.offset(_utc(2026, 7, 1)) == 3 * 3600
    # southern hemisphere (summer time across the new year): Sydney
    syd = tz.Tz("AEST-10AEDT,M10.1.0,M4.1.0/3")
    assert syd.offset(_utc(2026, 1, 15)) == 11 * 3600
    assert syd.offset(_utc(2026, 7, 15)) == 10 * 3600


def test_spring_gap_fires_at_transition():
    z = tz.Tz(CPH)
    # the PRODUCT example: 02:30 on 2026-03-29 fires at 01:00 UTC = 03:00 CEST
    assert z.utc(_wall(2026, 3, 29, 2, 30)) == _utc(2026, 3, 29, 1)
    assert z.utc(_wall(2026, 3, 29, 2, 0)) == _utc(2026, 3, 29, 1)
    assert z.utc(_wall(2026, 3, 29, 2, 59)) == _utc(2026, 3, 29, 1)
    assert z.utc(_wall(2026, 3, 29, 1, 59)) == _utc(2026, 3, 29, 0, 59)
    assert z.utc(_wall(2026, 3, 29, 3, 0)) == _utc(2026, 3, 29, 1)


def test_autumn_repeat_fires_at_first_occurrence():
    z = tz.Tz(CPH)
    assert z.utc(_wall(2026, 10, 25, 2, 30)) == _utc(2026, 10, 25, 0, 30)
    assert z.utc(_wall(2026, 10, 25, 2, 0)) == _utc(2026, 10, 25, 0, 0)
    assert z.utc(_wall(2026, 10, 25, 3, 0)) == _utc(2026, 10, 25, 2, 0)
    assert z.utc(_wall(2026, 10, 25, 1, 59)) == _utc(2026, 10, 24, 23, 59)


def test_round_trip_every_hour_of_a_year():
    z = tz.Tz(CPH)
    t = _utc(2027, 1, 1)
    end = _utc(2028, 1, 1)
    while t < end:
        wall = z.local(t)
        back = z.utc(wall)
        # equal, except in the repeated hour where the first occurrence is chosen
        assert back == t or (back == t - 3600 and z.offset(back) == 7200), t
        t += 3600


def test_known_zones_parse():
    for name in tz.ZONES:
        tz.Tz(tz.ZONES[name])
    assert tz.zone_rule("Europe/Copenhagen") == CPH
    assert tz.zone_rule("Europe/Paris") is None
