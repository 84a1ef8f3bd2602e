"""Planner benchmark: next_due and one year of occurrences for 6 doses a day.

Run under the MicroPython unix port (what the device runs) with `make bench`, or directly:
    MICROPYPATH=firmware .venv/bin/micropython bench/bench_planner.py
It also runs under CPython (PYTHONPATH=firmware python3 bench/bench_planner.py) for a ratio.
Prints one line per figure; bench/RESULTS.md records them.
"""

import gc
import sys
import time

gc.collect()
_heap0 = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0  # type: ignore[attr-defined]
from dosiscore import civil, planner, tz  # noqa: E402  (the running set of the device)

gc.collect()
_heap1 = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0  # type: ignore[attr-defined]
from dosiscore import schedule  # noqa: E402  (validation: only when a schedule arrives)

gc.collect()
_heap2 = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0  # type: ignore[attr-defined]

try:
    _ticks_us = time.ticks_us  # type: ignore[attr-defined]
    _diff = time.ticks_diff  # type: ignore[attr-defined]
except AttributeError:  # CPython

    def _ticks_us():
        return int(time.perf_counter() * 1e6)

    def _diff(a, b):
        return a - b


SIX = [
    ("t%d" % i, t) for i, t in enumerate(("07:00", "10:00", "13:00", "16:00", "19:00", "22:00"))
]
DOC = {
    "schema": 1,
    "citizen": "bench",
    "start": "2026-01-01",
    "alerts": {"early_min": 30, "late_lock_min": 90},
    "dose": [{"id": i, "time": t, "items": ["Metformin 500 mg"]} for i, t in SIX],
}


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    impl = sys.implementation.name
    if _heap0:
        print(
            "%s heap after import: civil+tz+planner %d B, + schedule %d B"
            % (impl, _heap1 - _heap0, _heap2 - _heap0)
        )
    assert tz  # imported above to measure it
    norm = schedule.validate(DOC)
    plan = planner.Plan(norm)
    base = civil.days_from_civil(2026, 3, 29) * civil.DAY  # a DST day, the hardest case

    # next_due from a compiled Plan (what every ordinary wake-up costs) and from the schedule
    # dict (a Plan built on each call: after a schedule change), interleaved at the same
    # 500 instants spread over 10 days from a DST day.
    samples_fresh, samples_plan = [], []
    for i in range(500):
        now = base + i * 1733
        gc.collect()  # keep collector pauses out of both samples alike
        t0 = _ticks_us()
        planner.next_due(plan, now)
        t1 = _ticks_us()
        planner.next_due(norm, now)
        t2 = _ticks_us()
        samples_plan.append(_diff(t1, t0))
        samples_fresh.append(_diff(t2, t1))
    print(
        "%s next_due (compiled plan): median %d us, max %d us"
        % (impl, _median(samples_plan), max(samples_plan))
    )
    print(
        "%s next_due (from schedule dict): median %d us, max %d us"
        % (impl, _median(samples_fresh), max(samples_fresh))
    )

    year0 = civil.days_from_civil(2026, 1, 1) * civil.DAY
    for days, label in ((1, "1 day"), (7, "7 days"), (365, "1 year")):
        runs = []
        n = 0
        try:
            for _ in range(5):
                gc.collect()
                t0 = _ticks_us()
                occ = planner.occurrences(plan, year0, year0 + days * civil.DAY)
                runs.append(_diff(_ticks_us(), t0))
                n = len(occ)
                del occ
        except MemoryError:
            print("%s occurrences(%s): does not fit this heap" % (impl, label))
            continue
        print(
            "%s occurrences(%s, 6 doses/day) = %d items: median %d us"
            % (impl, label, n, _median(runs))
        )

    t0 = _ticks_us()
    for _ in range(20):
        schedule.validate(DOC)
    print("%s validate (6 doses): %d us each" % (impl, _diff(_ticks_us(), t0) // 20))
    gc.collect()
    if hasattr(gc, "mem_free"):
        print("%s heap free at the end: %d B" % (impl, gc.mem_free()))  # type: ignore


main()
