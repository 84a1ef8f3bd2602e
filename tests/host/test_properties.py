"""Hypothesis properties of the pure core: calendar, time zones, planner, validator, PRN, CPR."""

import copy
import datetime
import json
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from dosiscore import civil, planner, schedule, tz

ROOT = Path(__file__).resolve().parents[2]
UNIX_EPOCH_ORDINAL = 719163  # datetime.date(1970, 1, 1).toordinal()
DAY = civil.DAY
YEARS = range(2024, 2036)
ZONE_NAMES = sorted(tz.ZONES)
# One zone per distinct rule: what differs between them is when the clock jumps.
RULE_ZONES = ("Europe/Copenhagen", "Europe/London", "Europe/Helsinki", "UTC")
TZS = {name: tz.Tz(rule) for name, rule in tz.ZONES.items()}


def _utc(y, mo, d, h=0, mi=0, s=0):
    return civil.days_from_civil(y, mo, d) * DAY + h * 3600 + mi * 60 + s


UTC_LO, UTC_HI = _utc(2024, 1, 1), _utc(2036, 1, 1)
FAST = settings(max_examples=100, deadline=None)
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# Calendar


@settings(max_examples=1000, deadline=None)
@given(st.dates())
def test_calendar_agrees_with_datetime(d):
    z = d.toordinal() - UNIX_EPOCH_ORDINAL
    assert civil.days_from_civil(d.year, d.month, d.day) == z
    assert civil.civil_from_days(z) == (d.year, d.month, d.day)
    assert civil.weekday(z) == d.weekday()
    assert civil.days_in_month(d.year, d.month) >= d.day
    assert civil.format_date(z) == d.isoformat()
    assert civil.parse_date(d.isoformat()) == z


# 0000-03-01: where the era arithmetic once went wrong (test_calendar_before_0000_03_01).
YEAR_0_MARCH_1 = -719468


@settings(max_examples=1000, deadline=None)
@given(st.integers(YEAR_0_MARCH_1, 10**10))
def test_calendar_round_trip_far_beyond_datetime(z):
    # Years past 9999 too: the algorithms have no upper range limit.
    y, m, d = civil.civil_from_days(z)
    assert 1 <= m <= 12 and 1 <= d <= civil.days_in_month(y, m)
    assert civil.days_from_civil(y, m, d) == z
    assert 0 <= civil.weekday(z) <= 6
    assert civil.weekday(z + 1) == (civil.weekday(z) + 1) % 7
    # The next day is the next date.
    y2, m2, d2 = civil.civil_from_days(z + 1)
    if d < civil.days_in_month(y, m):
        assert (y2, m2, d2) == (y, m, d + 1)
    elif m < 12:
        assert (y2, m2, d2) == (y, m + 1, 1)
    else:
        assert (y2, m2, d2) == (y + 1, 1, 1)


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(min_value=datetime.datetime(1, 1, 2), max_value=datetime.datetime(9999, 12, 30))
)
def test_format_iso_agrees_with_datetime(dt):
    dt = dt.replace(microsecond=0)
    t = (dt - datetime.datetime(1970, 1, 1)) // datetime.timedelta(seconds=1)
    assert civil.format_iso(t) == dt.isoformat() + "Z"
    for off in (3600, 7200, -18000, 12600, 0):
        local = dt + datetime.timedelta(seconds=off)
        aware = local.replace(tzinfo=datetime.timezone(datetime.timedelta(seconds=off)))
        assert civil.format_iso(t, off) == aware.isoformat()


@FAST
@given(st.integers(0, 23), st.integers(0, 59))
def test_parse_hhmm_every_time_of_day(h, m):
    assert civil.parse_hhmm(f"{h:02d}:{m:02d}") == h * 60 + m
    assert civil.parse_hhmm(f"{h}:{m:02d}") == h * 60 + m
    assert civil.format_hhmm(h * 60 + m) == f"{h:02d}:{m:02d}"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="0123456789:-+ x", max_size=12),
        st.from_regex(r"[0-9+ ]{0,5}-[0-9]{1,3}-[0-9]{1,3}", fullmatch=True),
        st.from_regex(r"[0-9+ ]{0,3}:[0-9]{1,3}", fullmatch=True),
    )
)
def test_parse_date_and_hhmm_accept_only_their_shapes(text):
    # Whatever they accept is exactly what the formatters write (bar a leading zero).
    z = civil.parse_date(text)
    if z is not None:
        assert civil.format_date(z) == text
    m = civil.parse_hhmm(text)
    if m is not None:
        assert re.fullmatch(r"(?a)([01]?\d|2[0-3]):[0-5]\d", text)
        assert civil.format_hhmm(m) == text.zfill(5)


# ---------------------------------------------------------------------------------------------
# Time zones: UTC -> wall -> UTC, wall -> UTC -> wall, monotonic


def _transitions_near(z, y):
    out = []
    for yy in (y - 1, y, y + 1):
        tr = z.transitions(yy)
        if tr:
            out.extend(tr)
    return out


@st.composite
def zone_and_utc(draw):
    """(zone name, UTC second in 2024-2035), half the time within 2 hours of a transition."""
    name = draw(st.sampled_from(ZONE_NAMES))
    z = TZS[name]
    if z.has_dst and draw(st.booleans()):
        t = draw(st.sampled_from(z.transitions(draw(st.sampled_from(YEARS)))))
        return name, t + draw(st.integers(-7200, 7200))
    return name, draw(st.integers(UTC_LO, UTC_HI - 1))


@st.composite
def zone_and_wall(draw):
    """(zone name, wall second in 2024-2035), half the time within 2 hours of a transition."""
    name, u = draw(zone_and_utc())
    return name, u + TZS[name].std_off + draw(st.sampled_from((0, 0, 3600)))


def _readings(z, wall):
    """Every UTC instant whose local wall time is `wall` (none in a gap, two when repeated)."""
    return sorted({u for u in (wall - z.std_off, wall - z.dst_off) if z.local(u) == wall})


@settings(max_examples=1000, deadline=None)
@given(zone_and_utc())
def test_utc_to_wall_and_back(zu):
    name, u = zu
    z = TZS[name]
    w = z.local(u)
    back = z.utc(w)
    readings = _readings(z, w)
    assert u in readings
    # The first occurrence of a repeated wall time; the instant itself when unambiguous.
    assert back == readings[0]
    assert back <= u
    if len(readings) == 1:
        assert back == u
    else:
        assert readings[1] - readings[0] == z.dst_off - z.std_off


@settings(max_examples=1000, deadline=None)
@given(zone_and_wall())
def test_wall_to_utc_and_back(zw):
    name, w = zw
    z = TZS[name]
    u = z.utc(w)
    readings = _readings(z, w)
    if readings:
        assert z.local(u) == w
        assert u == readings[0]
    else:
        # In the spring gap: the transition instant, when the clock jumped over `w`.
        assert u in _transitions_near(z, civil.civil_from_days(w // DAY)[0])
        assert z.local(u - 1) < w < z.local(u)


@settings(max_examples=1000, deadline=None)
@given(zone_and_wall(), st.integers(0, 3 * 3600))
def test_wall_to_utc_is_monotonic(zw, step):
    # What lets the planner stop at the first day with a dose: later wall, never earlier UTC.
    name, w = zw
    z = TZS[name]
    assert z.utc(w) <= z.utc(w + step)


# ---------------------------------------------------------------------------------------------
# Schedules used by the planner properties


def _example_doc(**changes):
    with open(ROOT / "examples" / "schedule.toml", "rb") as f:
        doc = tomllib.load(f)
    doc.update(changes)
    return doc


def _reminders_doc(zone, times):
    """Reminder-only doses (exempt from the window checks) at the given wall times."""
    return {
        "schema": 1,
        "citizen": "borger-0001",
        "timezone": zone,
        "start": "2024-01-01",
        "dose": [
            {"id": "d" + t.replace(":", ""), "time": t, "reminder_only": True, "items": ["x"]}
            for t in times
        ],
    }


# Times in and around every known zone's spring gap and autumn repeat (01-02, 02-03, 03-04).
EDGE_TIMES = (
    "00:00",
    "00:59",
    "01:00",
    "01:30",
    "02:00",
    "02:30",
    "02:59",
    "03:00",
    "03:30",
    "04:00",
    "23:59",
)
# A dispensed 02:30 dose (with the example's morning and night doses around it).
NIGHT_DOC = {
    "schema": 1,
    "citizen": "borger-0002",
    "start": "2024-01-01",
    "dose": [
        {"id": "nat-0230", "time": "02:30", "items": [{"name": "Morfin 10 mg", "count": 1}]},
        {"id": "morgen", "time": "08:00", "items": ["Metformin 500 mg"]},
        {"id": "nat", "time": "22:00", "early_min": 15, "late_lock_min": 60, "items": ["B"]},
    ],
}
FIXED_DOCS = {
    "example": _example_doc(start="2024-01-01"),
    "night": NIGHT_DOC,
    "weekly": _example_doc(
        start="2024-01-03",
        end="2034-06-30",
        dose=[
            {"id": "a", "time": "2:30", "days": ["man", "tor", "søn"], "items": ["x"]},
            {"id": "b", "time": "21:00", "days": {"every": 3}, "items": ["y"]},
            {"id": "c", "time": "12:00", "days": {"every": 90}, "items": ["z"]},
        ],
    ),
}
# One dose every 90 days: next_due must look far ahead.
FIXED_DOCS["sparse"] = _example_doc(
    start="2024-02-29",
    dose=[{"id": "b12", "time": "08:00", "days": {"every": 90}, "items": ["B12-injektion"]}],
)


def _gap_minutes(zone):
    gap = tz.Tz(tz.ZONES[zone]).spring_gap()
    return (gap[0], gap[0] + gap[1]) if gap else (-1, -1)


# Two doses firing together at a spring transition is refused by validation, so each schedule
# holds the edge times outside the zone's gap plus at most one inside it (one doc per such time).
EDGE_KEYS = []
for _zone in RULE_ZONES:
    _lo, _hi = _gap_minutes(_zone)
    _outside = [t for t in EDGE_TIMES if not _lo <= civil.parse_hhmm(t) <= _hi]
    _inside = [t for t in EDGE_TIMES if _lo <= civil.parse_hhmm(t) <= _hi] or [None]
    for _t in _inside:
        _key = f"edges-{_zone}-{_t}"
        FIXED_DOCS[_key] = _reminders_doc(_zone, _outside + ([_t] if _t else []))
        EDGE_KEYS.append(_key)
FIXED = {k: schedule.validate(v) for k, v in FIXED_DOCS.items()}
FIXED_PLANS = {k: planner.Plan(v) for k, v in FIXED.items()}


# ---------------------------------------------------------------------------------------------
# Planner: one occurrence per local day, at the wall time or by the DST policy


def _daily_sweep(doc):
    """Check every local day 2024-2035 has each (daily) dose exactly once, at its policy time."""
    p = planner.Plan(doc)
    z = p.tz
    first, last = civil.days_from_civil(2024, 1, 1), civil.days_from_civil(2036, 1, 1)
    occ = planner.occurrences(p, z.utc(first * DAY), z.utc(last * DAY))
    times = {d["id"]: civil.parse_hhmm(d["time"]) * 60 for d in doc["dose"]}
    seen = {}
    for u, dose_id in occ:
        day = z.local(u) // DAY
        key = (day, dose_id)
        assert key not in seen, ("twice", civil.format_date(day), dose_id)
        seen[key] = u
        wall = day * DAY + times[dose_id]
        readings = _readings(z, wall)
        if readings:
            # Its wall-clock time; the first occurrence when the autumn hour repeats it.
            assert u == readings[0], (civil.format_iso(u), dose_id)
        else:
            spring = z.transitions(civil.civil_from_days(day)[0])[0]
            assert u == spring, (civil.format_iso(u), dose_id)
    assert len(seen) == (last - first) * len(times)
    return seen


@pytest.mark.parametrize("key", ["example", "night"] + EDGE_KEYS)
def test_each_daily_dose_once_per_local_day(key):
    _daily_sweep(FIXED[key])


@pytest.mark.parametrize("zone", ZONE_NAMES)
def test_dose_at_0230_across_dst(zone):
    doc = dict(NIGHT_DOC, timezone=zone)
    seen = _daily_sweep(schedule.validate(doc))
    z = TZS[zone]
    for y in YEARS:
        tr = z.transitions(y)
        if tr is None:
            continue
        for t in tr:
            day = z.local(t) // DAY
            u = seen[(day, "nat-0230")]
            w = day * DAY + 150 * 60
            if z.std_off == 3600:  # the CET zones: 02:00-03:00 is the gap and the repeat
                if t == tr[0]:
                    assert u == t  # spring: fires once, at the transition (03:00 CEST)
                else:
                    assert u == w - z.dst_off  # autumn: once, at the first 02:30 (CEST)
                    assert z.local(u + 3600) == w  # ...although a second 02:30 exists
    if zone == "Europe/Copenhagen":
        cph = seen[(civil.days_from_civil(2026, 3, 29), "nat-0230")]
        assert civil.format_iso(cph) == "2026-03-29T01:00:00Z"
        cph = seen[(civil.days_from_civil(2026, 10, 25), "nat-0230")]
        assert civil.format_iso(cph) == "2026-10-25T00:30:00Z"


# ---------------------------------------------------------------------------------------------
# Strategies for valid schedules

_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"
ids = st.text(alphabet=_ID_CHARS, min_size=1, max_size=16).filter(
    lambda s: s[0] not in "_-" and not schedule.looks_like_cpr(s)
)
_NAME_CHARS = st.characters(exclude_categories=("Cc", "Cs"))
med_names = st.text(alphabet=_NAME_CHARS, min_size=1, max_size=40).filter(str.strip)


def _day_spellings(n):
    en, da = schedule.WEEKDAYS[n], ("man", "tir", "ons", "tor", "fre", "lør", "søn")[n]
    full = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")[n]
    return [en, en.upper(), en.capitalize(), da, full, full.capitalize()]


day_patterns = st.one_of(
    st.none(),
    st.sampled_from(["daily", "dagligt"]),
    st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True).flatmap(
        lambda ns: st.tuples(*[st.sampled_from(_day_spellings(n)) for n in ns]).map(list)
    ),
    st.builds(lambda n: {"every": n}, st.integers(1, schedule.MAX_EVERY)),
)


items = st.lists(
    st.one_of(
        med_names,
        st.builds(
            lambda n, c: {"name": n, "count": c}, med_names, st.sampled_from([1, 2, 0.5, 1.5, 3.0])
        ),
        st.builds(lambda n: {"name": n}, med_names),
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def schedule_docs(draw):
    """A schedule document that is likely valid: each dose owns a 2-hour slot of the day and
    (mostly) windows short enough to stay inside it. Validation still decides."""
    n_dose = draw(st.integers(1, 8))
    n_prn = draw(st.integers(0, 3))
    all_ids = draw(st.lists(ids, min_size=n_dose + n_prn, max_size=n_dose + n_prn, unique=True))
    slots = draw(st.lists(st.integers(0, 11), min_size=n_dose, max_size=n_dose, unique=True))
    doc = {"schema": 1, "citizen": f"borger-{draw(st.integers(0, 9999)):04d}"}
    if draw(st.booleans()):
        doc["timezone"] = draw(st.sampled_from(ZONE_NAMES))
    if draw(st.booleans()):
        doc["language"] = draw(st.sampled_from(schedule.LANGUAGES))
    start = draw(st.dates(datetime.date(2024, 1, 1), datetime.date(2035, 12, 31)))
    doc["start"] = start.isoformat()
    if draw(st.booleans()):
        doc["end"] = (start + datetime.timedelta(days=draw(st.integers(0, 800)))).isoformat()
    if draw(st.booleans()):
        doc["compartments"] = draw(st.integers(8, 56))
    if draw(st.integers(0, 4)):
        late = draw(st.integers(5, 60))
        doc["alerts"] = {
            "early_min": draw(st.integers(0, 30)),
            "late_lock_min": late,
            "notify_min": draw(st.integers(5, late)),
            "louder_every_min": draw(st.integers(1, 60)),
        }
    doses = []
    for i, slot in enumerate(slots):
        t = slot * 120 + draw(st.integers(0, 29))
        fmt = draw(st.sampled_from(["%02d:%02d", "%d:%02d"]))
        d = {"id": all_ids[i], "time": fmt % (t // 60, t % 60), "items": draw(items)}
        days = draw(day_patterns)
        if days is not None:
            d["days"] = days
        if draw(st.integers(0, 3)) == 0:
            d["reminder_only"] = True
        if "alerts" not in doc or draw(st.integers(0, 3)) == 0:
            late = draw(st.integers(5, 60))
            d["early_min"] = draw(st.integers(0, 30))
            d["late_lock_min"] = late
            d["notify_min"] = draw(st.integers(5, late))
        doses.append(d)
    doc["dose"] = doses
    doc["prn"] = [
        {
            "id": pid,
            "name": draw(med_names),
            "min_interval_h": draw(st.integers(1, 72)),
            "max_per_24h": draw(st.integers(1, 24)),
        }
        for pid in all_ids[n_dose:]
    ]
    return doc


@st.composite
def valid_docs(draw):
    """(input document, its normalised form)."""
    doc = draw(schedule_docs())
    try:
        norm = schedule.validate(doc)
    except schedule.ScheduleError:
        assume(False)
    return doc, norm


@st.composite
def plans(draw):
    """A compiled plan: one of the fixed schedules or a generated valid one."""
    if draw(st.booleans()):
        return FIXED_PLANS[draw(st.sampled_from(sorted(FIXED_PLANS)))]
    return planner.Plan(draw(valid_docs())[1])


def _shuffled(doc, rnd):
    """The same schedule with its keys, doses, weekdays and as-needed rules in another order."""

    def table(d):
        keys = list(d)
        rnd.shuffle(keys)
        return {k: d[k] for k in keys}

    out = table(doc)
    for k in ("dose", "prn"):
        if k in out:
            lst = [table(x) for x in out[k]]
            rnd.shuffle(lst)
            out[k] = lst
    for d in out.get("dose", []):
        if isinstance(d.get("days"), list):
            d["days"] = rnd.sample(d["days"], len(d["days"]))
    if "alerts" in out:
        out["alerts"] = table(out["alerts"])
    return out


# ---------------------------------------------------------------------------------------------
# Planner properties

nows = st.integers(UTC_LO, UTC_HI - 1)


@SLOW
@given(plans(), nows)
def test_next_due_is_first_occurrence(p, now):
    horizon = now + 400 * DAY
    occ = planner.occurrences(p, now, horizon)
    nd = planner.next_due(p, now)
    assert occ == sorted(occ)
    assert all(now <= u < horizon for u, _ in occ)
    if nd is not None:
        assert nd[0] >= now
    if not occ:
        assert nd is None or nd[0] >= horizon
        return
    assert nd is not None and nd[0] == occ[0][0]
    # Two reminders in one spring gap share an instant: next_due names one of them.
    tied = [o for o in occ if o[0] == occ[0][0]]
    assert nd in tied
    if len(tied) == 1:
        assert nd == occ[0]


@st.composite
def boundaries(draw, p):
    """a < b < c, with b often exactly on (or a second beside) an occurrence or transition."""
    a = draw(st.integers(UTC_LO, UTC_HI - 40 * DAY))
    b = a + draw(st.integers(1, 20 * DAY))
    if draw(st.booleans()):
        near = planner.occurrences(p, a + 1, a + 20 * DAY)
        near += [(t, "") for t in _transitions_near(p.tz, civil.civil_from_days(a // DAY)[0])]
        near = [t for t, _ in near if a < t - 1]
        if near:
            b = draw(st.sampled_from(near)) + draw(st.sampled_from((-1, 0, 1)))
    c = b + draw(st.integers(1, 20 * DAY))
    return a, b, c


@SLOW
@given(st.data())
def test_occurrences_split_at_any_boundary(data):
    # A dose counted in both halves is a double-dose hazard; in neither, a missed dose.
    p = data.draw(plans())
    a, b, c = data.draw(boundaries(p))
    whole = planner.occurrences(p, a, c)
    assert whole == planner.occurrences(p, a, b) + planner.occurrences(p, b, c)
    assert whole == sorted(whole) and all(a <= u < c for u, _ in whole)
    assert len(set(whole)) == len(whole)


def _hhmm(minutes):
    minutes %= 1440
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@st.composite
def small_hours_docs(draw):
    """Generated schedules with some doses moved to 00:00-05:00, around every spring gap."""
    doc = draw(schedule_docs())
    for d in doc["dose"]:
        if draw(st.booleans()):
            d["time"] = _hhmm(draw(st.integers(0, 300)))
    try:
        return schedule.validate(doc)
    except schedule.ScheduleError:
        assume(False)


@st.composite
def gap_pair_docs(draw):
    """Two dispensed doses either side of a spring gap, their wall-clock windows apart by
    0-120 minutes: what the validator's spring-forward check is for."""
    zone = draw(st.sampled_from([n for n in ZONE_NAMES if TZS[n].has_dst]))
    g = TZS[zone].spring_gap()[0]
    ea, la = draw(st.integers(0, 60)), draw(st.integers(5, 120))
    eb, lb = draw(st.integers(0, 60)), draw(st.integers(5, 120))
    ta = draw(st.integers(g - 180, g + 60))
    tb = ta + la + draw(st.integers(0, 120)) + eb
    doc = {
        "schema": 1,
        "citizen": "borger-0003",
        "timezone": zone,
        "start": f"{draw(st.sampled_from(YEARS))}-01-01",
        "dose": [
            {"id": "a", "time": _hhmm(ta), "early_min": ea, "late_lock_min": la},
            {"id": "b", "time": _hhmm(tb), "early_min": eb, "late_lock_min": lb},
        ],
    }
    for d in doc["dose"]:
        d.update(notify_min=5, items=["x"])
    try:
        return schedule.validate(doc)
    except schedule.ScheduleError:
        assume(False)


@settings(max_examples=80, deadline=None)
@given(st.one_of(small_hours_docs(), gap_pair_docs()))
def test_valid_schedules_never_open_two_windows_at_once(norm):
    # Hazard 7: if validation lets two dispensed doses' availability windows overlap in real
    # time (as on the spring-forward day, when an hour of wall clock vanishes), two
    # compartments are open at once: an invitation to a double dose.
    p = planner.Plan(norm)
    win = {
        d["id"]: (d["early_min"] * 60, d["late_lock_min"] * 60)
        for d in norm["dose"]
        if not d["reminder_only"]
    }
    y0 = civil.civil_from_days(p.start)[0]
    spans = [(p.tz.utc(p.start * DAY), p.tz.utc((p.start + 8) * DAY))]
    for y in (y0, y0 + 1):
        for t in p.tz.transitions(y) or ():
            spans.append((t - 3 * DAY, t + 3 * DAY))
    for a, b in spans:
        occ = [(u, i) for u, i in planner.occurrences(p, a, b) if i in win]
        for k, (u1, i1) in enumerate(occ):
            for u2, i2 in occ[k + 1 :]:
                (e1, l1), (e2, l2) = win[i1], win[i2]
                overlap = u1 - e1 < u2 + l2 and u2 - e2 < u1 + l1
                assert not overlap, (i1, civil.format_iso(u1), i2, civil.format_iso(u2))


def _occurs(norm, z, dose):
    """Independent reading of a dose's day pattern: does it occur on local day number z?"""
    start = datetime.date.fromisoformat(norm["start"])
    day = datetime.date.fromordinal(z + UNIX_EPOCH_ORDINAL)
    if day < start or ("end" in norm and day > datetime.date.fromisoformat(norm["end"])):
        return False
    days = dose["days"]
    if days == "daily":
        return True
    if isinstance(days, dict):
        return (day - start).days % days["every"] == 0
    return schedule.WEEKDAYS[day.weekday()] in days


@SLOW
@given(valid_docs(), st.integers(-3, 900), st.integers(1, 10))
def test_generated_schedules_fire_on_their_days(dn, offset, n_days):
    _, norm = dn
    p = planner.Plan(norm)
    z0 = p.start + offset
    occ = planner.occurrences(p, p.tz.utc(z0 * DAY), p.tz.utc((z0 + n_days) * DAY))
    got = sorted((p.tz.local(u) // DAY, i) for u, i in occ)
    want = sorted(
        (z, d["id"]) for z in range(z0, z0 + n_days) for d in norm["dose"] if _occurs(norm, z, d)
    )
    assert got == want


# ---------------------------------------------------------------------------------------------
# Validation never fails with anything but ScheduleError

_KEYS = (
    schedule._TOP_KEYS
    + schedule._DOSE_KEYS
    + schedule._ITEM_KEYS
    + schedule._PRN_KEYS
    + tuple(schedule.ALERT_LIMITS)
    + ("every",)
)
_ODD_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=12)
_NEAR_TEXT = st.sampled_from(
    [
        "",
        " ",
        "08:00",
        "8:00",
        "24:00",
        "23:60",
        "-1:00",
        "daily",
        "dagligt",
        "mon",
        "lør",
        "Mandag",
        "2026-02-29",
        "2028-02-29",
        "2026-13-01",
        "0000-01-01",
        "Europe/Copenhagen",
        "Mars/Olympus",
        "CET-1CEST,M3.5.0,M10.5.0/3",
        "da",
        "en",
        "010190-1234",
        "\uff12\uff10\uff12\uff16-11-01",
        "\u00b2026-01-01",
        "\u00b2:00",
        "\u0660\u0668:\u0660\u0660",
        "a" * 100,
        "\x00",
        "\ud800",
        "\u202e",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-3, 100),
    st.floats(),
    st.sampled_from([0.5, 1.5, 2.0, 1e308, -0.0, float("nan"), float("inf")]),
    _ODD_TEXT,
    _NEAR_TEXT,
    st.dates(),  # TOML gives a date object for an unquoted start = 2026-11-01
    st.times(),
    st.datetimes(),
)
json_like = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(_KEYS) | _ODD_TEXT, children, max_size=3),
    ),
    max_leaves=6,
)


def _table(values, default):
    """A table with any of the known keys (values from `values`, else `default`) and up to two
    unknown ones: junk that still reaches the validator's deeper checks."""
    known = st.fixed_dictionaries({}, optional=values)
    extra = st.dictionaries(_ODD_TEXT, default, max_size=2)
    return st.builds(lambda e, k: {**e, **k}, extra, known)


def _keys(keys, default, **special):
    return {k: special.get(k, default) for k in keys}


item_like = st.one_of(scalars, _table(_keys(schedule._ITEM_KEYS, scalars), scalars))
dose_like = st.one_of(
    scalars,
    _table(
        _keys(
            schedule._DOSE_KEYS,
            scalars,
            items=st.lists(item_like, max_size=3) | json_like,
            days=st.lists(scalars, max_size=3) | json_like,
        ),
        json_like,
    ),
)
prn_like = st.one_of(scalars, _table(_keys(schedule._PRN_KEYS, scalars), scalars))
doc_like = _table(
    _keys(
        schedule._TOP_KEYS,
        scalars,
        alerts=_table(_keys(schedule.ALERT_LIMITS, scalars), scalars) | json_like,
        dose=st.lists(dose_like, max_size=3) | json_like,
        prn=st.lists(prn_like, max_size=2) | json_like,
    ),
    json_like,
)


def _check_validate(doc):
    before = copy.deepcopy(doc)
    try:
        out = schedule.validate(doc)
    except schedule.ScheduleError as e:
        assert isinstance(e.problems, list) and e.problems
        for problem in e.problems:
            assert isinstance(problem, tuple) and len(problem) == 2
            path, sentence = problem
            # (A path may be "" for an empty top-level key: `"" = 1` is valid TOML.)
            assert isinstance(path, str)
            assert isinstance(sentence, str) and sentence
            # The validator's own "this is a bug" fallback must never be reached.
            assert "please report this" not in sentence, problem
        assert str(e) and e.lines()
        out = None
    # The input is never modified (in a list, so that a NaN equals itself).
    assert [doc] == [before]
    if out is not None:
        assert schedule.validate(out) == out
    return out


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_like, doc_like))
def test_validate_raises_only_schedule_error_on_junk(doc):
    _check_validate(doc)


def _slots(obj):
    """(container, key) of every value in a nested document."""
    keys = obj if isinstance(obj, dict) else range(len(obj))
    for k in list(keys):
        yield obj, k
        if isinstance(obj[k], (dict, list)):
            yield from _slots(obj[k])


@st.composite
def mutated_docs(draw):
    doc = copy.deepcopy(
        draw(st.one_of(st.sampled_from(list(FIXED_DOCS.values())), schedule_docs()))
    )
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(doc))
        obj, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            obj[key] = draw(json_like)
        elif action == "delete":
            del obj[key]
        elif isinstance(obj, dict):
            obj[draw(st.sampled_from(_KEYS) | _ODD_TEXT)] = draw(json_like)
        else:
            obj.append(draw(json_like))
    return doc


@settings(max_examples=300, deadline=None)
@given(mutated_docs())
def test_validate_raises_only_schedule_error_on_mutants(doc):
    _check_validate(doc)


# ---------------------------------------------------------------------------------------------
# Normal form: idempotent, order-free hash, canonical JSON


@settings(max_examples=150, deadline=None)
@given(valid_docs(), st.randoms(use_true_random=False))
def test_normal_form_is_idempotent_and_order_free(dn, rnd):
    doc, norm = dn
    assert schedule.validate(norm) == norm
    assert schedule.validate(copy.deepcopy(norm)) == norm
    h = schedule.content_hash(norm)
    assert schedule.content_hash(schedule.validate(_shuffled(doc, rnd))) == h
    assert schedule.content_hash(schedule.validate(_shuffled(norm, rnd))) == h
    assert re.fullmatch("[0-9a-f]{64}", h)
    # Doses come out sorted by time, whatever order they went in.
    times = [d["time"] for d in norm["dose"]]
    assert times == sorted(times)


@settings(max_examples=150, deadline=None)
@given(valid_docs())
def test_canonical_is_json_of_the_normal_form(dn):
    _, norm = dn
    raw = schedule.canonical(norm)
    assert json.loads(raw.decode("utf-8")) == norm
    # Byte for byte what CPython's json writes with sorted keys and no spaces.
    assert raw == json.dumps(
        norm, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


@pytest.mark.parametrize("key", sorted(FIXED))
def test_fixed_schedules_round_trip(key):
    norm = FIXED[key]
    assert schedule.validate(norm) == norm
    assert json.loads(schedule.canonical(norm)) == norm


# ---------------------------------------------------------------------------------------------
# As-needed (PRN) doses


def _prn_allows(rule, taken, t):
    """Brute-force reading of the rule: may a dose be taken at t?"""
    if taken and t - max(taken) < rule["min_interval_h"] * 3600:
        return False
    return sum(1 for x in taken if t - DAY < x <= t) <= rule["max_per_24h"] - 1


@settings(max_examples=500, deadline=None)
@given(
    st.integers(1, 72),
    st.integers(1, 24),
    # How long ago each dose was taken: anywhere in four days, or near the edges that matter.
    st.lists(
        st.one_of(
            st.integers(0, 4 * DAY),
            st.integers(DAY - 7200, DAY + 7200),
            st.integers(0, 7200),
            st.integers(DAY - 3, DAY + 3),
        ),
        max_size=30,
    ),
    st.integers(UTC_LO, UTC_HI),
)
def test_prn_allowed_at(min_h, max_n, ages, now):
    rule = {"id": "smerte", "name": "P", "min_interval_h": min_h, "max_per_24h": max_n}
    taken = [now - a for a in ages]  # earlier doses, any order, duplicates allowed
    at = planner.prn_allowed_at(rule, taken, now)
    assert at >= now
    if taken:
        assert at - max(taken) >= min_h * 3600
    assert sum(1 for x in taken if at - DAY < x <= at) <= max_n - 1
    assert _prn_allows(rule, taken, at)
    # ...and it is the earliest such second.
    if at > now:
        assert not _prn_allows(rule, taken, at - 1)


# ---------------------------------------------------------------------------------------------
# CPR numbers

_digits = st.text(alphabet="0123456789", min_size=1, max_size=1)
_not_digit_end = st.text(max_size=12).filter(lambda s: not s or not s[-1].isdigit())
_not_digit_start = st.text(max_size=12).filter(lambda s: not s or not s[0].isdigit())


@settings(max_examples=300, deadline=None)
@given(
    _not_digit_end,
    st.text(alphabet="0123456789", min_size=6, max_size=6),
    st.sampled_from(["-", " ", ""]),
    st.text(alphabet="0123456789", min_size=4, max_size=4),
    _not_digit_start,
)
def test_cpr_shapes_are_found_anywhere(before, six, sep, four, after):
    assert schedule.looks_like_cpr(before + six + sep + four + after)


_CPR_RE = re.compile(r"(?a)(?<!\d)(\d{10}|\d{6}[- ]\d{4})(?!\d)")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789 -+.,/abcæøå", max_size=40))
@example("+45 12 34 56 78")
@example("+4512345678")
@example("500 mg")
@example("Zopiclon 7,5 mg")
@example("tlf. 12 34 56 78, 2 x 500 mg")
@example("2026-11-01")
@example("123456-12345")
@example("1234567-1234")
@example("12345678901")
def test_cpr_detection_matches_a_regular_expression(text):
    assert schedule.looks_like_cpr(text) == bool(_CPR_RE.search(text))


@pytest.mark.parametrize(
    "text",
    ["+45 12 34 56 78", "500 mg", "Zopiclon 7,5 mg", "borger-0042", "12345678", "2026-11-01"],
)
def test_not_cpr(text):
    assert not schedule.looks_like_cpr(text)


@pytest.mark.parametrize(
    "text",
    ["010190-1234", "cpr 0101901234.", "(010190 1234)", "x010190-1234y", "borger 311299-0001"],
)
def test_cpr(text):
    assert schedule.looks_like_cpr(text)


def test_two_doses_sharing_the_spring_gap_are_refused():
    # Both would fire at the transition instant and next_due could name only one of them: a
    # dose lost. Validation refuses the pair, reminders included.
    with pytest.raises(schedule.ScheduleError) as info:
        schedule.validate(_reminders_doc("Europe/Copenhagen", ["02:15", "02:45"]))
    assert "would fire at the same instant" in str(info.value)


def test_next_due_breaks_ties_by_id_like_occurrences():
    # Not reachable through validate (see above), but the order must still agree.
    norm = schedule.validate(_reminders_doc("UTC", ["02:15", "02:45"]))
    norm["dose"][1]["time"] = "02:15"
    t = _utc(2026, 3, 29, 2, 15)
    assert planner.occurrences(norm, t - 60, t + 60) == [(t, "d0215"), (t, "d0245")]
    assert planner.next_due(norm, t) == (t, "d0215")


# ---------------------------------------------------------------------------------------------
# Regression tests for bugs found by these properties and fixed.


def test_calendar_before_0000_03_01():
    assert civil.civil_from_days(-719470) == (0, 2, 28)
    assert civil.days_from_civil(-1, 1, 1) == civil.days_from_civil(0, 1, 1) - 365
    assert all(
        civil.days_from_civil(*civil.civil_from_days(z)) == z
        for z in range(-2000000, -1000000, 997)
    )


# Non-ASCII digits: CPython's str.isdigit takes "２" or "٣" (and "²", which int() refuses),
# MicroPython's does not; so the host must refuse them too, or it accepts schedules the device
# rejects (and used to fail with ValueError on "²").
NON_ASCII_DIGITS = [
    (civil.parse_date, "\uff12\uff10\uff12\uff16-11-01"),  # fullwidth 2026
    (civil.parse_date, "\u00b2026-01-01"),  # superscript two
    (civil.parse_hhmm, "\u0660\u0668:\u0660\u0660"),  # Arabic-Indic 08:00
    (civil.parse_hhmm, "\u00b2:00"),
]


@pytest.mark.parametrize("parse, text", NON_ASCII_DIGITS)
def test_parsers_take_ascii_digits_only(parse, text):
    assert parse(text) is None


@pytest.mark.parametrize("start", ["\uff12\uff10\uff12\uff16-11-01", "\u00b2026-01-01"])
def test_validate_rejects_non_ascii_dates_as_the_device_does(start):
    doc = dict(FIXED_DOCS["night"], start=start)
    with pytest.raises(schedule.ScheduleError) as info:
        schedule.validate(doc)
    assert info.value.problems[0][0] == "start"
