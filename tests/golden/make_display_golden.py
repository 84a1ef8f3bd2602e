"""Write the display's golden images, tests/golden/display/<case>_<lang>.pbm, on MicroPython."""

# Usage (from the repository root):
#   MICROPYPATH=.frozen:firmware .venv/bin/micropython tests/golden/make_display_golden.py
# Run it after an intended change to a screen, look at the images (any viewer opens PBM), and
# commit them with the change. tests/mp/test_display.py renders the same CASES and compares
# bytes exactly. Only what MicroPython has: no os.path, no pathlib.

import framebuf

from dispenser import screens

LANGS = ("da", "en")

# (case name, screen, data, English overrides). The case name starts with the screen's name;
# a second case of a screen shows another branch of it.
_IDLE = {"clock": "08:15", "date": "23/11", "weekday": 0, "next": "12:00"}
_REMINDER = {"name": "Xalatan øjendråber", "time": "20:00"}
_SERVICE = {"text": "USB forbundet. Firmware 0.1.0"}
CASES = (
    ("idle", "idle", _IDLE, None),
    (
        "idle_none",
        "idle",
        {"clock": "23:59", "date": "søn 29/3", "next": None},
        {"date": "Sun 29/3"},
    ),
    (
        "available",
        "available",
        {"compartment": 5, "dose": "Morgen", "time": "08:00"},
        {"dose": "Morning"},
    ),
    ("due", "due", {"compartment": 5, "time": "08:00", "late": False}, None),
    ("due_late", "due", {"compartment": 12, "time": "12:00", "late": True}, None),
    ("reminder", "reminder", _REMINDER, {"name": "Xalatan eye drops"}),
    ("missed", "missed", {"time": "08:00"}, None),
    ("taken", "taken", {"time": "08:03"}, None),
    ("fault", "fault", {"code": "E1", "key": "jam"}, None),
    ("fault_beam", "fault", {"code": "E4", "key": "fault"}, None),  # key from the code
    ("fault_mains", "fault", {"code": "", "key": "mains"}, None),
    ("refill", "refill", {"left": 4}, None),
    ("refill_one", "refill", {"left": 1}, None),
    ("refill_empty", "refill", {"left": 0}, None),
    ("prn", "prn", {"allowed": True, "name": "Panodil"}, None),
    ("prn_refused", "prn", {"allowed": False, "name": "Panodil", "next": "14:30"}, None),
    ("time_missing", "time_missing", {}, None),
    ("service", "service", _SERVICE, {"text": "USB connected. Firmware 0.1.0"}),
    ("paused", "paused", {"until": "fre 28/11"}, {"until": "Fri 28/11"}),
)


def data_for(case, lang):
    """The data dict of a CASES entry in lang."""
    data = case[2]
    if lang != "da" and case[3]:
        data = dict(data)
        data.update(case[3])
    return data


def render(screen, data, lang):
    """Render one screen on a fresh 128x64 frame buffer and return it as PBM bytes."""
    fb = framebuf.FrameBuffer(bytearray(128 * 64 // 8), 128, 64, framebuf.MONO_VLSB)
    screens.render(fb, screen, data, lang)
    return screens.to_pbm(fb)


def golden_dir():
    here = __file__.replace("\\", "/")
    slash = here.rfind("/")
    return (here[:slash] if slash >= 0 else ".") + "/display"


def path_for(name, lang):
    return golden_dir() + "/" + name + "_" + lang + ".pbm"


def main():
    n = 0
    for case in CASES:
        for lang in LANGS:
            with open(path_for(case[0], lang), "wb") as f:
                f.write(render(case[1], data_for(case, lang), lang))
            n += 1
    print("wrote", n, "images to", golden_dir())


if __name__ == "__main__":
    main()
