"""Which dose is due when: occurrences of a normalised schedule in UTC, and the next one.

Pure and stateless: every answer is recomputed from the schedule and `now`, never remembered
across a clock change. Cost is proportional to days x doses (one local-to-UTC conversion per
candidate), never a loop over seconds or minutes. It does not import `schedule` (validation is
large and only needed when a schedule arrives), so the device's running set stays small.
"""

from dosiscore import civil, tz

# Days a day pattern can take to repeat (every-N up to 90 days, on some weekday): beyond this
# horizon past `now` a schedule that yields nothing will never yield anything.
_HORIZON = 7 * civil.MAX_EVERY + 2


def pattern(days):
    """(step in days from the start date, weekday bit mask with Monday = bit 0)."""
    if days == "daily":
        return 1, 0x7F
    if isinstance(days, dict):
        return days["every"], 0x7F
    mask = 0
    for name in days:
        mask |= 1 << civil.WEEKDAYS.index(name)
    return 1, mask


class Plan:
    """A normalised schedule compiled for fast queries (build once, query many times)."""

    def __init__(self, doc):
        self.doc = doc
        self.tz = tz.Tz(doc["tz_rule"])
        start = civil.parse_date(doc["start"])
        if start is None:  # only a document that bypassed validation gets here
            raise ValueError("schedule start is not a date")
        self.start = start
        end = doc.get("end")
        self.end = civil.parse_date(end) if end is not None else None
        slots = []
        for d in doc["dose"]:
            step, mask = pattern(d["days"])
            slots.append((civil.parse_hhmm(d["time"]), step, mask, d["id"]))
        slots.sort()
        self.slots = slots

    def on_day(self, slot, z):
        """True if `slot` occurs on local day number z."""
        if z < self.start or (self.end is not None and z > self.end):
            return False
        return (z - self.start) % slot[1] == 0 and slot[2] >> civil.weekday(z) & 1

    def local_day(self, utc):
        return self.tz.local(utc) // civil.DAY

    def instant(self, slot, z):
        """UTC seconds of `slot` on local day z (gap → transition, repeat → first)."""
        return self.tz.utc(z * civil.DAY + slot[0] * 60)


def _plan(sched):
    return sched if isinstance(sched, Plan) else Plan(sched)


def occurrences(sched, from_utc, to_utc):
    """Sorted [(utc seconds, dose id)] of every occurrence with from_utc <= utc < to_utc."""
    p = _plan(sched)
    out = []
    if to_utc <= from_utc:
        return out
    z = max(p.local_day(from_utc) - 1, p.start)
    last = p.local_day(to_utc) + 1
    if p.end is not None and p.end < last:
        last = p.end
    while z <= last:
        for slot in p.slots:
            if p.on_day(slot, z):
                u = p.instant(slot, z)
                if from_utc <= u < to_utc:
                    out.append((u, slot[3]))
        z += 1
    out.sort()
    return out


def next_due(sched, now_utc):
    """(utc seconds, dose id) of the first occurrence at or after now_utc, or None if the
    schedule has ended. Ties are broken by id, as in `occurrences`; validation makes sure no
    two doses ever share an instant, even on the spring-forward day."""
    p = _plan(sched)
    z = max(p.local_day(now_utc) - 1, p.start)
    stop = z + _HORIZON
    if p.end is not None and p.end < stop:
        stop = p.end
    while z <= stop:
        best = None
        for slot in p.slots:
            if p.on_day(slot, z):
                u = p.instant(slot, z)
                if u >= now_utc and (best is None or (u, slot[3]) < best):
                    best = (u, slot[3])
        if best is not None:
            return best
        z += 1
    return None


def prn_allowed_at(rule, taken_utc, now_utc):
    """Earliest UTC second (>= now_utc) at which the as-needed `rule` allows another dose,
    given the UTC seconds of doses already taken under it (any order).

    A record later than `now_utc` means the clock stepped back since it was written; it is
    counted as taken just now, never ignored, so a clock step cannot allow a dose early.
    """
    past = sorted(t if t <= now_utc else now_utc for t in taken_utc)
    at = now_utc
    if past:
        at = max(at, past[-1] + rule["min_interval_h"] * 3600)
        window = [t for t in past if t > now_utc - civil.DAY]
        n = rule["max_per_24h"]
        if len(window) >= n:
            at = max(at, window[-n] + civil.DAY)
    return at
