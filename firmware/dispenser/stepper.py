"""28BYJ-48 on a ULN2003: half-step the carousel forward, never back; coils off at rest.

The driver receives the four coil pins (IN1..IN4, anything with `.value(v)`); the board builds
them. It only ever steps forward: the carousel must never turn back (that would re-expose a
taken dose, or a missed one that is locked away), so there is no direction argument at all.

Half-step mode: eight coil patterns per electrical cycle, each differing from the one before
in exactly one coil, so the rotor is never pulled two half-steps at once. 4096 half-steps turn
the output shaft once (64:1 gearbox); the carousel knows that number, the stepper does not.

The loop is never held: on the device every half-step awaits `delay_ms` (2 ms: about 8 s per
turn, well inside the motor's pull-in rate at 5 V); with `delay_ms == 0` (the simulator, whose
motor needs no time) it yields every 64 half-steps, far below the 20 ms budget per coroutine.
No allocation happens inside the step loop: the pattern table is a `bytes` constant, the pins
are unpacked once, and the per-step check is a callable the caller built once.
"""

import asyncio

try:
    from micropython import const  # pyright: ignore[reportAssignmentType]
except ImportError:  # CPython (host tests)

    def const(x):
        return x


def _sleep_ms_cpython(ms):
    return asyncio.sleep(ms / 1000)


# MicroPython's asyncio has sleep_ms; CPython's (host tests) does not. The carousel uses it too.
sleep_ms = getattr(asyncio, "sleep_ms", None) or _sleep_ms_cpython


# IN1, IN1+IN2, IN2, IN2+IN3, IN3, IN3+IN4, IN4, IN4+IN1 (bit 0 = IN1 ... bit 3 = IN4).
SEQ = b"\x01\x03\x02\x06\x04\x0c\x08\x09"
_SIM_BATCH = const(64)  # half-steps between yields when there is no step delay (simulator)


class Stepper:
    """Forward-only half-step driver. `phase` is the index in SEQ last energised (0..7)."""

    def __init__(self, coils, delay_ms=2):
        if len(coils) != 4:
            raise ValueError("4 coil pins (IN1..IN4) expected")
        self._a, self._b, self._c, self._d = coils
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self.delay_ms = delay_ms
        # The rotor rests aligned with the last pattern energised before release, so a
        # caller that knows it (the carousel keeps it in its journal) sets `phase` after a
        # restart; the next step then pulls the rotor exactly one half-step forward.
        self.phase = 0
        self._n = 0  # half-steps made (mod 65536): the simulator's yield cadence spans calls
        self.release()

    async def step(self, n, until=None):
        """Turn `n` half-steps forward; return how many were made.

        After each half-step (and its delay, so the rotor has moved) `until()` is called if
        given: a true result stops early. Anything it raises stops the motor too (the coils
        stay as they are: the caller releases them, in a `finally`). Pass a callable built
        once (e.g. a bound method stored in `__init__`), not a lambda per call.
        """
        a = self._a
        b = self._b
        c = self._c
        d = self._d
        seq = SEQ
        delay = self.delay_ms
        ph = self.phase
        k = self._n
        i = 0
        while i < n:
            ph = (ph + 1) & 7
            p = seq[ph]
            # One coil changes per half-step; writing all four keeps the order fixed
            # (IN1..IN4), which the simulator relies on, and costs nothing measurable.
            a.value(p & 1)
            b.value((p >> 1) & 1)
            c.value((p >> 2) & 1)
            d.value(p >> 3)
            self.phase = ph
            i += 1
            k = (k + 1) & 0xFFFF  # wraps at a multiple of the batch, stays a small int
            self._n = k
            if delay:
                await sleep_ms(delay)
            elif not k % _SIM_BATCH:
                await sleep_ms(0)
            if until is not None and until():
                break
        return i

    def release(self):
        """De-energise every coil: no holding torque, no heat, no current drawn at rest."""
        self._a.value(0)
        self._b.value(0)
        self._c.value(0)
        self._d.value(0)
