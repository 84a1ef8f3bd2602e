"""dosiscore.tz checked against CPython's zoneinfo (IANA tzdata): every known zone, 2024-2035."""

import datetime
import zoneinfo

import pytest

from dosiscore import civil, tz

YEARS = range(2024, 2036)
ZONE_NAMES = sorted(tz.ZONES)
# The known zones with summer time come in three distinct rules; one zone of each.
DST_ZONES = ("Europe/Copenhagen", "Europe/London", "Europe/Helsinki")
EPOCH = datetime.datetime(1970, 1, 1)
SIX_HOURS = 6 * 3600


def _utc(y, mo, d, h=0, mi=0, s=0):
    return civil.days_from_civil(y, mo, d) * civil.DAY + h * 3600 + mi * 60 + s


def _zi_offset(zi, utc):
    """zoneinfo's offset (seconds east) at Unix time `utc`."""
    return int(datetime.datetime.fromtimestamp(utc, zi).utcoffset().total_seconds())


def _zi_transitions(zi, year):
    """[(UTC instant, offset from then on)] of every offset change in `year`, to the second.

    Scans the year a day at a time (offsets only change at transitions) and bisects each day
    where the offset differs at its two ends.
    """
    out = []
    t, end = _utc(year, 1, 1), _utc(year + 1, 1, 1)
    off = _zi_offset(zi, t)
    while t < end:
        nxt = min(t + civil.DAY, end)
        noff = _zi_offset(zi, nxt)
        if noff != off:
            lo, hi = t, nxt  # offset(lo) == off, offset(hi) != off
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _zi_offset(zi, mid) == off:
                    lo = mid
                else:
                    hi = mid
            out.append((hi, _zi_offset(zi, hi)))
            off = noff
        t = nxt
    return out


def _naive(wall):
    return EPOCH + datetime.timedelta(seconds=wall)


def _zi_policy_utc(zi, wall, transitions):
    """What the dose policy says `Tz.utc(wall)` must be, from zoneinfo alone.

    zoneinfo follows PEP 495: fold=0 is the earlier reading of a repeated time, and for a
    time in a gap fold=0 uses the offset before the jump (so it lands after the jump).
    """
    dt = _naive(wall)
    u0 = int(dt.replace(tzinfo=zi, fold=0).timestamp())
    u1 = int(dt.replace(tzinfo=zi, fold=1).timestamp())
    exists0 = datetime.datetime.fromtimestamp(u0, zi).replace(tzinfo=None) == dt
    if exists0:
        return u0, ("repeated" if u0 != u1 else "normal")
    # A gap: the policy fires at the instant the clock jumped over this wall time.
    lo, hi = min(u0, u1), max(u0, u1)
    inside = [t for t, _ in transitions if lo < t <= hi]
    assert len(inside) == 1, (wall, lo, hi, transitions)
    return inside[0], "gap"


@pytest.fixture(scope="module")
def oracle():
    """{zone name: {year: zoneinfo transitions}}, computed once for the whole module."""
    return {
        name: {y: _zi_transitions(zoneinfo.ZoneInfo(name), y) for y in YEARS}
        for name in ZONE_NAMES
    }


def test_dst_zones_are_known():
    for name in DST_ZONES:
        assert name in tz.ZONES
        assert tz.Tz(tz.ZONES[name]).has_dst


@pytest.mark.parametrize("name", ZONE_NAMES)
def test_transition_instants(name, oracle):
    z = tz.Tz(tz.ZONES[name])
    for y in YEARS:
        expected = oracle[name][y]
        got = z.transitions(y)
        if not expected:
            assert got is None, (name, y)
            continue
        # Northern hemisphere: summer time starts, then ends, once each a year.
        assert len(expected) == 2, (name, y, expected)
        (ts, off_s), (te, off_e) = expected
        assert got == (ts, te), (name, y, got, expected)
        assert (off_s, off_e) == (z.dst_off, z.std_off), (name, y)


@pytest.mark.parametrize("name", ZONE_NAMES)
def test_offset_at_transitions_and_through_the_year(name, oracle):
    zi = zoneinfo.ZoneInfo(name)
    z = tz.Tz(tz.ZONES[name])
    for y in YEARS:
        for t, _ in oracle[name][y]:
            for u in (t - 1, t, t + 1):
                assert z.offset(u) == _zi_offset(zi, u), (name, civil.format_iso(u))
        # Every 6 hours, starting off the hour so both sides of each hour boundary are seen.
        u, end = _utc(y, 1, 1) - 1, _utc(y + 1, 1, 1)
        while u < end:
            assert z.offset(u) == _zi_offset(zi, u), (name, civil.format_iso(u))
            assert z.local(u) == u + _zi_offset(zi, u)
            u += SIX_HOURS


@pytest.mark.parametrize("name", ZONE_NAMES)
def test_local_to_utc_policy_on_transition_days(name, oracle):
    zi = zoneinfo.ZoneInfo(name)
    z = tz.Tz(tz.ZONES[name])
    kinds = {"normal": 0, "gap": 0, "repeated": 0}
    for y in YEARS:
        trans = oracle[name][y]
        days = {(t + off) // civil.DAY for t, off in trans}
        for day in sorted(days):
            # Every 5 wall minutes of the whole transition day, and its last minute.
            walls = list(range(day * civil.DAY, (day + 1) * civil.DAY, 300))
            walls.append((day + 1) * civil.DAY - 60)
            for wall in walls:
                expected, kind = _zi_policy_utc(zi, wall, trans)
                kinds[kind] += 1
                assert z.utc(wall) == expected, (name, kind, civil.format_iso(wall)[:-1])
    if z.has_dst:
        # 12 one-hour gaps and 12 repeated hours, 12 five-minute steps each.
        assert kinds["gap"] == kinds["repeated"] == 12 * 12
    else:
        assert kinds["gap"] == kinds["repeated"] == 0


@pytest.mark.parametrize("name", ZONE_NAMES)
def test_local_to_utc_through_the_year(name, oracle):
    zi = zoneinfo.ZoneInfo(name)
    z = tz.Tz(tz.ZONES[name])
    for y in YEARS:
        trans = oracle[name][y]
        wall, end = _utc(y, 1, 1) + 17 * 60, _utc(y + 1, 1, 1)
        while wall < end:
            expected, _ = _zi_policy_utc(zi, wall, trans)
            assert z.utc(wall) == expected, (name, civil.format_iso(wall)[:-1])
            wall += SIX_HOURS + 60


def test_product_example_copenhagen_2026():
    """PRODUCT.md's DST policy: a 02:30 dose in the spring gap fires at the transition instant
    (01:00Z = 03:00 CEST); in the repeated autumn hour it fires once, at 02:30 CEST."""
    z = tz.Tz(tz.ZONES["Europe/Copenhagen"])
    zi = zoneinfo.ZoneInfo("Europe/Copenhagen")
    spring = z.utc(_utc(2026, 3, 29, 2, 30))
    assert civil.format_iso(spring) == "2026-03-29T01:00:00Z"
    assert datetime.datetime.fromtimestamp(spring, zi).isoformat() == "2026-03-29T03:00:00+02:00"
    autumn = z.utc(_utc(2026, 10, 25, 2, 30))
    assert civil.format_iso(autumn) == "2026-10-25T00:30:00Z"
    assert datetime.datetime.fromtimestamp(autumn, zi).isoformat() == "2026-10-25T02:30:00+02:00"
    assert civil.format_iso(autumn, z.offset(autumn)) == "2026-10-25T02:30:00+02:00"
    # The second 02:30 (CET) exists too, an hour later; the policy never picks it.
    assert z.local(autumn + 3600) == z.local(autumn)
