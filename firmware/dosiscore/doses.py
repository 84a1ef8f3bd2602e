"""The dose state machine: from the schedule, what has happened, and `now`, what to do.

Pure: no hardware, no asyncio; `now` (UTC seconds) is an argument of every call. The device's
dose task calls `update(now)` whenever it wakes (at `next_wake(now)`, on a button, after a clock
change) and turns the returned events and the `view` into carousel moves, light, tone, screen
and log records.

An occurrence is (UTC instant, dose id), recomputed from the schedule on every call, never
remembered across a clock change. Its phase follows from `now`:

    upcoming -> available (early window: light only) -> due (tone, louder every N minutes)
             -> exactly one terminal state: taken | missed (late lock) | skipped

Only terminal states are stored ("facts"), keyed by the occurrence. Safety rules:
- never offered twice: an occurrence with a fact is never shown again, and neither is any
  occurrence at or before the latest one that reached a terminal state (`hwm`), so a clock
  stepping back, even by weeks, re-opens nothing;
- once a day per dose: a schedule has at most one occurrence of a dose id per local day, so
  the pair (local day, dose id) names the dose as the citizen knows it ("today's noon
  tablets"). Once that pair has a fact, a later occurrence of the same id on the same local
  day (a schedule change that moved its time) is done too: never offered, not recorded again;
- never early: nothing is available before its instant minus its early window;
- never silently lost: an occurrence whose window passed while the device was off or the clock
  jumped is recorded as missed, with the reason, and the care team is told;
- one at a time: at most one occurrence is active (validation forbids overlapping windows; if a
  schedule change still makes two overlap, the earlier one is ended first);
- the right pills: compartment k holds what the loading map put there, the k-th dispensed
  occurrence counted from the fill instant under the schedule in force at the fill. The fill
  keeps a signature of that sequence (`fill_signature`: each compartment's dose id and items).
  A schedule change that gives a compartment still to be opened another dose (a dose added,
  removed or made reminder-only, doses reordered, medicines changed) cuts the fill short just
  before it (`fill_upto`): from there no compartment opens, the due dose is still reminded,
  and "empty" (or "refill", while earlier compartments still match) says why. Only a refill
  lifts the cut. Times that move without changing the order or the contents keep the fill.
"""

from dosiscore import civil, planner
from dosiscore.logrec import crc32

UPCOMING = 0
AVAILABLE = 1
DUE = 2

TAKEN = "taken"
MISSED = "missed"
SKIPPED = "skipped"

MODES = ("normal", "assisted", "paused", "travel")
MAX_LEVEL = 4  # volume steps of the buzzer
REFILL_WARN = 4  # doses left when the device asks for a refill
_LOOKBACK_MAX = 7 * 86400  # how far back a boot looks for doses missed while off
_FACTS_KEEP = 8 * 86400  # facts older than this are pruned (hwm still guards them)
# More than the longest local day (25 h, when the clocks go back): two instants on one local
# day are always closer than this. Facts this far below `hwm` can no longer matter (below).
_DAY_SPAN = 2 * 86400


_SIG_W = 8  # hex digits of a compartment's signature
_SIG_EMPTY = "-" * _SIG_W  # a compartment the fill leaves empty (the schedule ended)
_SIG_CHUNK = 8 * 86400  # planner window per step while counting compartments
# A day pattern repeats within this many days: no dispensed occurrence in a stretch this long
# means there will never be one (every N days on some weekdays: at most 7 x MAX_EVERY).
_SIG_GIVE_UP = (7 * civil.MAX_EVERY + 2) * civil.DAY


def occ_key(t, dose_id):
    return "%d/%s" % (t, dose_id)


def dose_sig(d):
    """CRC-32 of what a compartment holds for dose `d`: its id and its items (name, count in
    half tablets). The items are sorted: their order in the schedule is not in the cup."""
    parts = ["%s\x00%d" % (it["name"], int(it["count"] * 2)) for it in d["items"]]
    parts.sort()
    return crc32("\x01".join([d["id"]] + parts).encode())


def loaded(plan, by_id, fill, n):
    """Yield (compartment, UTC instant, dose id) for compartments 1..n after a fill at `fill`:
    the dispensed occurrences at or after it, in order (reminder-only doses use none); fewer
    if the schedule ends first. The loading map's rule, and `Doses.compartment`'s."""
    k = 0
    lo = fill
    last = fill
    while k < n and lo - last <= _SIG_GIVE_UP:
        if plan.end is not None and plan.local_day(lo) > plan.end:
            return
        hi = lo + _SIG_CHUNK
        for t, i in planner.occurrences(plan, lo, hi):
            if by_id[i]["reminder_only"]:
                continue
            k += 1
            last = t
            yield k, t, i
            if k >= n:
                return
        lo = hi


def _signature(plan, by_id, fill, n, ended=None):
    """(fill_signature, first compartment whose occurrence is not `ended(t, id)` or None,
    last compartment the schedule fills)."""
    sigs = {}
    parts = []
    first = None
    for k, t, i in loaded(plan, by_id, fill, n):
        if first is None and ended is not None and not ended(t, i):
            first = k
        s = sigs.get(i)
        if s is None:
            s = sigs[i] = "%08x" % dose_sig(by_id[i])
        parts.append(s)
    last = len(parts)
    while len(parts) < n:
        parts.append(_SIG_EMPTY)
    return "".join(parts), first, last


def fill_signature(doc, fill, plan=None):
    """What a fill at `fill` loads, compartment by compartment (1..n): 8 hex digits each, the
    `dose_sig` of its dose, or "--------" for a compartment left empty. Two schedules put the
    same pills in compartment k after this fill if and only if their signatures agree there
    (but for a CRC-32 collision)."""
    if plan is None:
        plan = planner.Plan(doc)
    by_id = {}
    for d in doc["dose"]:
        by_id[d["id"]] = d
    return _signature(plan, by_id, fill, doc["compartments"])[0]


def first_mismatch(old, new, start=1):
    """The first compartment k >= start that a schedule signed `new` would open but whose
    pills, loaded for `old` (both from `fill_signature`, for the same fill), are another
    dose's (or none); None if every one it would open holds its dose. A compartment the new
    schedule leaves empty never opens: what it holds does not matter."""
    w = _SIG_W
    k = start if start > 1 else 1
    while k * w <= len(new):
        a = (k - 1) * w
        s = new[a : a + w]
        if s != _SIG_EMPTY and old[a : a + w] != s:
            return k
        k += 1
    return None


class Doses:
    """Dose state for one schedule. Persist `state()` and pass it back to resume."""

    def __init__(self, doc, state=None, now=None):
        self.doc = doc
        self.plan = planner.Plan(doc)
        self.by_id = {}
        self.max_early = 0
        self.max_late = 0
        for d in doc["dose"]:
            self.by_id[d["id"]] = d
            self.max_early = max(self.max_early, d["early_min"] * 60)
            self.max_late = max(self.max_late, d["late_lock_min"] * 60)
        self.louder = doc["alerts"]["louder_every_min"] * 60
        s = state or {}
        self.facts = s.get("facts", {})  # occ key -> [state, reason, at]
        self.notified = s.get("notified", [])  # occ keys the care team was told about
        self.hwm = s.get("hwm")  # instant of the latest occurrence with a terminal state
        # Doses before the schedule became active are none of this device's business.
        self.since = s.get("since", now)
        self.fill = s.get("fill")  # instant from which compartment 1 onwards was filled
        self.mode = s.get("mode", "normal")
        self.prn_taken = s.get("prn", [])
        self.last_seen = s.get("seen")
        self.refill_said = s.get("refill_said")  # lowest "doses left" already announced
        self.fill_sig = s.get("fill_sig")  # what the fill loaded: fill_signature()
        self.fill_upto = s.get("fill_upto")  # compartments 1..fill_upto may be opened
        self._done = {}  # dose id -> local days with a fact for it (derived from facts)
        self._index_facts()
        self._cut = None  # (first, last) compartments this boot found loaded for another
        if self.fill is not None:  # schedule, until update() has said so
            self._check_fill()
        self.active = None  # (t, id) of the occurrence shown now
        self._shown = None  # (key, phase, level) last announced
        self.view = {"occ": None, "phase": None, "level": 0, "compartment": None}

    # -- persistence -------------------------------------------------------------------------

    def state(self):
        return {
            "facts": self.facts,
            "notified": self.notified,
            "hwm": self.hwm,
            "since": self.since,
            "fill": self.fill,
            "mode": self.mode,
            "prn": self.prn_taken,
            "seen": self.last_seen,
            "refill_said": self.refill_said,
            "fill_sig": self.fill_sig,
            "fill_upto": self.fill_upto,
        }

    def merge_terminal(self, t, dose_id, state, reason, at):
        """A terminal state found in the dose log (the authoritative journal). The stored
        state may be older than the log, or lost: whatever the log says happened stands, so a
        dose taken just before a power cut is never offered again. Returns True if new.

        A fact at or below `hwm - _DAY_SPAN` is left out (returns False): nothing can use it.
        `update` considers only occurrences after `hwm`, so that occurrence is never offered
        whether or not its fact is kept; and an occurrence after `hwm` is more than a local
        day away from it, so it cannot be the same dose on the same day either. (Facts just
        below `hwm` do count: they keep a dose moved later that day from being offered again,
        so those are merged when missing, and `_prune` keeps them.) This is what keeps a
        reboot from re-adding, and rewriting, the log's older, pruned facts every time."""
        if dose_id not in self.by_id:
            return False
        if self.hwm is not None and t <= self.hwm - _DAY_SPAN:
            return False
        key = occ_key(t, dose_id)
        if key in self.facts:
            return False
        self.facts[key] = [state, reason, at]
        self._mark_done(t, dose_id)
        if self.hwm is None or t > self.hwm:
            self.hwm = t
        return True

    def _index_facts(self):
        self._done = {}
        for k in self.facts:
            j = k.find("/")
            self._mark_done(int(k[:j]), k[j + 1 :])

    def _mark_done(self, t, dose_id):
        if dose_id not in self.by_id:  # a dose no longer in the schedule: nothing to guard
            return
        z = self.plan.local_day(t)
        days = self._done.get(dose_id)
        if days is None:
            self._done[dose_id] = [z]
        elif z not in days:
            days.append(z)

    def _ended(self, t, dose_id):
        """True if occurrence (t, dose_id) can no longer be offered (the state says so)."""
        if (self.hwm is not None and t <= self.hwm) or (self.since is not None and t < self.since):
            return True
        return occ_key(t, dose_id) in self.facts or self.done_that_day(t, dose_id)

    def _check_fill(self):
        """After a schedule change (any boot): does the fill still hold, in every compartment
        this schedule may open from now on, the dose this schedule counts there? The first
        that does not (from the first occurrence the state has not ended: compartments of
        doses already given do not matter) and every one after it are cut off the fill."""
        n = self.doc["compartments"]
        new, start, last = _signature(self.plan, self.by_id, self.fill, n, self._ended)
        upto = n if not isinstance(self.fill_upto, int) else max(0, min(self.fill_upto, n))
        if not isinstance(self.fill_sig, str):
            # A state saved before fills were signed (a firmware update): the schedule it
            # runs is the one the previous firmware dispensed this fill with; it is adopted,
            # and every later change is checked against it.
            self.fill_sig = new
            self.fill_upto = upto
            return
        j = first_mismatch(self.fill_sig, new, n + 1 if start is None else start)
        if j is not None and j - 1 < upto:
            upto = j - 1
            self._cut = (j, last)
        self.fill_upto = upto

    def done_that_day(self, t, dose_id):
        """True if dose `dose_id` already has a fact on the local day of instant `t` (an
        occurrence the schedule in force when it ended put at another time of that day)."""
        days = self._done.get(dose_id)
        return days is not None and self.plan.local_day(t) in days

    # -- queries -------------------------------------------------------------------------------

    def dose(self, dose_id):
        return self.by_id[dose_id]

    def _upto(self):
        n = self.doc["compartments"]
        return n if self.fill_upto is None or self.fill_upto > n else self.fill_upto

    def compartment(self, t, dose_id):
        """Compartment (1..n) holding occurrence (t, dose_id), or None: a reminder-only dose,
        no fill recorded, or beyond the last filled compartment (or the fill was cut short
        there: its pills were loaded for another schedule)."""
        if self.fill is None or self.by_id[dose_id]["reminder_only"] or t < self.fill:
            return None
        upto = self._upto()
        n = 0
        for u, i in planner.occurrences(self.plan, self.fill, t + 1):
            if self.by_id[i]["reminder_only"]:
                continue
            n += 1
            if u == t and i == dose_id:
                return n if n <= upto else None
            if n > upto:
                return None
        return None

    def doses_left(self, now):
        """Filled compartments not yet reached, or None if no fill is recorded."""
        if self.fill is None:
            return None
        used = 0  # compartments whose dose has opened (its early window began) by now
        for t, i in planner.occurrences(self.plan, self.fill, now + self.max_early + 1):
            d = self.by_id[i]
            if not d["reminder_only"] and t - d["early_min"] * 60 <= now:
                used += 1
        return max(0, self._upto() - used)

    def next_wake(self, now):
        """The next instant after `now` at which something changes (never a busy poll)."""
        best = None
        span = self.max_early + self.max_late
        for t, i in planner.occurrences(self.plan, now - self.max_late, now + span + 86400):
            d = self.by_id[i]
            cands = (
                t - d["early_min"] * 60,
                t,
                t + d["notify_min"] * 60,
                t + d["late_lock_min"] * 60,
            )
            for c in cands:
                if c > now and (best is None or c < best):
                    best = c
            if t <= now < t + d["late_lock_min"] * 60:
                c = t + ((now - t) // self.louder + 1) * self.louder
                if best is None or c < best:
                    best = c
        if best is None:
            nxt = planner.next_due(self.plan, now + span + 86400)
            best = nxt[0] - self.max_early if nxt else now + 86400
        return best

    # -- the state machine ---------------------------------------------------------------------

    def _end(self, occ, state, reason, now, events):
        t, i = occ
        self.facts[occ_key(t, i)] = [state, reason, now]
        self._mark_done(t, i)
        if self.hwm is None or t > self.hwm:
            self.hwm = t
        events.append((state, occ, reason))
        if self.active == occ:
            self.active = None

    def update(self, now):
        """Advance to `now`; return the events this produced, and refresh `view`."""
        events = []
        if self.since is None:
            self.since = now
        # Candidates: everything after the latest terminal occurrence (hwm) and after the
        # schedule became active, within a week: whatever passed while the device was off or
        # the clock jumped is found here, whether or not the last save was recent.
        lo = max(self.since, now - _LOOKBACK_MAX)
        floor = self.hwm
        if floor is not None and floor + 1 > lo:
            lo = floor + 1
        active = None
        for occ in planner.occurrences(self.plan, lo, now + self.max_early + 1):
            t, i = occ
            key = occ_key(t, i)
            if key in self.facts or (floor is not None and t <= floor):
                continue
            d = self.by_id[i]
            if now < t - d["early_min"] * 60:
                continue
            if self.done_that_day(t, i):
                # Taken, missed or skipped today already, at the time the schedule said
                # then: moving the dose later must not offer it a second time.
                continue
            unseen = self.last_seen is None or self.last_seen < t - d["early_min"] * 60
            if now >= t + d["late_lock_min"] * 60:
                if self.mode in ("paused", "travel", "assisted"):
                    self._end(occ, SKIPPED, self.mode, now, events)
                else:
                    if key not in self.notified:
                        self.notified.append(key)
                    self._end(occ, MISSED, "unseen" if unseen else "late", now, events)
                continue
            if self.mode in ("paused", "travel"):
                if now >= t:
                    self._end(occ, SKIPPED, self.mode, now, events)
                continue
            if active is not None:
                # Two windows overlap (only possible across a schedule change): end the
                # earlier so that never two compartments are open.
                self._end(active, MISSED, "superseded", now, events)
            active = occ
            if (
                self.mode == "normal"
                and now >= t + d["notify_min"] * 60
                and key not in self.notified
            ):
                self.notified.append(key)
                events.append(("notify", occ, "not taken"))
        self.active = active
        self._refresh_view(now, events)
        self._refill_check(now, events)
        self._prune(now)
        self.last_seen = now if self.last_seen is None else max(self.last_seen, now)
        return events

    def _refresh_view(self, now, events):
        v = self.view
        occ = self.active
        if occ is None:
            v["occ"], v["phase"], v["level"], v["compartment"] = None, None, 0, None
            self._shown = None
            return
        t, i = occ
        phase = AVAILABLE if now < t else DUE
        level = 0
        if phase == DUE and self.mode == "normal":
            level = min(MAX_LEVEL, 1 + (now - t) // self.louder)
        v["occ"], v["phase"], v["level"] = occ, phase, level
        v["compartment"] = self.compartment(t, i)
        shown = self._shown
        key = occ_key(t, i)
        if shown is None or shown[0] != key:
            # First shown after its instant (device was off, clock jumped): say it is late.
            late = "late" if now >= t + 60 else ""
            events.append(("available" if phase == AVAILABLE else "due", occ, late))
        elif shown[1] != phase:
            events.append(("due", occ, ""))
        elif shown[2] != level:
            events.append(("louder", occ, level))
        self._shown = (key, phase, level)

    def _refill_check(self, now, events):
        left = self.doses_left(now)
        if left is None:
            return
        cut = self._cut
        if cut is not None:
            # Said once, at the first update after the boot that found it (the cut is kept in
            # the state): "empty" (fault E6) if nothing can open any more, else how many can.
            self._cut = None
            why = "compartments %d..%d were loaded for another schedule" % cut
            if left == 0:
                self.refill_said = 0
                events.append(("empty", None, why))
            else:
                events.append(("refill", None, "%d left: %s" % (left, why)))
                if left <= REFILL_WARN:
                    self.refill_said = left
            return
        if left == 0 and self.refill_said != 0:
            self.refill_said = 0
            events.append(("empty", None, 0))
        elif 0 < left <= REFILL_WARN and (self.refill_said is None or self.refill_said > left):
            if self.refill_said is None or self.refill_said > REFILL_WARN:
                events.append(("refill", None, left))
            self.refill_said = left

    def _prune(self, now):
        old = now - _FACTS_KEEP
        # Facts less than _DAY_SPAN below hwm are kept however old (a few at most): they say
        # which doses were done on hwm's day, and merge_terminal would take them back from the
        # log at every boot. It leaves out exactly the facts dropped here.
        keep = old if self.hwm is None else min(old, self.hwm - _DAY_SPAN + 1)
        dropped = False
        for k in list(self.facts):
            if int(k.split("/")[0]) < keep:
                del self.facts[k]
                dropped = True
        if dropped:
            self._index_facts()
        self.notified = [k for k in self.notified if int(k.split("/")[0]) >= old]
        self.prn_taken = [t for t in self.prn_taken if t > now - 86400]

    # -- inputs --------------------------------------------------------------------------------

    def taken(self, now, how="button"):
        """The big button (or the beam) confirms the active dose. Returns the events."""
        events = []
        occ = self.active
        if occ is None:
            return events
        reason = how if self.mode == "normal" else "%s,%s" % (how, self.mode)
        self._end(occ, TAKEN, reason, now, events)
        self._refresh_view(now, events)
        return events

    def prn_request(self, now):
        """A long press asks for the first as-needed medicine. Returns (allowed, at, events)."""
        rules = self.doc["prn"]
        if not rules:
            return False, None, [("prn", None, "none")]
        rule = rules[0]
        at = planner.prn_allowed_at(rule, self.prn_taken, now)
        allowed = at <= now
        if allowed:
            self.prn_taken.append(now)  # counted as taken: the device cannot see the cupboard
        return allowed, at, [("prn", None, "%s:%s" % (rule["id"], "ok" if allowed else "no"))]

    def set_mode(self, mode, now):
        if mode not in MODES:
            raise ValueError("mode must be one of: %s" % ", ".join(MODES))
        events = [("mode", None, mode)] if mode != self.mode else []
        self.mode = mode
        return events + self.update(now)

    def refilled(self, now):
        """The carousel was filled: compartment 1 holds the first dispensed dose from now."""
        self.fill = now
        self.fill_sig = _signature(self.plan, self.by_id, now, self.doc["compartments"])[0]
        self.fill_upto = self.doc["compartments"]
        self._cut = None
        self.refill_said = None
        return [("filled", None, self.doc["compartments"])]
