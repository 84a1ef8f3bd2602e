"""Shared by the firmware bench harnesses (MicroPython): the real firmware on the simulated board.

Boots the dispenser exactly as `sim/scenario.py` does (`runtime.start(board, store, emit)`,
then `clock.register(...)` and the warp driver when the clock is a warp clock), and adds the
probes the benchmarks need, all from outside the firmware:

- `Timed`: wraps a task's coroutine and times every `send()`/`throw()`, i.e. each stretch a
  task runs between two awaits (patched in through `App._guard`, which `App.start` calls);
- `Monitor`: a task that loops on `await asyncio.sleep_ms(0)` and keeps the longest real gap
  between two of its runs (the longest time the loop was held by anything else);
- `Writes`: counts `Store.save` calls per record and the most in any virtual hour.

Results go to stdout as one line `RESULT <json>`; the host script (bench_firmware.py) does the
statistics, so the MicroPython side stays small (its code sits in the same heap it measures).
"""

import asyncio
import gc
import json
import sys
import time

from dispenser import app as app_mod
from dispenser import runtime
from dispenser.store import Store
from dosiscore import civil, tz
from sim import board as simboard

APP_TASKS = 8  # the tasks App.start() creates; each waits through the clock


def args():
    """key=value command-line arguments as a dict of strings."""
    out = {}
    for a in sys.argv[1:]:
        k, _, v = a.partition("=")
        out[k] = v
    return out


def local_utc(doc, date, hhmm):
    """UTC seconds of a local date and HH:MM in the schedule's zone."""
    zone = tz.Tz(doc["tz_rule"])
    return zone.utc(civil.parse_date(date) * civil.DAY + civil.parse_hhmm(hhmm) * 60)


def now_ms(clock):
    """UTC milliseconds on the firmware's clock (Clock.now() only gives whole seconds)."""
    return clock._utc0 * 1000 + clock.ticks_ms() - clock._t0 + clock._ms0


def vtick_of(clock, utc_s):
    """The clock tick (virtual ms) at which Clock.now() reaches `utc_s`."""
    return clock._t0 + (utc_s - clock._utc0) * 1000 - clock._ms0


async def sleep_until(clock, utc_ms):
    d = utc_ms - now_ms(clock)
    if d > 0:
        await clock.sleep(d / 1000)


class Timed:
    """A coroutine wrapper that times each step of the task (the code between two awaits)."""

    def __init__(self, name, coro):
        self.name = name
        self.c = coro
        self.n = 0  # steps (= wake-ups of the task)
        self.max = 0  # longest step, us
        self.max_at = 0  # clock tick of the longest step
        self.slow = 0  # steps of 5 ms or more
        self.top = []  # the TOP longest steps as [us, step number]: on the warp clock the same
        self.floor = 0  # step number is the same work in every run, host noise is not
        self.clock = None

    def _done(self, t0):
        d = time.ticks_diff(time.ticks_us(), t0)
        self.n += 1
        if d >= 5000:
            self.slow += 1
        if d > self.floor:
            top = self.top
            top.append([d, self.n])
            if len(top) > TOP:
                top.sort()
                top.pop(0)
                self.floor = top[0][0]
        if d > self.max:
            self.max = d
            self.max_at = self.clock.ticks_ms() if self.clock is not None else 0

    def send(self, v):
        t0 = time.ticks_us()
        try:
            return self.c.send(v)
        finally:
            self._done(t0)

    def throw(self, *exc):
        t0 = time.ticks_us()
        try:
            return self.c.throw(*exc)
        finally:
            self._done(t0)

    def close(self):
        return self.c.close()


TIMED = []
TOP = 8


def time_app_tasks(clock):
    """From now on, App.start() wraps each task it creates in a `Timed`."""
    orig = app_mod.App._guard

    def guard(self, name, coro):
        t = Timed(name, orig(self, name, coro))
        t.clock = clock
        TIMED.append(t)
        return t

    app_mod.App._guard = guard


def timed_report():
    return {
        t.name: {
            "steps": t.n,
            "max_us": t.max,
            "max_at_ms": t.max_at,
            "slow": t.slow,
            "top": t.top,
        }
        for t in TIMED
    }


class Monitor:
    """The longest real gap between two runs of a task that only yields (sleep_ms(0))."""

    def __init__(self, clock):
        self.clock = clock
        self.on = True
        self.max = 0
        self.max_at = 0
        self.runs = 0
        # gaps by bucket: < 1, 1-2, 2-5, 5-10, 10-20, >= 20 ms
        self.hist = [0, 0, 0, 0, 0, 0]

    async def run(self):
        last = time.ticks_us()
        hist = self.hist
        while self.on:
            await asyncio.sleep_ms(0)
            now = time.ticks_us()
            gap = time.ticks_diff(now, last)
            last = now
            self.runs += 1
            if gap > self.max:
                self.max = gap
                self.max_at = self.clock.ticks_ms()
            if gap < 1000:
                hist[0] += 1
            elif gap < 2000:
                hist[1] += 1
            elif gap < 5000:
                hist[2] += 1
            elif gap < 10000:
                hist[3] += 1
            elif gap < 20000:
                hist[4] += 1
            else:
                hist[5] += 1

    def report(self):
        return {"max_us": self.max, "max_at_ms": self.max_at, "runs": self.runs, "hist": self.hist}


class Writes:
    """Counts the store's writes: per record name, and the most in any virtual hour."""

    def __init__(self, store, clock):
        self.total = 0
        self.by_name = {}
        self.hour = -1
        self.in_hour = 0
        self.max_hour = 0
        self.clock = clock
        save = store.save

        def counted(name, obj):
            save(name, obj)
            self.total += 1
            self.by_name[name] = self.by_name.get(name, 0) + 1
            h = clock.ticks_ms() // 3600000
            if h != self.hour:
                self.hour = h
                self.in_hour = 0
            self.in_hour += 1
            if self.in_hour > self.max_hour:
                self.max_hour = self.in_hour

        store.save = counted  # App and its Journal call store.save: the instance's attribute


BENCH_SCHEDULE = "bench-schedule.json"  # written by the host: the schedule to provision


def _load_unvalidated(store, emit):
    # The real-time latency run's schedule (doses a minute apart, closer than validation
    # allows) goes to the App as provisioned; the rest of the boot is the firmware's own.
    with open(store.root + "/" + BENCH_SCHEDULE) as f:
        doc = json.load(f)
    emit("schedule", None, "unvalidated")
    return doc


def provision(state_dir):
    """Store the host's schedule where the firmware's boot looks for it, the way
    sim/scenario.py provisions a fresh state directory."""
    with open(state_dir + "/" + BENCH_SCHEDULE) as f:
        doc = json.load(f)
    try:
        from dispenser.settings import ABStore  # A/B copies with CRC (newer firmware)
    except ImportError:
        Store(state_dir).save(runtime.SCHEDULE, doc)
        return
    ABStore(state_dir).save(runtime.SCHEDULE, doc)


class Sim:
    """One boot of the firmware on the simulated board. Call `start()` inside the event loop."""

    def __init__(self, state_dir, start_utc, speed=0, validate=True, log_max=None):
        if log_max is not None:
            simboard._LOG_MAX = log_max  # the board's recordings of buzzer and light changes
        if not validate:
            runtime.load_schedule = _load_unvalidated
        self.start_utc = start_utc
        self.speed = speed
        provision(state_dir)
        gc.collect()
        self.store = Store(state_dir)
        self.board = simboard.SimBoard(state_dir, start_utc, speed=speed)
        self.clock = self.board.clock
        self.kinds = {}  # event kind -> count
        self.crashes = []  # "... crashed: ..." faults: a task died
        self.app = None
        self.real0_us = 0

    def emit(self, kind, occ, detail):
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if kind == "fault" and "crashed" in str(detail):
            self.crashes.append(str(detail))

    def start(self, extra_tasks=0, fill=True):
        """Boot (runtime.start) and, on a warp clock, start the warp driver.

        `extra_tasks`: harness tasks that wait through the clock (the warp driver must count
        them, as sim/scenario.py counts its own driver)."""
        clock = self.clock
        if self.speed:
            # Scaled clock: start it on a millisecond edge so that a virtual instant maps to
            # real microseconds (virtual ms = real ms since _real0, times speed).
            t = time.ticks_ms()
            while time.ticks_ms() == t:
                pass
            clock._real0 = time.ticks_ms()
            self.real0_us = time.ticks_us()
        self.app = runtime.start(self.board, self.store, self.emit)
        if self.app is None:
            raise RuntimeError("firmware did not start: %r" % (self.kinds,))
        if fill:
            self.fill()
        if self.speed == 0:
            clock.register(APP_TASKS + extra_tasks)
            self.warp = asyncio.create_task(clock.run_warp())
        return self.app

    def fill(self):
        app = self.app
        now = self.clock.now()
        app._events(app.doses.refilled(now))
        self.board.motor.load(*range(1, app.doc["compartments"] + 1))
        app.kick.set()  # the dose task re-plans, as after any input

    def real_us_of_tick(self, vtick):
        """Real ticks_us at which a scaled clock reads `vtick` (virtual ms)."""
        return self.real0_us + vtick * 1000 // self.speed

    def stop(self):
        self.clock.running = False


def heap():
    gc.collect()
    return gc.mem_alloc(), gc.mem_free()


def result(obj):
    """One line `RESULT <json>`, streamed: a full heap must still be able to report."""
    gc.collect()
    sys.stdout.write("RESULT ")
    json.dump(obj, sys.stdout)
    sys.stdout.write("\n")
