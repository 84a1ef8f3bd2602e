"""The dose state machine, driven through whole days: runs under pytest and MicroPython."""

from dosiscore import civil, doses, schedule


def _utc(y, mo, d, h=0, mi=0, s=0):
    return civil.days_from_civil(y, mo, d) * civil.DAY + h * 3600 + mi * 60 + s


def _doc(extra=None, **over):
    d = {
        "schema": 1,
        "citizen": "borger-0042",
        "start": "2026-11-01",
        "compartments": 28,
        "dose": [
            {"id": "morgen", "time": "08:00", "items": ["Metformin 500 mg"]},
            {"id": "aften", "time": "18:00", "items": ["Simvastatin 40 mg"]},
        ],
        "prn": [{"id": "smerte", "name": "Pamol", "min_interval_h": 6, "max_per_24h": 2}],
    }
    if extra:
        d["dose"].append(extra)
    d.update(over)
    return schedule.validate(d)


# November: CET, UTC+1. 08:00 local = 07:00 UTC.
DAY1 = _utc(2026, 11, 23)
MORGEN = _utc(2026, 11, 23, 7)
AFTEN = _utc(2026, 11, 23, 17)


def _machine(now=None, **kw):
    m = doses.Doses(_doc(**kw), None, DAY1 if now is None else now)
    m.refilled(DAY1)
    return m


def _kinds(events):
    return [e[0] for e in events]


def test_phases_on_time_and_taken():
    m = _machine()
    assert m.update(MORGEN - 31 * 60) == []
    assert m.view["occ"] is None
    ev = m.update(MORGEN - 30 * 60)  # early window opens: light only
    assert ev == [("available", (MORGEN, "morgen"), "")]
    assert m.view["phase"] == doses.AVAILABLE and m.view["level"] == 0
    assert m.view["compartment"] == 1
    assert m.update(MORGEN) == [("due", (MORGEN, "morgen"), "")]
    assert m.view["level"] == 1
    assert m.update(MORGEN + 9 * 60) == []
    assert m.update(MORGEN + 10 * 60) == [("louder", (MORGEN, "morgen"), 2)]
    ev = m.taken(MORGEN + 12 * 60)
    assert ev == [("taken", (MORGEN, "morgen"), "button")]
    assert m.view["occ"] is None
    # never offered again, whatever the clock says afterwards
    assert m.update(MORGEN + 13 * 60) == []
    assert m.update(MORGEN - 5 * 60) == []  # clock stepped back 18 minutes
    assert m.view["occ"] is None
    # the evening dose is compartment 2
    m.update(AFTEN)
    assert m.view["occ"] == (AFTEN, "aften") and m.view["compartment"] == 2


def test_never_early():
    m = _machine()
    for s in range(0, MORGEN - 30 * 60 - DAY1, 600):
        m.update(DAY1 + s)
        assert m.view["occ"] is None
    assert m.taken(MORGEN - 30 * 60 - 1) == []


def test_missed_notify_then_lock():
    m = _machine()
    m.update(MORGEN)
    assert m.update(MORGEN + 29 * 60) == [("louder", (MORGEN, "morgen"), 3)]
    ev = m.update(MORGEN + 30 * 60)
    assert ("notify", (MORGEN, "morgen"), "not taken") in ev
    assert _kinds(m.update(MORGEN + 119 * 60)) == []
    assert m.view["level"] == doses.MAX_LEVEL
    ev = m.update(MORGEN + 120 * 60)
    assert ev == [("missed", (MORGEN, "morgen"), "late")]
    assert m.view["occ"] is None
    assert m.taken(MORGEN + 121 * 60) == []  # a locked dose cannot be taken any more


def test_power_off_across_a_dose_is_recorded_as_missed_unseen():
    m = _machine()
    m.update(MORGEN - 3 * 3600)
    saved = m.state()
    # off from 04:00 to 13:00 local; then resumes from the saved state
    m2 = doses.Doses(_doc(), saved, None)
    ev = m2.update(AFTEN - 4 * 3600)
    assert ev == [("missed", (MORGEN, "morgen"), "unseen")]
    assert m2.view["occ"] is None
    assert "%d/morgen" % MORGEN in m2.notified


def test_boot_inside_a_window_offers_late_and_says_so():
    m = _machine()
    m.update(MORGEN - 3 * 3600)
    m2 = doses.Doses(_doc(), m.state(), None)
    ev = m2.update(MORGEN + 40 * 60)
    assert ("due", (MORGEN, "morgen"), "late") in ev
    assert ("notify", (MORGEN, "morgen"), "not taken") in ev
    assert m2.view["occ"] == (MORGEN, "morgen")


def test_clock_jump_forward_and_back():
    m = _machine()
    m.update(MORGEN - 40 * 60)
    # forward 11 hours: morning missed (it was never shown), evening available
    ev = m.update(AFTEN - 20 * 60)
    assert ("missed", (MORGEN, "morgen"), "unseen") in ev
    assert ("available", (AFTEN, "aften"), "") in ev
    m.taken(AFTEN - 10 * 60)
    # back 12 hours (a bad time source): nothing re-opens, the morning stays missed
    for s in range(0, 12 * 3600, 300):
        m.update(MORGEN - 60 * 60 + s)
        assert m.view["occ"] is None
    # and back by three weeks: still nothing, the high-water mark guards it
    m.update(MORGEN - 21 * 86400)
    m.update(MORGEN - 21 * 86400 + 8 * 3600)
    assert m.view["occ"] is None


def test_restart_mid_window_does_not_offer_a_taken_dose_again():
    m = _machine()
    m.update(MORGEN)
    m.taken(MORGEN + 60)
    m2 = doses.Doses(_doc(), m.state(), None)
    assert m2.update(MORGEN + 120) == []
    assert m2.view["occ"] is None


def test_paused_and_travel_skip_silently():
    m = _machine()
    m.set_mode("paused", MORGEN - 3600)
    assert m.update(MORGEN - 10 * 60) == []
    assert m.view["occ"] is None
    assert m.update(MORGEN) == [("skipped", (MORGEN, "morgen"), "paused")]
    ev = m.set_mode("normal", MORGEN + 60)
    assert ev == [("mode", None, "normal")]
    assert m.view["occ"] is None  # a skipped dose is not offered after the pause


def test_assisted_is_silent_but_logs():
    m = _machine()
    m.set_mode("assisted", MORGEN - 3600)
    m.update(MORGEN + 15 * 60)
    assert m.view["occ"] == (MORGEN, "morgen") and m.view["level"] == 0
    assert m.view["compartment"] == 1
    ev = m.update(MORGEN + 45 * 60)
    assert "notify" not in _kinds(ev)
    assert m.taken(MORGEN + 50 * 60) == [("taken", (MORGEN, "morgen"), "button,assisted")]
    ev = m.update(AFTEN + 120 * 60)
    assert ev == [("skipped", (AFTEN, "aften"), "assisted")]


def test_reminder_only_has_no_compartment():
    extra = {"id": "drops", "time": "21:00", "reminder_only": True, "items": ["Xalatan"]}
    m = _machine(extra=extra)
    t = _utc(2026, 11, 23, 20)
    m.update(t)
    assert m.view["occ"] == (t, "drops") and m.view["compartment"] is None
    assert m.taken(t + 60) == [("taken", (t, "drops"), "button")]
    # the next dispensed dose is compartment 3: reminders use none
    m.update(_utc(2026, 11, 24, 7))
    assert m.view["compartment"] == 3


def test_refill_warnings():
    m = _machine()
    seen = []
    t = DAY1
    while t < DAY1 + 15 * 86400:
        for e in m.update(t):
            if e[0] in ("refill", "empty"):
                seen.append((e[0], e[2], civil.format_iso(t)))
        if m.view["occ"] is not None:
            m.taken(t)
        t += 1800
    # 28 compartments, 2 doses a day from 23 Nov: 4 left after the 24th dose (4 Dec evening)
    assert [s[:2] for s in seen] == [("refill", 4), ("empty", 0)]
    m.refilled(t)
    assert m.doses_left(t) == 28


def test_prn_allowed_and_refused():
    m = _machine()
    ok, at, ev = m.prn_request(MORGEN)
    assert ok and at == MORGEN and ev == [("prn", None, "smerte:ok")]
    ok, at, ev = m.prn_request(MORGEN + 3600)
    assert not ok and at == MORGEN + 6 * 3600 and ev == [("prn", None, "smerte:no")]
    ok, _, _ = m.prn_request(MORGEN + 6 * 3600)
    assert ok
    ok, at, _ = m.prn_request(MORGEN + 12 * 3600)  # two in 24 h already
    assert not ok and at == MORGEN + 24 * 3600


def test_next_wake_is_never_a_busy_poll():
    m = _machine()
    now = DAY1
    wakes = 0
    while now < DAY1 + 86400:
        m.update(now)
        nxt = m.next_wake(now)
        assert nxt > now
        now = nxt
        wakes += 1
    # per dose: open, due, 2 louder before notify at 30, notify, more louder..., lock
    assert wakes < 40, wakes


def test_dst_days_each_dose_once():
    extra = {
        "id": "nat",
        "time": "02:30",
        "early_min": 0,
        "late_lock_min": 20,
        "items": ["Zopiclon"],
    }
    for day in ((2027, 3, 28), (2027, 10, 31)):
        start = _utc(*day) - 86400
        m = doses.Doses(_doc(extra=extra, start="2027-01-01"), None, start)
        got = []
        now = start
        while now < start + 3 * 86400:
            m.update(now)
            if m.view["phase"] == doses.DUE:
                got.extend(e[1] for e in m.taken(now) if e[0] == "taken")
            now = m.next_wake(now)
        ids = [g[1] for g in got]
        # three days, three doses a day, each taken exactly once, the DST day included
        assert len(got) == 9 and len(set(got)) == 9, got
        assert ids.count("nat") == 3, got


def test_bad_mode_refused_and_state_round_trip():
    m = _machine()
    try:
        m.set_mode("holiday", DAY1)
    except ValueError as e:
        assert "normal, assisted, paused, travel" in str(e)
    else:
        raise AssertionError("accepted a bad mode")
    m.update(MORGEN)
    m.taken(MORGEN)
    import json

    s = json.loads(json.dumps(m.state()))
    m2 = doses.Doses(_doc(), s, None)
    assert m2.state() == m.state()


# -- schedule changes: the same dose is given once a day, whatever time the schedule says -------

MIDDAG = _utc(2026, 11, 23, 11)  # 12:00 local
DAY2 = DAY1 + 86400


def _middag(hhmm="12:00", dose_id="middag"):
    return {"id": dose_id, "time": hhmm, "items": ["Metformin 500 mg"]}


def _run(m, start, end, take=True, step=300):
    """Drive `m` from `start` to `end`: [(t, kind, occ, detail)]; presses whenever due."""
    out = []
    now = start
    while now < end:
        for e in m.update(now):
            out.append((now, e[0], e[1], e[2]))
        if take and m.view["phase"] == doses.DUE:
            for e in m.taken(now):
                out.append((now, e[0], e[1], e[2]))
        now += step
    return out


def _offers(events, dose_id, day_start=None, day_end=None):
    return [
        e
        for e in events
        if e[1] in ("available", "due")
        and e[2][1] == dose_id
        and (day_start is None or day_start <= e[2][0] < day_end)
    ]


def _taken_then_changed(new_middag, take=True):
    """Morning and noon taken (or missed) under the first schedule, then the state is carried
    into a second schedule (what the device does when a new schedule arrives: it reboots)."""
    import json

    m = _machine(extra=_middag())
    ev = _run(m, DAY1, MIDDAG + 30 * 60 if take else MIDDAG + 150 * 60, take=take)
    assert [e[1] for e in ev if e[2] == (MIDDAG, "middag")][-1] == ("taken" if take else "missed")
    state = json.loads(json.dumps(m.state()))  # through the flash, as on the device
    return doses.Doses(_doc(extra=new_middag), state, None)


def test_a_taken_dose_moved_later_the_same_day_is_not_offered_again():
    m2 = _taken_then_changed(_middag("13:00"))
    ev = _run(m2, MIDDAG + 31 * 60, DAY2 + 86400)
    today = _offers(ev, "middag", DAY1, DAY2)
    assert today == [], today
    assert m2.view["occ"] != (MIDDAG + 3600, "middag")
    assert _offers(ev, "morgen", DAY1, DAY2) == []
    # the evening dose opens the next compartment: 1 morning, 2 noon (taken), 3 evening
    aften = [e for e in ev if e[1] == "available" and e[2] == (AFTEN, "aften")]
    assert len(aften) == 1
    # nothing is recorded a second time for the moved dose
    assert "%d/middag" % (MIDDAG + 3600) not in m2.facts
    assert [e for e in ev if e[2] is not None and e[2] == (MIDDAG + 3600, "middag")] == []
    # tomorrow it is offered at its new time, as usual
    tomorrow = _offers(ev, "middag", DAY2, DAY2 + 86400)
    assert [e[2][0] for e in tomorrow] == [MIDDAG + 86400 + 3600] * 2
    assert [e[1] for e in tomorrow] == ["available", "due"]
    assert tomorrow[0][0] < MIDDAG + 86400 + 3600 <= tomorrow[1][0]


def test_compartments_after_a_dose_is_moved_later():
    m2 = _taken_then_changed(_middag("13:00"))
    m2.update(AFTEN)
    assert m2.view["occ"] == (AFTEN, "aften") and m2.view["compartment"] == 3
    assert m2.compartment(MIDDAG + 3600, "middag") == 2  # used already, under the old time


def test_a_missed_dose_moved_later_stays_missed():
    m2 = _taken_then_changed(_middag("15:00"), take=False)
    ev = _run(m2, MIDDAG + 151 * 60, AFTEN - 3600)
    assert _offers(ev, "middag") == []
    assert [e for e in ev if e[1] in ("missed", "notify")] == []


def test_a_taken_dose_moved_earlier_is_not_offered_again():
    m2 = _taken_then_changed(_middag("10:30"))
    ev = _run(m2, MIDDAG + 31 * 60, DAY2)
    assert _offers(ev, "middag") == [] and _offers(ev, "morgen") == []
    assert [e for e in ev if e[1] == "missed"] == []


def test_a_dose_not_yet_given_today_is_offered_at_its_new_time():
    m = _machine(extra=_middag())
    _run(m, DAY1, MORGEN + 3600)  # morning taken; noon not reached
    m2 = doses.Doses(_doc(extra=_middag("13:00")), m.state(), None)
    ev = _run(m2, MORGEN + 3600 + 60, AFTEN - 3600)
    assert [e[1] for e in _offers(ev, "middag")] == ["available", "due"]
    assert [e[2][0] for e in ev if e[1] == "taken"] == [MIDDAG + 3600]
    # a new dose (a new id) is offered normally
    m3 = doses.Doses(_doc(extra=_middag("15:00", "eftermiddag")), m2.state(), None)
    t = _utc(2026, 11, 23, 14)
    ev = _run(m3, t - 3600, AFTEN - 30 * 60)
    assert [e[1] for e in _offers(ev, "eftermiddag")] == ["available", "due"]
    assert [e[2] for e in ev if e[1] == "taken"] == [(t, "eftermiddag")]


def test_a_dose_removed_and_added_back_is_not_offered_again_that_day():
    import json

    m = _machine(extra=_middag())
    _run(m, DAY1, MIDDAG + 30 * 60)
    without = doses.Doses(_doc(), json.loads(json.dumps(m.state())), None)
    without.update(MIDDAG + 40 * 60)
    back = doses.Doses(_doc(extra=_middag("14:00")), without.state(), None)
    ev = _run(back, MIDDAG + 50 * 60, DAY2)
    assert _offers(ev, "middag") == []
    ev = _run(back, DAY2, DAY2 + 86400)
    assert len(_offers(ev, "middag")) == 2


def test_a_moved_dose_taken_before_a_lost_state_is_found_in_the_log():
    # The stored state is lost; the log says the noon dose was taken (at its old time): the
    # dose moved to 13:00 is not offered that day.
    m = doses.Doses(_doc(extra=_middag("13:00")), None, DAY1)
    m.refilled(DAY1)
    assert m.merge_terminal(MORGEN, "morgen", doses.TAKEN, "log", MORGEN + 60)
    assert m.merge_terminal(MIDDAG, "middag", doses.TAKEN, "log", MIDDAG + 60)
    ev = _run(m, MIDDAG + 31 * 60, AFTEN - 3600)
    assert _offers(ev, "middag") == []


# -- boot replay: what the log says is merged once, and only where it can matter ---------------


def _week_of_doses():
    m = _machine(extra=_middag())
    ev = _run(m, DAY1, DAY1 + 10 * 86400, step=900)
    terminal = [e for e in ev if e[1] in (doses.TAKEN, doses.MISSED, doses.SKIPPED)]
    return m, terminal


def test_replay_after_a_clean_stop_adds_nothing():
    import json

    m, terminal = _week_of_doses()
    assert len(terminal) == 30
    state = json.loads(json.dumps(m.state()))
    m2 = doses.Doses(_doc(extra=_middag()), state, None)
    # every terminal record of the log, as runtime.replay_terminal feeds them at boot
    new = [m2.merge_terminal(e[2][0], e[2][1], e[1], "log", e[0]) for e in terminal]
    assert not any(new), [e for e, n in zip(terminal, new) if n]
    assert m2.state() == state


def test_replay_still_adds_what_the_stored_state_lacks():
    import json

    m = _machine(extra=_middag())
    cut = DAY1 + 9 * 86400 + 9 * 3600  # 10:00 local on day 10
    ev = _run(m, DAY1, cut, step=900)
    stale = json.loads(json.dumps(m.state()))  # the last state that reached the flash
    ev += _run(m, cut, cut + 10 * 3600, step=900)
    terminal = [e for e in ev if e[1] in (doses.TAKEN, doses.MISSED, doses.SKIPPED)]
    noon = (MIDDAG + 9 * 86400, "middag")  # day 10, after the stale state was saved
    evening = (AFTEN + 9 * 86400, "aften")
    assert stale["hwm"] == MORGEN + 9 * 86400 and noon in [e[2] for e in terminal]
    # A fact just below hwm that the stored state lacks (possible only in odd cases, such as
    # a clock step ending a later reminder while an earlier dose stays open) is merged too.
    below = (AFTEN + 8 * 86400, "aften")  # the evening before: 14 hours below hwm
    del stale["facts"][doses.occ_key(below[0], below[1])]
    m2 = doses.Doses(_doc(extra=_middag()), stale, None)
    new = [e[2] for e in terminal if m2.merge_terminal(e[2][0], e[2][1], e[1], "log", e[0])]
    assert new == [below, noon, evening], new
    assert m2.hwm == evening[0]
    # what was left out (days old, pruned) is still never offered, whatever the clock says
    for t in range(DAY1, DAY1 + 86400, 600):
        m2.update(t)
        assert m2.view["occ"] is None


def test_facts_near_the_high_water_mark_are_kept_past_the_prune_age():
    # The schedule ends: no new facts, so hwm stays put while the days go by.
    m = doses.Doses(_doc(extra=_middag(), end="2026-11-24"), None, DAY1)
    m.refilled(DAY1)
    ev = _run(m, DAY1, DAY2 + 86400, step=900)
    terminal = [e for e in ev if e[1] == doses.TAKEN]
    assert len(terminal) == 6
    m.update(DAY1 + 20 * 86400)
    kept = sorted(int(k.split("/")[0]) for k in m.facts)
    assert kept and kept[-1] == m.hwm and kept[0] > m.hwm - 2 * 86400
    assert "%d/aften" % (AFTEN + 86400) in m.facts
    m2 = doses.Doses(_doc(extra=_middag(), end="2026-11-24"), m.state(), None)
    assert not any(m2.merge_terminal(e[2][0], e[2][1], e[1], "log", e[0]) for e in terminal)


# -- the fill after a schedule change: the pills were loaded for the old order ------------------

EFTERMIDDAG = _utc(2026, 11, 23, 14)  # 15:00 local


def _base_doses():
    return [
        {"id": "morgen", "time": "08:00", "items": ["Metformin 500 mg"]},
        {"id": "middag", "time": "12:00", "items": ["Metformin 500 mg"]},
        {"id": "aften", "time": "18:00", "items": ["Simvastatin 40 mg"]},
    ]


def _sched(doses_list, **over):
    d = {
        "schema": 1,
        "citizen": "borger-0042",
        "start": "2026-11-01",
        "compartments": 28,
        "dose": doses_list,
        "prn": [],
    }
    d.update(over)
    return schedule.validate(d)


def _with(**changes):
    """The three-dose schedule with some doses changed: id -> dict of new fields, or None to
    remove it; "add" -> a list of new doses."""
    out = []
    for d in _base_doses():
        c = changes.get(d["id"], {})
        if c is None:
            continue
        d.update(c)
        out.append(d)
    return _sched(out + changes.get("add", []))


def _filled_then(new_doc, until, take=True):
    """Filled at DAY1 under the three-dose schedule, run (pressing when due) until `until`,
    then booted with `new_doc` and the state as it was on flash."""
    import json

    m = doses.Doses(_with(), None, DAY1)
    m.refilled(DAY1)
    _run(m, DAY1, until, take=take)
    state = json.loads(json.dumps(m.state()))
    return doses.Doses(new_doc, state, None), state


def _opened(m, start, end):
    """[(occ, compartment)] of every occurrence shown between start and end (pressing)."""
    out = []
    now = start
    while now < end:
        m.update(now)
        occ = m.view["occ"]
        if occ is not None and (not out or out[-1][0] != occ):
            out.append((occ, m.view["compartment"]))
        if m.view["phase"] == doses.DUE:
            m.taken(now)
        now += 300
    return out


def test_the_fill_is_signed_at_refill_and_kept_in_the_state():
    m = doses.Doses(_with(), None, DAY1)
    assert m.fill_sig is None and m.state()["fill_sig"] is None
    m.refilled(DAY1)
    sig = m.state()["fill_sig"]
    assert len(sig) == 28 * 8 and m.state()["fill_upto"] == 28
    assert sig == doses.fill_signature(_with(), DAY1)
    # compartment k holds the k-th dispensed dose: morgen, middag, aften, morgen...
    per = [sig[k * 8 : k * 8 + 8] for k in range(28)]
    assert per[0] == per[3] != per[1] and per[2] == per[5] != per[0]


def test_times_moved_without_reordering_keep_the_fill():
    new = _with(morgen={"time": "07:30"}, middag={"time": "13:00"}, aften={"time": "17:30"})
    m2, state = _filled_then(new, MORGEN + 2 * 3600)  # morning taken at 08:00, now 10:00
    assert m2.fill_upto == 28 and m2.fill_sig == state["fill_sig"]
    ev = _run(m2, MORGEN + 2 * 3600, MORGEN + 2 * 3600 + 600)
    assert [e for e in ev if e[1] in ("empty", "refill")] == []
    got = _opened(m2, MORGEN + 2 * 3600, DAY2 + 10 * 3600)
    assert [(o[1], k) for o, k in got] == [("middag", 2), ("aften", 3), ("morgen", 4)]
    assert got[0][0][0] == MIDDAG + 3600  # at its new time


def test_a_taken_dose_moved_later_keeps_the_fill():
    # Noon taken at 12:00 (compartment 2), then moved to 13:00: the order is unchanged.
    m2, _ = _filled_then(_with(middag={"time": "13:00"}), MIDDAG + 30 * 60)
    assert m2.fill_upto == 28
    got = _opened(m2, MIDDAG + 31 * 60, DAY2 + 12 * 3600 + 3600 + 60)
    assert [(o[1], k) for o, k in got] == [("aften", 3), ("morgen", 4), ("middag", 5)]


def _cut_said(events):
    return [e for e in events if e[1] in ("empty", "refill")]


def test_a_reordered_dose_voids_the_fill():
    # Noon taken at 12:00; then moved after the evening dose. Counting from the fill, the
    # evening dose would open compartment 2: the noon cup, emptied at noon.
    now = MIDDAG + 30 * 60
    m2, _ = _filled_then(_with(middag={"time": "21:00"}), now)
    assert m2.fill_upto == 1
    ev = _run(m2, now + 60, now + 120)
    assert _cut_said(ev) == [
        (now + 60, "empty", None, "compartments 2..28 were loaded for another schedule")
    ]
    assert m2.doses_left(now + 60) == 0
    # the evening dose is still reminded (light, tone, care team), but opens nothing
    m2.update(AFTEN)
    assert m2.view["occ"] == (AFTEN, "aften") and m2.view["phase"] == doses.DUE
    assert m2.view["compartment"] is None and m2.view["level"] == 1
    assert ("notify", (AFTEN, "aften"), "not taken") in m2.update(AFTEN + 30 * 60)
    got = _opened(m2, AFTEN + 31 * 60, DAY2 + 86400)
    assert got and all(k is None for _, k in got), got
    assert _cut_said(_run(m2, DAY2, DAY2 + 3600)) == []  # said once


def test_a_reorder_before_the_dose_is_given_voids_too():
    m2, _ = _filled_then(_with(middag={"time": "21:00"}), MORGEN + 2 * 3600)
    assert m2.fill_upto == 1
    m2.update(AFTEN)
    assert m2.view["occ"] == (AFTEN, "aften") and m2.view["compartment"] is None


def test_an_added_dose_voids_the_fill_from_where_it_lands():
    # A dose at 10:30, before noon: compartment 2 holds noon's pills, not 10:30's.
    early = {
        "id": "formiddag",
        "time": "10:30",
        "early_min": 0,
        "late_lock_min": 30,
        "items": ["Furix 40 mg"],
    }
    now = MORGEN + 2 * 3600
    m2, _ = _filled_then(_with(add=[early]), now)
    assert m2.fill_upto == 1
    assert _cut_said(_run(m2, now, now + 60)) == [
        (now, "empty", None, "compartments 2..28 were loaded for another schedule")
    ]
    # A dose at 15:00: noon (compartment 2) still holds noon's pills and is dispensed; the
    # fill stops before compartment 3, which holds the evening dose's.
    late = {"id": "eftermiddag", "time": "15:00", "items": ["Furix 40 mg"]}
    m3, _ = _filled_then(_with(add=[late]), now)
    assert m3.fill_upto == 2
    ev = _run(m3, now, DAY2 + 10 * 3600)
    assert _cut_said(ev) == [
        (now, "refill", None, "1 left: compartments 3..28 were loaded for another schedule"),
        (MIDDAG - 30 * 60, "empty", None, 0),
    ]
    shown = [(e[2], m3.compartment(e[2][0], e[2][1])) for e in ev if e[1] == "available"]
    assert [(o[1], k) for o, k in shown] == [
        ("middag", 2),
        ("eftermiddag", None),
        ("aften", None),
        ("morgen", None),
    ]
    assert [e[2] for e in ev if e[1] == "taken"] == [o for o, _ in shown]  # still reminded


def test_a_removed_dose_voids_the_fill():
    now = MORGEN + 2 * 3600
    m2, _ = _filled_then(_with(middag=None), now)
    assert m2.fill_upto == 1
    m2.update(AFTEN)
    assert m2.view["occ"] == (AFTEN, "aften") and m2.view["compartment"] is None


def test_changed_medicines_void_the_fill():
    now = MORGEN + 2 * 3600
    # the evening dose's medicines: noon (compartment 2) is dispensed, the evening is not
    m2, _ = _filled_then(_with(aften={"items": ["Simvastatin 20 mg"]}), now)
    assert m2.fill_upto == 2
    # the noon dose's count: from compartment 2 on
    m3, _ = _filled_then(_with(middag={"items": [{"name": "Metformin 500 mg", "count": 2}]}), now)
    assert m3.fill_upto == 1
    # a half tablet more is another dose too
    half = [{"name": "Metformin 500 mg", "count": 1.5}]
    m4, _ = _filled_then(_with(middag={"items": half}), now)
    assert m4.fill_upto == 1
    # the same medicines listed in another order: the same cup
    two = ["Metformin 500 mg", "Furix 40 mg"]
    base = _with(middag={"items": two})
    m = doses.Doses(base, None, DAY1)
    m.refilled(DAY1)
    swapped = doses.Doses(_with(middag={"items": two[::-1]}), m.state(), None)
    assert swapped.fill_upto == 28


def test_reminder_only_either_way_voids_the_fill():
    now = MORGEN + 2 * 3600
    m2, _ = _filled_then(_with(middag={"reminder_only": True}), now)
    assert m2.fill_upto == 1
    # and the reverse: eye drops (a reminder, using no compartment) now dispensed at 20:00
    drops = {"id": "drops", "time": "21:00", "reminder_only": True, "items": ["Xalatan"]}
    m = doses.Doses(_with(add=[drops]), None, DAY1)
    m.refilled(DAY1)
    _run(m, DAY1, now)
    dispensed = dict(drops, reminder_only=False)
    m3 = doses.Doses(_with(add=[dispensed]), m.state(), None)
    assert m3.fill_upto == 3  # noon and evening as loaded; 21:00 would open the next morning's


def test_a_shorter_schedule_keeps_the_fill_a_longer_one_does_not():
    m = doses.Doses(_with(), None, DAY1)
    m.refilled(DAY1)
    _run(m, DAY1, MORGEN + 3600)
    # ending on the 25th: the compartments after it are never opened, what they hold is moot
    short = _sched(_base_doses(), end="2026-11-25")
    assert doses.Doses(short, m.state(), None).fill_upto == 28
    # a fill for a schedule ending on the 25th, extended: compartment 10 onwards are empty
    m = doses.Doses(short, None, DAY1)
    m.refilled(DAY1)
    assert m.fill_sig.endswith("-" * 8 * 19)
    _run(m, DAY1, MORGEN + 3600)
    longer = doses.Doses(_with(), m.state(), None)
    assert longer.fill_upto == 9
    assert longer.update(MORGEN + 3600) == [
        ("refill", None, "8 left: compartments 10..28 were loaded for another schedule")
    ]


def test_a_refill_restores_the_fill():
    now = MIDDAG + 30 * 60
    m2, _ = _filled_then(_with(middag={"time": "21:00"}), now)
    _run(m2, now, AFTEN - 3600)
    assert m2.fill_upto == 1 and m2.doses_left(AFTEN - 3600) == 0
    ev = m2.refilled(AFTEN - 3600)
    assert ev == [("filled", None, 28)]
    assert m2.fill_upto == 28 and m2.doses_left(AFTEN - 3600) == 28
    assert m2.fill_sig == doses.fill_signature(_with(middag={"time": "21:00"}), AFTEN - 3600)
    got = _opened(m2, AFTEN - 3600, DAY2 + 86400)
    # from the new fill: the evening dose is compartment 1, tonight's noon dose (moved to
    # 21:00) is 2 but was given at noon already, then tomorrow's doses 3, 4, 5
    assert [(o[1], k) for o, k in got] == [
        ("aften", 1),
        ("morgen", 3),
        ("aften", 4),
        ("middag", 5),
    ]
    # and the next boot keeps it
    import json

    m3 = doses.Doses(_with(middag={"time": "21:00"}), json.loads(json.dumps(m2.state())), None)
    assert m3.fill_upto == 28 and m3._cut is None


def test_the_cut_is_kept_across_boots_and_a_revert():
    import json

    now = MIDDAG + 30 * 60
    m2, before = _filled_then(_with(middag={"time": "21:00"}), now)
    _run(m2, now, now + 600)
    state = json.loads(json.dumps(m2.state()))
    assert state["fill_upto"] == 1 and state["fill_sig"] == before["fill_sig"]
    again = doses.Doses(_with(middag={"time": "21:00"}), state, None)
    assert again.fill_upto == 1 and _cut_said(again.update(now + 700)) == []
    # pushing the old schedule back does not lift it: only a refill does
    back = doses.Doses(_with(), state, None)
    assert back.fill_upto == 1 and back.doses_left(now + 700) == 0


def test_an_old_state_without_a_signature_adopts_the_schedule_in_force():
    import json

    m = doses.Doses(_with(), None, DAY1)
    m.refilled(DAY1)
    _run(m, DAY1, MORGEN + 2 * 3600)
    old = json.loads(json.dumps(m.state()))
    del old["fill_sig"], old["fill_upto"]
    # a firmware update: the same schedule, a state from before fills were signed
    up = doses.Doses(_with(), old, None)
    assert up.fill_sig == m.fill_sig and up.fill_upto == 28
    assert _opened(up, MORGEN + 2 * 3600, MIDDAG + 600) == [((MIDDAG, "middag"), 2)]
    # and the next change is checked against it
    state = json.loads(json.dumps(up.state()))
    assert doses.Doses(_with(middag={"time": "21:00"}), state, None).fill_upto == 1


def test_first_mismatch():
    a, b, e = "%08x" % 1, "%08x" % 2, "-" * 8
    assert doses.first_mismatch(a + b + a, a + b + a) is None
    assert doses.first_mismatch(a + b + a, a + a + b) == 2
    assert doses.first_mismatch(a + b + a, a + a + b, 3) == 3
    assert doses.first_mismatch(a + b + a, a + a + b, 4) is None
    assert doses.first_mismatch(a + b + a, a + e + e) is None  # never opened: moot
    assert doses.first_mismatch(a + e, a + b) == 2  # loaded empty, would open: not loaded
    assert doses.first_mismatch(a, a + b) == 2  # beyond the old carousel's compartments


def test_a_dose_moved_to_before_now_keeps_the_fill_and_is_offered_late():
    # At 11:00 the noon dose (not given yet) moves to 10:45: still the second of the day.
    now = MORGEN + 3 * 3600
    m2, _ = _filled_then(_with(middag={"time": "10:45"}), now)
    assert m2.fill_upto == 28
    ev = m2.update(now)
    assert ("due", (MORGEN + 2 * 3600 + 45 * 60, "middag"), "late") in ev
    assert m2.view["compartment"] == 2
