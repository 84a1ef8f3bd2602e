"""The screens of the 128x64 OLED, drawn from short preformatted data; Display pushes changes."""

# render(fb, screen, data, lang) clears fb and draws one screen. data holds short strings that
# the caller has already formatted ("08:00", "man 23/11") and small ints; nothing here knows
# about time zones or schedules. Most screens are a vertical stack of text blocks: each block
# asks for 2x text (8 characters a line) and falls back to 1x (16 a line) when one of its words
# would not fit or the stack would not fit the 64 rows, shrinking the least important blocks
# (the last ones) first. So the same screen works for Danish and English and for long medicine
# names, and the main message stays big for citizens with poor sight.

import framebuf
from micropython import const

from dispenser import font, texts
from dispenser.texts import t

_W = const(128)
_H = const(64)
_GAP = const(6)  # at most this much space between blocks; the rest centres the stack
_PBM_HEADER = b"P4\n128 64\n"

SCREENS = (
    "idle",
    "available",
    "due",
    "reminder",
    "missed",
    "taken",
    "fault",
    "refill",
    "prn",
    "time_missing",
    "service",
    "paused",
)


def wrap(s, cols):
    """Split s into lines of at most cols characters, at spaces; over-long words are cut."""
    lines = []
    line = ""
    for word in s.split(" "):
        while len(word) > cols:
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cols])
            word = word[cols:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= cols:
            line += " " + word
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def _longest_word(s):
    n = 0
    for word in s.split(" "):
        if len(word) > n:
            n = len(word)
    return n


def _centre(fb, s, y, scale=1, c=1):
    font.text(fb, s, (_W - font.width(s, scale)) // 2, y, scale, c)


def _stack(fb, items, top=0):
    """Draw the (text, scale) items as centred blocks between row top and the bottom."""
    room = _H - top
    items = [[s, sc] for s, sc in items if s]
    for it in items:
        if it[1] == 2 and _longest_word(it[0]) > _W // 16:
            it[1] = 1
    while True:
        blocks = [wrap(s, _W // (8 * sc)) for s, sc in items]
        h = 0
        for k in range(len(items)):
            h += len(blocks[k]) * 8 * items[k][1]
        if h <= room:
            break
        for k in range(len(items) - 1, -1, -1):
            if items[k][1] == 2:
                items[k][1] = 1
                break
        else:
            break  # still too tall at 1x: the bottom lines fall off the screen
    n = len(blocks)
    gap = min(_GAP, (room - h) // (n + 1)) if h < room else 0
    y = top + max(0, (room - h - gap * (n - 1)) // 2)
    for k in range(n):
        sc = items[k][1]
        for line in blocks[k]:
            _centre(fb, line, y, sc)
            y += 8 * sc
        y += gap


def _bar(fb, s, scale):
    """A lit bar across the top with s in dark letters; returns the first row below it."""
    h = 8 * scale + 4
    fb.fill_rect(0, 0, _W, h, 1)
    _centre(fb, s, 2, scale, 0)
    return h + 2


def _idle(fb, d, lang):
    # date: "23/11", with the weekday name put in front when data has "weekday" (0 = Monday),
    # since the name depends on the language; or a whole preformatted "man 23/11".
    date = d.get("date") or ""
    wd = d.get("weekday")
    if wd is not None:
        date = texts.weekday(lang, wd) + " " + date
    _centre(fb, date, 1)
    clock = d["clock"]
    font.big_time(fb, clock, (_W - font.big_width(clock)) // 2, 13)
    nxt = d.get("next")
    _centre(fb, t(lang, "next_at", nxt) if nxt else t(lang, "no_doses"), 54)


def _available(fb, d, lang):
    # The early window: the light is on and the dose may be taken; no tone yet, so the screen
    # leads with which dose and its time, and asks more quietly.
    _stack(
        fb,
        (
            (d["dose"], 2),
            (d["time"], 2),
            (t(lang, "take"), 1),
            (t(lang, "compartment", d["compartment"]), 1),
        ),
    )


def _due(fb, d, lang):
    when = t(lang, "late" if d.get("late") else "at", d["time"])
    _stack(
        fb,
        ((t(lang, "take"), 2), (t(lang, "compartment", d["compartment"]), 2), (when, 1)),
    )


def _reminder(fb, d, lang):
    # A reminder-only item (eye drops, a patch): nothing is dispensed, the button confirms.
    _stack(
        fb,
        (
            (t(lang, "reminder"), 1),
            (d["name"], 2),
            (t(lang, "at", d["time"]), 1),
            (t(lang, "press"), 1),
        ),
    )


def _missed(fb, d, lang):
    _stack(
        fb,
        ((t(lang, "missed"), 2), (t(lang, "at", d["time"]), 1), (t(lang, "staff_told"), 1)),
    )


def _taken(fb, d, lang):
    _stack(fb, ((t(lang, "taken"), 2), (t(lang, "at", d["time"]), 1), (t(lang, "thanks"), 2)))


def _fault(fb, d, lang):
    # The code is what the citizen reads out on the phone, so it is the biggest thing; the
    # action says what to do. A power cut (no code) is a notice, not a fault: check the plug.
    # The code decides the text, so that what the citizen reads out and what is shown agree;
    # data's key only names what has no code (the power cut).
    code = d.get("code")
    key = texts.fault_key(code) or d.get("key")
    if not texts.has(key):
        key = None
    top = _bar(fb, t(lang, "fault", code) if code else t(lang, "notice"), 2)
    msg = t(lang, key) if key else ""
    _stack(fb, ((msg, 1), (t(lang, "check_plug" if key == "mains" else "call"), 1)), top)


def _refill(fb, d, lang):
    left = d["left"]
    if left <= 0:
        _stack(fb, ((t(lang, "refill_now"), 2), (t(lang, "call"), 1)))
    elif left == 1:
        _stack(fb, ((t(lang, "refill_one"), 2),))
    else:
        _stack(fb, ((t(lang, "refill_soon", left), 2),))


def _prn(fb, d, lang):
    # The answer to a long press asking for an as-needed dose.
    if d["allowed"]:
        _stack(fb, ((d["name"], 2), (t(lang, "allowed_now"), 2)))
        return
    nxt = d.get("next")
    when = t(lang, "next_at", nxt) if nxt else t(lang, "not_today")
    _stack(fb, ((d["name"], 2), (t(lang, "not_now"), 2), (when, 1)))


def _time_missing(fb, d, lang):
    # The clock was lost: nothing is dispensed until staff set it (hazard: wrong time).
    _stack(
        fb,
        (
            (t(lang, "time_missing"), 2),
            (t(lang, "no_medicine"), 1),
            (t(lang, "call"), 1),
        ),
    )


def _service(fb, d, lang):
    top = _bar(fb, t(lang, "service"), 1)
    _stack(fb, ((d.get("text") or "", 1),), top)


def _paused(fb, d, lang):
    until = d.get("until")
    _stack(fb, ((t(lang, "paused"), 2), (t(lang, "until", until) if until else "", 1)))


_DRAW = {
    "idle": _idle,
    "available": _available,
    "due": _due,
    "reminder": _reminder,
    "missed": _missed,
    "taken": _taken,
    "fault": _fault,
    "refill": _refill,
    "prn": _prn,
    "time_missing": _time_missing,
    "service": _service,
    "paused": _paused,
}


def render(fb, screen, data, lang="da"):
    """Clear fb (128x64) and draw screen from data in lang; ValueError for an unknown screen."""
    draw = _DRAW.get(screen)
    if draw is None:
        raise ValueError("unknown screen: %s" % screen)
    fb.fill(0)
    draw(fb, data, lang)


def to_pbm(fb):
    """A 128x64 FrameBuffer as a binary PBM (P4) image: lit pixels are black ("ink") in it.

    P4 rows are packed 8 pixels a byte, leftmost in bit 7, which is framebuf's MONO_HLSB; the
    panel's buffer is MONO_VLSB (a byte is 8 rows of one column). Blitting one into the other
    reorders the bits in C, fast enough to run on the device.
    """
    n = len(_PBM_HEADER)
    out = bytearray(n + _W * _H // 8)
    out[:n] = _PBM_HEADER
    framebuf.FrameBuffer(memoryview(out)[n:], _W, _H, framebuf.MONO_HLSB).blit(fb, 0, 0)
    return bytes(out)


class Display:
    """Screens on an SSD1306 (or anything with .fb, .buf, .init(), .show()), pushed on change.

    The panel is set up (init()) before the first push and again after any failed push: a panel
    that browned out or was unplugged comes back configured. I2C errors (OSError) reach the
    caller, the display task, which reports a display fault and keeps the device reminding by
    light and sound; the next show() simply tries again.
    """

    def __init__(self, ssd):
        self._ssd = ssd
        self._ready = False  # init() has been sent since the last failure
        self._screen = None
        self._data = None
        self._lang = None

    def show(self, screen, data, lang="da"):
        """Draw and push the screen unless it is what the panel already shows; True if drawn."""
        if screen == self._screen and lang == self._lang and data == self._data:
            return False
        ssd = self._ssd
        if not self._ready:
            ssd.init()  # clears the frame buffer: before render(), not after
            self._ready = True
        render(ssd.fb, screen, data, lang)
        try:
            ssd.show()
        except OSError:
            self._ready = False
            raise
        # Remembered only once pushed, so a failed push is retried. A copy, so that a caller
        # that reuses and mutates one dict still gets its redraw.
        self._screen = screen
        self._lang = lang
        self._data = dict(data)
        return True

    def invalidate(self):
        """Set the panel up and redraw at the next show() (e.g. after it was powered off)."""
        self._ready = False
        self._screen = None

    async def test_pattern(self, clock, seconds=1):
        """The self-test: a chequerboard on every pixel for a moment, then the screen again."""
        ssd = self._ssd
        if not self._ready:
            ssd.init()
            self._ready = True
        buf = ssd.buf
        for i in range(len(buf)):
            buf[i] = 0xAA if i & 1 else 0x55
        try:
            ssd.show()
        except OSError:
            self._ready = False
            raise
        await clock.sleep(seconds)
        self._screen = None  # the next show() redraws

    def snapshot(self):
        """The frame buffer: 1024 bytes, MONO_VLSB (a byte is 8 rows of a column, bit 0 on top)."""
        return bytes(self._ssd.buf)

    def to_pbm(self):
        """What the panel shows, as a binary PBM image (see to_pbm())."""
        return to_pbm(self._ssd.fb)
