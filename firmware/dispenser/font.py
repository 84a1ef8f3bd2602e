"""Text for the OLED: framebuf's 8x8 font plus æøåÆØÅé, 2x scaling, and big clock digits."""

# framebuf's FrameBuffer.text() knows ASCII 32..127 only, and it walks the UTF-8 *bytes* of a
# string, so "Næste" would come out as "N" + two "unknown" boxes + "ste". text() below draws
# ASCII with the built-in font and the Danish letters (and é, common in names) from the glyphs
# in this file; anything else becomes '?', so a stray character can never shift a whole line.
#
# Drawing never allocates per character: glyphs go through small scratch frame buffers made
# once at import (FrameBuffer() needs a writable buffer, so the bytes constants are copied in),
# and iterating a str yields interned one-character strings. Only scales 1 and 2 exist: 2x is
# what citizens with poor sight read comfortably, and 8 characters of it fill the 128 px width.
#
# Glyph art: the source of the bytes below ('#' is a lit pixel, rows top to bottom).
# tests/mp/test_display.py checks that the bytes encode exactly this art; to change a glyph,
# edit the art, run the test and paste the bytes it prints. The 8x8 letters follow framebuf's
# font: column 0 blank, 2-pixel stems, lower case from row 2 to the baseline at row 6. Ø and ø
# carry a slash that pokes out of the bowl, so that Ø never reads as framebuf's slashed zero.
#
# art: æ ø å Æ Ø Å é
#   ........ ........ ...##... ..###### ..####.# ...##... ....##..
#   ........ ......#. ..#..#.. .##.##.. .##..##. ..#..#.. ...##...
#   .######. ..####.. ..####.. .##.##.. .##..##. ..####.. ..####..
#   ....##.# .##.###. .....##. .######. .##.###. .##..##. .##..##.
#   .####### .###.##. ..#####. .##.##.. .###.##. .######. .######.
#   .##.##.. .##..##. .##..##. .##.##.. .##..##. .##..##. .##.....
#   ..###### ..####.. ..#####. .##.#### .#####.. .##..##. ..#####.
#   ........ .#...... ........ ........ #....... ........ ........
#
# Clock digits are drawn at 10x16 and shown doubled (20x32): bold 4-pixel strokes, equal
# widths so that the time does not jiggle as it changes; the colon is 4 wide (8 shown).
#
# art: 0 1 2 3 4
#   .......... .......... .......... .......... ..........
#   ...####... ....##.... ...####... ...####... ......##..
#   ..######.. ...###.... ..######.. ..######.. .....###..
#   .###..###. ..####.... .###..###. .###..###. ....####..
#   .##....##. .##.##.... .##....##. .##....##. ...##.##..
#   .##....##. ....##.... .......##. .......##. ..##..##..
#   .##....##. ....##.... ......###. ......###. .##...##..
#   .##....##. ....##.... .....###.. ....####.. .##...##..
#   .##....##. ....##.... ....###... ....####.. .########.
#   .##....##. ....##.... ...###.... ......###. .########.
#   .##....##. ....##.... ..###..... .......##. ......##..
#   .##....##. ....##.... .###...... .##....##. ......##..
#   .###..###. ....##.... .##....... .###..###. ......##..
#   ..######.. ..######.. .########. ..######.. ......##..
#   ...####... ..######.. .########. ...####... ......##..
#   .......... .......... .......... .......... ..........
#
# art: 5 6 7 8 9 :
#   .......... .......... .......... .......... .......... ....
#   .########. ....####.. .########. ...####... ...####... ....
#   .########. ...#####.. .########. ..######.. ..######.. ....
#   .##....... ..###..... .......##. .###..###. .###..###. ....
#   .##....... .###...... ......###. .##....##. .##....##. .##.
#   .##.###... .##....... ......##.. .###..###. .##....##. .##.
#   .#######.. .##.###... .....###.. ..######.. .###..###. ....
#   .###..###. .#######.. .....##... ..######.. ..#######. ....
#   .......##. .###..###. ....###... .###..###. ...###.##. ....
#   .......##. .##....##. ....##.... .##....##. .......##. ....
#   .......##. .##....##. ....##.... .##....##. ......###. ....
#   .##....##. .##....##. ...###.... .##....##. .....###.. .##.
#   .###..###. .###..###. ...##..... .###..###. ..#####... .##.
#   ..######.. ..######.. ...##..... ..######.. ..####.... ....
#   ...####... ...####... ...##..... ...####... .......... ....
#   .......... .......... .......... .......... .......... ....

import framebuf
from micropython import const

EXTRA = "æøåÆØÅé"  # characters drawn from _EXTRA_GLYPHS, in this order
# 8 bytes per glyph: one byte per column, bit 0 the top row (MONO_VLSB).
_EXTRA_GLYPHS = (
    b"\x00\x34\x74\x54\x7c\x7c\x54\x58\x00\xb8\x7c\x54\x4c\x7c\x3a\x00\x00\x20\x76\x55\x55\x7e"
    b"\x78\x00\x00\x7e\x7f\x09\x7f\x7f\x49\x41\x80\x7e\x7f\x51\x49\x7f\x3e\x01\x00\x78\x7e\x15"
    b"\x15\x7e\x78\x00\x00\x38\x7c\x56\x57\x5d\x58\x00"
)
# 20 bytes per digit: the 10 columns of rows 0-7, then the 10 columns of rows 8-15 (MONO_VLSB).
_DIGITS = (
    b"\x00\xf8\xfc\x0e\x06\x06\x0e\xfc\xf8\x00\x00\x1f\x3f\x70\x60\x60\x70\x3f\x1f\x00\x00\x10"
    b"\x18\x0c\xfe\xfe\x00\x00\x00\x00\x00\x00\x60\x60\x7f\x7f\x60\x60\x00\x00\x00\x18\x1c\x0e"
    b"\x06\x86\xce\xfc\x78\x00\x00\x78\x7c\x6e\x67\x63\x61\x60\x60\x00\x00\x18\x1c\x0e\x86\x86"
    b"\xce\xfc\x78\x00\x00\x18\x38\x70\x61\x61\x73\x3f\x1e\x00\x00\xc0\xe0\x30\x18\x0c\xfe\xfe"
    b"\x00\x00\x00\x03\x03\x03\x03\x03\x7f\x7f\x03\x00\x00\xfe\xfe\xc6\x66\x66\xe6\xc6\x86\x00"
    b"\x00\x18\x38\x70\x60\x60\x70\x3f\x1f\x00\x00\xf0\xf8\x9c\xce\xc6\xc6\x86\x00\x00\x00\x1f"
    b"\x3f\x71\x60\x60\x71\x3f\x1f\x00\x00\x06\x06\x06\x06\xc6\xf6\x7e\x1e\x00\x00\x00\x00\x78"
    b"\x7f\x0f\x01\x00\x00\x00\x00\x38\xfc\xee\xc6\xc6\xee\xfc\x38\x00\x00\x1f\x3f\x71\x60\x60"
    b"\x71\x3f\x1f\x00\x00\x78\xfc\xce\x86\x86\xce\xfc\xf8\x00\x00\x00\x30\x31\x31\x39\x1c\x0f"
    b"\x07\x00"
)
# 4 columns of rows 0-7, then 4 of rows 8-15.
_COLON = b"\x00\x30\x30\x00\x00\x18\x18\x00"

_CELL = const(8)  # framebuf's font: 8x8 per character
_DIG_W = const(10)  # clock digit cell at 1x; drawn 2x
_COLON_W = const(4)
BIG_HEIGHT = const(32)  # height of big_time() digits

# _DOUBLE[n]: the 4 bits of n each doubled into 8 (0b0101 -> 0b00110011). One column byte of
# a VLSB glyph becomes two (top and bottom half), and each column is then written twice.
_DOUBLE = b"\x00\x03\x0c\x0f\x30\x33\x3c\x3f\xc0\xc3\xcc\xcf\xf0\xf3\xfc\xff"

# Scratch frame buffers, made once. _inv is a 2-colour palette that swaps 0 and 1, for dark
# text on a lit bar.
_g8 = bytearray(8)
_fb8 = framebuf.FrameBuffer(_g8, 8, 8, framebuf.MONO_VLSB)
_g16 = bytearray(32)
_fb16 = framebuf.FrameBuffer(_g16, 16, 16, framebuf.MONO_VLSB)
_gdig = bytearray(2 * _DIG_W * 4)
_fbdig = framebuf.FrameBuffer(_gdig, 2 * _DIG_W, 32, framebuf.MONO_VLSB)
_gcol = bytearray(2 * _COLON_W * 4)
_fbcol = framebuf.FrameBuffer(_gcol, 2 * _COLON_W, 32, framebuf.MONO_VLSB)
_inv = framebuf.FrameBuffer(bytearray(1), 2, 1, framebuf.MONO_HLSB)
_inv.pixel(0, 0, 1)
_inv.pixel(1, 0, 0)


def _double(src, off, w, pages, dst):
    """Write the w x (8*pages) VLSB glyph at src[off:] into dst at twice the size."""
    w2 = 2 * w
    for p in range(pages):
        for col in range(w):
            b = src[off + p * w + col]
            i = 2 * p * w2 + 2 * col
            lo = _DOUBLE[b & 15]
            hi = _DOUBLE[b >> 4]
            dst[i] = lo
            dst[i + 1] = lo
            dst[i + w2] = hi
            dst[i + w2 + 1] = hi


def _blit(fb, glyph, x, y, c):
    # Only the glyph's lit pixels are drawn, in colour c, so text can sit on a lit bar.
    if c:
        fb.blit(glyph, x, y, 0)
    else:
        fb.blit(glyph, x, y, 1, _inv)


def text(fb, s, x, y, scale=1, c=1):
    """Draw str s at (x, y) at scale 1 (8x8) or 2 (16x16) in colour c; return the x after it."""
    if scale != 1 and scale != 2:
        raise ValueError("scale must be 1 or 2")
    step = _CELL * scale
    for ch in s:
        i = EXTRA.find(ch)
        if i < 0:
            o = ord(ch)
            if o < 32 or o > 126:
                ch = "?"
            if scale == 1:
                fb.text(ch, x, y, c)
                x += step
                continue
            _fb8.fill(0)
            _fb8.text(ch, 0, 0, 1)
        else:
            i *= _CELL
            for k in range(_CELL):
                _g8[k] = _EXTRA_GLYPHS[i + k]
        if scale == 1:
            _blit(fb, _fb8, x, y, c)
        else:
            _double(_g8, 0, _CELL, 1, _g16)
            _blit(fb, _fb16, x, y, c)
        x += step
    return x


def width(s, scale=1):
    """Width in pixels of str s drawn by text() (every character is one cell)."""
    return len(s) * _CELL * scale


def big_time(fb, s, x, y, c=1):
    """Draw a clock string such as "08:15" in 20x32 digits at (x, y); return the x after it.

    Digits and ':' are drawn; any other character leaves a colon-wide gap.
    """
    for ch in s:
        o = ord(ch) - 48  # '0'
        if 0 <= o <= 9:
            _double(_DIGITS, o * 2 * _DIG_W, _DIG_W, 2, _gdig)
            _blit(fb, _fbdig, x, y, c)
            x += 2 * _DIG_W
        else:
            if ch == ":":
                _double(_COLON, 0, _COLON_W, 2, _gcol)
                _blit(fb, _fbcol, x, y, c)
            x += 2 * _COLON_W
    return x


def big_width(s):
    """Width in pixels of s drawn by big_time()."""
    w = 0
    for ch in s:
        w += 2 * _DIG_W if "0" <= ch <= "9" else 2 * _COLON_W
    return w
