"""What the uplink costs the firmware (MicroPython): heap and loop holds, with and without it.

    micropython -m mp_uplink state=DIR start=UTC day0=UTC end=UTC net=none|mqtt|tls
        [pace=0] [sched=HASH] [drain=20] [sample_every=10] [log_max=100] [seed=1]

Boots the firmware on the simulated board on the warp clock as bench/mp_day.py does, paced
with `pace` (virtual seconds per real second; firmware/sim/serve.py's `--speed`) so that the
uplink, which runs on real time, has real seconds to work in (mp_common.Sim: the example
schedule in DIR/bench-schedule.json, provisioned and validated at boot). Then, unless
net=none, it starts the online tasks exactly as firmware/sim/serve.py does:
`Net(board, store, board.device_id(), VERSION, app, app.log, sched).start()`, which reads
DIR/net.json (written by the host: plain MQTT or TLS with the CA, the uplink key, the
heartbeat). The citizen's day is mp_day's, simplified (doses confirmed with the button, the
noon dose taken out of the open compartment, an as-needed request in the afternoon); after the
simulated span (`end`) the clock stops and the uplink gets `drain` real seconds to have every
record acknowledged by the gateway (the host runs it) before the harness reports.

Probes, all from outside the firmware:
- a 10 ms ticker task (as tests/mp/mqtt_probe.py's stand-in for the dose loop) that keeps the
  longest real gap between two of its wake-ups: the longest hold of the event loop is that
  gap minus the 10 ms it asked for;
- every `sample_every`-th tick, gc.collect() then gc.mem_alloc() (the ticker's clock is reset
  after the sample, so the bench's own collections are not counted as holds);
- the app's tasks' steps (mp_common.Timed) and, with a network, every task created after the
  boot (the uplink, the MQTT client's reader and pinger, each publish), by coroutine name;
- VmRSS / VmHWM from /proc/self/status after boot and at the end (C allocations: mbedtls);
- the uplink's failures (`Uplink._pause` runs after each one: its `error` is counted), and
  the traceback of any MemoryError inside an uplink session or an app task.

One line `RESULT <json>` at the end (mp_common.result).
"""

import asyncio
import gc
import sys
import time

import mp_common as mc

ERRORS = {}
TRACES = []  # [where, heap after collect, traceback] of every MemoryError caught on its way
NET_STEPS = {}  # task name -> [tasks, steps, longest step us, steps >= 5 ms]


def _count_error(why):
    why = str(why)[:120]
    ERRORS[why] = ERRORS.get(why, 0) + 1


def _trace(e):
    import io

    buf = io.StringIO()
    sys.print_exception(e, buf)
    return buf.getvalue()


def _keep(where, e):
    if len(TRACES) < 8:
        gc.collect()
        TRACES.append([where, gc.mem_alloc(), _trace(e)])


def patch_uplink():
    """Count every failure of the uplink and keep a MemoryError's traceback."""
    from dispenser import uplink as up

    pause = up.Uplink._pause
    session = up.Uplink._session

    async def _pause(self):
        _count_error(self.error)
        await pause(self)

    async def _session(self):
        try:
            await session(self)
        except MemoryError as e:
            _keep("uplink session", e)
            raise

    up.Uplink._pause = _pause
    up.Uplink._session = _session


def trace_app_tasks():
    """An app task that dies of a MemoryError leaves its traceback here (App._guard only
    records the message); patched in before mp_common's step timer, which wraps this."""
    from dispenser import app as app_mod

    orig = app_mod.App._guard

    def guard(self, name, coro):
        async def traced():
            try:
                return await coro
            except MemoryError as e:
                _keep(name + " task", e)
                raise

        return orig(self, name, traced())

    app_mod.App._guard = guard


class _Steps(mc.Timed):
    """Times each step of one task into NET_STEPS[name]; keeps no reference once done (the
    stepping itself is mp_common.Timed's)."""

    def __init__(self, rec, coro):
        self.r = rec
        self.c = coro

    def _done(self, t0):
        d = time.ticks_diff(time.ticks_us(), t0)
        r = self.r
        r[1] += 1
        if d > r[2]:
            r[2] = d
        if d >= 5000:
            r[3] += 1


def time_new_tasks():
    """From now on every asyncio task is timed step by step, by its coroutine's name."""
    create = asyncio.create_task

    def timed(coro):
        name = str(coro)
        i = name.find("'")
        if i >= 0:
            name = name[i + 1 : name.find("'", i + 1)]
        rec = NET_STEPS.get(name)
        if rec is None:
            rec = NET_STEPS[name] = [0, 0, 0, 0]
        rec[0] += 1
        return create(_Steps(rec, coro))

    asyncio.create_task = timed


def net_tasks_report():
    return {
        k: {"n": v[0], "steps": v[1], "max_us": v[2], "slow": v[3]} for k, v in NET_STEPS.items()
    }


class Ticker:
    """A 10 ms sleep loop: the longest real gap between two wake-ups, and the heap samples."""

    def __init__(self, every):
        self.on = True
        self.every = every
        self.max_us = 0
        self.max_at_ms = 0  # real ms since the start of the ticker
        self.ticks = 0
        self.hist = [0, 0, 0, 0, 0, 0]  # hold (gap - 10 ms): <1, 1-2, 2-5, 5-10, 10-20, >=20 ms
        self.peak = 0
        self.peak_at_ms = 0
        self.samples = 0
        self.min_free = 1 << 30
        self.phase = "boot"
        self.by_phase = {}  # phase -> [longest gap us, peak heap]

    def sample(self):
        gc.collect()
        a = gc.mem_alloc()
        f = gc.mem_free()
        self.samples += 1
        if a > self.peak:
            self.peak = a
            self.peak_at_ms = time.ticks_diff(time.ticks_ms(), self.t0)
        if f < self.min_free:
            self.min_free = f
        p = self.by_phase.get(self.phase)
        if p is None:
            p = self.by_phase[self.phase] = [0, 0]
        if a > p[1]:
            p[1] = a
        return a

    async def run(self):
        self.t0 = time.ticks_ms()
        hist = self.hist
        last = time.ticks_us()
        while self.on:
            await asyncio.sleep_ms(10)
            now = time.ticks_us()
            gap = time.ticks_diff(now, last)
            self.ticks += 1
            if gap > self.max_us:
                self.max_us = gap
                self.max_at_ms = time.ticks_diff(time.ticks_ms(), self.t0)
            p = self.by_phase.get(self.phase)
            if p is None:
                p = self.by_phase[self.phase] = [0, 0]
            if gap > p[0]:
                p[0] = gap
            h = gap - 10000
            if h < 1000:
                hist[0] += 1
            elif h < 2000:
                hist[1] += 1
            elif h < 5000:
                hist[2] += 1
            elif h < 10000:
                hist[3] += 1
            elif h < 20000:
                hist[4] += 1
            else:
                hist[5] += 1
            if self.ticks % self.every == 0:
                self.sample()
                last = time.ticks_us()  # the bench's own collection is not a hold
            else:
                last = now

    def report(self):
        return {
            "max_gap_us": self.max_us,
            "max_at_ms": self.max_at_ms,
            "ticks": self.ticks,
            "hist": self.hist,
            "peak": self.peak,
            "peak_at_ms": self.peak_at_ms,
            "samples": self.samples,
            "min_free": self.min_free,
            "by_phase": self.by_phase,
        }


def vm():
    """VmRSS and VmHWM of this process in KB (Linux): what C code allocates outside the GC
    heap (mbedtls's TLS buffers on the unix port) shows here and not in gc.mem_alloc()."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:") or line.startswith("VmHWM:"):
                    out[line[:5]] = int(line.split()[1])
    except OSError:
        pass
    return out


def day_plan(day0_utc, d, rnd):
    """[(utc ms, action)] for day d: mp_day's citizen, without refills, service or mains."""
    base = (day0_utc + d * 86400) * 1000
    acts = []

    def at(hh, mm, extra_s, what):
        acts.append((base + (hh * 3600 + mm * 60) * 1000 + int(extra_s * 1000), what))

    if rnd.random() > 0.1:
        at(8, 0, rnd.random() * 25 * 60, "press")  # morgen
    if rnd.random() > 0.1:
        at(11, 40, rnd.random() * 40 * 60, "take")  # middag: out of the open compartment
    if rnd.random() > 0.1:
        at(18, 0, rnd.random() * 50 * 60, "press")  # aften
    at(21, 1, rnd.random() * 14 * 60, "press")  # the eye drops
    if rnd.random() > 0.3:
        at(22, 0, rnd.random() * 30 * 60, "press")  # nat
    at(14, 0, rnd.random() * 120 * 60, "hold")  # as needed
    acts.sort(key=lambda x: x[0])
    return acts


def main():
    import random

    a = mc.args()
    state = a["state"]
    start = int(a["start"])
    end = int(a["end"])
    day0 = int(a.get("day0", str(start)))
    net_kind = a.get("net", "none")
    drain = float(a.get("drain", "20"))
    random.seed(int(a.get("seed", "1")))
    gc.collect()
    out = {"net": net_kind, "heap_at_entry": gc.mem_alloc()}
    tick = Ticker(int(a.get("sample_every", "10")))
    sim = mc.Sim(state, start, 0, log_max=int(a.get("log_max", "100")))
    clock = sim.clock
    clock.pace = int(a.get("pace", "0"))  # paced warp (sim/serve.py): virtual = real x pace
    board = sim.board
    trace_app_tasks()
    mc.time_app_tasks(clock)
    holder = {}

    async def run():
        asyncio.create_task(tick.run())
        app = sim.start(extra_tasks=1)  # this driver waits through the clock
        holder["app"] = app
        if net_kind != "none":
            from dispenser.net import Net
            from dosiscore import VERSION

            patch_uplink()
            time_new_tasks()
            net = holder["net"] = Net(
                board, sim.store, board.device_id(), VERSION, app, app.log, a.get("sched")
            )
            net.start()
        await clock.sleep(2)  # boot settles: carousel recovered, first screen drawn
        out["after_boot"] = tick.sample()
        out["vm_after_boot"] = vm()
        tick.phase = "span"
        t_span = time.ticks_ms()
        d = (start - day0) // 86400
        while (day0 + d * 86400) < end:
            for t, what in day_plan(day0, d, random):
                if t < (start + 2) * 1000:
                    continue
                if t >= end * 1000:
                    break
                await mc.sleep_until(clock, t)
                await act(what)
            d += 1
        await mc.sleep_until(clock, end * 1000)
        out["span_wall_s"] = time.ticks_diff(time.ticks_ms(), t_span) / 1000
        out["at_span_end"] = log_stats(app)
        # The simulated span is over: the app's clock stops, the uplink catches up.
        sim.stop()
        tick.phase = "drain"
        t_d = time.ticks_ms()
        net = holder.get("net")
        while net is not None and time.ticks_diff(time.ticks_ms(), t_d) < drain * 1000:
            s = app.log.stats()
            if s["acked"] >= s["durable"]:
                break
            await asyncio.sleep_ms(100)
        out["drain_wall_s"] = time.ticks_diff(time.ticks_ms(), t_d) / 1000
        out["final"] = tick.sample()
        tick.on = False

    async def act(what):
        if what == "take":
            board.motor.take()
        elif what == "press":
            await board.press(board.btn_taken, 0.3)
        elif what == "hold":
            await board.press(board.btn_taken, 3)

    def log_stats(app):
        log = getattr(app, "log", None)
        s = log.stats() if log is not None else {}
        return {"durable": s.get("durable"), "acked": s.get("acked")}

    t0 = time.ticks_ms()
    try:
        asyncio.run(run())
    except MemoryError as e:
        gc.collect()
        out["memory_error"] = str(e) or "MemoryError"
        out["heap_at_error"] = gc.mem_alloc()
        out["trace"] = _trace(e)
    out["wall_s"] = time.ticks_diff(time.ticks_ms(), t0) / 1000
    out["vm_end"] = vm()
    app = holder.get("app")
    if app is not None:
        out["log"] = log_stats(app)
        out["faults"] = list(app.faults)
    net = holder.get("net")
    if net is not None and net.uplink is not None:
        out["uplink"] = net.uplink.stats()
    out["uplink_errors"] = ERRORS
    out["memory_traces"] = TRACES
    out["ticker"] = tick.report()
    out["app_tasks"] = mc.timed_report()
    out["net_tasks"] = net_tasks_report()
    out["events"] = sim.kinds
    out["crashes"] = sim.crashes
    out["modules"] = sorted(k for k in sys.modules)
    mc.result(out)


main()
