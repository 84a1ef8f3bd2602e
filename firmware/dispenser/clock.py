"""The device's sense of time: UTC seconds over a monotonic tick, and every wait of the app.

All blocking waits of the app go through `Clock.wait(event, seconds)` or `Clock.sleep`, so the
simulated board can run the same firmware on a faster-than-real-time clock (`SimClock`) and
even skip idle time entirely (`warp`): when every task of the app is waiting, virtual time jumps
to the earliest deadline. The device's `Clock` simply waits in real time.

UTC is kept as (base UTC, base tick): immune to tick wrap-around (re-based at least daily) and
stepped only through `set`, which wakes every waiter (`changed`) so the dose task re-plans.
"""

import asyncio
import time

try:
    from time import ticks_add, ticks_diff, ticks_ms  # pyright: ignore[reportAssignmentType]
except ImportError:  # CPython (host tests): a monotonic millisecond count that never wraps

    def ticks_ms():
        return time.monotonic_ns() // 1000000  # type: ignore[attr-defined]

    def ticks_add(t, delta):
        return t + delta

    def ticks_diff(a, b):
        return a - b


def _sleep_ms_cpython(ms):
    return asyncio.sleep(ms / 1000)


def _wait_for_ms_cpython(aw, ms):
    return asyncio.wait_for(aw, ms / 1000)


# MicroPython's asyncio has sleep_ms and wait_for_ms; CPython's (host tests) does not.
_sleep_ms = getattr(asyncio, "sleep_ms", None) or _sleep_ms_cpython
_wait_for_ms = getattr(asyncio, "wait_for_ms", None) or _wait_for_ms_cpython

_DAY_MS = 86400000


class Clock:
    """Real-time clock: UTC seconds, or invalid (None) until a source has set it."""

    def __init__(self, utc=None, source="none"):
        self._t0 = self.ticks_ms()
        self._utc0 = utc  # UTC seconds at tick _t0; None while the time is unknown
        self._ms0 = 0  # milliseconds into that second
        self.source = source
        self.changed = asyncio.Event()
        self.steps = 0

    def ticks_ms(self):
        return ticks_ms()

    def _elapsed_ms(self):
        return ticks_diff(self.ticks_ms(), self._t0)

    def _rebase(self):
        d = self._elapsed_ms()
        if d > _DAY_MS and self._utc0 is not None:
            # ticks_diff is only meaningful within half the tick period: move the base on.
            s = (d + self._ms0) // 1000
            self._utc0 += s
            self._ms0 = d + self._ms0 - s * 1000
            self._t0 = ticks_add(self._t0, d)

    def valid(self):
        return self._utc0 is not None

    def now(self):
        """UTC Unix seconds (int). Only meaningful when valid()."""
        if self._utc0 is None:
            return 0
        self._rebase()
        return self._utc0 + (self._elapsed_ms() + self._ms0) // 1000

    def now_ms(self):
        """UTC Unix milliseconds: waits aim at the instant, not at the next whole second."""
        if self._utc0 is None:
            return 0
        self._rebase()
        return self._utc0 * 1000 + self._elapsed_ms() + self._ms0

    def set(self, utc, source):
        """Step the clock to `utc`; returns (old, new) for the log. Wakes every waiter."""
        old = self.now() if self._utc0 is not None else None
        self._t0 = self.ticks_ms()
        self._utc0 = int(utc)
        self._ms0 = 0
        self.source = source
        self.steps += 1
        self.changed.set()
        return old, int(utc)

    def invalidate(self):
        self._utc0 = None
        self.source = "none"
        self.changed.set()

    async def wait(self, event, seconds=None):
        """Wait for `event` or `seconds` (None: no limit). True if the event fired."""
        if seconds is None:
            await event.wait()
            return True
        ms = int(seconds * 1000)
        if ms <= 0:
            return event.is_set()
        try:
            await _wait_for_ms(event.wait(), ms)
            return True
        except asyncio.TimeoutError:
            return False

    async def sleep(self, seconds):
        await _sleep_ms(int(seconds * 1000))


class _Waiter:
    def __init__(self, deadline, event):
        self.deadline = deadline  # virtual ms, or None
        self.event = event  # the caller's event
        self.wake = asyncio.Event()  # private: set by the warp driver, never seen by the caller
        self.fired = False


class SimClock(Clock):
    """A virtual clock for the simulated board.

    speed > 0: virtual time runs `speed` times faster than real time (real sleeps, scaled).
    speed == 0 ("warp"): virtual time stands still while any registered task is busy and
    jumps to the earliest deadline once all of them wait: a simulated month runs in seconds,
    deterministically. Tasks that wait through this clock must be counted with `register()`.
    """

    def __init__(self, utc=None, speed=0, source="sim"):
        self.speed = speed
        self._vms = 0  # virtual milliseconds since start (warp mode)
        self._real0 = ticks_ms()
        self._waiters = []
        self._tasks = 0
        self.running = True
        # Paced warp (speed 0, pace > 0): virtual time follows real time times `pace`, moved
        # on by run_warp() alone, so every timer still fires in order and the virtual
        # dispenser can also be fast-forwarded (fast_forward()) without skipping any.
        self.pace = 0
        self._ff = None  # fast-forward target (virtual ms) while one runs
        self._ff_done = None
        self._a_real = ticks_ms()
        self._a_vms = 0
        super().__init__(utc, source)

    def ticks_ms(self):
        if self.speed == 0:
            return self._vms
        return int(ticks_diff(ticks_ms(), self._real0) * self.speed)

    def _elapsed_ms(self):
        return self.ticks_ms() - self._t0  # type: ignore  # virtual ticks: plain ints, no wrap

    def _rebase(self):
        pass

    def register(self, n=1):
        self._tasks += n

    def advance(self, seconds):
        """Move virtual time on by `seconds` (warp mode), firing due deadlines."""
        self._vms += int(seconds * 1000)
        self._fire_due()

    def _fire_due(self):
        for w in self._waiters:
            if w.deadline is not None and w.deadline <= self._vms and not w.fired:
                w.fired = True
                w.wake.set()

    def _poke(self):
        """Wake waiters whose event was set; return how many waiters are really idle."""
        idle = 0
        for w in self._waiters:
            if w.event.is_set():
                w.wake.set()
            elif not w.wake.is_set():
                idle += 1
        return idle

    async def wait(self, event, seconds=None):
        if self.speed != 0:
            if seconds is not None:
                # At least 1 real ms: a shorter wait would return at once, without letting
                # virtual time pass or any other task run.
                seconds = max(0.001, seconds / self.speed)
            return await Clock.wait(self, event, seconds)
        if event.is_set():
            return True
        deadline = None if seconds is None else self._vms + max(0, int(seconds * 1000))
        w = _Waiter(deadline, event)
        self._waiters.append(w)
        try:
            await w.wake.wait()
        finally:
            self._waiters.remove(w)
        return event.is_set()

    async def sleep(self, seconds):
        await self.wait(asyncio.Event(), seconds)

    def _anchor(self):
        self._a_real = ticks_ms()
        self._a_vms = self._vms

    async def fast_forward(self, seconds):
        """Paced warp: let `seconds` of virtual time pass as fast as the tasks allow (every
        timer fires, in order), then go on at the pace. Returns when done."""
        self._ff = self._vms + int(seconds * 1000)
        self._ff_done = asyncio.Event()
        await self._ff_done.wait()

    async def _pace(self, nxt):
        """Paced warp: True to jump to `nxt` now, else wait (real time) and advance to where
        real time times the pace says virtual time is."""
        if self._ff is not None:
            if nxt is not None and nxt <= self._ff:
                return True
            self._vms = max(self._vms, self._ff)
            self._ff = None
            self._anchor()
            self._fire_due()
            if self._ff_done is not None:
                self._ff_done.set()
            return False
        ideal = self._a_vms + int(ticks_diff(ticks_ms(), self._a_real) * self.pace)
        if nxt is not None and nxt <= ideal:
            return True
        if ideal > self._vms:
            self._vms = ideal
            self._fire_due()
            return False
        ms = 50 if nxt is None else max(1, min(50, int((nxt - ideal) / self.pace)))
        await _sleep_ms(ms)
        return False

    async def run_warp(self, until_ms=None, idle_yields=4):
        """The warp driver (a task): advance virtual time whenever every task waits."""
        self._anchor()
        while self.running:
            idle = 0
            while idle < idle_yields:
                await _sleep_ms(0)
                busy = self._tasks - self._poke()
                idle = idle + 1 if busy <= 0 else 0
            nxt = None
            for w in self._waiters:
                if w.deadline is not None and not w.fired and (nxt is None or w.deadline < nxt):
                    nxt = w.deadline
            if self._tasks - self._poke() > 0:
                continue  # someone was woken meanwhile: let it run first
            if self.pace and not await self._pace(nxt):
                continue
            if nxt is None or (until_ms is not None and nxt > until_ms):
                if until_ms is not None:
                    self._vms = max(self._vms, until_ms)
                self.running = False
                return
            self._vms = max(self._vms, nxt)
            self._fire_due()
