"""Heap cost of the firmware once loaded (MicroPython): each module, the board, the boot.

    micropython -X heapsize=... -m mp_imports state=DIR start=UTC mod1 mod2 ...

Imports the given modules one at a time, measuring gc.mem_alloc() after gc.collect() around
each (what a module imports itself is charged to it and named); then builds the simulated
board, boots the firmware (runtime.start) on a warp clock and runs it for a simulated hour.
Each step is printed as soon as it is measured ("ROW name bytes allocated-after new-modules"),
so a run that runs out of memory (the point, at 128 KB) still says how far it got and what
was loaded by then; the failure itself is printed as "ERROR step message".
"""

import gc
import sys

_reserve = bytearray(4096)  # freed on MemoryError, so there is room left to report it


def _alloc():
    gc.collect()
    return gc.mem_alloc()


def _row(name, nbytes, new):
    print("ROW", name, nbytes, _alloc(), ",".join(new) or "-")


def main():
    global _reserve
    opts = {}
    mods = []
    for a in sys.argv[1:]:
        if "=" in a:
            k, _, v = a.partition("=")
            opts[k] = v
        else:
            mods.append(a)
    gc.collect()
    print("HEAP", gc.mem_alloc() + gc.mem_free(), _alloc())
    where = [""]  # the step being measured (a list: the boot coroutine updates it too)
    try:
        for m in mods:
            where[0] = m
            before = list(sys.modules)
            a0 = _alloc()
            __import__(m)
            _row(m, _alloc() - a0, [k for k in sys.modules if k not in before and k != m])
        where[0] = "(harness)"
        a0 = _alloc()
        import asyncio

        import mp_common as mc

        _row(where[0], _alloc() - a0, [])
        where[0] = "(board)"
        a0 = _alloc()
        sim = mc.Sim(opts["state"], int(opts["start"]), 0, log_max=100)
        _row(where[0], _alloc() - a0, [])

        async def run():
            where[0] = "(boot)"
            a0 = _alloc()
            before = list(sys.modules)
            sim.start(extra_tasks=1)
            _row(where[0], _alloc() - a0, [k for k in sys.modules if k not in before])
            where[0] = "(first-hour)"
            a0 = _alloc()
            await sim.clock.sleep(3600)
            _row(where[0], _alloc() - a0, [])
            sim.stop()

        asyncio.run(run())
        print("DONE", _alloc())
    except MemoryError as e:
        _reserve = None
        gc.collect()
        print("ERROR", where[0], e)
        sys.print_exception(e, sys.stdout)
        print("DONE", _alloc())


main()
