"""A simulated board with the same attributes as the ESP32 board (see docs/firmware.md).

Motor, home sensor and beam come from `sim.simhw`; the buzzer, the light and the motor
are recorded with virtual timestamps; the display is the real SSD1306 driver on a bus that
keeps the last frame; the DS3231 is emulated on the same bus; buttons and mains are
injectable. Files live under `state_dir`, so a "power cut" (a new process on the same
directory) keeps exactly what the firmware had written.
"""

import asyncio
import json
import os

from dispenser.clock import SimClock
from dispenser.ds3231 import ADDR as RTC_ADDR
from dispenser.ds3231 import FakeDS3231
from sim import simhw

_LOG_MAX = 2000  # recent changes kept: a month of beeping must not fill the heap


def _keep(log, item):
    if len(log) >= _LOG_MAX:
        del log[: _LOG_MAX // 2]
    log.append(item)


class RecPin(simhw.SimPin):
    """An output pin that records changes as (virtual ms, value)."""

    def __init__(self, clock, log):
        super().__init__(0)
        self.clock = clock
        self.log = log

    def value(self, v=None):
        if v is None:
            return super().value()
        if v != super().value():
            _keep(self.log, (self.clock.ticks_ms(), v))
        return super().value(v)


class RecPWM:
    def __init__(self, clock):
        self.clock = clock
        self.hz = 0
        self.duty = 0
        self.log = []  # (virtual ms, freq, duty) at each change of duty

    def freq(self, hz=None):
        if hz is None:
            return self.hz
        self.hz = hz

    def duty_u16(self, d=None):
        if d is None:
            return self.duty
        if d != self.duty:
            _keep(self.log, (self.clock.ticks_ms(), self.hz, d))
        self.duty = d


class SimI2C:
    """Routes the display (0x3C: frames kept) and the RTC (0x68: emulated registers)."""

    def __init__(self, rtc):
        self.rtc = rtc
        self.frames = 0

    def scan(self):
        return [0x3C, RTC_ADDR]

    def writeto(self, addr, buf, stop=True):
        # A frame is one write that starts with the data control byte 0x40.
        self.frames += addr == 0x3C and len(buf) > 1 and buf[0] == 0x40
        return len(buf)

    def writevto(self, addr, bufs, stop=True):
        self.frames += addr == 0x3C
        return sum(len(b) for b in bufs)

    def readfrom_mem_into(self, addr, reg, buf):
        if addr != RTC_ADDR:
            raise OSError(19)  # ENODEV, as a real bus says for an absent device
        self.rtc.readfrom_mem_into(reg, buf)

    def writeto_mem(self, addr, reg, buf):
        if addr == RTC_ADDR:
            self.rtc.writeto_mem(reg, buf)
        elif addr != 0x3C:
            raise OSError(19)


class SimWDT:
    def __init__(self, clock, timeout_ms):
        self.clock = clock
        self.timeout_ms = timeout_ms
        self.last = clock.ticks_ms()
        self.longest = 0  # the longest gap between feeds, in virtual ms

    def feed(self):
        now = self.clock.ticks_ms()
        self.longest = max(self.longest, now - self.last)
        self.last = now


class PowerCut(BaseException):
    """Raised from a coil write to stop the whole firmware at once, like losing power."""


class _CutWatch:
    """Wraps coil IN1 to count half-steps (IN1 is written once per half-step)."""

    def __init__(self, pin, board):
        self.pin = pin
        self.board = board
        self.left = -1
        self.on_cut = None

    def arm(self, n, on_cut):
        self.left = n
        self.on_cut = on_cut

    def value(self, v=None):
        if v is not None and self.left > 0:
            self.left -= 1
            if self.left == 0:
                self.pin.value(v)
                if self.on_cut is not None:
                    self.on_cut()
                self.board.save_world()
                raise PowerCut()
        return self.pin.value(v)


class _ReleaseWatch:
    """Wraps coil IN4, the one the motor samples the pattern at: when a run of energised
    patterns ends (the coils released: the move is over), the board writes the rotor's
    position to its world file. A SIGKILL never runs `save_world()`, so without this the next
    process would put the rotor back where the last clean stop left it, and a journal that
    says "at slot S" would disagree with the physics for a reason the device cannot have.
    A kill during a move leaves the position of that move's start: as if the power went just
    before the first step (the journal says "moving" then, or still the old "at")."""

    def __init__(self, pin, board):
        self.pin = pin
        self.board = board
        self.on = False

    def value(self, v=None):
        r = self.pin.value(v)
        if v is not None:
            on = self.board.motor.bits != 0
            if self.on and not on:
                self.board.save_world()
            self.on = on
        return r


class FakeNVS:
    """esp32.NVS on the simulator: blobs and integers in one JSON file, written on commit()."""

    def __init__(self, path):
        self.path = path
        self.data = {}
        try:
            with open(path) as f:
                self.data = json.load(f)
        except (OSError, ValueError):
            self.data = {}

    def set_blob(self, key, value):
        self.data[key] = bytes(value).decode()

    def get_blob(self, key, buf):
        if key not in self.data:
            raise OSError(-4354)  # ESP_ERR_NVS_NOT_FOUND, as the real one raises
        b = self.data[key].encode()
        n = min(len(buf), len(b))
        buf[:n] = b[:n]
        return len(b)

    def set_i32(self, key, value):
        self.data[key] = int(value)

    def get_i32(self, key):
        if key not in self.data:
            raise OSError(-4354)
        return self.data[key]

    def commit(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.rename(tmp, self.path)


class SimWLAN:
    """The virtual dispenser's Wi-Fi: associated whenever the board's `wlan_up` is True (the
    broker itself is real, on loopback). `sim.net` takes it out of range and back."""

    def __init__(self, board):
        self._board = board
        self.ssid = None

    def active(self, on=None):
        return True

    def connect(self, ssid="", psk=""):
        self.ssid = ssid

    def disconnect(self):
        pass

    def isconnected(self):
        return self._board.wlan_up


class SimBoard:
    name = "sim"
    step_delay_ms = 0
    beam_verify = True
    wlan_always = True  # the uplink runs without a Wi-Fi configuration (net.py)

    def __init__(self, state_dir, utc=None, speed=0, rtc_lost=False, heartbeat_s=600):
        self.state_dir = state_dir
        self.clock = SimClock(None, speed)
        self.heartbeat_s = heartbeat_s
        self._utc0 = utc
        self.rtc = FakeDS3231(self._rtc_now, lost=rtc_lost or utc is None)
        self.i2c = SimI2C(self.rtc)
        self.motor = simhw.SimMotor()
        saved = self._load_motor()
        if saved is not None:
            self.motor.restore(saved)  # the physical rotor stays where the cut left it
            for k, n in enumerate(saved.get("loaded", ())):
                self.motor.loaded[k] = n  # and the pills stay in their compartments
        self._cut = _CutWatch(self.motor.coils[0], self)
        c = list(self.motor.coils)  # IN1..IN4
        self.coils = (self._cut, c[1], c[2], _ReleaseWatch(c[3], self))
        self.home = self.motor.home
        self.beam = self.motor.beam
        self.btn_taken = simhw.SimPin(1)
        self.btn_service = simhw.SimPin(1)
        self.light_log = []
        self.led = RecPin(self.clock, self.light_log)
        self.buzzer = RecPWM(self.clock)
        self.mains = simhw.SimPin(1)
        self.battery_level_mv = 4100
        self.wlan_up = True
        self._wlan = SimWLAN(self)
        self.wdt = None
        self._fs = None
        self.display = None
        try:
            from dispenser.screens import Display
            from dispenser.ssd1306 import SSD1306

            self.display = Display(SSD1306(self.i2c))
        except ImportError:  # CPython has no framebuf: run without a screen
            self.display = None

    def _motor_file(self):
        return self.state_dir + "/sim-motor.json"

    def _load_motor(self):
        try:
            with open(self._motor_file()) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def save_world(self):
        """Keep the physical state (the rotor, the pills) for the next process: not the
        firmware's data. Called at a clean stop, a scripted cut, every release of the coils
        (the end of each move) and after the pills change (fill, take), so it survives a
        SIGKILL too; written to a temp file and renamed, so a kill never tears it."""
        world = self.motor.state()
        world["loaded"] = list(self.motor.loaded)
        path = self._motor_file()
        with open(path + ".tmp", "w") as f:
            json.dump(world, f)
        os.rename(path + ".tmp", path)

    def cut_after_steps(self, n, on_cut):
        """Arm a power cut `n` half-steps into the motor's future."""
        self._cut.arm(n, on_cut)

    def _rtc_now(self):
        # The emulated RTC follows the virtual clock's timeline (start UTC + virtual time).
        return (self._utc0 or 0) + self.clock.ticks_ms() // 1000

    def battery_mv(self):
        return self.battery_level_mv

    def flag(self):
        return asyncio.Event()

    def watchdog(self, timeout_ms):
        self.wdt = SimWDT(self.clock, timeout_ms)
        return self.wdt

    def path(self, name):
        return self.state_dir + "/" + name

    def nvs(self):
        return FakeNVS(self.state_dir + "/sim-nvs.json")

    def fs(self):
        """The flash, with littlefs's power-loss semantics (see sim.simfs)."""
        if self._fs is None:
            from sim.simfs import SimFS

            self._fs = SimFS(self.state_dir)
            self._fs.mkdir("log")
        return self._fs

    # -- injections -----------------------------------------------------------------------

    def press(self, pin, held_s):
        """Press a button for `held_s` virtual seconds (a task)."""

        async def _press():
            pin.value(0)  # the simulated pin calls the IRQ handler on the edge
            await self.clock.sleep(held_s)
            pin.value(1)

        return _press()

    async def press_now(self, pin, held_s):
        """A press from the serial link's test hook: counted as a task of the warp clock
        while held, so virtual time waits for the release like for any other task."""
        self.clock.register(1)
        try:
            await self.press(pin, held_s)
        finally:
            self.clock.register(-1)

    def wlan(self):
        return self._wlan

    def fill_all(self, compartments):
        """The nurse put pills in every compartment (the `fill` command on the simulator)."""
        self.motor.load(*range(1, compartments + 1))
        self.save_world()

    def device_id(self):
        """A pseudonymous id, made once per state directory (the ESP32 uses its MAC)."""
        path = self.state_dir + "/sim-id"
        try:
            with open(path) as f:
                got = f.read().strip()
            if got:
                return got
        except OSError:
            pass
        import binascii

        made = "sim-" + binascii.hexlify(os.urandom(3)).decode()
        with open(path, "w") as f:
            f.write(made)
        return made
