"""SSD1306 128x64 OLED on an I2C bus: one frame buffer, pushed to the panel in a single write."""

# The board builds the I2C bus and hands it in; anything with writeto(addr, buf) will do (the
# simulated board passes a recorder). Construction does no I/O, so the board can build the
# driver before it knows whether the panel answers; init() talks to it. I2C errors (OSError)
# reach the caller, which turns them into a display fault.
#
# The frame buffer lives inside the transmit buffer: byte 0 is the I2C control byte that says
# "display data follows", bytes 1..1024 are the pixels that framebuf draws into. show() then
# sends the whole frame with one writeto() and no copy, on any bus, without needing writevto().

import framebuf
from micropython import const

WIDTH = const(128)
HEIGHT = const(64)
ADDR = const(0x3C)  # 0x3D when the module's address jumper is moved

_CTRL_CMD = const(0x00)  # control byte: Co=0, D/C#=0, the rest of the write is commands
_CTRL_DATA = const(0x40)  # control byte: Co=0, D/C#=1, the rest of the write is display RAM
_DISPLAY_OFF = const(0xAE)
_DISPLAY_ON = const(0xAF)
_CONTRAST = const(0x81)
_NORMAL = const(0xA6)  # | 1 inverts

# Set up a 128x64 module with the internal charge pump (the common 0.96" boards), as one
# command stream. The panel stays dark until init() has cleared its RAM.
_INIT = (
    b"\x00"  # control byte: commands
    b"\xae"  # display off while configuring
    b"\xd5\x80"  # display clock: reset divider and oscillator frequency
    b"\xa8\x3f"  # multiplex ratio: 64 rows
    b"\xd3\x00"  # no vertical display offset
    b"\x40"  # RAM row 0 at the top
    b"\x8d\x14"  # charge pump on: VCC from the 3.3 V supply
    b"\x20\x00"  # horizontal addressing: one 1024-byte write fills the RAM page by page
    b"\xa1"  # column 127 drives SEG0 and
    b"\xc8"  # COM scans 63 -> 0: together the usual module orientation
    b"\xda\x12"  # COM pins: alternative configuration, as 128x64 panels are wired
    b"\x81\xff"  # contrast: full, for poor sight (contrast() can dim it, e.g. at night)
    b"\xd9\xf1"  # pre-charge periods for the internal charge pump
    b"\xdb\x30"  # VCOMH deselect level: 0.83 x VCC
    b"\xa4"  # show the RAM contents
    b"\xa6"  # not inverted
)
# Before each frame: the write window is the whole panel, so the data write starts at (0, 0)
# even if a previous transfer was cut short.
_WINDOW = b"\x00\x21\x00\x7f\x22\x00\x07"


class SSD1306:
    """An SSD1306 at addr on i2c. Draw on .fb (a framebuf.FrameBuffer), then call show()."""

    def __init__(self, i2c, addr=ADDR):
        self._i2c = i2c
        self.addr = addr
        self._tx = bytearray(1 + WIDTH * HEIGHT // 8)
        self._tx[0] = _CTRL_DATA
        self.buf = memoryview(self._tx)[1:]  # the 1024 pixel bytes, MONO_VLSB
        self.fb = framebuf.FrameBuffer(self.buf, WIDTH, HEIGHT, framebuf.MONO_VLSB)
        self._cmd = bytearray(3)  # control byte, command, argument
        self._cmd1 = memoryview(self._cmd)[:2]  # control byte, command
        self._cmd[0] = _CTRL_CMD

    def init(self):
        """Configure the panel, clear it and switch it on (also to recover after a reset)."""
        self._i2c.writeto(self.addr, _INIT)
        self.fb.fill(0)
        self.show()
        self.poweron()

    def show(self):
        """Send the frame buffer to the panel."""
        self._i2c.writeto(self.addr, _WINDOW)
        self._i2c.writeto(self.addr, self._tx)

    def _command(self, cmd):
        self._cmd[1] = cmd
        self._i2c.writeto(self.addr, self._cmd1)

    def poweron(self):
        self._command(_DISPLAY_ON)

    def poweroff(self):
        """Panel dark (RAM kept, about 10 uA); poweron() shows the same frame again."""
        self._command(_DISPLAY_OFF)

    def contrast(self, value):
        """Brightness 0..255 (values outside are clamped)."""
        self._cmd[1] = _CONTRAST
        self._cmd[2] = 0 if value < 0 else 255 if value > 255 else value
        self._i2c.writeto(self.addr, self._cmd)

    def invert(self, on):
        """Swap lit and dark pixels on the panel (the frame buffer is unchanged)."""
        self._command(_NORMAL | (1 if on else 0))
