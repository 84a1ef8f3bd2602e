"""The host's own noise (MicroPython): the loop monitor with no firmware at all, for comparison.

    micropython -m mp_noise seconds=5

Runs only `mp_common.Monitor` (a task looping on sleep_ms(0)) for the given real time: every
gap it sees is the interpreter, the garbage collector or the host taking the CPU away.
"""

import asyncio
import time

import mp_common as mc


class _Wall:
    def ticks_ms(self):
        return time.ticks_ms()


def main():
    secs = float(mc.args().get("seconds", "5"))
    mon = mc.Monitor(_Wall())

    async def run():
        task = asyncio.create_task(mon.run())
        await asyncio.sleep_ms(int(secs * 1000))
        mon.on = False
        await task

    asyncio.run(run())
    mc.result({"monitor": mon.report()})


main()
