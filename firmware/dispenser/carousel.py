"""The carousel: find home, turn forward only to a compartment or to closed, journal every move.

Positions ("slots")
-------------------
A carousel of N compartments (28) under a lid with one opening has 2N slots, numbered 0..2N-1
in the direction of travel from the home edge (the falling edge of the home sensor when turning
forward, i.e. the step at which the flag first darkens it):

    slot 0        closed, just before compartment 1 (at the home edge)
    slot 2k - 1   compartment k under the opening (k = 1..N)       compartment(k)
    slot 2k       closed, just after compartment k (2N is slot 0)   closed_after(k)

Odd = open, even = closed. Slot s lies s * steps_per_rev / 2N half-steps after the home edge,
rounded half up (integer maths, so both interpreters agree). The driver counts half-steps
from the home edge (`position`); a slot is only a name for one of those counts.

Motion
------
Forward only: the stepper has no reverse, so a target behind the current slot is reached by
going round, which passes every compartment in between under the opening. The dose logic
never needs that in normal use (doses go 1, 2, ... 28 and each is closed forward); it happens
only when a new cycle starts after a refill, through compartments that are empty by then.
The coils are de-energised whenever the carousel is at rest (the 64:1 gearbox holds it).

The journal (hazard 5: power cut mid-move)
-------------------------------------------
Before any motion: {"moving": target_slot, "from": slot_or_None, "occ": occ}; after arriving:
{"at": slot, "occ": occ, "ph": stepper_phase}. `occ` is the caller's opaque key of the dose
occurrence the move is for. So at any instant the record says either "at rest at S" or "on the
way, forward, from F to T", and never claims a position that is not certain.

recover() at boot reads it:
- "at" S: trusted (no motion; nothing passes the opening). Cross-check: if the home sensor reads
  dark at a position well away from the flag, the record is not believed and the carousel is
  re-homed as below. The next home-edge pass verifies the count anyway.
- "moving" (power was cut mid-move, or a fault stopped it), no record, or an untrusted one:
  the position is unknown. The carousel re-homes (forward to the home edge) and then parks at a
  closed slot: T itself if T is closed, else the closed slot just before T. It never stops at a
  compartment by itself. The journal is not rewritten until it is parked, so a second cut
  during recovery recovers the same way. The result says what was found, and the dose logic,
  which knows whether occurrence `occ` is still valid, then either opens T with goto() (half a
  compartment further: the dose is not skipped) or leaves it closed (a dose that was being
  closed after being taken or missed is never re-offered).

What the citizen sees, and what the mechanism cannot guarantee: after a cut mid-move the
carousel turns forward to the home edge (less than a turn) and on to the park slot, about 8 s
per turn at 2 ms per half-step. Every compartment passes under the opening, each for about a
third of a second; those between the interrupted move's start and where it was cut pass twice
(normally none or one: the dose logic moves half a compartment at a time). With one home mark
and one opening the position cannot be found any other way, and going back would be worse.
A quick hand could reach into a passing compartment. Mitigations: re-homing happens only after
a cut mid-move, a fault or a first boot, never after a clean stop; the result's "rehomed" flag
lets the app log it (and the beam, watched by the app, would show a hand in the opening during
the turn); a shutter over the opening, or a per-compartment index sensor, would remove the
exposure and is a hardware decision, not in this BOM. One more physical limit: a cut mid-move
loses the stepper's phase, and the first half-steps afterwards can pull the rotor back by at
most one half-step (0.09 degrees, against 73 half-steps from a closed slot to a compartment)
before it locks in; a clean stop keeps the phase in the journal ("ph"), so there is none.

A trusted "at" record assumes nobody turned the carousel while the power was off (the gearbox
makes that hard); a refill or any service work must end with calibrate().

Jams and sensor faults (hazard 6)
---------------------------------
No retries, every motion is bounded, and any fault stops the motor, releases the coils, leaves
the position unknown (goto() refuses until the carousel is re-homed) and raises:
- Jam (E1): calibrate saw no home edge within 1.1 turns; or a move ran a quarter compartment
  past where the home edge was due without seeing it (at most 1.1 turns after the last edge).
  A dead home sensor (always clear) looks the same. A jam on a short move that does not pass
  home shows at the next pass, or at once through expect_beam (below).
- HomeLost (E2): the sensor read dark for more than 1/8 turn (dirty or stuck sensor, or the
  rotor stuck with the flag in the sensor); or the home edge came more than a quarter
  compartment from where the count expected it (a spurious edge, or many lost steps), so the
  count cannot be trusted. Within that quarter compartment the count is corrected at each home
  pass; a correction of more than 2 half-steps is reported in `drifts` and `last_drift`.
- BeamFault (E4): goto(..., expect_beam=True) arrived but the beam did not read broken within
  `beam_ms`. The beam crosses the compartment under the opening, so the pills in a loaded
  compartment break it (and so does a hand); a clear beam where pills should be means the
  compartment is not under the opening (slipped, jammed) or is empty. The carousel has stopped
  where the count says; the journal says "at"; the dose logic decides (close, alert).
(E3 is the app's "time missing".)
"""

from dispenser.stepper import sleep_ms

try:
    from micropython import const  # pyright: ignore[reportAssignmentType]
except ImportError:  # CPython (host tests)

    def const(x):
        return x


CLOSED = "closed"  # goto(CLOSED): the next closed slot, forward (no motion if already closed)

_IDLE = const(0)
_HOMING = const(1)
_MOVING = const(2)
_TOLERANCE = const(2)  # half-steps of home-edge jitter corrected without a report
_BEAM_POLL_MS = const(5)


def compartment(k):
    """The slot at which compartment k (1..N) is under the opening."""
    return 2 * k - 1


def closed_after(k):
    """The closed slot just after compartment k (k = 0: slot 0, before compartment 1)."""
    return 2 * k


class CarouselFault(Exception):
    """A carousel fault; `code` is the short code the display shows."""

    code = "E0"


class Jam(CarouselFault):
    code = "E1"


class HomeLost(CarouselFault):
    code = "E2"


class BeamFault(CarouselFault):
    code = "E4"


class Carousel:
    def __init__(
        self, stepper, home, beam, journal, steps_per_rev=4096, compartments=28, beam_ms=300
    ):
        if compartments < 1 or steps_per_rev < 16 * compartments:
            raise ValueError("need >= 1 compartment and >= 16 half-steps per compartment")
        self._st = stepper
        self._home = home
        self._beam = beam
        self._journal = journal
        self.spr = steps_per_rev
        self.compartments = compartments
        self.slots = 2 * compartments
        self.beam_ms = beam_ms
        self._half = steps_per_rev // 2
        self._max_drift = steps_per_rev // (4 * compartments)  # a quarter compartment
        self._max_dark = steps_per_rev // 8  # the flag must be narrower than this
        self._home_limit = steps_per_rev * 11 // 10  # 1.1 turns
        self._pos = 0  # half-steps after the home edge, 0..spr-1, when _known
        self._known = False
        self._slot = None  # the slot it rests at (None: unknown, or stopped between slots)
        self._since = 0  # half-steps since the home edge was last seen
        self._dark = 0  # consecutive half-steps the home sensor read dark
        self._target = 0  # half-step position the current move stops at
        self._mode = _IDLE
        self._found = False
        self._check = self._on_step  # bound once: the step loop must not allocate
        self.drifts = 0  # home-edge corrections larger than the tolerance, ever
        self.last_drift = 0  # the last one, in half-steps (> 0: the carousel was behind)

    # -- where it is ----------------------------------------------------------------------------

    def step_of(self, slot):
        """Half-steps after the home edge at which `slot` lies (rounded half up)."""
        return (slot * self.spr + self.compartments) // self.slots

    @property
    def position(self):
        """Half-steps after the home edge, or None when unknown (not homed, fault, cut)."""
        return self._pos if self._known else None

    @property
    def slot(self):
        """The slot the carousel rests at, or None when unknown."""
        return self._slot if self._known else None

    def at_compartment(self):
        """The compartment (1..N) under the opening, or None (closed or unknown)."""
        s = self.slot
        return (s + 1) // 2 if s is not None and s & 1 else None

    def is_closed(self):
        s = self.slot
        return s is not None and not s & 1

    # -- moves ----------------------------------------------------------------------------------

    async def calibrate(self, occ=None):
        """Turn forward to the home edge: position 0, slot 0 (closed). Raises Jam or HomeLost."""
        self._journal.write({"moving": 0, "from": self.slot, "occ": occ})
        await self._home_search()
        self._journal.write({"at": 0, "occ": occ, "ph": self._st.phase})

    async def goto(self, target, occ=None, expect_beam=False):
        """Turn forward to `target` (a slot, or CLOSED), journaling before and after.

        A target behind the current slot is reached by going round (see the module notes).
        Going to the slot it already rests at does nothing (no journal write, no motion).
        """
        slot = self._resolve(target)
        if slot != self._slot:
            self._journal.write({"moving": slot, "from": self._slot, "occ": occ})
            await self._move(slot)
            self._journal.write({"at": slot, "occ": occ, "ph": self._st.phase})
        if expect_beam and not await self._beam_broken():
            raise BeamFault("nothing seen at the opening")

    async def goto_compartment(self, k, occ=None, expect_beam=False):
        if not 1 <= k <= self.compartments:
            raise ValueError("no compartment %r" % (k,))
        await self.goto(compartment(k), occ, expect_beam)

    async def close(self, occ=None):
        await self.goto(CLOSED, occ)

    async def recover(self, trust_rest=True):
        """At boot: find out where the carousel is from the journal (see the module notes).

        Returns {"was": "moving" | "at" | None, "target": slot or None, "from": slot or None,
        "occ": the journaled occ, "at": the slot it now rests at (always closed after a
        re-home), "rehomed": bool}. Raises Jam or HomeLost when re-homing fails.
        """
        rec = self._journal.read()
        was = target = frm = occ = None
        ph = None
        if isinstance(rec, dict):
            if self._valid(rec.get("moving")):
                was = "moving"
                target = rec["moving"]
                frm = rec.get("from")
                occ = rec.get("occ")
            elif self._valid(rec.get("at")):
                was = "at"
                target = rec["at"]
                occ = rec.get("occ")
                ph = rec.get("ph")
        res = {"was": was, "target": target, "from": frm, "occ": occ}
        if was == "at" and trust_rest and self._plausible(target):
            self._pos = self.step_of(target)
            self._known = True
            self._slot = target
            self._since = self._pos  # as if the edge was last seen at position 0
            if isinstance(ph, int) and 0 <= ph <= 7:
                self._st.phase = ph  # the rotor rests on the pattern last energised
            self._st.release()
            res["at"] = target
            res["rehomed"] = False
            return res
        park = 0 if target is None else target - (target & 1)
        if was != "moving":
            # From here the position is unknown: say so before turning, as for any move.
            mark = park if target is None else target
            self._journal.write({"moving": mark, "from": None, "occ": occ})
        await self._home_search()
        if park:
            await self._move(park)
        self._journal.write({"at": park, "occ": occ, "ph": self._st.phase})
        res["at"] = park
        res["rehomed"] = True
        return res

    # -- inside ---------------------------------------------------------------------------------

    def _valid(self, s):
        return isinstance(s, int) and not isinstance(s, bool) and 0 <= s < self.slots

    def _plausible(self, slot):
        # Dark home sensor well away from the flag: the journal and the carousel disagree.
        return self._home.value() != 0 or self.step_of(slot) <= self._max_dark

    def _resolve(self, target):
        if self._mode != _IDLE:
            raise RuntimeError("carousel busy")  # one move at a time: the app's carousel task
        if not self._known:
            raise HomeLost("position unknown: re-home first")
        if target == CLOSED:
            s = self._slot
            if s is None:  # cannot happen: a known position is always a slot
                raise HomeLost("position unknown: re-home first")
            return s if not s & 1 else (s + 1) % self.slots
        if isinstance(target, bool) or not isinstance(target, int):
            raise ValueError("bad carousel target %r" % (target,))
        if not 0 <= target <= self.slots:
            raise ValueError("no slot %d" % target)
        return target % self.slots

    async def _home_search(self):
        self._known = False
        self._slot = None
        self._pos = 0  # counts during the search, meaningless until the edge
        self._found = False
        self._dark = 0 if self._home.value() else 1  # starting in the flag is not an edge
        self._mode = _HOMING
        try:
            await self._st.step(self._home_limit, self._check)
        finally:
            self._st.release()
            self._mode = _IDLE
        if not self._found:
            raise Jam("home edge not found within 1.1 turns")
        self._pos = 0
        self._since = 0
        self._known = True
        self._slot = 0

    async def _move(self, slot):
        target = self.step_of(slot)
        dist = (target - self._pos) % self.spr
        self._slot = None
        self._known = False  # until it arrives: a fault or a cancel leaves it unknown
        if dist:
            self._target = target
            self._dark = 0 if self._home.value() else 1
            self._mode = _MOVING
            try:
                # Enough for a late home edge's correction; _on_step stops it on arrival.
                await self._st.step(dist + self._max_drift + 1, self._check)
            finally:
                self._st.release()
                self._mode = _IDLE
            if self._pos != target:
                raise HomeLost("target not reached")  # only if the count jumped past it
        self._known = True
        self._slot = slot

    def _on_step(self):
        """Called after every half-step: track, watch the home edge; True on arrival."""
        pos = self._pos + 1
        if pos == self.spr:
            pos = 0
        self._since += 1
        if self._home.value():
            self._dark = 0
        else:
            dark = self._dark + 1
            self._dark = dark
            if dark > self._max_dark:
                raise HomeLost("home sensor dark too long: dirty or stuck")
            if dark == 1:  # the falling edge
                if self._mode == _HOMING:
                    self._pos = 0
                    self._found = True
                    return True
                if self._since > self._half:  # not a bounce of the edge just seen
                    d = pos if pos <= self._half else pos - self.spr
                    if d > self._max_drift or d < -self._max_drift:
                        raise HomeLost("home edge %d steps from where expected" % d)
                    if d > _TOLERANCE or d < -_TOLERANCE:
                        self.drifts += 1
                        self.last_drift = d
                    pos = 0
                    self._since = 0
        self._pos = pos
        if self._mode == _HOMING:
            return False
        if self._since > self.spr + self._max_drift:
            raise Jam("home edge missed: carousel stuck")
        return pos == self._target

    async def _beam_broken(self):
        n = self.beam_ms // _BEAM_POLL_MS
        while True:
            if self._beam.value() == 0:
                return True
            if n <= 0:
                return False
            n -= 1
            await sleep_ms(_BEAM_POLL_MS)
