"""Drivers on fakes (alerts, buttons, DS3231, store): runs under pytest and MicroPython."""

import asyncio
import os

import micropython

from dispenser.alerts import Alerts
from dispenser.buttons import Buttons
from dispenser.clock import SimClock
from dispenser.ds3231 import ADDR, DS3231, FakeDS3231, _bcd, _tobcd
from dispenser.store import Journal, Store
from dosiscore import civil
from sim.board import RecPin, RecPWM
from sim.simhw import IRQ_FALLING, SimPin
from test_clock import warp_run  # also gives dispenser.clock its MicroPython calls on CPython

# -- alerts ------------------------------------------------------------------------------------

LEVEL_DUTY = (None, 2000, 6000, 16000, 32768)  # levels 1..4; 32768 is 50 %, a piezo's loudest


def _alerts(**kw):
    clock = SimClock(None, 0)
    light = []
    led = RecPin(clock, light)
    pwm = RecPWM(clock)
    return clock, Alerts(led, pwm, clock, **kw), led, pwm, light


async def _cycle_woken_at(clock, alerts, wake, at_s, before_wake=None):
    """One alert cycle, with `wake` set at virtual `at_s`; returns the virtual ms it ended."""

    async def waker():
        await clock.sleep(at_s)
        if before_wake is not None:
            before_wake()
        wake.set()

    t = asyncio.create_task(waker())
    clock.register()  # the waker is a task on the warp clock too (warp_run counts this one)
    try:
        await alerts.cycle(wake)
    finally:
        clock.register(-1)
        t.cancel()
    return clock.ticks_ms()


def _first_beep(level, **kw):
    clock, a, _, pwm, _ = _alerts(**kw)
    a.set("due", level)
    warp_run(clock, [_cycle_woken_at(clock, a, asyncio.Event(), 0.1)])
    return pwm.log[0]


def test_alerts_start_silent_and_dark():
    _, a, led, pwm, _ = _alerts()
    assert led.value() == 0 and pwm.duty_u16() == 0 and not a.sounding


def test_available_is_the_light_only_and_silent():
    clock, a, led, pwm, light = _alerts()
    a.set("available", 0)
    seen = []
    wake = asyncio.Event()
    r = warp_run(
        clock,
        [_cycle_woken_at(clock, a, wake, 600, lambda: seen.append((led.value(), pwm.duty_u16())))],
    )
    assert seen == [(1, 0)]  # steady light, no sound, for the whole ten minutes
    assert light == [(0, 1)] and pwm.log == [] and a.beeps == 0
    assert r == [600000] and not wake.is_set()  # the cycle clears its wake


def test_due_without_a_level_is_the_light_only():
    clock, a, led, pwm, _ = _alerts()
    a.set("due", 0)
    r = warp_run(clock, [_cycle_woken_at(clock, a, asyncio.Event(), 30)])
    assert r == [30000] and led.value() == 1 and pwm.log == []


def test_due_level_sets_the_buzzer_duty_and_the_normal_tone():
    for level in (1, 2, 3, 4):
        assert _first_beep(level) == (0, 2700, LEVEL_DUTY[level]), level


def test_low_tone_for_high_frequency_hearing_loss():
    for level in (1, 4):
        assert _first_beep(level, tone="low") == (0, 1900, LEVEL_DUTY[level])


def test_unknown_tone_falls_back_to_normal():
    assert _first_beep(2, tone="shrill") == (0, 2700, LEVEL_DUTY[2])


def test_volume_caps_the_level():
    assert _first_beep(4, volume=2) == (0, 2700, LEVEL_DUTY[2])
    assert _first_beep(3, volume=1) == (0, 2700, LEVEL_DUTY[1])
    assert _first_beep(1, volume=4) == (0, 2700, LEVEL_DUTY[1])
    _, a, _, _, _ = _alerts(volume=2)
    a.set("due", 4)
    assert a.level == 2


def test_quiet_turns_everything_off_mid_beep():
    clock, a, led, pwm, _ = _alerts()
    a.set("due", 3)
    seen = []

    def look_and_quiet():
        seen.append((led.value(), pwm.duty_u16(), a.sounding))
        a.quiet()
        seen.append((led.value(), pwm.duty_u16(), a.sounding))

    warp_run(clock, [_cycle_woken_at(clock, a, asyncio.Event(), 0.2, look_and_quiet)])
    assert seen == [(1, 16000, True), (0, 0, False)]
    assert led.value() == 0 and pwm.duty_u16() == 0


def test_no_phase_is_dark_and_silent():
    clock, a, led, pwm, light = _alerts()
    a.set(None, 0)
    r = warp_run(clock, [_cycle_woken_at(clock, a, asyncio.Event(), 5)])
    assert r == [5000] and light == [] and pwm.log == []


def test_beep_pattern_is_half_a_second_on_one_and_a_half_off():
    clock, a, _, pwm, light = _alerts()
    a.set("due", 2)
    wake = asyncio.Event()

    async def alert_task():
        while True:
            await a.cycle(wake)

    warp_run(clock, [alert_task()], until_ms=9999)
    on, off = (2700, LEVEL_DUTY[2]), (2700, 0)
    expect = []
    for k in range(5):
        expect += [(2000 * k,) + on, (2000 * k + 500,) + off]
    assert pwm.log == expect
    assert light == [(t, 1 if d else 0) for t, _, d in expect]  # the light blinks with it
    assert a.beeps == 5 and not a.sounding


def test_wake_mid_beep_stops_the_tone_and_ends_the_cycle():
    clock, a, led, pwm, _ = _alerts()
    a.set("due", 4)
    wake = asyncio.Event()
    assert warp_run(clock, [_cycle_woken_at(clock, a, wake, 0.2)]) == [200]
    assert pwm.log == [(0, 2700, 32768), (200, 2700, 0)]
    assert led.value() == 0 and not wake.is_set()


def test_wake_in_the_pause_ends_the_cycle():
    clock, a, _, pwm, _ = _alerts()
    a.set("due", 1)
    assert warp_run(clock, [_cycle_woken_at(clock, a, asyncio.Event(), 1.2)]) == [1200]
    assert pwm.log == [(0, 2700, 2000), (500, 2700, 0)]


def test_chirp_is_short_and_low():
    clock, a, _, pwm, _ = _alerts()
    warp_run(clock, [a.chirp(2)])
    assert pwm.log == [(0, 1000, 6000), (100, 1000, 0), (200, 1000, 6000), (300, 1000, 0)]


# -- buttons -----------------------------------------------------------------------------------


def _buttons():
    clock = SimClock(None, 0)
    taken, service = SimPin(1), SimPin(1)
    return clock, taken, service, Buttons(taken, service, clock, asyncio.Event())


async def _levels(clock, pin, steps):
    """Drive `pin` through (at virtual ms, level) steps: presses, releases and bounces."""
    for at, level in steps:
        # + 0.5 ms: SimClock truncates seconds * 1000, and 0.57 * 1000 is 569.99...
        await clock.sleep((at - clock.ticks_ms() + 0.5) / 1000)
        pin.value(level)


async def _presses(clock, b, out, n=4):
    """Collect up to `n` presses as (what, virtual ms reported)."""
    for _ in range(n):
        what = await b.next_press()
        out.append((what, clock.ticks_ms()))


def _run_buttons(pin_steps, until_ms=60000):
    clock, taken, service, b = _buttons()
    pins = {"taken": taken, "service": service}
    out = []
    coros = [_presses(clock, b, out)]
    for name, steps in pin_steps:
        coros.append(_levels(clock, pins[name], steps))
    warp_run(clock, coros, until_ms)
    return out, b


def test_short_press_is_taken():
    out, b = _run_buttons([("taken", ((1000, 0), (1200, 1)))])
    assert [w for w, _ in out] == ["taken"] and b.presses == 1
    assert 1200 <= out[0][1] <= 1300  # reported once released (50 ms polling)


def test_press_just_under_two_seconds_is_still_taken():
    out, _ = _run_buttons([("taken", ((1000, 0), (2900, 1)))])
    assert [w for w, _ in out] == ["taken"]


def test_hold_three_seconds_is_prn():
    out, b = _run_buttons([("taken", ((1000, 0), (4000, 1)))])
    assert [w for w, _ in out] == ["prn"] and b.presses == 1
    assert 4000 <= out[0][1] <= 4100  # reported on release, not when 2 s is reached


def test_service_button():
    out, b = _run_buttons([("service", ((1000, 0), (1150, 1)))])
    assert [w for w, _ in out] == ["service"] and b.presses == 1


def test_service_held_down_is_reported_stuck():
    out, _ = _run_buttons([("service", ((1000, 0), (50000, 1)))])
    assert [w for w, _ in out] == ["stuck"]


def test_two_presses_are_two_reports():
    steps = ((1000, 0), (1200, 1), (5000, 0), (8000, 1))
    out, b = _run_buttons([("taken", steps)])
    assert [w for w, _ in out] == ["taken", "prn"] and b.presses == 2


def test_taken_held_down_is_reported_stuck_once():
    out, _ = _run_buttons([("taken", ((1000, 0), (50000, 1)))])
    assert [w for w, _ in out] == ["stuck"]
    assert 31000 <= out[0][1] <= 31100  # after 30 s, while still held
    # The release (a rising edge) raises no interrupt: no second report.


def test_bounce_shorter_than_the_debounce_is_ignored():
    # 10 ms low then high again: the flag is set, but 30 ms later the pin reads released.
    out, b = _run_buttons([("taken", ((1000, 0), (1010, 1)))])
    assert out == [] and b.presses == 0


def test_bouncy_press_and_release_count_once():
    steps = (
        (1000, 0),
        (1002, 1),
        (1003, 0),
        (1005, 1),
        (1006, 0),  # contact bounce, then held
        (1300, 1),
        (1302, 0),
        (1303, 1),  # and bounce again on release (a falling edge, so the flag is set again)
    )
    out, b = _run_buttons([("taken", steps)])
    assert [w for w, _ in out] == ["taken"] and b.presses == 1


def test_bounce_then_a_real_press():
    steps = ((1000, 0), (1010, 1), (3000, 0), (3250, 1))
    out, _ = _run_buttons([("taken", steps)])
    assert [w for w, _ in out] == ["taken"] and 3250 <= out[0][1] <= 3350


def test_only_falling_edges_raise_the_flag():
    clock, taken, service, b = _buttons()
    for pin in (taken, service):
        pin.value(0)
        assert b.flag.is_set()
        b.flag.clear()
        pin.value(1)
        assert not b.flag.is_set()


class _Spy:
    """Records every call made on it; attributes it does not know are recorded and refused."""

    def __init__(self, name, log):
        self._name = name
        self._log = log
        self.sets = 0

    def set(self):
        self.sets += 1  # a small int: no allocation

    def irq(self, handler=None, trigger=0):
        self._log.append((self._name, "irq", handler, trigger))

    def __getattr__(self, attr):
        self._log.append((self._name, attr))
        raise AttributeError(attr)


def test_interrupt_handler_only_sets_the_flag():
    log = []
    taken, service, clock, flag = (_Spy(n, log) for n in ("taken", "service", "clock", "flag"))
    b = Buttons(taken, service, clock, flag)
    assert [(e[0], e[1], e[3]) for e in log] == [
        ("taken", "irq", IRQ_FALLING),
        ("service", "irq", IRQ_FALLING),
    ]
    on_taken, on_service = log[0][2], log[1][2]
    del log[:]
    if hasattr(micropython, "heap_lock"):
        # MicroPython: the handler must not allocate (a hard IRQ may not), so forbid it.
        micropython.heap_lock()
        try:
            on_taken(taken)
            on_service(service)
        finally:
            micropython.heap_unlock()
    else:
        on_taken(taken)
        on_service(service)
    assert flag.sets == 2
    assert log == []  # no pin read, no clock call, nothing else touched
    assert b.presses == 0


# -- DS3231 ------------------------------------------------------------------------------------


class RegI2C:
    """An I2C bus with a DS3231's register file behind it; records every write."""

    def __init__(self):
        self.regs = bytearray(0x13)
        self.writes = []

    def _check(self, addr):
        if addr != ADDR:
            raise OSError(19)  # ENODEV

    def readfrom_mem_into(self, addr, reg, buf):
        self._check(addr)
        for i in range(len(buf)):
            buf[i] = self.regs[reg + i]

    def writeto_mem(self, addr, reg, buf):
        self._check(addr)
        self.writes.append((reg, bytes(buf)))
        for i in range(len(buf)):
            self.regs[reg + i] = buf[i]


class FakeBus:
    """FakeDS3231 on a bus (what sim.board.SimI2C does for the RTC), recording writes."""

    def __init__(self, chip):
        self.chip = chip
        self.writes = []

    def readfrom_mem_into(self, addr, reg, buf):
        assert addr == ADDR
        self.chip.readfrom_mem_into(reg, buf)

    def writeto_mem(self, addr, reg, buf):
        assert addr == ADDR
        self.writes.append((reg, bytes(buf)))
        self.chip.writeto_mem(reg, buf)


# UTC instants, from an independent source (CPython's datetime), with their ISO weekday.
INSTANTS = (
    (946684800, 6),  # 2000-01-01 00:00:00, the first instant the chip can hold
    (1709210096, 4),  # 2024-02-29 12:34:56
    (1798761599, 4),  # 2026-12-31 23:59:59
    (1798761600, 5),  # 2027-01-01 00:00:00
    (1835481599, 2),  # 2028-02-29 23:59:59, leap day
    (1835481600, 3),  # 2028-03-01 00:00:00
    (4102444799, 4),  # 2099-12-31 23:59:59
)
LEAP_END = 1835481599
Y2100 = 4102444800  # 2100-01-01 00:00:00


def test_bcd_encode_and_decode():
    for n in range(100):
        b = _tobcd(n)
        assert b >> 4 == n // 10 and b & 0x0F == n % 10
        assert _bcd(b) == n
    assert _tobcd(59) == 0x59 and _bcd(0x23) == 23 and _bcd(0x00) == 0


def test_write_encodes_the_registers():
    bus = RegI2C()
    DS3231(bus).write(LEAP_END)
    # 23:59:59, Tuesday (day 2: Monday is 1), 29 February, (20)28, 24-hour mode.
    assert bus.writes[0] == (0x00, bytes([0x59, 0x59, 0x23, 0x02, 0x29, 0x02, 0x28]))
    assert bus.writes[1][0] == 0x0F  # then the status register, OSF cleared
    assert len(bus.writes) == 2


def test_write_then_read_round_trips_on_registers():
    bus = RegI2C()
    rtc = DS3231(bus)
    # + 2100-01-01 and 2100-03-01 (not a leap day in 2100): the driver's century bit.
    for utc, iso_weekday in INSTANTS + ((Y2100, 5), (4107542400, 1)):
        rtc.write(utc)
        assert bus.regs[3] == iso_weekday, utc
        assert rtc.read() == utc, utc


def test_write_then_read_round_trips_through_the_fake_chip():
    for utc, _ in INSTANTS:
        now = [1700000000]
        chip = FakeDS3231(lambda now=now: now[0])
        rtc = DS3231(FakeBus(chip))
        rtc.write(utc)
        assert rtc.read() == utc, utc
        if utc + 61 < Y2100:  # FakeDS3231 has no century bit: it wraps 2099 to 2000 (reported)
            now[0] += 61  # the chip keeps time on its own from there
            assert rtc.read() == utc + 61, utc


def test_oscillator_stop_reads_none_until_written():
    now = [1835481000]
    chip = FakeDS3231(lambda: now[0], lost=True)
    bus = FakeBus(chip)
    rtc = DS3231(bus)
    assert rtc.lost() and rtc.read() is None
    rtc.write(LEAP_END)
    assert not rtc.lost() and rtc.read() == LEAP_END
    assert bus.writes[-1] == (0x0F, b"\x00")
    chip.lose()  # the coin cell goes flat
    assert rtc.lost() and rtc.read() is None


def test_write_clears_only_the_oscillator_stop_flag():
    bus = RegI2C()
    bus.regs[0x0F] = 0x80 | 0x08  # OSF and EN32kHz
    rtc = DS3231(bus)
    assert rtc.read() is None
    rtc.write(LEAP_END)
    assert bus.regs[0x0F] == 0x08
    assert rtc.read() == LEAP_END


def _read_regs(sec, mi, h, d, mo, y):
    bus = RegI2C()
    bus.regs[0:7] = bytes([sec, mi, h, 1, d, mo, y])
    return DS3231(bus).read()


def test_invalid_register_contents_read_none():
    assert (
        _read_regs(0x00, 0x00, 0x12, 0x15, 0x06, 0x28)
        == civil.days_from_civil(2028, 6, 15) * civil.DAY + 12 * 3600
    )
    assert _read_regs(0x00, 0x00, 0x12, 0x15, 0x13, 0x28) is None  # month 13
    assert _read_regs(0x00, 0x00, 0x12, 0x15, 0x00, 0x28) is None  # month 0
    assert _read_regs(0x00, 0x75, 0x12, 0x15, 0x06, 0x28) is None  # minute 75
    assert _read_regs(0x60, 0x00, 0x12, 0x15, 0x06, 0x28) is None  # second 60
    assert _read_regs(0x00, 0x00, 0x24, 0x15, 0x06, 0x28) is None  # hour 24
    assert _read_regs(0x00, 0x00, 0x12, 0x00, 0x06, 0x28) is None  # day 0
    assert _read_regs(0x00, 0x00, 0x12, 0x31, 0x06, 0x28) is None  # 31 June
    assert _read_regs(0x00, 0x00, 0x12, 0x29, 0x02, 0x27) is None  # 29 Feb 2027
    assert _read_regs(0x00, 0x00, 0x12, 0x29, 0x02, 0x28) is not None  # 29 Feb 2028


def test_twelve_hour_mode_and_non_bcd_read_none():
    assert _read_regs(0x00, 0x00, 0x63, 0x15, 0x06, 0x28) is None  # 12-hour mode, 3 PM
    assert _read_regs(0x00, 0x1F, 0x12, 0x15, 0x06, 0x28) is None  # minutes nibble 15
    assert _read_regs(0x0A, 0x00, 0x12, 0x15, 0x06, 0x28) is None  # seconds nibble 10


def test_absent_chip_raises_oserror():
    rtc = DS3231(RegI2C(), addr=0x57)
    try:
        rtc.read()
    except OSError:
        return
    raise AssertionError("no OSError for an absent chip")


# -- store -------------------------------------------------------------------------------------


def _tmpdir():
    try:
        import tempfile
    except ImportError:  # MicroPython
        import random

        d = "/tmp/dosis-fw-test-%d" % random.getrandbits(30)
        os.mkdir(d)
        return d
    return tempfile.mkdtemp(prefix="dosis-fw-test-")


def _rmtree(d):
    for name in os.listdir(d):
        os.remove(d + "/" + name)
    os.rmdir(d)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_store_save_load_round_trip():
    d = _tmpdir()
    try:
        s = Store(d)
        rec = {"schema": 1, "doses": [["morgen", 1835481600]], "note": "Strøm", "ok": True}
        s.save("state.json", rec)
        assert s.load("state.json") == rec
        s.save("state.json", {"schema": 2})
        assert s.load("state.json") == {"schema": 2}
        assert s.writes == 2
        assert sorted(os.listdir(d)) == ["state.json"]  # no temp file left behind
    finally:
        _rmtree(d)


def test_store_missing_reads_none():
    d = _tmpdir()
    try:
        assert Store(d).load("nothing.json") is None
        assert Store(d + "/no-such-dir").load("x.json") is None
    finally:
        _rmtree(d)


def test_torn_temp_file_does_not_affect_load():
    d = _tmpdir()
    try:
        s = Store(d)
        s.save("state.json", {"a": 1})
        _write(d + "/state.json.tmp", b'{"a": 2, "b": [1, 2')  # power cut mid-write
        assert s.load("state.json") == {"a": 1}
        s.save("state.json", {"a": 3})  # and the next save still works
        assert s.load("state.json") == {"a": 3}
        assert sorted(os.listdir(d)) == ["state.json"]
    finally:
        _rmtree(d)


def test_garbage_main_file_reads_none():
    d = _tmpdir()
    try:
        s = Store(d)
        for junk in (b"", b"not json", b'{"a": 1', b"\xff\xfe\x00garbage", b"{}}"):
            _write(d + "/state.json", junk)
            assert s.load("state.json") is None, junk
        assert s.writes == 0
    finally:
        _rmtree(d)


def test_store_paths():
    assert Store().path("x.json") == "x.json"
    assert Store("/flash").path("x.json") == "/flash/x.json"


def test_journal_write_read():
    d = _tmpdir()
    try:
        s = Store(d)
        j = Journal(s)
        assert j.read() is None
        j.write({"state": "moving", "from": 3, "to": 4})
        j.write({"state": "at", "pos": 4})
        assert j.read() == {"state": "at", "pos": 4}
        assert s.writes == 2
        assert os.listdir(d) == ["journal.json"]
        other = Journal(s, "carousel.json")
        other.write({"pos": 0})
        assert other.read() == {"pos": 0} and j.read() == {"state": "at", "pos": 4}
        assert s.writes == 3
    finally:
        _rmtree(d)
