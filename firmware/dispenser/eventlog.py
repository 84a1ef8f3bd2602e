"""The app's events as dose-log records: the one place that maps (kind, occ, detail) to codes.

The app emits events as (kind, occurrence, detail text); the links print or send them, and
this sink turns each into one fixed-layout record of `dispenser.doselog` (see
`dosiscore.logrec` for the codes). Simulator-only events ("cut", "screen") are not logged.
"""

from dosiscore import logrec as R

# Event kind -> record kind, for the kinds that need no further decoding.
_SIMPLE = {
    "available": R.AVAILABLE,
    "due": R.DUE,
    "louder": R.LOUDER,
    "notify": R.NOTIFY,
    "taken": R.TAKEN,
    "missed": R.MISSED,
    "skipped": R.SKIPPED,
    "opened": R.OPENED,
    "closed": R.CLOSED,
    "prn": R.PRN,
    "mode": R.MODE,
    "press": R.PRESS,
    "refill": R.REFILL,
    "empty": R.EMPTY,
    "filled": R.FILLED,
    "recovered": R.RECOVERED,
    "service": R.SERVICE,
    "rtc_lost": R.RTC_LOST,
    "no_schedule": R.NO_SCHEDULE,
    "clock_held": R.CLOCK_HELD,
    "fault_cleared": R.FAULT_CLEARED,
    "settings_fallback": R.SETTINGS_FALLBACK,
}
_SKIP = ("cut", "screen", "jam", "carousel_fault", "nvs_copy")


def _int_in(text):
    """The first whole number in `text`, or 0."""
    n = 0
    seen = False
    for ch in text:
        if "0" <= ch <= "9":
            n = n * 10 + ord(ch) - 48
            seen = True
        elif seen:
            break
    return n


def _fault_code(text):
    """ "E4 nothing seen" -> 4; anything else -> 0."""
    if len(text) >= 2 and text[0] == "E" and "0" <= text[1] <= "9":
        return _int_in(text[1:3])
    return 0


class LogSink:
    """Callable(kind, occ, detail): appends the matching record to `log` (never raises)."""

    def __init__(self, log, clock, doc=None):
        self.log = log
        self.clock = clock
        self.doses = [d["id"] for d in doc["dose"]] if doc else []
        self.skipped = 0  # events with no record kind (counted, for tests)

    def set_schedule(self, doc):
        self.doses = [d["id"] for d in doc["dose"]]

    def _dose(self, occ):
        if occ is None:
            return None
        for i in range(len(self.doses)):
            if self.doses[i] == occ[1]:
                return i
        return None

    def __call__(self, kind, occ, detail):
        if kind in _SKIP:
            return
        text = detail if isinstance(detail, str) else str(detail)
        utc = self.clock.now() if self.clock.valid() else 0
        t = occ[0] if occ else 0
        dose = self._dose(occ)
        num = 0
        small = 0
        rec = _SIMPLE.get(kind)
        if rec is not None:
            if kind in ("taken", "missed", "skipped", "notify"):
                small = R.reason_code(text)
            elif kind in ("available", "due"):
                small = 1 if text == "late" else 0
            elif kind in ("louder", "refill", "filled"):
                small = detail if isinstance(detail, int) else _int_in(text)
            elif kind in ("opened", "recovered"):
                num = _int_in(text)
            elif kind == "prn":
                small = 1 if text.endswith(":ok") else 0
                dose = 0
            elif kind == "mode":
                small = R.code_of(R.MODES, text)
            elif kind == "service":
                small = 2 if text == "repl" else 1 if text == "on" else 0
            elif kind == "fault_cleared":
                small = _fault_code(text)
            elif kind == "rtc_lost":
                small = 1
        elif kind == "fault":
            code = _fault_code(text)
            rec = R.FAULT_KINDS[code] if 0 < code < len(R.FAULT_KINDS) else R.FAULT
            small = code
            if code == 9:
                rec = R.NVS_MODE
        elif kind == "mains":
            rec = R.MAINS_LOST if text == "lost" else R.MAINS_RESTORED
        elif kind == "clock":
            # "old new source"
            parts = text.split()
            rec = R.CLOCK_SET
            if len(parts) == 3:
                t = int(parts[0]) if parts[0].isdigit() else 0
                num = int(parts[1]) if parts[1].isdigit() else 0
                small = R.code_of(R.SOURCES, parts[2])
        elif kind == "schedule":
            rec = R.SCHEDULE
            num = R.hash_prefix(text) if text != "from NVS" else 0
            if text == "from NVS":
                rec = R.NVS_MODE
        elif kind == "boot":
            rec = R.BOOT
        elif kind == "paired":
            rec = R.PAIRED
        elif kind == "auth_fail":
            rec = R.AUTH_FAIL
            small = R.code_of(R.AUTH_REASONS, text)
        elif kind == "settings":
            # "volume tone language": the three settings, packed into `small`
            rec = R.SETTINGS
            parts = text.split()
            if len(parts) == 3:
                small = int(parts[0]) | R.code_of(("normal", "low"), parts[1]) << 4
                small |= R.code_of(("da", "en"), parts[2]) << 8
        else:
            self.skipped += 1
            return
        self.log.append(utc, rec, t, dose, num & 0xFFFFFFFF, small & 0xFFFF)
