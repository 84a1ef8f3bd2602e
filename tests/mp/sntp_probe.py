"""dispenser.sntp with a real dosiscore.timesrc.StepFilter on the MicroPython unix port, run by
tests/host/test_sntp.py:

    micropython sntp_probe.py PORT SKEW ROUNDS TIMEOUT_MS SERVER [SERVER ...]
    micropython sntp_probe.py PORT query - TIMEOUT_MS SERVER

The device clock is the host's time plus SKEW seconds; ROUNDS times, sntp.sync asks every
SERVER (an IP address, all on PORT) and offers each answer to the filter, which steps the
device clock or holds. Lines: "offer ORIGIN OFFSET applied|held" for each answer offered,
"synced N" after each round, "clock D" (device clock minus host time at the end), "fds A B"
(open descriptors before and after), "ms T" (wall time) and "gap G", the longest wait of a
10 ms "dose loop" running alongside. With "query", one sntp.query and "offset D" (its answer
minus the host's time) or "offset None".
"""

# MicroPython: `%` is its formatting.
# ruff: noqa: UP031

import asyncio
import os
import sys
import time
from time import ticks_diff, ticks_ms

from looptick import Ticker

from dispenser import sntp
from dosiscore.timesrc import StepFilter

PORT = int(sys.argv[1])
MODE = sys.argv[2]
TIMEOUT_MS = int(sys.argv[4])
SERVERS = sys.argv[5:]

TICK = Ticker()  # the 10 ms stand-in for the dose loop


def say(*args):
    print(*args)


def fds():
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class Device:
    """The device's clock (host time + skew) and its step filter, as App.offer_time uses them."""

    def __init__(self, skew):
        self.skew = skew
        self.filter = StepFilter()
        self.t0 = ticks_ms()

    def now(self):
        return int(time.time()) + self.skew

    def offer_time(self, utc, source, trusted=False, origin=None):
        cur = self.now()
        mono = ticks_diff(ticks_ms(), self.t0) // 1000
        new = self.filter.offer(cur, utc, mono, source, trusted, origin)
        say("offer", origin, utc - cur, "held" if new is None else "applied")
        if new is None:
            return False
        self.skew += new - cur
        return True


async def run():
    t0 = ticks_ms()
    before = fds()
    if MODE == "query":
        utc = await sntp.query(SERVERS[0], PORT, TIMEOUT_MS)
        say("offset", utc if utc is None else utc - int(time.time()))
    else:
        dev = Device(int(MODE))
        for _ in range(int(sys.argv[3])):
            say("synced", await sntp.sync(dev.offer_time, SERVERS, TIMEOUT_MS, PORT))
        say("clock", dev.now() - int(time.time()))
    say("fds", before, fds())
    say("ms", ticks_diff(ticks_ms(), t0))


async def main():
    task = asyncio.create_task(TICK.run())
    try:
        await run()
    except Exception as e:  # noqa: BLE001  (reported to the test, which fails on it)
        say("error", type(e).__name__, e)
    TICK.running = False
    await task
    say("gap", TICK.gap)


asyncio.run(main())
