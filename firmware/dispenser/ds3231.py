"""DS3231 real-time clock on I2C: the time source at every boot (it keeps UTC on its coin cell).

The ESP32 loses its own time on every power-on reset, so at boot this chip is the only source
until NTP answers. Its oscillator-stop flag (OSF) says the time cannot be trusted (battery
flat or removed): then `read()` returns None and the device must not dispense.
"""

from micropython import const

from dosiscore import civil

ADDR = const(0x68)
_REG_TIME = const(0x00)
_REG_STATUS = const(0x0F)
_OSF = const(0x80)


def _bcd(b):
    return (b >> 4) * 10 + (b & 0x0F)


def _tobcd(n):
    return ((n // 10) << 4) | (n % 10)


class DS3231:
    def __init__(self, i2c, addr=ADDR):
        self.i2c = i2c
        self.addr = addr
        self._buf = bytearray(7)
        self._one = bytearray(1)

    def lost(self):
        """True if the oscillator stopped since the time was last set."""
        self.i2c.readfrom_mem_into(self.addr, _REG_STATUS, self._one)
        return bool(self._one[0] & _OSF)

    def read(self):
        """UTC Unix seconds, or None if the chip says its time is not valid."""
        if self.lost():
            return None
        b = self._buf
        self.i2c.readfrom_mem_into(self.addr, _REG_TIME, b)
        if b[2] & 0x40:
            return None  # 12-hour mode: never set by this firmware, so not trusted
        for i in (0, 1, 2, 4, 5, 6):
            if (b[i] & 0x0F) > 9:
                return None  # not BCD: a glitch on the bus or a chip in a bad state
        s, mi, h = _bcd(b[0] & 0x7F), _bcd(b[1] & 0x7F), _bcd(b[2] & 0x3F)
        d, mo = _bcd(b[4] & 0x3F), _bcd(b[5] & 0x1F)
        y = 2000 + _bcd(b[6]) + (100 if b[5] & 0x80 else 0)
        if not (1 <= mo <= 12 and 1 <= d <= civil.days_in_month(y, mo) and h < 24):
            return None
        if mi > 59 or s > 59:
            return None
        return civil.days_from_civil(y, mo, d) * civil.DAY + h * 3600 + mi * 60 + s

    def write(self, utc):
        """Set the chip to UTC `utc` and clear the oscillator-stop flag."""
        z, sec = civil.split_seconds(utc)
        y, mo, d = civil.civil_from_days(z)
        b = self._buf
        b[0] = _tobcd(sec % 60)
        b[1] = _tobcd((sec // 60) % 60)
        b[2] = _tobcd(sec // 3600)  # 24-hour mode (bit 6 clear)
        b[3] = civil.weekday(z) + 1
        b[4] = _tobcd(d)
        b[5] = _tobcd(mo) | (0x80 if y >= 2100 else 0)
        b[6] = _tobcd(y % 100)
        self.i2c.writeto_mem(self.addr, _REG_TIME, b)
        self.i2c.readfrom_mem_into(self.addr, _REG_STATUS, self._one)
        self._one[0] &= ~_OSF & 0xFF
        self.i2c.writeto_mem(self.addr, _REG_STATUS, self._one)


class FakeDS3231:
    """The chip behind a simulated I2C bus: time comes from `now_fn()` plus whatever offset
    the firmware wrote; `lose()` sets the oscillator-stop flag, as a flat coin cell would."""

    def __init__(self, now_fn, lost=False):
        self.now_fn = now_fn
        self.offset = 0
        self.status = _OSF if lost else 0

    def lose(self):
        self.status |= _OSF

    def readfrom_mem_into(self, reg, buf):
        regs = bytearray(0x13)
        utc = self.now_fn() + self.offset
        z, sec = civil.split_seconds(utc)
        y, mo, d = civil.civil_from_days(z)
        regs[0], regs[1], regs[2] = _tobcd(sec % 60), _tobcd((sec // 60) % 60), _tobcd(sec // 3600)
        regs[3], regs[4] = civil.weekday(z) + 1, _tobcd(d)
        regs[5], regs[6] = _tobcd(mo), _tobcd(y % 100)
        regs[_REG_STATUS] = self.status
        for i in range(len(buf)):
            buf[i] = regs[reg + i]

    def writeto_mem(self, reg, buf):
        if reg == _REG_TIME and len(buf) >= 7:
            b = buf
            y = 2000 + _bcd(b[6]) + (100 if b[5] & 0x80 else 0)
            utc = civil.days_from_civil(y, _bcd(b[5] & 0x1F), _bcd(b[4])) * civil.DAY
            utc += _bcd(b[2] & 0x3F) * 3600 + _bcd(b[1]) * 60 + _bcd(b[0] & 0x7F)
            self.offset = utc - self.now_fn()
        elif reg == _REG_STATUS:
            self.status = buf[0]
