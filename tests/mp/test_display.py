"""Display tests on MicroPython: screens vs golden images, Danish glyphs, SSD1306, redraws."""

# Needs framebuf, which CPython lacks, so this file sits outside pytest's tests/fw and
# tests/host; tests/host/test_display_on_micropython.py runs it under the micropython binary:
#   MICROPYPATH=.frozen:firmware:tests/fw .venv/bin/micropython tests/fw/mprun.py \
#       tests/mp/test_display.py

import sys

import framebuf
import micropython

from dispenser import font, screens, ssd1306, texts


def _here():
    path = __file__.replace("\\", "/")
    slash = path.rfind("/")
    return path[:slash] if slash >= 0 else "."


sys.path.append(_here() + "/../golden")
import make_display_golden as golden  # noqa: E402


def _fb(w=128, h=64):
    return framebuf.FrameBuffer(bytearray(w * ((h + 7) // 8)), w, h, framebuf.MONO_VLSB)


def _cell(fb, x0, y0, w, h):
    """The pixels of a w x h area as a tuple of row strings ('#' lit)."""
    return tuple(
        "".join("#" if fb.pixel(x, y) else "." for x in range(x0, x0 + w))
        for y in range(y0, y0 + h)
    )


def _lit(fb, w=128, h=64):
    n = 0
    for y in range(h):
        for x in range(w):
            n += fb.pixel(x, y)
    return n


# --- glyph art (the comments in font.py) ---------------------------------------------------


def _art():
    """{name: rows} from the '# art:' blocks of font.py."""
    path = font.__file__
    if not path.endswith(".py"):
        raise AssertionError(f"font imported from {path}: run with firmware/ sources")
    with open(path) as f:
        lines = f.read().split("\n")
    out = {}
    i = 0
    while i < len(lines):
        if lines[i].startswith("# art:"):
            names = lines[i][6:].split()
            rows = []
            i += 1
            while i < len(lines) and lines[i].startswith("#  ") and lines[i][1:].strip():
                rows.append(lines[i][1:].split())
                i += 1
            for k in range(len(names)):
                out[names[k]] = [r[k] for r in rows]
        else:
            i += 1
    return out


def _vlsb(rows):
    out = bytearray()
    for p in range(len(rows) // 8):
        for c in range(len(rows[0])):
            b = 0
            for bit in range(8):
                if rows[p * 8 + bit][c] == "#":
                    b |= 1 << bit
            out.append(b)
    return bytes(out)


def _literal(data):
    return "\n".join(
        '    b"' + "".join(f"\\x{b:02x}" for b in data[k : k + 22]) + '"'
        for k in range(0, len(data), 22)
    )


def test_font_bytes_encode_the_art():
    art = _art()
    groups = (
        ("_EXTRA_GLYPHS", tuple(font.EXTRA)),
        ("_DIGITS", tuple("0123456789")),
        ("_COLON", (":",)),
    )
    for attr, names in groups:
        for n in names:
            assert n in art, f"no art for {n!r}"
        want = b"".join(_vlsb(art[n]) for n in names)
        got = getattr(font, attr)
        assert got == want, f"font.{attr} does not match its art; paste:\n{_literal(want)}"
    for n in font.EXTRA:
        assert len(art[n]) == 8 and all(len(r) == 8 for r in art[n]), n


# --- the Danish letters ------------------------------------------------------------------------


def test_danish_letters_draw_their_art():
    art = _art()
    for ch in font.EXTRA:
        fb = _fb(8, 8)
        assert font.text(fb, ch, 0, 0) == 8
        assert _cell(fb, 0, 0, 8, 8) == tuple(art[ch]), ch


def test_danish_letters_are_distinct_and_not_ascii():
    fb = _fb(48, 8)
    font.text(fb, "æøåÆØÅ", 0, 0)
    cells = [_cell(fb, 8 * i, 0, 8, 8) for i in range(6)]
    blank = ("........",) * 8
    for c in cells:
        assert c != blank
    for i in range(6):
        for j in range(i):
            assert cells[i] != cells[j], f"glyphs {i} and {j} are the same"
    # Not the plain vowel, and not any ASCII glyph (framebuf's unknown box included).
    ascii_cells = {}
    for o in range(32, 128):
        a = _fb(8, 8)
        a.text(chr(o), 0, 0, 1)
        ascii_cells[_cell(a, 0, 0, 8, 8)] = chr(o)
    for i in range(6):
        assert cells[i] not in ascii_cells, "æøåÆØÅ"[i] + " looks like " + ascii_cells[cells[i]]
    for i, base in enumerate("aoaAOA"):
        a = _fb(8, 8)
        a.text(base, 0, 0, 1)
        assert cells[i] != _cell(a, 0, 0, 8, 8)


def test_framebuf_alone_cannot_draw_danish():
    # Why font.py exists: FrameBuffer.text draws one "unknown" box per UTF-8 byte.
    fb = _fb(16, 8)
    fb.text("æ", 0, 0, 1)
    box = _fb(8, 8)
    box.text(chr(127), 0, 0, 1)
    assert _cell(fb, 0, 0, 8, 8) == _cell(box, 0, 0, 8, 8)
    assert _cell(fb, 8, 0, 8, 8) == _cell(box, 0, 0, 8, 8)


def test_unknown_characters_draw_a_question_mark():
    q = _fb(8, 8)
    font.text(q, "?", 0, 0)
    for ch in ("€", "\n", "\t", chr(127), "ü", "ñ"):
        fb = _fb(8, 8)
        assert font.text(fb, ch, 0, 0) == 8
        assert _cell(fb, 0, 0, 8, 8) == _cell(q, 0, 0, 8, 8), repr(ch)


def test_ascii_matches_framebuf():
    s = "Tag din medicin!"
    a = _fb(128, 8)
    font.text(a, s, 0, 0)
    b = _fb(128, 8)
    b.text(s, 0, 0, 1)
    assert _cell(a, 0, 0, 128, 8) == _cell(b, 0, 0, 128, 8)


def test_scale_2_doubles_every_pixel():
    s = "Aæg?Ø1"
    one = _fb(48, 8)
    font.text(one, s, 0, 0)
    two = _fb(96, 16)
    assert font.text(two, s, 0, 0, 2) == 96
    for y in range(16):
        for x in range(96):
            assert two.pixel(x, y) == one.pixel(x // 2, y // 2), (x, y)
    try:
        font.text(one, s, 0, 0, 3)
    except ValueError:
        pass
    else:
        raise AssertionError("scale 3 accepted")


def test_dark_text_on_a_lit_bar():
    lit = _fb(48, 16)
    font.text(lit, "Æø?a", 0, 0, 2)
    fb = _fb(48, 16)
    fb.fill(1)
    font.text(fb, "Æø?a", 0, 0, 2, 0)
    for y in range(16):
        for x in range(48):
            assert fb.pixel(x, y) == 1 - lit.pixel(x, y), (x, y)


def test_widths():
    assert font.width("Næste") == 40
    assert font.width("Næste", 2) == 80
    assert font.width("") == 0
    assert font.big_width("08:15") == 88
    fb = _fb()
    assert font.big_time(fb, "08:15", 3, 0) == 3 + 88
    assert font.text(fb, "æøå", 5, 0, 2) == 5 + 48


def test_big_digits_are_the_doubled_art():
    art = _art()
    for ch in "0123456789:":
        fb = _fb(20, 32)
        font.big_time(fb, ch, 0, 0)
        rows = art[ch]
        w = len(rows[0])
        for y in range(32):
            for x in range(2 * w):
                want = 1 if rows[y // 2][x // 2] == "#" else 0
                assert fb.pixel(x, y) == want, (ch, x, y)
    assert font.BIG_HEIGHT == 32


def test_drawing_text_allocates_nothing():
    fb = _fb()
    s = "Næste dosis æøåÆØÅé €"

    def draw():
        font.text(fb, s, 0, 0)
        font.text(fb, s, 0, 16, 2)
        font.text(fb, s, 0, 40, 2, 0)
        font.big_time(fb, "23:59", 0, 30)

    draw()  # the first pass interns the one-character strings
    micropython.heap_lock()
    try:
        draw()
    finally:
        micropython.heap_unlock()


# --- texts -------------------------------------------------------------------------------------


def test_texts_exist_in_both_languages_and_are_drawable():
    n = 0
    for key in texts.keys():
        for lang in texts.LANGS:
            s = texts.t(lang, key)
            assert s and s != key, (lang, key)
            for ch in s:
                o = ord(ch)
                assert 32 <= o < 127 or ch in font.EXTRA, f"{lang} {key}: {ch!r}"
        n += 1
    assert n >= 30
    ks = texts.keys()
    assert len(set(ks)) == len(ks), "a message id appears twice"
    for line in texts._T.split("\n"):
        assert not line or line.count("\t") == 2, repr(line)


def test_t_formats_and_falls_back():
    assert texts.t("da", "compartment", 5) == "Rum 5"
    assert texts.t("en", "compartment", 5) == "Compartment 5"
    assert texts.t("da", "refill_soon", 4) == "Påfyld snart: 4 doser tilbage"
    assert texts.t("en", "next_at", "14:30") == "Next at 14:30"
    assert texts.t("xx", "take") == "Tag din medicin"  # unknown language: Danish
    assert texts.t("da", "no_such_key") == "no_such_key"


def test_fault_codes_are_unique_and_have_texts():
    codes = [c for c, _ in texts.FAULTS]
    assert len(set(codes)) == len(codes)
    for code, key in texts.FAULTS:
        assert len(code) == 2 and code[0] == "E", code
        assert texts.t("da", key) != key and texts.t("en", key) != key, key
    assert texts.FAULTS[0] == ("E1", "jam")
    assert texts.t("da", "mains") == "Strøm afbrudt - kører på batteri"
    assert texts.fault_key("E4") == "beam" and texts.fault_key("E99") is None
    assert texts.weekday("da", 5) == "lør" and texts.weekday("en", 0) == "Mon"


# --- screens -----------------------------------------------------------------------------------


def test_cases_cover_every_screen():
    assert set(c[1] for c in golden.CASES) == set(screens.SCREENS)
    for c in golden.CASES:
        assert c[0].startswith(c[1]), c[0]


def test_every_screen_matches_its_golden_image():
    bad = []
    for case in golden.CASES:
        for lang in golden.LANGS:
            got = golden.render(case[1], golden.data_for(case, lang), lang)
            with open(golden.path_for(case[0], lang), "rb") as f:
                want = f.read()
            if got != want:
                bad.append(case[0] + "_" + lang)
    assert not bad, (
        f"differ from tests/golden/display: {bad}. If intended, run "
        "tests/golden/make_display_golden.py, look at the images and commit them"
    )


def test_screens_draw_something_and_differ_by_language():
    for case in golden.CASES:
        da = golden.render(case[1], golden.data_for(case, "da"), "da")
        en = golden.render(case[1], golden.data_for(case, "en"), "en")
        assert da != en, case[0]
        fb = _fb()
        screens.render(fb, case[1], golden.data_for(case, "da"), "da")
        assert _lit(fb) > 100, case[0]


def test_fault_text_follows_the_code():
    for code, key in texts.FAULTS:
        for lang in texts.LANGS:
            want = golden.render("fault", {"code": code, "key": key}, lang)
            for other in ("fault", "jam", None, "no_such_key"):
                assert golden.render("fault", {"code": code, "key": other}, lang) == want
    assert golden.render("fault", {"code": "E1", "key": "jam"}, "da") != golden.render(
        "fault", {"code": "E5", "key": "battery"}, "da"
    )


def test_render_clears_first_and_rejects_unknown_screens():
    fb = _fb()
    fb.fill(1)
    screens.render(fb, "time_missing", {}, "da")
    assert _lit(fb) < 128 * 64 // 3
    try:
        screens.render(fb, "no_such_screen", {}, "da")
    except ValueError:
        pass
    else:
        raise AssertionError("unknown screen accepted")


def test_long_names_stay_on_screen():
    # A long medicine name falls back to 1x and wraps instead of running off the edge.
    fb = _fb(136, 64)  # 8 spare columns to catch overflow on the right
    screens.render(fb, "reminder", {"name": "Paracetamol Actavis 500 mg", "time": "08:00"}, "da")
    for y in range(64):
        for x in range(128, 136):
            assert not fb.pixel(x, y), (x, y)


def test_wrap():
    assert screens.wrap("Tag din medicin", 8) == ["Tag din", "medicin"]
    assert screens.wrap("Tag din medicin", 16) == ["Tag din medicin"]
    assert screens.wrap("Compartment 5", 8) == ["Compartm", "ent 5"]
    assert screens.wrap("", 8) == []
    assert screens.wrap("øjendråber", 16) == ["øjendråber"]


# --- PBM ---------------------------------------------------------------------------------------


def _reference_pbm(buf):
    """VLSB bytes to P4 bits, the slow obvious way."""
    out = bytearray(b"P4\n128 64\n")
    for y in range(64):
        for xb in range(16):
            b = 0
            for bit in range(8):
                x = xb * 8 + bit
                if buf[(y >> 3) * 128 + x] >> (y & 7) & 1:
                    b |= 0x80 >> bit
            out.append(b)
    return bytes(out)


def test_to_pbm_round_trip():
    ssd = ssd1306.SSD1306(_I2C())
    d = screens.Display(ssd)
    d.show("due", {"compartment": 5, "time": "08:00", "late": False}, "da")
    snap = d.snapshot()
    assert isinstance(snap, bytes) and len(snap) == 1024
    assert snap == bytes(ssd.buf)
    pbm = d.to_pbm()
    assert pbm[:10] == b"P4\n128 64\n" and len(pbm) == 10 + 1024
    assert pbm == _reference_pbm(snap)
    for y in range(64):
        for x in range(128):
            bit = pbm[10 + y * 16 + x // 8] >> (7 - x % 8) & 1
            assert bit == ssd.fb.pixel(x, y), (x, y)


# --- SSD1306 -----------------------------------------------------------------------------------


class _I2C:
    """Records every write as (addr, bytes)."""

    def __init__(self):
        self.writes = []

    def writeto(self, addr, buf):
        self.writes.append((addr, bytes(buf)))
        return len(buf)


class _CountingI2C:
    def __init__(self):
        self.n = 0

    def writeto(self, addr, buf):
        self.n += 1


_WINDOW = b"\x00\x21\x00\x7f\x22\x00\x07"


def test_ssd1306_init_sends_setup_then_a_clear_frame_then_display_on():
    i2c = _I2C()
    ssd = ssd1306.SSD1306(i2c)
    assert i2c.writes == []  # constructing does no I/O
    ssd.fb.pixel(5, 5, 1)
    ssd.init()
    assert [a for a, _ in i2c.writes] == [0x3C] * 4
    setup = i2c.writes[0][1]
    assert setup[0] == 0x00  # one command stream
    assert setup[1] == 0xAE  # dark while configuring
    cmds = setup[1:]
    for seq in (b"\x8d\x14", b"\x20\x00", b"\xa8\x3f", b"\xda\x12", b"\xa1", b"\xc8"):
        assert seq in cmds, seq
    assert 0xAF not in cmds  # switched on only after the clear frame
    assert i2c.writes[1][1] == _WINDOW
    assert i2c.writes[2][1] == b"\x40" + bytes(1024)  # the pixel drawn before init is gone
    assert i2c.writes[3][1] == b"\x00\xaf"


def test_ssd1306_show_sends_the_buffer_in_one_write():
    i2c = _I2C()
    ssd = ssd1306.SSD1306(i2c, 0x3D)
    ssd.fb.pixel(0, 0, 1)  # page 0, column 0, bit 0
    ssd.fb.pixel(127, 63, 1)  # page 7, column 127, bit 7
    ssd.show()
    assert i2c.writes[0] == (0x3D, _WINDOW)
    addr, data = i2c.writes[1]
    assert addr == 0x3D and len(data) == 1025 and data[0] == 0x40
    assert data[1] == 0x01 and data[1024] == 0x80
    assert data[1:] == bytes(ssd.buf)


def test_ssd1306_commands():
    i2c = _I2C()
    ssd = ssd1306.SSD1306(i2c)
    ssd.poweroff()
    ssd.poweron()
    ssd.contrast(0x10)
    ssd.contrast(300)
    ssd.invert(True)
    ssd.invert(False)
    assert [w for _, w in i2c.writes] == [
        b"\x00\xae",
        b"\x00\xaf",
        b"\x00\x81\x10",
        b"\x00\x81\xff",
        b"\x00\xa7",
        b"\x00\xa6",
    ]


def test_ssd1306_show_allocates_nothing():
    i2c = _CountingI2C()
    ssd = ssd1306.SSD1306(i2c)
    ssd.show()
    micropython.heap_lock()
    try:
        ssd.show()
        ssd.contrast(0x80)
        ssd.poweroff()
    finally:
        micropython.heap_unlock()
    assert i2c.n == 6


# --- Display -----------------------------------------------------------------------------------


class _FakeSSD:
    def __init__(self, fail=0):
        self.buf = bytearray(1024)
        self.fb = framebuf.FrameBuffer(self.buf, 128, 64, framebuf.MONO_VLSB)
        self.inits = 0
        self.shows = 0
        self.fail = fail

    def init(self):
        self.inits += 1
        self.fb.fill(0)

    def show(self):
        if self.fail:
            self.fail -= 1
            raise OSError(19)  # ENODEV: the panel did not answer
        self.shows += 1


def test_display_pushes_only_on_change():
    ssd = _FakeSSD()
    d = screens.Display(ssd)
    idle = {"clock": "08:15", "date": "man 23/11", "next": "12:00"}
    assert d.show("idle", idle, "da") is True
    assert d.show("idle", dict(idle), "da") is False
    assert d.show("idle", idle) is False  # Danish is the default
    assert ssd.shows == 1
    assert d.show("idle", idle, "en") is True
    assert d.show("idle", {"clock": "08:16", "date": "man 23/11", "next": "12:00"}, "en")
    assert d.show("due", {"compartment": 5, "time": "08:00", "late": False}, "en")
    assert ssd.shows == 4
    # A caller that mutates one dict in place still gets its redraw.
    data = {"time": "08:00"}
    assert d.show("missed", data)
    data["time"] = "12:00"
    assert d.show("missed", data)
    assert not d.show("missed", data)
    d.invalidate()
    assert d.show("missed", data)
    assert ssd.shows == 7


def test_display_unchanged_show_allocates_nothing():
    d = screens.Display(_FakeSSD())
    data = {"clock": "08:15", "date": "man 23/11", "next": "12:00"}
    d.show("idle", data, "da")
    micropython.heap_lock()
    try:
        same = d.show("idle", data, "da")
    finally:
        micropython.heap_unlock()
    assert same is False


def test_display_sets_the_panel_up_first_and_again_after_an_i2c_error():
    ssd = _FakeSSD(fail=1)
    d = screens.Display(ssd)
    try:
        d.show("time_missing", {})
    except OSError:
        pass
    else:
        raise AssertionError("I2C error swallowed")
    assert ssd.inits == 1 and ssd.shows == 0
    assert d.show("time_missing", {}) is True  # retried, with the panel set up again
    assert ssd.inits == 2 and ssd.shows == 1
    assert d.show("missed", {"time": "08:00"})
    assert ssd.inits == 2  # once set up, only frames
    d.invalidate()
    assert d.show("missed", {"time": "08:00"})
    assert ssd.inits == 3 and ssd.shows == 3


def test_display_on_the_driver_matches_the_golden_image():
    i2c = _I2C()
    ssd = ssd1306.SSD1306(i2c)
    d = screens.Display(ssd)
    case = golden.CASES[0]
    d.show(case[1], golden.data_for(case, "da"), "da")
    with open(golden.path_for(case[0], "da"), "rb") as f:
        assert d.to_pbm() == f.read()
    # init (setup, clear frame, display on), then this frame: window and data.
    assert len(i2c.writes) == 6
    assert i2c.writes[3][1] == b"\x00\xaf"
    assert i2c.writes[5][1] == b"\x40" + d.snapshot()
