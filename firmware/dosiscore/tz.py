"""Local time from POSIX TZ rule strings (e.g. "CET-1CEST,M3.5.0,M10.5.0/3"); pure, no zoneinfo.

The device has no tz database, so a schedule carries the POSIX rule of its zone. `Tz` turns
UTC seconds into local wall seconds and back. Going back, the dose policy is applied:
- a wall time that does not exist (the spring-forward gap) maps to the transition instant,
  so a 02:30 dose on the spring day fires once, at 03:00 summer time;
- a wall time that exists twice (the repeated autumn hour) maps to its first occurrence.

"Wall seconds" are local date and time counted as if they were UTC (day * 86400 + seconds
into the day), so the calendar functions of `civil` apply to them unchanged.
"""

from dosiscore import civil

# IANA names the tools accept, with their rules (as in tzdata's POSIX footer, 2024 onwards).
ZONES = {
    "Europe/Copenhagen": "CET-1CEST,M3.5.0,M10.5.0/3",
    "Europe/Oslo": "CET-1CEST,M3.5.0,M10.5.0/3",
    "Europe/Stockholm": "CET-1CEST,M3.5.0,M10.5.0/3",
    "Europe/Berlin": "CET-1CEST,M3.5.0,M10.5.0/3",
    "Europe/Helsinki": "EET-2EEST,M3.5.0/3,M10.5.0/4",
    "Europe/London": "GMT0BST,M3.5.0/1,M10.5.0",
    "UTC": "UTC0",
}
DEFAULT_ZONE = "Europe/Copenhagen"


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class TzError(ValueError):
    """A TZ rule string that cannot be parsed; the message says what is wrong."""


# Rule kinds.
_JULIAN1 = 1  # Jn: 1..365, February 29 never counted
_JULIAN0 = 2  # n: 0..365, February 29 counted
_MONTH = 3  # Mm.w.d: day d (0 = Sunday) of week w (5 = last) of month m


class _Reader:
    def __init__(self, text):
        self.s = text
        self.i = 0

    def peek(self):
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self, ch):
        if self.peek() == ch:
            self.i += 1
            return True
        return False

    def number(self, what):
        j = self.i
        while self.i < len(self.s) and self.s[self.i] in civil.DIGITS:
            self.i += 1
        if j == self.i:
            raise TzError("expected %s at position %d of %r" % (what, j, self.s))
        return int(self.s[j : self.i])

    def name(self):
        if self.take("<"):
            j = self.i
            while self.peek() not in (">", ""):
                self.i += 1
            if not self.take(">"):
                raise TzError("unclosed '<' in %r" % self.s)
            n = self.s[j : self.i - 1]
        else:
            j = self.i
            while self.peek() and self.peek() in _LETTERS:
                self.i += 1
            n = self.s[j : self.i]
        if len(n) < 3:
            raise TzError("zone abbreviation must have 3 or more letters in %r" % self.s)
        return n

    def hms(self, max_hours):
        """[+|-]hh[:mm[:ss]] in seconds."""
        sign = 1
        if self.take("-"):
            sign = -1
        else:
            self.take("+")
        h = self.number("hours")
        m = s = 0
        if self.take(":"):
            m = self.number("minutes")
            if self.take(":"):
                s = self.number("seconds")
        if h > max_hours or m > 59 or s > 59:
            raise TzError("time out of range in %r" % self.s)
        return sign * (h * 3600 + m * 60 + s)

    def rule(self):
        if self.take("M"):
            m = self.number("month")
            if not self.take("."):
                raise TzError("expected '.' after month in %r" % self.s)
            w = self.number("week")
            if not self.take("."):
                raise TzError("expected '.' after week in %r" % self.s)
            d = self.number("weekday")
            if not (1 <= m <= 12 and 1 <= w <= 5 and 0 <= d <= 6):
                raise TzError("Mm.w.d rule out of range in %r" % self.s)
            r = (_MONTH, m, w, d)
        elif self.take("J"):
            n = self.number("Julian day")
            if not 1 <= n <= 365:
                raise TzError("Jn rule out of range in %r" % self.s)
            r = (_JULIAN1, n, 0, 0)
        else:
            n = self.number("day of year")
            if n > 365:
                raise TzError("day-of-year rule out of range in %r" % self.s)
            r = (_JULIAN0, n, 0, 0)
        t = 7200  # POSIX default: 02:00 local
        if self.take("/"):
            t = self.hms(167)
        return r + (t,)


def _rule_day(rule, year):
    """Day number on which `rule` falls in `year`."""
    kind, a, w, d = rule[0], rule[1], rule[2], rule[3]
    jan1 = civil.days_from_civil(year, 1, 1)
    if kind == _JULIAN1:
        return jan1 + a - 1 + (1 if a >= 60 and civil.is_leap(year) else 0)
    if kind == _JULIAN0:
        return jan1 + a
    first = civil.days_from_civil(year, a, 1)
    sunday_based = (civil.weekday(first) + 1) % 7
    z = first + (d - sunday_based) % 7 + 7 * (w - 1)
    last = first + civil.days_in_month(year, a) - 1
    while z > last:
        z -= 7
    return z


class Tz:
    """One time zone, from a POSIX TZ rule string. Offsets are seconds east of UTC."""

    def __init__(self, rule):
        if not isinstance(rule, str) or not rule:
            raise TzError("TZ rule must be a non-empty string")
        self.rule = rule
        r = _Reader(rule)
        self.std_name = r.name()
        # POSIX offsets are west-positive ("CET-1" is one hour east of UTC).
        self.std_off = -r.hms(24)
        self.dst_off = self.std_off
        self.dst_name = None
        self._start = self._end = None
        if r.peek():
            self.dst_name = r.name()
            self.dst_off = self.std_off + 3600
            if r.peek() not in (",", ""):
                self.dst_off = -r.hms(24)
            if not r.take(","):
                raise TzError("daylight-saving zone needs start and end rules in %r" % rule)
            self._start = r.rule()
            if not r.take(","):
                raise TzError("expected ',' before end rule in %r" % rule)
            self._end = r.rule()
            if self.dst_off == self.std_off:
                raise TzError("daylight-saving offset equals standard offset in %r" % rule)
        if r.peek():
            raise TzError("unexpected %r at position %d of %r" % (r.peek(), r.i, rule))
        self._year = None
        self._ts = self._te = 0

    @property
    def has_dst(self):
        return self._start is not None

    def transitions(self, year):
        """(UTC start of summer time, UTC end of summer time) in `year`; None without DST."""
        if self._start is None:
            return None
        self._load(year)
        return self._ts, self._te

    def _load(self, year):
        # One year's transitions are cached: a device asks about the same year all day long.
        s, e = self._start, self._end
        if year != self._year and s is not None and e is not None:
            # The start rule's time is in standard time, the end rule's in summer time.
            self._ts = _rule_day(s, year) * civil.DAY + s[4] - self.std_off
            self._te = _rule_day(e, year) * civil.DAY + e[4] - self.dst_off
            self._year = year

    def offset(self, utc):
        """Seconds east of UTC in force at Unix time `utc`."""
        if self._start is None:
            return self.std_off
        self._load(civil.civil_from_days((utc + self.std_off) // civil.DAY)[0])
        ts, te = self._ts, self._te
        if ts < te:
            dst = ts <= utc < te
        else:  # southern hemisphere: summer time spans the new year
            dst = not (te <= utc < ts)
        return self.dst_off if dst else self.std_off

    def local(self, utc):
        """Wall seconds (local date and time counted as if UTC) at Unix time `utc`."""
        return utc + self.offset(utc)

    def utc(self, wall):
        """Unix time of wall seconds `wall`, by the dose policy (gap → transition instant,
        repeated hour → first occurrence)."""
        u_std = wall - self.std_off
        if self._start is None:
            return u_std
        u_dst = wall - self.dst_off
        ok_std = self.offset(u_std) == self.std_off
        ok_dst = self.offset(u_dst) == self.dst_off
        if ok_std and ok_dst:
            return u_std if u_std < u_dst else u_dst
        if ok_std:
            return u_std
        if ok_dst:
            return u_dst
        # In a gap: the instant the clock jumped over this wall time lies between the two.
        lo, hi = (u_std, u_dst) if u_std < u_dst else (u_dst, u_std)
        year = civil.civil_from_days(wall // civil.DAY)[0]
        for y in (year, year - 1, year + 1):
            tr = self.transitions(y)
            if tr is not None:
                for t in tr:
                    if lo < t <= hi:
                        return t
        return hi  # unreachable for valid rules; never earlier than the wall time asked for

    def spring_gap(self):
        """(wall minute of the day when clocks jump forward, minutes skipped) or None.

        Used by validation to see when a spring-forward day squeezes two dose windows
        together. Only meaningful for Mm.w.d rules, which is all the known zones use.
        """
        if self._start is None or self.dst_off <= self.std_off:
            return None
        return (self._start[4] // 60, (self.dst_off - self.std_off) // 60)


def zone_rule(name):
    """POSIX rule of a known IANA zone name, or None."""
    return ZONES.get(name)
