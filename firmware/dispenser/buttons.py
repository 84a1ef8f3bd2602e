"""The two buttons: interrupt handlers only set a flag; a task debounces and times presses.

A short press of the big button confirms a dose ("taken"); holding it for 2 s or more asks for
an as-needed (PRN) dose. The small service button is reported as its own input.
"""

from micropython import const

_IRQ_FALLING = const(2)  # machine.Pin.IRQ_FALLING on the ESP32 (and on the simulated pins)
_DEBOUNCE_S = 0.03
LONG_S = 2.0
_POLL_S = 0.05  # while held: how often the level is sampled to time the press
_MAX_HOLD_S = 30  # a button stuck down is reported, not waited on forever


class Buttons:
    """Edge flags from the pins' IRQs; `next_press()` yields ("taken"|"prn"|"service"|"stuck")."""

    def __init__(self, taken_pin, service_pin, clock, flag):
        self.taken_pin = taken_pin
        self.service_pin = service_pin
        self.clock = clock
        self.flag = flag  # ThreadSafeFlag on the device, an Event on the simulator
        self.presses = 0
        trig = _IRQ_FALLING
        try:
            taken_pin.irq(handler=self._isr, trigger=trig)
            service_pin.irq(handler=self._isr, trigger=trig)
        except AttributeError:
            pass

    def _isr(self, _pin):
        # Runs in interrupt context: set a flag, nothing else (no allocation, no logging).
        self.flag.set()

    async def _held_for(self, pin):
        # Measured on the clock, not by counting polls: a slow loop must not turn a 2 s hold
        # into a short press.
        t0 = self.clock.ticks_ms()
        held = 0.0
        while pin.value() == 0 and held < _MAX_HOLD_S:
            await self.clock.sleep(_POLL_S)
            held = (self.clock.ticks_ms() - t0) / 1000
        return held

    async def next_press(self):
        """Wait for the next debounced press and classify it."""
        while True:
            await self.clock.wait(self.flag, None)
            if hasattr(self.flag, "clear"):
                self.flag.clear()
            await self.clock.sleep(_DEBOUNCE_S)
            if self.taken_pin.value() == 0:
                held = _DEBOUNCE_S + await self._held_for(self.taken_pin)
                self.presses += 1
                if held >= _MAX_HOLD_S:
                    return "stuck"
                return "prn" if held >= LONG_S else "taken"
            if self.service_pin.value() == 0:
                held = await self._held_for(self.service_pin)
                self.presses += 1
                return "stuck" if held >= _MAX_HOLD_S else "service"
