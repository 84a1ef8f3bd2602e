"""dispenser.uplink against a real broker, on the MicroPython unix port (run by
tests/host/test_uplink.py):

    micropython uplink_probe.py PORT LOGDIR N INTERVAL_MS RESEND_S BACKOFF_LO BACKOFF_HI [UKEY]

Opens a DoseLog in LOGDIR (an existing directory), appends N records (all at once if
INTERVAL_MS is 0, else one every INTERVAL_MS, kicking the uplink each time) and runs the uplink
for device "probe" with a 10 ms stand-in for the dose loop beside it. Every 200 ms it prints

    stats DURABLE ACKED CONNECTS PUBLISHED REJECTED RESENDS GAP

(GAP: the longest ms the loop was held) until the test kills it.
"""

# MicroPython: `%` is its formatting.
# ruff: noqa: UP031

import asyncio
import sys

from looptick import Ticker

from dispenser.doselog import DoseLog, OsFS
from dispenser.uplink import Uplink, client_factory
from dosiscore import logrec

PORT = int(sys.argv[1])
LOGDIR = sys.argv[2]
N = int(sys.argv[3])
INTERVAL = int(sys.argv[4])
RESEND = float(sys.argv[5])
BACKOFF = (float(sys.argv[6]), float(sys.argv[7]))
UKEY = bytes.fromhex(sys.argv[8]) if len(sys.argv) > 8 else None  # signed (v2) if given
T0 = 1767225600
TICK = Ticker()  # the 10 ms stand-in for the dose loop


class Ticks:
    # The log's sync-budget clock: 2 minutes a read, so every append is flushed (durable).
    def __init__(self):
        self.ms = 0

    def __call__(self):
        self.ms += 120000
        return self.ms


async def appender(log, up):
    for i in range(N):
        log.append(T0 + i, logrec.DUE, T0 + 3600, i % 12, i)
        if INTERVAL:
            up.kick()
            await asyncio.sleep_ms(INTERVAL)
    up.kick()


async def main():
    log = DoseLog(OsFS(LOGDIR), "log", ticks_ms=Ticks())
    log.recover(T0)
    up = Uplink(
        client_factory("127.0.0.1", PORT, "probe", keepalive=5),
        log,
        "probe",
        window=4,
        batch=8,
        backoff=BACKOFF,
        timeout=2,
        resend_after=RESEND,
        ukey=UKEY,
    )
    if not INTERVAL:
        await appender(log, up)
    asyncio.create_task(TICK.run())
    asyncio.create_task(up.run())
    if INTERVAL:
        asyncio.create_task(appender(log, up))
    while True:
        await asyncio.sleep_ms(200)
        s = log.stats()
        u = up.stats()
        print(
            "stats",
            s["durable"],
            s["acked"],
            u["connects"],
            u["published"],
            u["rejected"],
            u["resends"],
            TICK.gap,
        )


asyncio.run(main())
