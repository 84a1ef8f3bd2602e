"""Days in the life of the dispenser (MicroPython): heap, loop holds, flash writes, idle wake-ups.

    micropython -m mp_day state=DIR start=UTC day0=UTC days=N [end=UTC] [speed=0] [seed=1]
        [sample_s=3600] [hold=0|1] [idle=0|1] [log_max=100] [inject=pin|task]

`day0` is local midnight of the first day (the plan's times are local). The schedule is
DIR/bench-schedule.json (the example schedule), provisioned as the device stores it and
validated by the firmware at boot.
The carousel is filled at the start and refilled every 7 days at 07:00. Every day the citizen
confirms most doses with the big button at a random time after the tone, takes the noon dose
out of the open compartment (the beam sees it), misses some (they beep until the late lock),
asks for an as-needed dose with a long press (often refused), presses the service button now
and then; mains drops for half an hour every fifth night. `idle=1` does none of that: the
device just runs (the idle CPU bench, on a real-time clock).

Probes (see mp_common): the heap after gc.collect() every `sample_s` of the firmware's clock
(a harness task; 0: none), Store writes per record and per hour and the dose log's syncs,
and with `hold=1` the loop monitor and the per-task step timer (`idle=1`: the step timer
only, which counts each task's wake-ups). The simulated board's recordings of buzzer and
light changes are capped at `log_max` entries (default 2000 on the board: ~220 KB on the
64-bit port, more than the heap under test).
"""

import asyncio
import gc
import random
import sys
import time

import mp_common as mc


def _day_plan(day0_utc, d, rnd):
    """[(utc ms, action)] for day d (local midnight of day d = day0_utc + d days, no DST in
    the bench's month)."""
    base = (day0_utc + d * 86400) * 1000
    acts = []

    def at(hh, mm, extra_s, what):
        acts.append((base + (hh * 3600 + mm * 60) * 1000 + int(extra_s * 1000), what))

    if d > 0 and d % 7 == 0:
        at(7, 0, 0, "refill")
    if rnd.random() > 0.1:
        at(8, 0, rnd.random() * 25 * 60, "press")  # morgen
    if rnd.random() > 0.1:
        at(11, 40, rnd.random() * 40 * 60, "take")  # middag: out of the open compartment
    if rnd.random() > 0.1:
        at(18, 0, rnd.random() * 50 * 60, "press")  # aften, sometimes after the notice
    at(21, 1, rnd.random() * 14 * 60, "press")  # the eye-drop reminder
    if rnd.random() > 0.3:
        at(22, 0, rnd.random() * 30 * 60, "press")  # nat
    at(14, 0, rnd.random() * 120 * 60, "hold")  # as needed
    if rnd.random() < 0.5:
        at(16, 0, rnd.random() * 60 * 60, "hold")  # again: usually refused (6 h rule)
    if d % 3 == 1:
        at(10, 0, 0, "service")
        at(10, 2, 0, "service")
    if d % 5 == 2:
        at(3, 0, 0, "mains_off")
        at(3, 30, 0, "mains_on")
    acts.sort(key=lambda x: x[0])
    return acts


def main():
    a = mc.args()
    state = a["state"]
    start = int(a["start"])
    days = int(a["days"])
    speed = int(a.get("speed", "0"))
    sample_s = int(a.get("sample_s", "3600"))
    hold = a.get("hold", "0") == "1"
    idle = a.get("idle", "0") == "1"
    inject = a.get("inject", "pin" if speed == 0 else "task")
    day0 = int(a.get("day0", str(start)))  # local midnight of day 0 (UTC seconds)
    end = int(a.get("end", str(start + days * 86400)))
    rnd = random
    rnd.seed(int(a.get("seed", "1")))
    gc.collect()
    boot_heap = gc.mem_alloc()
    sim = mc.Sim(state, start, speed, log_max=int(a.get("log_max", "100")))
    clock = sim.clock
    board = sim.board
    if hold or idle:
        mc.time_app_tasks(clock)
    out = {"heap_at_entry": boot_heap}
    heap = {"peak": 0, "peak_at_h": 0, "min_free": 1 << 30, "samples": 0, "after_boot": 0}
    daily = []  # the heap at the end of each simulated day (every 24th sample)
    syncs = {"last": 0, "max_hour": 0}  # Store writes + dose-log syncs, per sampling period
    writes = None

    def sample():
        alloc, free = mc.heap()
        heap["samples"] += 1
        if alloc > heap["peak"]:
            heap["peak"] = alloc
            heap["peak_at_h"] = (mc.now_ms(clock) // 1000 - start) // 3600
        if free < heap["min_free"]:
            heap["min_free"] = free
        return alloc

    def flash_syncs():
        log = getattr(sim.app, "log", None)
        return writes.total + (getattr(log, "syncs", 0) if log is not None else 0)

    async def sampler():
        while True:
            await clock.sleep(sample_s)
            alloc = sample()
            if heap["samples"] % 24 == 1:  # samples[0] is after boot; then one a day
                daily.append(alloc)
            n = flash_syncs()
            syncs["max_hour"] = max(syncs["max_hour"], n - syncs["last"])
            syncs["last"] = n

    async def run():
        nonlocal writes
        writes = mc.Writes(sim.store, clock)
        n_extra = 2 if sample_s else 1  # this driver, and the sampler
        app = sim.start(extra_tasks=n_extra)
        presses = asyncio.Event()
        queue = []
        if inject == "task":
            # A clock this fast turns the buttons' 30 ms debounce and 50 ms polls into 1 ms
            # real waits, longer than the press itself: hand the press to the buttons task.
            async def next_press():
                while not queue:
                    await clock.wait(presses, None)
                    presses.clear()
                return queue.pop(0)

            app.buttons.next_press = next_press
        mon = None
        if hold:
            mon = mc.Monitor(clock)
            asyncio.create_task(mon.run())
        if sample_s:
            asyncio.create_task(sampler())
        await clock.sleep(2)  # boot settles: carousel recovered, first screen drawn
        heap["after_boot"] = sample()
        print("READY")
        if idle:
            await mc.sleep_until(clock, end * 1000)
        else:
            d = (start - day0) // 86400
            while True:
                for t, what in _day_plan(day0, d, rnd):
                    if t < (start + 2) * 1000:
                        continue
                    if t >= end * 1000:
                        break
                    await mc.sleep_until(clock, t)
                    await act(app, what, queue, presses)
                d += 1
                if (day0 + d * 86400) >= end:
                    break
            await mc.sleep_until(clock, end * 1000)
        out["final_heap"] = sample()
        if mon is not None:
            mon.on = False
            out["monitor"] = mon.report()
        if hold or idle:
            out["tasks"] = mc.timed_report()
        out["writes"] = {"total": writes.total, "by_name": writes.by_name}
        out["writes"]["max_in_an_hour"] = writes.max_hour
        log = getattr(app, "log", None)
        out["log_syncs"] = getattr(log, "syncs", None) if log is not None else None
        out["syncs_max_per_sample"] = syncs["max_hour"]
        out["store_writes"] = sim.store.writes
        out["beeps"] = app.alerts.beeps
        out["moves"] = app.moves
        out["frames"] = board.i2c.frames
        out["faults"] = list(app.faults)
        sim.stop()

    async def act(app, what, queue, presses):
        if what == "refill":
            sim.fill()
        elif what == "take":
            board.motor.take()  # the hand empties the open compartment: the beam clears
        elif what == "mains_off":
            board.mains.value(0)
        elif what == "mains_on":
            board.mains.value(1)
        elif inject == "task":
            queue.append({"press": "taken", "hold": "prn", "service": "service"}[what])
            presses.set()
            await clock.sleep(1)
        elif what == "press":
            await board.press(board.btn_taken, 0.3)
        elif what == "hold":
            await board.press(board.btn_taken, 3)
        elif what == "service":
            await board.press(board.btn_service, 0.3)

    t0 = time.ticks_ms()
    try:
        asyncio.run(run())
    except MemoryError as e:
        gc.collect()
        out["memory_error"] = str(e)
        out["heap_at_error"] = gc.mem_alloc()
        sys.print_exception(e, sys.stdout)  # where it failed, for the host to quote
    out["wall_s"] = time.ticks_diff(time.ticks_ms(), t0) / 1000
    out["heap"] = heap
    out["heap_daily"] = daily
    out["days"] = days
    out["speed"] = speed
    out["events"] = sim.kinds
    out["crashes"] = sim.crashes
    out["modules"] = sorted(k for k in sys.modules)
    mc.result(out)


main()
