"""Simulated carousel hardware (unix port and host tests): pins, the stepper motor, home, beam.

`SimMotor` models what the firmware cannot see directly: a rotor whose electrical phase follows
the ULN2003 coil pattern, and a carousel (its mechanical position, in half-steps) that the rotor
turns, unless it is jammed or slipping. The home sensor and the beam are computed from that
position, so the carousel driver is tested against physics, not against its own arithmetic.

Conventions (the carousel's, see dispenser/carousel.py): position 0 is the home edge, the flag
covers positions 0 .. flag_width-1 (home reads 0 there, 1 elsewhere), compartment k is centred
under the opening at (2k-1) * steps_per_rev / (2 * compartments) (rounded half up), and the
closed position after compartment k at 2k * steps_per_rev / (2 * compartments).
"""

import random

IRQ_RISING = 1  # the ESP32 port's values for machine.Pin.IRQ_RISING / IRQ_FALLING
IRQ_FALLING = 2

# Coil pattern (bit 0 = IN1 .. bit 3 = IN4) -> rotor electrical position in half-steps
# (0..7), 0xFF for patterns that do not hold the rotor at one place (none, opposite coils, 3+).
# IN1 and IN3 are the two halves of one winding, IN2 and IN4 of the other: this table is the
# motor's physics, written independently of the stepper driver's sequence so the tests check it.
_PHASE = b"\xff\x00\x02\x01\x04\xff\x03\xff\x06\x07\xff\xff\x05\xff\xff\xff"
_KEEP = 64  # recorded moves and exposures kept (the newest), so a 30-day simulation stays small


class SimPin:
    """A GPIO-like pin: `value()` / `value(v)`, `pin()`, `on()` / `off()` and `irq()`.

    Setting a value that changes the level calls the handler if the trigger asks for that
    edge, synchronously (a test then sees the handler's flag at once).
    """

    IRQ_RISING = IRQ_RISING
    IRQ_FALLING = IRQ_FALLING

    def __init__(self, value=0):
        self._v = 1 if value else 0
        self._handler = None
        self._trigger = 0

    def value(self, v=None):
        if v is None:
            return self._v
        v = 1 if v else 0
        if v != self._v:
            self._v = v
            h = self._handler
            if h is not None and self._trigger & (IRQ_RISING if v else IRQ_FALLING):
                h(self)
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=IRQ_RISING | IRQ_FALLING):
        self._handler = handler
        self._trigger = trigger if handler is not None else 0
        return None


class _Coil:
    """One ULN2003 input. Cheap on purpose: the stepper writes four of these per half-step.

    The motor samples the pattern when IN4 is written (the stepper writes IN1..IN4 in that
    order), so the microseconds between the four writes never count as a pattern.
    """

    def __init__(self, motor, mask, latch):
        self._m = motor
        self._mask = mask
        self._latch = latch

    def value(self, v=None):
        m = self._m
        if v is None:
            return 1 if m.bits & self._mask else 0
        if v:
            m.bits |= self._mask
        else:
            m.bits &= ~self._mask
        if self._latch:
            m._sample()
        return None

    def __call__(self, v=None):
        return self.value(v)


class _Sensor(SimPin):
    """An input whose level the motor computes (home, beam); `value(v)` is not for the firmware."""

    def __init__(self, read):
        super().__init__(1)
        self._read = read
        self._v = read()

    def value(self, v=None):
        if v is not None:
            raise ValueError("input pin")
        return self._read()

    def _changed(self):
        # The motor calls this after anything that may move the level; edges reach the handler.
        v = self._read()
        if v != self._v:
            self._v = v
            h = self._handler
            if h is not None and self._trigger & (IRQ_RISING if v else IRQ_FALLING):
                h(self)


class SimMotor:
    """28BYJ-48 + carousel. Injections: `jam()`, `unjam()`, `drop(n)`, `home_stuck`, the beam.

    Counters: `steps` (forward half-steps of the carousel), `back` (backward ones), `misses`
    (patterns the rotor could not follow: a jump of 2+ half-steps or an invalid pattern),
    `lost` (coil steps that did not turn the carousel: jammed or dropped). `moves` holds
    (start, end) absolute positions of each energised run, ended by a release; `exposed` the
    compartments whose centre passed under the opening, in order (the newest 64 of each).
    """

    def __init__(self, steps_per_rev=4096, flag_width=40, start_pos=None, compartments=28):
        self.spr = steps_per_rev
        self.flag_width = flag_width
        self.compartments = compartments
        if start_pos is None:
            start_pos = random.randrange(steps_per_rev)
        self.pos = start_pos  # absolute half-steps, never reduced: angle() reduces it
        self.phase = 0  # rotor electrical position 0..7 (a fresh Stepper starts at 0 too)
        self.bits = 0
        self.coils = (
            _Coil(self, 1, False),
            _Coil(self, 2, False),
            _Coil(self, 4, False),
            _Coil(self, 8, True),
        )
        self.steps = 0
        self.back = 0
        self.misses = 0
        self.lost = 0
        self.moves = []
        self.exposed = []
        self._run_start = None
        self.jammed = False
        self._drop = 0
        self.home_stuck = None  # None: works; 0: reads dark (dirty); 1: reads clear (dead)
        self.beam_broken = False  # a hand (or anything) in the beam, set by tests
        self.loaded = bytearray(compartments + 1)  # loaded[k]: pills in compartment k
        self.home = _Sensor(self._home_value)
        self.beam = _Sensor(self._beam_value)

    # -- what the firmware sees --------------------------------------------------------------

    def _home_value(self):
        if self.home_stuck is not None:
            return self.home_stuck
        return 0 if self.pos % self.spr < self.flag_width else 1

    def _beam_value(self):
        # Broken by a hand, or by pills in the compartment under the opening.
        if self.beam_broken:
            return 0
        k = self.opening()
        return 0 if k and self.loaded[k] else 1

    def _sample(self):
        bits = self.bits
        if not bits:  # released: no torque, the gearbox holds the carousel where it is
            if self._run_start is not None:
                self._keep(self.moves, (self._run_start, self.pos))
                self._run_start = None
            return
        if self._run_start is None:
            self._run_start = self.pos
        ph = _PHASE[bits]
        if ph == 0xFF:
            self.misses += 1
            return
        d = (ph - self.phase) & 7
        if d == 0:
            return
        if d != 1 and d != 7:
            self.misses += 1  # too far to be pulled reliably: the rotor stays
            return
        self.phase = ph
        if self.jammed or self._drop:
            # The rotor turns but the carousel does not (stalled or slipping on the shaft).
            self.lost += 1
            if self._drop:
                self._drop -= 1
            return
        if d == 1:
            self.pos += 1
            self.steps += 1
            k = self._centre()
            if k:
                self._keep(self.exposed, k)
        else:
            self.pos -= 1
            self.back += 1
        if self.home._handler is not None:  # edges only matter to a registered handler
            self.home._changed()
        if self.beam._handler is not None:
            self.beam._changed()

    def _keep(self, lst, item):
        lst.append(item)
        if len(lst) > _KEEP:
            lst.pop(0)

    def _centre(self):
        """The compartment whose centre is exactly under the opening now, else 0."""
        slots = 2 * self.compartments
        a = self.pos % self.spr
        s = (a * slots + self.spr // 2) // self.spr
        if s & 1 and (s * self.spr + self.compartments) // slots == a:
            return (s + 1) // 2
        return 0

    # -- what tests and the simulated board look at ------------------------------------------

    def angle(self):
        """Position within the turn, in half-steps after the home edge."""
        return self.pos % self.spr

    def opening(self):
        """The compartment under the opening (nearest slot is a compartment), else 0 (closed)."""
        slots = 2 * self.compartments
        s = (self.angle() * slots + self.spr // 2) // self.spr % slots
        return (s + 1) // 2 if s & 1 else 0

    def coils_energised(self):
        return self.bits != 0

    def state(self):
        """What survives a power cut (the carousel does not move): feed it to a new SimMotor."""
        return {"pos": self.pos, "phase": self.phase}

    def restore(self, state):
        self.pos = state["pos"]
        self.phase = state["phase"]

    # -- injections ---------------------------------------------------------------------------

    def jam(self):
        self.jammed = True

    def unjam(self):
        self.jammed = False

    def drop(self, n):
        """The next `n` half-steps turn the rotor but not the carousel (lost steps)."""
        self._drop += n

    def stick_home(self, level):
        """Home sensor stuck at `level` (0: dark, dirty; 1: clear, dead); None: working again."""
        self.home_stuck = level
        self.home._changed()

    def break_beam(self, on=True):
        self.beam_broken = bool(on)
        self.beam._changed()

    def load(self, *ks):
        for k in ks:
            self.loaded[k] = 1
        self.beam._changed()

    def take(self):
        """A hand empties the compartment under the opening (if any); returns it."""
        k = self.opening()
        if k:
            self.loaded[k] = 0
            self.beam._changed()
        return k
