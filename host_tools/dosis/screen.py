"""The dispenser's screen on the host: a MONO_VLSB framebuffer as terminal text or a PNG.

MONO_VLSB (MicroPython's framebuf, the SSD1306's own layout): byte i holds column i % w of
the 8-pixel band i // w, bit 0 the band's top row. A set bit is a lit pixel.
No Pillow: the PNG is written with zlib and struct.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["HEIGHT", "WIDTH", "pixel", "pixels", "to_png", "to_text"]

WIDTH = 128
HEIGHT = 64

# (top lit, bottom lit) -> the character that draws the two pixels
_HALF = {(0, 0): " ", (1, 0): "▀", (0, 1): "▄", (1, 1): "█"}


def _check(fb: bytes, w: int, h: int) -> None:
    if w <= 0 or h <= 0 or h % 8 or len(fb) != w * h // 8:
        raise ValueError(f"{len(fb)} bytes are not a {w}x{h} MONO_VLSB framebuffer")


def pixel(fb: bytes, x: int, y: int, w: int = WIDTH) -> int:
    """1 if pixel (x, y) is lit, else 0 (x across, y down, from the top left)."""
    return fb[(y >> 3) * w + x] >> (y & 7) & 1


def pixels(fb: bytes, w: int = WIDTH, h: int = HEIGHT) -> list[list[int]]:
    """The framebuffer as h rows of w values 0/1."""
    _check(fb, w, h)
    return [[pixel(fb, x, y, w) for x in range(w)] for y in range(h)]


def to_text(fb: bytes, w: int = WIDTH, h: int = HEIGHT, *, border: bool = False) -> str:
    """Two pixel rows a line with ▀ ▄ █ and space: h/2 lines of w characters.

    With `border`, a box frames the screen so its edges show on any terminal."""
    px = pixels(fb, w, h)
    lines = []
    for y in range(0, h, 2):
        top, bottom = px[y], px[y + 1]
        lines.append("".join(_HALF[(top[x], bottom[x])] for x in range(w)))
    if border:
        lines = ["┌" + "─" * w + "┐"] + ["│" + s + "│" for s in lines] + ["└" + "─" * w + "┘"]
    return "\n".join(lines) + "\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def to_png(fb: bytes, w: int = WIDTH, h: int = HEIGHT, *, scale: int = 4) -> bytes:
    """An 8-bit grayscale PNG, each pixel a `scale` x `scale` square: lit white, dark black."""
    if scale < 1:
        raise ValueError("scale must be at least 1")
    px = pixels(fb, w, h)
    raw = bytearray()
    for row in px:
        line = bytes(255 if v else 0 for v in row for _ in range(scale))
        for _ in range(scale):
            raw.append(0)  # filter: none
            raw += line
    ihdr = struct.pack(">IIBBBBB", w * scale, h * scale, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + _chunk(b"IEND", b"")
    )
