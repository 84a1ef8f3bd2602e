"""The MicroPython probes' stand-in for the dose loop: a 10 ms sleep loop that keeps the
longest gap between two of its wake-ups, i.e. how long something else held the event loop.

    tick = Ticker(); asyncio.create_task(tick.run()); ...; print("gap", tick.gap)

`window()` starts a second measure (`window_gap`) for one stretch, e.g. a TLS connect.
"""

import asyncio
from time import ticks_diff, ticks_ms


class Ticker:
    def __init__(self):
        self.gap = 0  # longest ms between two wake-ups (10 when nothing held the loop)
        self.window_gap = 0
        self.in_window = False
        self.running = True

    def window(self):
        self.window_gap = 0
        self.in_window = True

    async def run(self):
        last = ticks_ms()
        while self.running:
            await asyncio.sleep_ms(10)
            now = ticks_ms()
            d = ticks_diff(now, last)
            if d > self.gap:
                self.gap = d
            if self.in_window and d > self.window_gap:
                self.window_gap = d
            last = now
