"""Clock, SimClock (warp, scaled) and the time-step filter: runs under pytest and MicroPython."""

import asyncio
import time

import dispenser.clock as clockmod
from dispenser.clock import Clock, SimClock
from dosiscore.timesrc import StepFilter

# The tick arithmetic dispenser.clock itself uses (MicroPython's, or its CPython fallback).
ticks_add = clockmod.ticks_add


def real_ms():
    """Real milliseconds, for "how long did that take" (not wrap-safe: tests are short)."""
    if hasattr(time, "ticks_ms"):
        return time.ticks_ms()  # type: ignore[attr-defined]
    return time.monotonic_ns() // 1000000  # type: ignore[attr-defined]


def warp_run(clock, coros, until_ms=None):
    """Run `coros` as tasks counted on the warp `clock` and drive it with `run_warp` until every
    task has ended, or all wait with no deadline left, or time would pass `until_ms`. Returns
    the tasks' results; None for a task still waiting at the end (it is then cancelled)."""
    results = [None] * len(coros)

    async def one(i, coro):
        try:
            results[i] = await coro
        finally:
            clock.register(-1)  # an ended task must stop counting as busy, or warp never moves

    async def main():
        clock.register(len(coros))
        tasks = [asyncio.create_task(one(i, c)) for i, c in enumerate(coros)]
        await clock.run_warp(until_ms)
        for t in tasks:
            if not t.done():
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass

    asyncio.run(main())
    return results


async def sleep_then(clock, seconds, then=None):
    """Sleep on `clock`, call `then()`, return the virtual ms at which it woke."""
    await clock.sleep(seconds)
    if then is not None:
        then()
    return clock.ticks_ms()


async def wait_then(clock, event, seconds):
    fired = await clock.wait(event, seconds)
    return fired, clock.ticks_ms(), event.is_set()


# -- Clock: UTC over a tick -------------------------------------------------------------------


def test_set_returns_old_and_new_and_signals_changed():
    c = Clock()
    assert not c.valid() and c.now() == 0 and c.source == "none"
    assert not c.changed.is_set()
    assert c.set(1835481599.7, "rtc") == (None, 1835481599)  # whole seconds
    assert c.valid() and c.source == "rtc" and c.steps == 1
    assert c.changed.is_set()
    assert c.now() - 1835481599 in (0, 1)  # real time runs on meanwhile
    c.changed.clear()
    old, new = c.set(1835481599 + 3600, "ntp")
    assert old - 1835481599 in (0, 1) and new == 1835481599 + 3600
    assert c.changed.is_set() and c.steps == 2 and c.source == "ntp"


def test_set_on_the_warp_clock_reports_the_exact_old_time():
    c = SimClock(1000, 0)
    c.advance(5.5)
    assert c.now() == 1005
    assert c.set(2000, "host") == (1005, 2000)
    c.advance(0.999)
    assert c.now() == 2000  # the step starts a fresh second
    c.advance(0.001)
    assert c.now() == 2001


def test_invalidate_makes_the_time_unknown_and_wakes_waiters():
    c = Clock(1835481600, "rtc")
    assert c.valid()
    c.invalidate()
    assert not c.valid() and c.now() == 0 and c.source == "none"
    assert c.changed.is_set()


class _TickClock(Clock):
    """A real Clock on a tick the test moves by hand."""

    def __init__(self, t, utc):
        self.t = t
        super().__init__(utc, "test")

    def ticks_ms(self):
        return self.t


def test_now_survives_tick_wraparound_over_ten_days():
    # Start 5 s before the tick counter wraps (where ticks wrap: MicroPython, the stand-in);
    # read the clock every 12 h (under the 6.2 days after which an ESP32 tick difference
    # becomes ambiguous): it is re-based daily.
    t0 = ticks_add(0, -5000)
    c = _TickClock(t0, 1835481600)
    step = 12 * 3600 * 1000 + 123
    total = 0
    for _ in range(20):
        c.t = ticks_add(c.t, step)
        total += step
        assert c.now() == 1835481600 + total // 1000
    assert c._t0 != t0  # re-based


def test_real_wait_returns_true_when_set_before_the_deadline():
    c = Clock(1835481600)
    ev = asyncio.Event()

    async def setter():
        await asyncio.sleep(0.01)
        ev.set()

    async def main():
        asyncio.create_task(setter())
        t = real_ms()
        fired = await c.wait(ev, 2)
        return fired, real_ms() - t

    fired, took = asyncio.run(main())
    assert fired and took < 1000


def test_real_wait_times_out_false_and_leaves_the_event_clear():
    c = Clock(1835481600)
    ev = asyncio.Event()

    async def main():
        t = real_ms()
        fired = await c.wait(ev, 0.03)
        return fired, real_ms() - t

    fired, took = asyncio.run(main())
    assert not fired and not ev.is_set()
    assert 20 <= took < 1000


def test_real_wait_with_no_time_left_only_looks():
    c = Clock(1835481600)
    ev = asyncio.Event()
    assert asyncio.run(c.wait(ev, 0)) is False
    ev.set()
    assert asyncio.run(c.wait(ev, 0)) is True
    assert asyncio.run(c.wait(ev, None)) is True  # already set: no wait at all


def test_real_sleep_sleeps_in_real_time():
    c = Clock()

    async def main():
        t = real_ms()
        await c.sleep(0.03)
        return real_ms() - t

    assert 20 <= asyncio.run(main()) < 1000


# -- SimClock, warp --------------------------------------------------------------------------


def test_warp_wakes_sleepers_in_order_at_their_virtual_times():
    clock = SimClock(1835481600, 0)
    order = []
    r = warp_run(
        clock,
        [
            sleep_then(clock, 5, lambda: order.append("a")),
            sleep_then(clock, 2, lambda: order.append("b")),
            sleep_then(clock, 3.25, lambda: order.append("c")),
        ],
    )
    assert r == [5000, 2000, 3250]
    assert order == ["b", "c", "a"]
    assert clock.now() == 1835481605


def test_warp_runs_a_virtual_day_in_well_under_a_second():
    clock = SimClock(1835481600, 0)
    seen = []

    async def minutely():
        for _ in range(24 * 60):
            await clock.sleep(60)
            seen.append(clock.ticks_ms())
        return clock.now()

    t = real_ms()
    r = warp_run(clock, [minutely()])
    took = real_ms() - t
    assert r == [1835481600 + 86400]
    assert seen[0] == 60000 and seen[-1] == 86400000 and len(seen) == 1440
    assert took < 1000, took


def test_warp_wait_returns_true_when_another_task_sets_the_event():
    clock = SimClock(None, 0)
    ev = asyncio.Event()
    r = warp_run(clock, [wait_then(clock, ev, 10), sleep_then(clock, 3, ev.set)])
    assert r == [(True, 3000, True), 3000]


def test_warp_timeout_is_false_and_never_signalled_through_the_callers_event():
    # Regression: the warp driver once woke timed-out waiters by setting their event, which
    # then looked like a real event to the caller and to every other task waiting on it.
    clock = SimClock(None, 0)
    ev = asyncio.Event()
    r = warp_run(
        clock,
        [
            wait_then(clock, ev, 5),  # times out at 5 s
            wait_then(clock, ev, None),  # must sleep through that timeout
            sleep_then(clock, 8, ev.set),  # the real event, later
        ],
    )
    assert r[0] == (False, 5000, False)
    assert r[1] == (True, 8000, True)
    assert r[2] == 8000


def test_warp_timeout_with_nobody_to_set_the_event():
    clock = SimClock(None, 0)
    ev = asyncio.Event()
    r = warp_run(clock, [wait_then(clock, ev, 5)])
    assert r == [(False, 5000, False)]
    assert not ev.is_set()


def test_warp_wait_on_a_set_event_or_for_no_time():
    clock = SimClock(None, 0)
    ev = asyncio.Event()
    ev.set()
    quiet = asyncio.Event()
    r = warp_run(clock, [wait_then(clock, ev, 10), wait_then(clock, quiet, 0)])
    assert r == [(True, 0, True), (False, 0, False)]


def test_warp_stops_at_until_with_a_task_still_waiting():
    clock = SimClock(None, 0)
    r = warp_run(clock, [sleep_then(clock, 60)], until_ms=10000)
    assert r == [None]  # still asleep when time stopped
    assert clock.ticks_ms() == 10000 and not clock.running


def test_warp_ticks_never_go_backwards():
    clock = SimClock(None, 0)
    seen = []

    async def sampler(durations):
        for d in durations:
            await clock.sleep(d)
            seen.append(clock.ticks_ms())

    warp_run(clock, [sampler((0.3, 0, 1.7, 0.001, 5)), sampler((2, 0.05, 0, 0, 3))])
    assert len(seen) == 10
    assert seen == sorted(seen)
    assert seen[-1] == 7001
    before = clock.ticks_ms()
    clock.advance(0.5)
    assert clock.ticks_ms() == before + 500


def test_set_wakes_a_task_waiting_on_changed():
    clock = SimClock(1835481600, 0)
    r = warp_run(
        clock,
        [
            wait_then(clock, clock.changed, None),
            sleep_then(clock, 10, lambda: clock.set(1835485200, "ntp")),
        ],
    )
    assert r == [(True, 10000, True), 10000]
    assert clock.now() == 1835485200


# -- SimClock, scaled --------------------------------------------------------------------------


def test_scaled_clock_sleeps_a_virtual_second_in_about_a_real_millisecond():
    clock = SimClock(1835481600, 1000)

    async def main():
        v = clock.ticks_ms()
        t = real_ms()
        await clock.sleep(1)
        return clock.ticks_ms() - v, real_ms() - t

    virtual, real = asyncio.run(main())
    assert virtual >= 1000  # at least a virtual second went by
    assert real < 100, real  # and nothing like a real one


def test_scaled_clock_wait_times_out_in_scaled_time():
    clock = SimClock(None, 1000)
    ev = asyncio.Event()

    async def main():
        t = real_ms()
        fired = await clock.wait(ev, 5)  # 5 virtual s: about 5 real ms
        return fired, real_ms() - t

    fired, real = asyncio.run(main())
    assert not fired and not ev.is_set()
    assert real < 200, real


def test_scaled_ticks_never_go_backwards():
    clock = SimClock(None, 1000)

    async def main():
        seen = []
        for _ in range(10):
            seen.append(clock.ticks_ms())
            await clock.sleep(2)  # whole real milliseconds: see the note on sub-ms sleeps below
        return seen

    seen = asyncio.run(main())
    assert seen == sorted(seen)
    assert seen[-1] - seen[0] >= 9 * 2000


def test_scaled_short_sleeps_still_let_time_pass():
    # Regression: at speed 1000 a sleep under one virtual second (under one real millisecond)
    # used to return at once, without time passing, so a held button read "stuck".
    clock = SimClock(None, 1000)

    async def main():
        v = clock.ticks_ms()
        for _ in range(20):
            await clock.sleep(0.05)
        return clock.ticks_ms() - v

    assert asyncio.run(main()) >= 20 * 50


def test_warp_goes_on_after_a_counted_task_ends():
    # Regression: a registered task that ended still counted as busy and the warp spun.
    clock = SimClock(None, 0)
    clock.register(2)
    done = []

    async def short():
        clock.register(-1)  # what App._guard does when a task ends, however it ends

    async def sleeper():
        await clock.sleep(3600)
        done.append(clock.ticks_ms())
        clock.register(-1)

    async def main():
        warp = asyncio.create_task(clock.run_warp(until_ms=7200000))
        await asyncio.gather(short(), sleeper())
        clock.running = False
        await warp

    asyncio.run(main())
    assert done == [3600000]


# -- time sources: StepFilter ------------------------------------------------------------------

T = 1835481600


def test_small_steps_are_applied_at_once():
    f = StepFilter()
    assert f.offer(T, T + 120, 0, "ntp") == T + 120
    assert f.offer(T, T - 120, 1, "ntp") == T - 120
    assert f.offer(T, T + 3, 2, "rtc") == T + 3
    assert f.pending is None


def test_a_big_step_from_one_source_is_held():
    f = StepFilter()
    assert f.offer(T, T + 121, 0, "ntp") is None
    assert f.offer(T, T - 3 * 3600, 10, "ntp") is None
    assert f.pending is not None


def test_the_same_source_repeating_does_not_confirm():
    f = StepFilter()
    for i in range(5):
        assert f.offer(T + i * 60, T + 7200 + i * 60, i * 60, "ntp") is None


def test_a_second_source_agreeing_within_5_s_confirms():
    f = StepFilter()
    assert f.offer(T, T + 7200, 0, "ntp") is None
    # 30 s later by the device's clock; the other source is 5 s off the first: still agrees.
    assert f.offer(T + 30, T + 30 + 7205, 30, "host") == T + 30 + 7205
    assert f.pending is None
    # And backwards too.
    assert f.offer(T, T - 86400, 0, "host") is None
    assert f.offer(T + 1, T + 1 - 86400 - 5, 1, "ntp") == T + 1 - 86400 - 5


def test_a_second_source_disagreeing_does_not_confirm():
    f = StepFilter()
    assert f.offer(T, T + 7200, 0, "ntp") is None
    assert f.offer(T + 30, T + 30 + 7206, 30, "host") is None  # 6 s apart
    assert f.offer(T + 40, T + 40 - 7200, 40, "rtc") is None  # the other way entirely
    # The first answer is still the one waiting for a witness.
    assert f.offer(T + 50, T + 50 + 7201, 50, "rtc") == T + 50 + 7201


def test_trusted_or_unknown_time_is_applied_at_once():
    f = StepFilter()
    assert f.offer(T, T + 7200, 0, "ntp") is None
    assert f.offer(T, T - 5 * 86400, 1, "user", trusted=True) == T - 5 * 86400
    assert f.pending is None
    assert f.offer(None, T + 99999, 2, "user", trusted=True) == T + 99999
    assert f.pending is None


def test_no_time_at_all_still_needs_two_independent_answers():
    # The RTC lost the time: one NTP answer (maybe a bad one) must not set the doses' clock.
    f = StepFilter()
    assert f.offer(None, T, 100, "ntp", origin="10.0.0.1") is None
    assert f.offer(None, T + 30, 130, "ntp", origin="10.0.0.1") is None  # the same server
    assert f.offer(None, T + 7200 + 40, 140, "ntp", origin="10.0.0.2") is None  # disagrees
    # a second server that agrees (30 s later on the monotonic counter, 30 s later in UTC)
    assert f.offer(None, T + 60, 160, "ntp", origin="10.0.0.2") == T + 60
