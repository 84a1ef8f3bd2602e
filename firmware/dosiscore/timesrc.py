"""Which clock steps to believe: a pure filter for time sources (NTP, the host, the RTC).

A step of at most 120 s is applied at once (drift, a DS3231 holdover error). A larger step
needs a second, independent answer that agrees with the first (within 5 s, after allowing for
the time between them) before it is applied: one bad NTP answer cannot move doses by hours.
A source the user vouches for (the nurse's authenticated time.set) is applied at once. With no
time at all (the RTC lost it), an untrusted answer needs a second, independent one too.

"Independent" means a different (source, origin) pair: `source` is the kind ("ntp", "host",
"rtc"), `origin` which one of that kind answered (an NTP server's address), None when there is
only one. Two NTP servers agreeing confirm each other; the same server twice does not.
"""

SMALL_STEP = 120
AGREE = 5


class StepFilter:
    def __init__(self):
        self.pending = None  # (offset, local monotonic seconds when heard, source, origin)

    def offer(self, current, candidate, mono, source, trusted=False, origin=None):
        """Decide on `candidate` (UTC s) given the clock's `current` reading and a monotonic
        seconds counter `mono`, heard from `source` (and its `origin`, if it has several).
        Returns the UTC to step to, or None to keep the clock."""
        if trusted:
            self.pending = None
            return candidate
        # No time at all (the RTC lost it) is the biggest step of all: a network answer still
        # needs a second, independent one (a bad NTP answer must not set the day's doses),
        # and until then nothing is dispensed (E3). Offsets are then taken from the
        # monotonic counter, which runs on between the two answers just as a clock would.
        offset = candidate - (mono if current is None else current)
        if current is not None and -SMALL_STEP <= offset <= SMALL_STEP:
            self.pending = None
            return candidate
        p = self.pending
        same = p is not None and p[2] == source and p[3] == origin
        if p is not None and not same and abs(offset - p[0]) <= AGREE:
            self.pending = None
            return candidate
        if p is not None and same and mono - p[1] > 3600:
            p = None
        if p is None or same:
            self.pending = (offset, mono, source, origin)
        return None
