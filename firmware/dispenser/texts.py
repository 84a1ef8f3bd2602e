"""Screen texts in Danish (the default) and English, by message id: t(lang, key, *args)."""

# Kept short on purpose: at 2x scale a line holds 8 characters, at 1x 16. Every character here
# must be one the display font can draw (ASCII or æøåÆØÅé); tests/mp/test_display.py checks.
# Arguments are formatted with %, so the caller passes already-formatted short strings ("08:00")
# and ints (a compartment number, doses left).

LANGS = ("da", "en")

# Fault codes shown on the fault screen, and the message id of each one's short text. The
# citizen reads the code to the care team over the phone, so a code keeps its meaning forever:
# add new ones at the end, never renumber. E1, E2 and E4 are carousel.py's exceptions' codes.
FAULTS = (
    ("E1", "jam"),  # carousel jammed: the home edge not seen within 1.1 revolutions
    ("E2", "home"),  # home sensor stuck or missing
    ("E3", "time"),  # RTC lost or invalid: nothing is dispensed until the time is set
    ("E4", "beam"),  # the beam never saw the opening
    ("E5", "battery"),  # battery low
    ("E6", "empty"),  # no filled compartment left
    ("E7", "button"),  # a button held down (stuck)
    ("E8", "display"),  # display not answering (logged; shown once it answers again)
    ("E9", "storage"),  # log or settings cannot be written
)
# A power cut is not a fault of the device: it keeps working on the battery. The fault screen
# shows it (key "mains") under "Bemærk" ("Note") instead of a code.

# Weekday names for the idle screen's date, 3 characters each, Monday first (civil.weekday()).
_WEEKDAYS = ("mantironstorfrelørsøn", "MonTueWedThuFriSatSun")

# One string, one line per message: "\n" id "\t" Danish "\t" English. One constant costs a
# fraction of the heap that a dict of tuples of strings does (about 3 KB against 11 KB on the
# unix port); looking a text up scans it, which is fine at the rate screens change.
_T = (
    # dose screens
    "\ntake\tTag din medicin\tTake your medicine"
    "\ncompartment\tRum %d\tCompartment %d"
    "\nat\tKl. %s\tAt %s"
    "\nlate\tForsinket: %s\tLate: due %s"
    "\nnext_dose\tNæste dosis\tNext dose"
    "\nnext_at\tNæste kl. %s\tNext at %s"
    "\nno_doses\tIngen doser\tNo doses"
    "\nmissed\tGlemt dosis\tMissed dose"
    "\nstaff_told\tPersonalet er underrettet\tStaff have been told"
    "\ntaken\tTaget\tTaken"
    "\nthanks\tTak\tThanks"
    "\nreminder\tPåmindelse\tReminder"
    "\npress\tTryk på den store knap\tPress the big button"
    # as-needed (PRN) answers
    "\nallowed_now\tMå tages nu\tAllowed now"
    "\nnot_now\tIkke nu\tNot now"
    "\nnot_today\tIkke mere i dag\tNo more today"
    # device state
    "\nrefill_soon\tPåfyld snart: %d doser tilbage\tRefill soon: %d doses left"
    "\nrefill_one\tPåfyld snart: 1 dosis tilbage\tRefill soon: 1 dose left"
    "\nrefill_now\tTom: påfyld nu\tEmpty: refill now"
    "\npaused\tSat på pause\tPaused"
    "\nuntil\tTil %s\tUntil %s"
    "\nservice\tServicetilstand\tService mode"
    "\ntime_missing\tTid mangler\tTime missing"
    "\nno_medicine\tIngen medicin nu\tNo medicine now"
    "\nfault\tFejl %s\tFault %s"
    "\ncall\tRing til hjemmeplejen\tCall home care"
    "\ncheck_plug\tTjek stikket\tCheck the plug"
    "\nnotice\tBemærk\tNote"
    # fault texts (see FAULTS for the codes)
    "\njam\tKarrusel sidder fast\tCarousel stuck"
    "\nhome\tHjemsensor\tHome sensor"
    "\ntime\tTid mangler\tTime missing"
    "\nbeam\tLyssensor ved lugen\tSensor at the opening"
    "\nbattery\tLavt batteri\tLow battery"
    "\nempty\tKarrusel tom\tCarousel empty"
    "\nbutton\tKnap sidder fast\tButton stuck"
    "\ndisplay\tSkærmfejl\tDisplay fault"
    "\nstorage\tLagerfejl\tStorage fault"
    "\nmains\tStrøm afbrudt - kører på batteri\tPower cut - running on battery"
    "\n"
)


def _find(key):
    """Index of key's Danish text in _T, or -1."""
    i = _T.find("\n" + key + "\t")
    return i + len(key) + 2 if i >= 0 else -1


def t(lang, key, *args):
    """The text for message id key in lang ("da" or "en"; anything else gives Danish).

    An unknown key comes back as the key itself: a missing text shows up on the screen, where a
    tester sees it, instead of taking the display task down.
    """
    i = _find(key) if key else -1
    if i < 0:
        return key
    j = _T.find("\t", i)
    s = _T[j + 1 : _T.find("\n", j)] if lang == "en" else _T[i:j]
    return s % args if args else s


def has(key):
    """True if key is a message id."""
    return bool(key) and _find(key) >= 0


def fault_key(code):
    """The message id of fault code ("E1"), or None for a code not in FAULTS."""
    for c, key in FAULTS:
        if c == code:
            return key
    return None


def weekday(lang, n):
    """Short weekday name, n = 0 for Monday .. 6 for Sunday."""
    n = n % 7 * 3
    return _WEEKDAYS[1 if lang == "en" else 0][n : n + 3]


def keys():
    """Every message id, in order (for tests and the host tools)."""
    return [line[: line.find("\t")] for line in _T.split("\n") if line]
