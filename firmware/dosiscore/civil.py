"""Proleptic Gregorian calendar arithmetic on day numbers and Unix seconds (pure, no `time`).

Day numbers count days since 1970-01-01 (day 0, a Thursday). Seconds are Unix UTC seconds.
MicroPython ports disagree about the epoch of `time.time()` (1970 on unix, 2000 on some
boards), so the core never calls `time`: the board layer converts once, at the edge.
The algorithms are Howard Hinnant's `days_from_civil` / `civil_from_days`, which need no
tables, no loops and no floats, so they cost the same on every date.
"""

DAY = 86400
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_EVERY = 90  # longest "every N days" step a schedule may use


DIGITS = "0123456789"


def is_digits(text):
    """True if `text` is one or more ASCII digits. (str.isdigit differs between the VMs:
    CPython also accepts "²" or "٣", which int() may then refuse; MicroPython does not.)"""
    if not text:
        return False
    for ch in text:
        if ch not in DIGITS:
            return False
    return True


def days_from_civil(y, m, d):
    """Day number of the date y-m-d (m 1..12, d 1..31); no range checks."""
    if m <= 2:
        y -= 1
    era = y // 400  # Python's // floors, so no C-style adjustment for negative years
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z):
    """(year, month, day) of day number z."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y, m, d)


def weekday(z):
    """Weekday of day number z: 0 = Monday … 6 = Sunday (1970-01-01 was a Thursday)."""
    return (z + 3) % 7


def is_leap(y):
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def days_in_month(y, m):
    if m == 2:
        return 29 if is_leap(y) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def parse_date(text):
    """Day number of an ISO date "YYYY-MM-DD", or None if `text` is not a real date."""
    if not isinstance(text, str) or len(text) != 10 or text[4] != "-" or text[7] != "-":
        return None
    ys, ms, ds = text[0:4], text[5:7], text[8:10]
    if not (is_digits(ys) and is_digits(ms) and is_digits(ds)):
        return None
    y, m, d = int(ys), int(ms), int(ds)
    if not (1 <= m <= 12) or not (1 <= d <= days_in_month(y, m)):
        return None
    return days_from_civil(y, m, d)


def format_date(z):
    y, m, d = civil_from_days(z)
    return "%04d-%02d-%02d" % (y, m, d)


def parse_hhmm(text):
    """Minutes after midnight of "HH:MM" (or "H:MM"), 00:00..23:59; None if not a time."""
    if not isinstance(text, str) or not (4 <= len(text) <= 5) or text[-3] != ":":
        return None
    hs, ms = text[:-3], text[-2:]
    if not (is_digits(hs) and is_digits(ms)):
        return None
    h, m = int(hs), int(ms)
    if h > 23 or m > 59:
        return None
    return h * 60 + m


def format_hhmm(minutes):
    return "%02d:%02d" % (minutes // 60, minutes % 60)


def split_seconds(t):
    """(day number, seconds into that day) of Unix seconds t, correct for negative t too."""
    z = t // DAY
    return z, t - z * DAY


def format_iso(t, offset=None):
    """ISO 8601 text of Unix seconds t: "…Z" when offset is None, else local "…+02:00"."""
    if offset is None:
        z, s = split_seconds(t)
        suffix = "Z"
    else:
        z, s = split_seconds(t + offset)
        sign = "-" if offset < 0 else "+"
        a = -offset if offset < 0 else offset
        suffix = "%s%02d:%02d" % (sign, a // 3600, (a % 3600) // 60)
    y, m, d = civil_from_days(z)
    return "%04d-%02d-%02dT%02d:%02d:%02d%s" % (
        y,
        m,
        d,
        s // 3600,
        (s % 3600) // 60,
        s % 60,
        suffix,
    )
