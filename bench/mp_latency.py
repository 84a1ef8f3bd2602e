"""Alert latency bench (MicroPython): each dose's instant to the buzzer's first non-zero duty.

    micropython -m mp_latency state=DIR start=UTC doses=N speed=S [seed=1] [press=0.8]
        [delay_min=2] [delay_max=30] [inject=pin|task] [validate=1] [end_after=S] [log_max=N]

The schedule is DIR/bench-schedule.json, written by bench_firmware.py; `validate=0` loads it
without validation (the speed-1 run's doses one minute apart, closer than validation allows).
After each dose's instant the citizen either
confirms with the big button after a random 2..30 s (fraction `press`), or does nothing and the
dose beeps until its late lock. `inject=pin` presses the real button pin (debounce and hold
timing included); `inject=task` hands "taken" straight to the App's buttons task, for scaled
clocks so fast that the buttons' 30 ms and 50 ms waits round to 0 ms and would never yield.

Measured: `virt_ms` (latency on the firmware's own clock, in virtual ms) and, on a scaled
clock, `real_us` (the same in real microseconds: the dose's virtual instant mapped to real time
through the clock's start, against ticks_us at the duty change).
"""

import asyncio
import random
import time

import mp_common as mc

from dosiscore import planner


class Probe:
    """Wraps the board's buzzer: at each 0 -> non-zero duty, the latency of the latest instant
    not yet answered (each dose counts once: its first tone)."""

    def __init__(self, sim, instants):
        self.sim = sim
        self.inst = instants
        self.k = -1  # latest instant reached
        self.answered = -1
        self.virt = []  # virtual ms, in dose order
        self.real = []  # real us (scaled clock only)
        self.which = []  # dose index of each latency
        self.buzzer = sim.board.buzzer
        self.orig = self.buzzer.duty_u16
        self.buzzer.duty_u16 = self.duty  # Alerts calls board.buzzer.duty_u16: this instance

    def duty(self, d=None):
        if d and not self.buzzer.duty:
            self.on(time.ticks_us())
        return self.orig(d)

    def on(self, us):
        clock = self.sim.clock
        v = clock.ticks_ms()
        inst = self.inst
        k = self.k
        while k + 1 < len(inst) and mc.vtick_of(clock, inst[k + 1]) <= v:
            k += 1
        self.k = k
        if k >= 0 and k > self.answered:
            self.answered = k
            t = mc.vtick_of(clock, inst[k])
            self.virt.append(v - t)
            self.which.append(k)
            if self.sim.speed:
                self.real.append(time.ticks_diff(us, self.sim.real_us_of_tick(t)))


def main():
    a = mc.args()
    state = a["state"]
    start = int(a["start"])
    n = int(a["doses"])
    speed = int(a.get("speed", "0"))
    random.seed(int(a.get("seed", "1")))
    press_frac = float(a.get("press", "0.8"))
    dmin = float(a.get("delay_min", "2"))
    dmax = float(a.get("delay_max", "30"))
    inject = a.get("inject", "pin")
    end_after = a.get("end_after")
    validate = a.get("validate", "1") == "1"
    log_max = int(a.get("log_max", "100"))
    sim = mc.Sim(state, start, speed, validate=validate, log_max=log_max)
    clock = sim.clock
    board = sim.board
    out = {}

    async def run():
        app = sim.start(extra_tasks=1)
        presses = asyncio.Event()
        if inject == "task":

            async def next_press():
                await clock.wait(presses, None)
                presses.clear()
                return "taken"

            app.buttons.next_press = next_press  # the buttons task calls self.buttons.next_press
        await clock.sleep(1)  # boot settles (carousel recovered, first screen drawn)
        # The n doses after that (a dose whose instant passed during the boot would not be
        # an alert-latency sample: the firmware ignores doses from before its first boot).
        after = mc.now_ms(clock) // 1000 + 1
        span = 3
        while True:
            occ = planner.occurrences(app.doses.plan, after, after + span * 86400)
            if len(occ) >= n:
                break
            span *= 2
        occ = occ[:n]
        inst = [t for t, _ in occ]
        probe = Probe(sim, inst)
        pressed = 0
        refills = 0
        for t in inst:
            delay = dmin + random.random() * (dmax - dmin)
            if random.random() < press_frac:
                await mc.sleep_until(clock, t * 1000 + int(delay * 1000))
                if inject == "task":
                    presses.set()
                    await clock.sleep(0.5)
                else:
                    await board.press(board.btn_taken, 0.3)
                pressed += 1
                if app.doses.doses_left(clock.now()) <= 2:
                    sim.fill()  # the nurse refills: compartment 1 holds the next dose
                    refills += 1
        last = inst[-1]
        if end_after is None:
            end = last + app.doses.dose(occ[n - 1][1])["late_lock_min"] * 60 + 5
        else:
            end = last + int(end_after)
        await mc.sleep_until(clock, end * 1000)
        sim.stop()
        out.update(
            {
                "doses": len(inst),
                "answered": len(probe.virt),
                "virt_ms": probe.virt,
                "real_us": probe.real,
                "which": probe.which,
                "pressed": pressed,
                "refills": refills,
                "speed": speed,
                "inject": inject,
                "events": sim.kinds,
                "crashes": sim.crashes,
                "beeps": app.alerts.beeps,
                "moves": app.moves,
                "faults": list(app.faults),
            }
        )

    t0 = time.ticks_ms()
    asyncio.run(run())
    out["wall_s"] = time.ticks_diff(time.ticks_ms(), t0) / 1000
    mc.result(out)


main()
