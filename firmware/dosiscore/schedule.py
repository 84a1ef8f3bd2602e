"""Schedule documents: validation to a normalised form, canonical encoding and content hash.

One validator for the nurse's laptop and the device: `validate(doc)` takes a parsed document
(a dict, from TOML or JSON), collects every problem with the path to the field and a sentence,
and either raises `ScheduleError` (and nothing else, whatever the input) or returns the
normalised document: defaults filled in, times as "HH:MM", weekdays as names, doses sorted by
time. The normalised form is itself a valid document (validating it again changes nothing);
its canonical encoding is what the device stores and what `content_hash` hashes.
"""

import binascii
import hashlib

from dosiscore import civil, tz
from dosiscore.planner import pattern

SCHEMA = 1

MAX_DOSES = 12
MAX_PRN = 8
MAX_ITEMS = 10
MAX_EVERY = civil.MAX_EVERY

WEEKDAYS = civil.WEEKDAYS
# Danish abbreviations are accepted on input (the default language); output uses English.
_DANISH_DAYS = ("man", "tir", "ons", "tor", "fre", "lør", "søn")

# Alert policy: key → (default, lowest, highest), minutes.
ALERT_LIMITS = {
    "early_min": (30, 0, 300),
    "late_lock_min": (120, 5, 300),
    "notify_min": (30, 5, 240),
    "louder_every_min": (10, 1, 60),
}
_PER_DOSE_ALERTS = ("early_min", "late_lock_min", "notify_min")

_TOP_KEYS = (
    "schema",
    "citizen",
    "timezone",
    "tz_rule",
    "language",
    "start",
    "end",
    "compartments",
    "alerts",
    "dose",
    "prn",
)
_DOSE_KEYS = ("id", "time", "days", "items", "reminder_only") + _PER_DOSE_ALERTS
_ITEM_KEYS = ("name", "count")
_PRN_KEYS = ("id", "name", "min_interval_h", "max_per_24h")
LANGUAGES = ("da", "en")
_D = civil.DIGITS


class ScheduleError(ValueError):
    """A schedule that cannot be used. `problems` lists every (path, sentence)."""

    def __init__(self, problems):
        self.problems = problems
        first = "%s: %s" % problems[0] if problems else "invalid schedule"
        more = len(problems) - 1
        super().__init__(first + (" (and %d more problems)" % more if more > 0 else ""))

    def lines(self):
        return ["%s: %s" % p for p in self.problems]


def _is_int(v):
    return isinstance(v, int) and v is not True and v is not False


def _q(v):
    """A value quoted for a message, kept short."""
    if isinstance(v, str):
        s = '"%s"' % v
    elif v is None:
        s = "null"
    elif v is True:
        s = "true"
    elif v is False:
        s = "false"
    elif isinstance(v, dict):
        s = "a table"
    elif isinstance(v, list):
        s = "a list"
    else:
        s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _distance(a, b, limit):
    """Levenshtein distance of a and b, or limit + 1 once it is certain to exceed limit."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        best = i
        for j in range(1, len(b) + 1):
            c = prev[j - 1] + (0 if a[i - 1] == b[j - 1] else 1)
            c = min(c, prev[j] + 1, cur[j - 1] + 1)
            cur[j] = c
            best = min(best, c)
        if best > limit:
            return limit + 1
        prev = cur
    return prev[len(b)]


def did_you_mean(word, choices):
    """The closest of `choices` to `word`, or None if none is plausibly what was meant."""
    lw = word.lower()
    best, best_d = None, 99
    for c in choices:
        d = _distance(lw, c, 3)
        if len(lw) >= 3 and (c.startswith(lw) or lw.startswith(c)):
            d = min(d, 1)
        if d < best_d:
            best, best_d = c, d
    if best is not None and best_d <= (1 if len(best) <= 3 else 2 if len(best) <= 8 else 3):
        return best
    return None


def looks_like_cpr(text):
    """True if `text` holds something shaped like a Danish CPR number: 6 digits, an optional
    dash or space, 4 digits (and not just part of a longer run of digits)."""
    n = len(text)
    i = 0
    while i < n:
        if text[i] not in _D or (i > 0 and text[i - 1] in _D):
            i += 1
            continue
        j = i
        while j < n and text[j] in _D:
            j += 1
        run = j - i
        if run == 10:
            return True
        if run == 6 and j + 5 <= n and text[j] in "- ":
            k = j + 1
            while k < n and text[k] in _D:
                k += 1
            if k - j - 1 == 4:
                return True
        i = j
    return False


class _Checker:
    def __init__(self):
        self.problems = []

    def add(self, path, msg):
        self.problems.append((path, msg))

    def keys(self, path, obj, allowed):
        for k in obj:
            if not isinstance(k, str):
                self.add(path or "(document)", "key %s is not text" % _q(k))
            elif k not in allowed:
                name = k or '""'
                where = (path + "." + name) if path else name
                guess = did_you_mean(k, allowed)
                if guess:
                    self.add(where, 'unknown key; did you mean "%s"?' % guess)
                else:
                    self.add(where, "unknown key; expected one of: %s" % ", ".join(allowed))

    def integer(self, path, v, lo, hi, unit=""):
        if not _is_int(v):
            self.add(path, "%s is not a whole number" % _q(v))
            return None
        if not lo <= v <= hi:
            self.add(path, "%d is out of range (%d to %d%s)" % (v, lo, hi, unit))
            return None
        return v

    def text(self, path, v, max_len, what="text"):
        if not isinstance(v, str):
            self.add(path, "%s is not %s" % (_q(v), what))
            return None
        s = v.strip()
        if not s:
            self.add(path, "must not be empty")
            return None
        if len(s) > max_len:
            self.add(path, "%s is longer than %d characters" % (_q(s), max_len))
            return None
        for ch in s:
            o = ord(ch)
            if o < 32 or o == 127 or 0xD800 <= o <= 0xDFFF:
                self.add(path, "%s contains a control character" % _q(s))
                return None
        if looks_like_cpr(s):
            self.add(path, "looks like a CPR number; personal identifiers must not be stored")
            return None
        return s

    def ident(self, path, v):
        s = self.text(path, v, 16, "an id")
        if s is None:
            return None
        ok = "abcdefghijklmnopqrstuvwxyz0123456789_-"
        for ch in s:
            if ch not in ok:
                self.add(path, "%s: ids use a-z, 0-9, _ and - only" % _q(s))
                return None
        if s[0] in "_-":
            self.add(path, "%s: an id must start with a letter or digit" % _q(s))
            return None
        return s


def _days(c, path, v):
    """Normalised day pattern: "daily", a sorted list of weekday names, or {"every": N}."""
    if v is None or v == "daily" or v == "dagligt":
        return "daily"
    if isinstance(v, str):
        c.add(
            path,
            '%s is not a day pattern: use "daily", a list like ["mon", "thu"] '
            "or {every = N}" % _q(v),
        )
        return None
    if isinstance(v, list):
        if not v:
            c.add(path, "the list of weekdays is empty")
            return None
        seen = []
        for i, d in enumerate(v):
            p = "%s[%d]" % (path, i)
            if not isinstance(d, str):
                c.add(p, "%s is not a weekday name" % _q(d))
                return None
            low = d.strip().lower()[:3]
            if low in WEEKDAYS:
                n = WEEKDAYS.index(low)
            elif low in _DANISH_DAYS:
                n = _DANISH_DAYS.index(low)
            else:
                guess = did_you_mean(d.lower(), WEEKDAYS + _DANISH_DAYS)
                hint = ' (did you mean "%s"?)' % guess if guess else ""
                c.add(
                    p,
                    "%s is not a weekday: use mon, tue, wed, thu, fri, sat, sun%s" % (_q(d), hint),
                )
                return None
            if n in seen:
                c.add(p, "%s is listed twice" % _q(d))
                return None
            seen.append(n)
        if len(seen) == 7:
            return "daily"
        seen.sort()
        return [WEEKDAYS[n] for n in seen]
    if isinstance(v, dict):
        c.keys(path, v, ("every",))
        if "every" not in v:
            c.add(path + ".every", "missing: give the number of days between doses")
            return None
        n = c.integer(path + ".every", v["every"], 1, MAX_EVERY, " days")
        if n is None:
            return None
        return "daily" if n == 1 else {"every": n}
    c.add(path, "%s is not a day pattern" % _q(v))
    return None


def _count(c, path, v):
    if v is None:
        return 1
    if v is True or v is False or not isinstance(v, (int, float)):
        c.add(path, "%s is not a number of tablets" % _q(v))
        return None
    if not 0.5 <= v <= 20:  # first: NaN and infinities fail here
        c.add(path, "%s is out of range (0.5 to 20)" % _q(v))
        return None
    if v * 2 != int(v * 2):
        c.add(path, "%s: counts are whole or half tablets (e.g. 1 or 0.5)" % _q(v))
        return None
    return int(v) if v == int(v) else v


def _items(c, path, v):
    if not isinstance(v, list) or not v:
        c.add(path, 'give at least one item: [{name = "…", count = 1}]')
        return None
    if len(v) > MAX_ITEMS:
        c.add(path, "%d items; at most %d per dose" % (len(v), MAX_ITEMS))
        return None
    out = []
    for i, it in enumerate(v):
        p = "%s[%d]" % (path, i)
        if isinstance(it, str):  # shorthand: just the medicine's name, one tablet
            it = {"name": it}
        if not isinstance(it, dict):
            c.add(p, "%s is not an item {name, count}" % _q(it))
            continue
        c.keys(p, it, _ITEM_KEYS)
        if "name" not in it:
            c.add(p + ".name", "missing: name the medicine")
            continue
        name = c.text(p + ".name", it["name"], 40, "a medicine name")
        cnt = _count(c, p + ".count", it.get("count"))
        if name is not None and cnt is not None:
            out.append({"name": name, "count": cnt})
    return out if len(out) == len(v) else None


def _dose(c, path, d, alerts):
    if not isinstance(d, dict):
        c.add(path, "%s is not a dose table" % _q(d))
        return None
    c.keys(path, d, _DOSE_KEYS)
    n0 = len(c.problems)
    out = {}
    if "id" not in d:
        c.add(path + ".id", 'missing: give the dose a short id, e.g. "morgen"')
    else:
        out["id"] = c.ident(path + ".id", d["id"])
    if "time" not in d:
        c.add(path + ".time", "missing: give the local time of day (HH:MM)")
    else:
        m = civil.parse_hhmm(d["time"])
        if m is None:
            c.add(path + ".time", "%s is not a time of day (HH:MM)" % _q(d["time"]))
        out["time"] = m
    out["days"] = _days(c, path + ".days", d.get("days"))
    out["items"] = _items(c, path + ".items", d.get("items"))
    ro = d.get("reminder_only", False)
    if ro is not True and ro is not False:
        c.add(path + ".reminder_only", "%s is not true or false" % _q(ro))
    out["reminder_only"] = ro is True
    for k in _PER_DOSE_ALERTS:
        lo, hi = ALERT_LIMITS[k][1], ALERT_LIMITS[k][2]
        out[k] = c.integer(path + "." + k, d[k], lo, hi, " min") if k in d else alerts.get(k)
    if len(c.problems) != n0:
        return None
    if out["notify_min"] is not None and out["late_lock_min"] is not None:
        if "notify_min" not in d and out["notify_min"] > out["late_lock_min"]:
            # An inherited notice time after this dose's own lock: notify at the lock.
            out["notify_min"] = out["late_lock_min"]
        if out["notify_min"] > out["late_lock_min"]:
            c.add(
                path + ".notify_min",
                "the care team would hear of a miss (%d min) after "
                "the dose is locked (%d min); notify at or before the lock"
                % (out["notify_min"], out["late_lock_min"]),
            )
            return None
    return out


def _prn(c, path, p):
    if not isinstance(p, dict):
        c.add(path, "%s is not an as-needed rule table" % _q(p))
        return None
    c.keys(path, p, _PRN_KEYS)
    n0 = len(c.problems)
    out = {}
    for k, what in (
        ("id", 'a short id, e.g. "smerte"'),
        ("name", "the medicine's name"),
        ("min_interval_h", "the minimum hours between doses"),
        ("max_per_24h", "the most doses in 24 hours"),
    ):
        if k not in p:
            c.add(path + "." + k, "missing: give " + what)
    if "id" in p:
        out["id"] = c.ident(path + ".id", p["id"])
    if "name" in p:
        out["name"] = c.text(path + ".name", p["name"], 40, "a medicine name")
    if "min_interval_h" in p:
        out["min_interval_h"] = c.integer(
            path + ".min_interval_h", p["min_interval_h"], 1, 72, " hours"
        )
    if "max_per_24h" in p:
        out["max_per_24h"] = c.integer(path + ".max_per_24h", p["max_per_24h"], 1, 24)
    return out if len(c.problems) == n0 else None


def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


def _can_meet(pa, pb, k, start):
    """True if dose pattern pa can fall on some day z >= start with pb on day z + k."""
    na, ma = pa
    nb, mb = pb
    period = na * nb // _gcd(na, nb)
    period = period * 7 // _gcd(period, 7)
    d = 0
    while d < period:
        z = start + d
        if (d + k) % nb == 0 and ma >> civil.weekday(z) & 1 and mb >> civil.weekday(z + k) & 1:
            return True
        d += na
    return False


def _window(d):
    return d["time"] - d["early_min"], d["time"] + d["late_lock_min"]


def _hhmm_pair(a, b):
    return '"%s" (%s) and "%s" (%s)' % (
        a["id"],
        civil.format_hhmm(a["time"]),
        b["id"],
        civil.format_hhmm(b["time"]),
    )


def _dst_clash(zone, year, a, b, k):
    """On the days the clocks change in `year`, with a on some day and b k days later:
    "same" if both fire at one instant, "overlap" if their windows overlap in real time,
    else None. Exact: the same local-to-UTC policy the planner uses."""
    tr = zone.transitions(year)
    if tr is None:
        return None
    for t in tr:
        z = zone.local(t) // civil.DAY
        for za in (z - 1, z):
            ua = zone.utc(za * civil.DAY + a["time"] * 60)
            ub = zone.utc((za + k) * civil.DAY + b["time"] * 60)
            if ua == ub:
                return "same"
            if a["reminder_only"] or b["reminder_only"]:
                continue
            alo, ahi = ua - a["early_min"] * 60, ua + a["late_lock_min"] * 60
            blo, bhi = ub - b["early_min"] * 60, ub + b["late_lock_min"] * 60
            if alo < bhi and blo < ahi:
                return "overlap"
    return None


def _check_pairs(c, doses, start, zone):
    """Reject doses in the same minute, doses that fire at one instant when the clocks go
    forward, and dispensed doses whose availability windows overlap on any day both can occur
    (two compartments open invites a double dose), on the wall clock and, on the days the
    clocks change, in real time."""
    year = civil.civil_from_days(start)[0]
    pats = [pattern(d["days"]) for d in doses]
    for i in range(len(doses)):
        for j in range(len(doses)):
            a, b = doses[i], doses[j]
            for k in (0, 1):
                if (k == 0 and j <= i) or not _can_meet(pats[i], pats[j], k, start):
                    continue
                ta, tb = a["time"], b["time"] + 1440 * k
                when = "on the same day" if k == 0 else "when %s falls on the next day" % b["id"]
                if ta == tb:
                    c.add(
                        "dose",
                        '"%s" and "%s" are both at %s %s'
                        % (a["id"], b["id"], civil.format_hhmm(a["time"]), when),
                    )
                    continue
                if not (a["reminder_only"] or b["reminder_only"]):
                    (alo, ahi), (blo, bhi) = _window(a), _window(b)
                    if alo < bhi + 1440 * k and blo + 1440 * k < ahi:
                        c.add(
                            "dose",
                            "%s overlap %s: each is available from early_min before until "
                            "late_lock_min after its time; shorten the windows or move a dose"
                            % (_hhmm_pair(a, b), when),
                        )
                        continue
                clash = _dst_clash(zone, year, a, b, k)
                if clash == "same":
                    c.add(
                        "dose",
                        "%s would fire at the same instant on the day the clocks go forward "
                        "(a time in the skipped hour fires when it ends); move one of them"
                        % _hhmm_pair(a, b),
                    )
                elif clash == "overlap":
                    c.add(
                        "dose",
                        "%s would overlap on a day the clocks change, when an hour is skipped "
                        "or repeated; leave more time between their windows" % _hhmm_pair(a, b),
                    )


def validate(doc):
    """Normalised schedule of `doc`, or raise ScheduleError listing every problem."""
    c = _Checker()
    try:
        out = _validate(c, doc)
    except ScheduleError:
        raise
    except Exception as e:  # a bug here must still come out as a schedule error
        c.add("(document)", "could not be checked (%s); please report this" % type(e).__name__)
        out = None
    if c.problems or out is None:
        raise ScheduleError(c.problems or [("(document)", "invalid schedule")])
    return out


def _validate(c, doc):
    if not isinstance(doc, dict):
        c.add("(document)", "a schedule must be a table of settings, not %s" % _q(doc))
        return None
    c.keys("", doc, _TOP_KEYS)
    out = {}
    if "schema" not in doc:
        c.add("schema", "missing: add schema = %d" % SCHEMA)
    elif not _is_int(doc["schema"]) or doc["schema"] != SCHEMA:
        c.add("schema", "%s is not a schema this version reads (%d)" % (_q(doc["schema"]), SCHEMA))
    out["schema"] = SCHEMA
    if "citizen" not in doc:
        c.add("citizen", 'missing: give the citizen\'s pseudonym, e.g. "borger-0042"')
    else:
        out["citizen"] = c.text("citizen", doc["citizen"], 32, "a pseudonym")
    name = doc.get("timezone", tz.DEFAULT_ZONE)
    rule = tz.zone_rule(name) if isinstance(name, str) else None
    if rule is None:
        c.add(
            "timezone",
            "%s is not a known zone; use one of: %s" % (_q(name), ", ".join(sorted(tz.ZONES))),
        )
    elif "tz_rule" in doc and doc["tz_rule"] != rule:
        c.add(
            "tz_rule",
            "%s does not match %s (%s); leave tz_rule out" % (_q(doc["tz_rule"]), name, rule),
        )
    out["timezone"] = name
    out["tz_rule"] = rule
    lang = doc.get("language", "da")
    if lang not in LANGUAGES:
        c.add("language", "%s is not a supported language (da, en)" % _q(lang))
    out["language"] = lang
    start = end = None
    if "start" not in doc:
        c.add("start", "missing: give the first day of the schedule (YYYY-MM-DD)")
    else:
        start = civil.parse_date(doc["start"])
        if start is None:
            c.add("start", "%s is not a date (YYYY-MM-DD)" % _q(doc["start"]))
        out["start"] = doc["start"]
    if doc.get("end") is not None:
        end = civil.parse_date(doc["end"])
        if end is None:
            c.add("end", "%s is not a date (YYYY-MM-DD)" % _q(doc["end"]))
        elif start is not None and end < start:
            c.add("end", "%s is before the start %s" % (_q(doc["end"]), _q(doc["start"])))
        out["end"] = doc["end"]
    comp = doc.get("compartments", 28)
    out["compartments"] = c.integer("compartments", comp, 1, 56)
    alerts = {}
    a = doc.get("alerts", {})
    if not isinstance(a, dict):
        c.add("alerts", "%s is not a table of alert settings" % _q(a))
        a = {}
    c.keys("alerts", a, tuple(ALERT_LIMITS))
    for k in ALERT_LIMITS:
        dflt, lo, hi = ALERT_LIMITS[k]
        alerts[k] = c.integer("alerts." + k, a[k], lo, hi, " min") if k in a else dflt
    if alerts["notify_min"] is not None and alerts["late_lock_min"] is not None:
        if alerts["notify_min"] > alerts["late_lock_min"]:
            c.add(
                "alerts.notify_min",
                "the care team would hear of a miss after the dose is "
                "locked; set notify_min at or below late_lock_min",
            )
    out["alerts"] = alerts
    doses = []
    dl = doc.get("dose", [])
    if not isinstance(dl, list):
        c.add("dose", "%s is not a list of doses ([[dose]] tables)" % _q(dl))
    elif len(dl) > MAX_DOSES:
        c.add("dose", "%d doses; at most %d a schedule" % (len(dl), MAX_DOSES))
    else:
        for i, d in enumerate(dl):
            nd = _dose(c, "dose[%d]" % i, d, alerts)
            if nd is not None:
                doses.append(nd)
        if not dl:
            c.add("dose", "the schedule has no doses; add at least one [[dose]]")
    prns = []
    pl = doc.get("prn", [])
    if not isinstance(pl, list):
        c.add("prn", "%s is not a list of as-needed rules ([[prn]] tables)" % _q(pl))
    elif len(pl) > MAX_PRN:
        c.add("prn", "%d as-needed rules; at most %d" % (len(pl), MAX_PRN))
    else:
        for i, p in enumerate(pl):
            np_ = _prn(c, "prn[%d]" % i, p)
            if np_ is not None:
                prns.append(np_)
    if c.problems:
        return None
    seen = {}  # doses and as-needed rules share one namespace of ids
    for kind, entries in (("dose", doses), ("prn", prns)):
        for i, e in enumerate(entries):
            where = "%s[%d]" % (kind, i)
            if e["id"] in seen:
                c.add(where + ".id", '"%s" is already used by %s' % (e["id"], seen[e["id"]]))
            seen[e["id"]] = where
    dispensed = [d for d in doses if not d["reminder_only"]]
    if comp is not None and len(dispensed) > comp:
        c.add(
            "compartments",
            "%d dispensed doses a day do not fit in %d compartments" % (len(dispensed), comp),
        )
    if c.problems or start is None:
        return None
    _check_pairs(c, doses, start, tz.Tz(rule))
    doses.sort(key=lambda d: (d["time"], d["id"]))
    for d in doses:
        d["time"] = civil.format_hhmm(d["time"])
    prns.sort(key=lambda p: p["id"])
    out["dose"] = doses
    out["prn"] = prns
    return out


def _enc_str(s, parts):
    # Runs of plain characters go in as one slice: one list entry per character would make
    # `parts` (8 bytes an entry) need a 16 KB block for a typical schedule, which a fragmented
    # heap may not have (the power-cut campaign hit MemoryError here on the unix port).
    parts.append('"')
    start = i = 0
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\" or o < 32 or o == 127:
            if i > start:
                parts.append(s[start:i])
            parts.append("\\" + ch if o >= 32 and o != 127 else "\\u%04x" % o)
            start = i + 1
        i += 1
    if start < i:
        parts.append(s[start:] if start else s)
    parts.append('"')


def _enc(v, parts):
    if v is None:
        parts.append("null")
    elif v is True:
        parts.append("true")
    elif v is False:
        parts.append("false")
    elif isinstance(v, str):
        _enc_str(v, parts)
    elif isinstance(v, int):
        parts.append("%d" % v)
    elif isinstance(v, float):
        # Only whole and half tablet counts reach here: spelt out so both VMs agree.
        if v * 2 != int(v * 2):
            raise ValueError("only whole or half numbers have a canonical form")
        w = int(v * 2)
        parts.append("%d" % (w // 2) if w % 2 == 0 else "%d.5" % (w // 2))
    elif isinstance(v, (list, tuple)):
        parts.append("[")
        for i, x in enumerate(v):
            if i:
                parts.append(",")
            _enc(x, parts)
        parts.append("]")
    elif isinstance(v, dict):
        parts.append("{")
        for i, k in enumerate(sorted(v)):
            if i:
                parts.append(",")
            _enc_str(k, parts)
            parts.append(":")
            _enc(v[k], parts)
        parts.append("}")
    else:
        raise ValueError("no canonical form for %s" % type(v).__name__)


def canonical(doc):
    """Canonical UTF-8 JSON of a normalised document: sorted keys, no spaces, no escapes
    beyond JSON's required ones; byte-identical on CPython and MicroPython."""
    parts = []
    _enc(doc, parts)
    return "".join(parts).encode("utf-8")


def content_hash(doc):
    """SHA-256 hex digest of the canonical encoding: the schedule's identity."""
    return binascii.hexlify(hashlib.sha256(canonical(doc)).digest()).decode()
