"""Stepper, carousel and simulated motor: runs under pytest (CPython) and mprun (MicroPython)."""

import asyncio
import random
import sys

# pytest puts tests/fw on CPython's path but not firmware/ (MICROPYPATH has it): append it, a
# no-op wherever `dispenser` is already importable.
sys.path.append(__file__.replace("\\", "/").rsplit("/", 3)[0] + "/firmware")

from dispenser.carousel import (
    CLOSED,
    BeamFault,
    Carousel,
    CarouselFault,
    HomeLost,
    Jam,
    closed_after,
    compartment,
)
from dispenser.stepper import SEQ, Stepper
from sim.simhw import IRQ_FALLING, IRQ_RISING, SimMotor, SimPin


def _sleep_ms_cpython(ms):
    return asyncio.sleep(ms / 1000)


sleep_ms = getattr(asyncio, "sleep_ms", None) or _sleep_ms_cpython

SPR = 4096
TURN_LIMIT = SPR * 11 // 10  # 1.1 turns


class FakeJournal:
    """Dict-backed journal; records each write with what the motor was doing at that moment."""

    def __init__(self, rec=None):
        self.rec = rec
        self.writes = []
        self.motor = None

    def write(self, rec):
        m = self.motor
        seen = (m.angle(), m.coils_energised()) if m is not None else None
        self.writes.append((dict(rec), seen))
        self.rec = dict(rec)

    def read(self):
        return dict(self.rec) if isinstance(self.rec, dict) else self.rec


def rig(start=None, journal=None, motor=None, delay=0, spr=SPR, compartments=28, flag=40):
    m = motor or SimMotor(spr, flag, start_pos=start, compartments=compartments)
    st = Stepper(m.coils, delay)
    j = journal or FakeJournal()
    j.motor = m
    c = Carousel(st, m.home, m.beam, j, steps_per_rev=spr, compartments=compartments, beam_ms=20)
    return m, st, c, j


def run(coro):
    return asyncio.run(coro)


def rng(seed):
    """A seeded generator: random.Random on CPython, the seeded module on MicroPython."""
    if hasattr(random, "Random"):
        return random.Random(seed)
    random.seed(seed)
    return random


def centre(k, spr=SPR, n=28):
    """Compartment k's step position, written as the spec says: round((k - 0.5) * spr / n)."""
    return int((k - 0.5) * spr / n + 0.5)


def closed(k, spr=SPR, n=28):
    return int(k * spr / n + 0.5) % spr


def raises(exc_type, coro):
    try:
        run(coro)
    except exc_type as e:
        return e
    raise AssertionError("%s not raised" % exc_type.__name__)


def cut_after(c_coro, motor, steps):
    """Run a move and cancel it (the power cut) once the motor has made `steps` more steps."""

    async def main():
        start = motor.steps + motor.lost
        task = asyncio.create_task(c_coro)
        while motor.steps + motor.lost - start < steps:
            if task.done():
                raise AssertionError("the move ended before the cut")
            await sleep_ms(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    return run(main())


# -- stepper ----------------------------------------------------------------------------------


def test_half_step_sequence_changes_one_coil_per_step():
    assert len(SEQ) == 8 and len(set(SEQ)) == 8
    for i in range(8):
        diff = SEQ[i] ^ SEQ[(i + 1) % 8]
        assert diff in (1, 2, 4, 8)  # exactly one coil changes
        assert SEQ[i] in (1, 2, 4, 8, 3, 6, 12, 9)  # one coil, or two adjacent ones


def test_stepper_steps_forward_and_releases():
    m = SimMotor(SPR, 40, start_pos=100)
    st = Stepper(m.coils, 0)
    assert not m.coils_energised()  # released from construction
    assert run(st.step(1000)) == 1000
    assert m.pos == 1100 and m.steps == 1000 and m.back == 0 and m.misses == 0
    assert m.coils_energised()
    st.release()
    assert not m.coils_energised()
    assert [p.value() for p in m.coils] == [0, 0, 0, 0]
    assert m.moves[-1] == (100, 1100)
    # released and energised again: continues forward from the pattern it rests on
    run(st.step(7))
    st.release()
    assert m.pos == 1107 and m.back == 0 and m.misses == 0


def test_stepper_until_stops_early():
    m = SimMotor(SPR, 40, start_pos=0)
    st = Stepper(m.coils, 0)
    seen = [0]

    def until():
        seen[0] += 1
        return seen[0] == 37

    assert run(st.step(500, until)) == 37
    assert m.pos == 37


def test_stepper_yields_every_step_with_a_delay():
    m = SimMotor(SPR, 40, start_pos=0)
    st = Stepper(m.coils, 1)
    gaps = []

    async def watch():
        last = m.steps
        while True:
            gaps.append(m.steps - last)
            last = m.steps
            await sleep_ms(0)

    async def main():
        w = asyncio.create_task(watch())
        await st.step(20)
        w.cancel()

    run(main())
    st.release()
    assert m.pos == 20 and max(gaps) <= 1


def test_sim_motor_physics():
    m = SimMotor(SPR, 40, start_pos=10)
    a, b, c, d = m.coils
    for pattern in (0x3, 0x2, 0x3, 0x1, 0x5, 0x1, 0x4):  # +1 +1 -1 -1 invalid 0 jump
        a.value(pattern & 1)
        b.value(pattern >> 1 & 1)
        c.value(pattern >> 2 & 1)
        d.value(pattern >> 3)
    assert m.steps == 2 and m.back == 2 and m.misses == 2 and m.pos == 10
    for p in m.coils:
        p.value(0)
    assert not m.coils_energised()
    m.drop(3)
    run(Stepper(m.coils, 0).step(5))  # 3 turn the rotor only, 2 the carousel
    assert m.lost == 3 and m.pos == 12


def test_sim_pin_irq_edges():
    hits = []
    p = SimPin(1)
    p.irq(handler=hits.append, trigger=IRQ_FALLING)
    p.value(0)
    p.value(0)
    p.value(1)
    assert hits == [p]
    p.irq(handler=hits.append, trigger=IRQ_RISING | IRQ_FALLING)
    p.value(0)
    p.value(1)
    assert len(hits) == 3 and p() == 1
    m = SimMotor(SPR, 40, start_pos=SPR - 2)
    edges = []
    m.home.irq(handler=edges.append, trigger=IRQ_FALLING)
    run(Stepper(m.coils, 0).step(3))
    assert edges == [m.home] and m.home.value() == 0


# -- calibrate --------------------------------------------------------------------------------


def test_calibrate_from_random_starts():
    rnd = rng(7)
    starts = [0, 1, 20, 39, 40, 41, SPR - 1, SPR - 40, SPR // 2]
    starts += [rnd.randrange(SPR) for _ in range(8)]
    for start in starts:
        m, st, c, j = rig(start)
        run(c.calibrate())
        assert m.angle() == 0, start
        assert c.position == 0 and c.slot == 0 and c.is_closed()
        assert not m.coils_energised()
        assert m.back == 0 and 0 < m.steps <= TURN_LIMIT
        assert [w[0] for w in j.writes] == [{"moving": 0, "from": None, "occ": None}, j.rec]
        assert j.rec == {"at": 0, "occ": None, "ph": st.phase}


def test_calibrate_jam_is_bounded_and_not_retried():
    m, st, c, j = rig(500)
    m.jam()
    e = raises(Jam, c.calibrate())
    assert e.code == "E1" and "1.1" in str(e)
    assert m.lost <= TURN_LIMIT and m.steps == 0
    assert not m.coils_energised()
    assert c.position is None and c.slot is None
    assert j.rec is not None and "moving" in j.rec  # a reboot re-homes
    raises(HomeLost, c.goto(compartment(1)))  # refuses to move from an unknown position
    assert m.lost <= TURN_LIMIT


def test_home_sensor_stuck_dark_is_home_lost():
    m, st, c, j = rig(2000)
    m.stick_home(0)
    e = raises(HomeLost, c.calibrate())
    assert e.code == "E2"
    assert m.steps <= SPR // 8 + 1 and not m.coils_energised()
    # and during a move
    m.stick_home(None)
    run(c.calibrate())
    run(c.goto(compartment(5)))
    m.stick_home(0)
    raises(HomeLost, c.goto(compartment(20)))
    assert not m.coils_energised() and c.position is None


def test_home_sensor_dead_clear_reads_as_jam():
    m, st, c, j = rig(1234)
    m.stick_home(1)
    raises(Jam, c.calibrate())
    assert m.steps <= TURN_LIMIT and not m.coils_energised()


def test_fault_codes():
    for cls, code in ((Jam, "E1"), (HomeLost, "E2"), (BeamFault, "E4")):
        assert issubclass(cls, CarouselFault) and cls.code == code
        assert cls("x").code == code


# -- goto -------------------------------------------------------------------------------------


def test_goto_each_compartment_and_closed_lands_exactly():
    m, st, c, j = rig(3000)
    run(c.calibrate())
    n = len(m.exposed)
    for k in range(1, 29):
        run(c.goto_compartment(k, "occ%d" % k))
        assert m.angle() == centre(k) and m.opening() == k
        assert c.at_compartment() == k and c.position == centre(k)
        assert not m.coils_energised()
        run(c.close("occ%d" % k))
        assert m.angle() == closed(k) and m.opening() == 0 and c.is_closed()
        assert not m.coils_energised()
    assert m.back == 0 and m.misses == 0 and c.drifts == 0
    assert m.angle() == 0 and c.slot == 0  # closed after 28 is the home position
    assert m.exposed[n:] == list(range(1, 29))  # each compartment passed the opening once


def test_other_geometry():
    n, spr = 14, 2048
    m, st, c, j = rig(77, spr=spr, compartments=n, flag=20)
    run(c.calibrate())
    for k in (1, 7, 14, 2):
        run(c.goto_compartment(k))
        assert m.angle() == centre(k, spr, n)
    run(c.goto(closed_after(14)))
    assert m.angle() == 0


def test_forward_only_over_a_random_session():
    rnd = rng(11)
    m, st, c, j = rig(rnd.randrange(SPR))
    run(c.calibrate())
    turned = m.steps
    expected = 0
    for _ in range(30):
        t = CLOSED if rnd.randrange(4) == 0 else rnd.randrange(56)
        before = c.position
        run(c.goto(t))
        s = c.slot
        want = (s * SPR + 28) // 56
        assert m.angle() == want and not m.coils_energised()
        expected += (want - before) % SPR
    assert m.steps - turned == expected  # the shortest forward way, every time
    assert m.back == 0 and m.misses == 0 and m.lost == 0 and c.drifts == 0


def test_closed_and_going_round():
    m, st, c, j = rig(100)
    run(c.calibrate())
    run(c.goto(CLOSED))
    assert m.steps <= TURN_LIMIT and len(j.writes) == 2  # already closed: no move, no write
    run(c.goto_compartment(10))
    n = m.steps
    run(c.goto(CLOSED))
    assert c.slot == closed_after(10) and m.steps - n == closed(10) - centre(10)
    n = m.steps
    run(c.goto_compartment(3))  # behind: goes round, forward
    assert m.angle() == centre(3) and m.back == 0
    assert m.steps - n == SPR - closed(10) + centre(3)


def test_bad_targets():
    m, st, c, j = rig(0)
    raises(HomeLost, c.goto(compartment(1)))  # never homed
    assert m.steps == 0
    run(c.calibrate())
    for bad in (-1, 57, "open", 1.5, None, True):
        raises(ValueError, c.goto(bad))
    raises(ValueError, c.goto_compartment(0))
    raises(ValueError, c.goto_compartment(29))
    assert c.slot == 0 and len(j.writes) == 2


def test_journal_before_and_after_each_move():
    m, st, c, j = rig(900)
    run(c.calibrate("boot"))
    run(c.goto_compartment(2, "occ-a"))
    run(c.close("occ-a"))
    recs = [w[0] for w in j.writes]
    assert recs == [
        {"moving": 0, "from": None, "occ": "boot"},
        {"at": 0, "occ": "boot", "ph": recs[1]["ph"]},
        {"moving": 3, "from": 0, "occ": "occ-a"},
        {"at": 3, "occ": "occ-a", "ph": recs[3]["ph"]},
        {"moving": 4, "from": 3, "occ": "occ-a"},
        {"at": 4, "occ": "occ-a", "ph": st.phase},
    ]
    # each "moving" is written before the motor turned; each "at" after it stopped, released
    seen = [w[1] for w in j.writes]
    assert seen[2] == (0, False) and seen[3] == (centre(2), False)
    assert seen[4] == (centre(2), False) and seen[5] == (closed(2), False)


def test_jam_mid_move():
    m, st, c, j = rig(3000)
    run(c.calibrate())
    run(c.goto_compartment(20, "o20"))
    m.jam()
    e = raises(Jam, c.goto_compartment(3, "o3"))  # crosses home: the missing edge shows
    assert e.code == "E1" and not m.coils_energised()
    # stopped within 1.1 turns of the last home edge, a quarter compartment past it
    assert centre(20) + m.lost <= TURN_LIMIT
    assert m.lost == SPR + SPR // 112 + 1 - centre(20)
    assert c.position is None and j.rec == {"moving": 5, "from": 39, "occ": "o3"}
    n = m.lost
    raises(HomeLost, c.goto_compartment(3))  # no retry on its own: the app must re-home
    assert m.lost == n


def test_drift_corrected_at_home_pass_and_reported():
    m, st, c, j = rig(2500)
    run(c.calibrate())
    run(c.goto_compartment(14))
    m.drop(10)  # the carousel slips 10 half-steps during the next move
    run(c.goto_compartment(20))
    assert m.angle() == centre(20) - 10  # nothing can see it yet
    assert c.drifts == 0
    run(c.goto_compartment(2))  # passes home: corrected there
    assert m.angle() == centre(2)
    assert c.drifts == 1 and c.last_drift == 10
    run(c.goto_compartment(28))
    run(c.goto_compartment(1))
    assert m.angle() == centre(1) and c.drifts == 1  # exact again: nothing more to report


def test_large_drift_is_a_fault_not_a_correction():
    m, st, c, j = rig(2500)
    run(c.calibrate())
    run(c.goto_compartment(10))
    m.drop(60)  # more than a quarter compartment: the edge is not where it is due
    raises(Jam, c.goto_compartment(3))
    assert not m.coils_energised() and c.position is None


def test_spurious_home_edge_is_home_lost():
    m, st, c, j = rig(2500)
    run(c.calibrate())

    async def glitch():
        while m.angle() < 3000:
            await sleep_ms(0)
        m.stick_home(0)  # something darkens the sensor half a turn from the flag

    async def main():
        g = asyncio.create_task(glitch())
        try:
            await c.goto_compartment(27)
        finally:
            g.cancel()

    e = raises(HomeLost, main())
    assert "expected" in str(e) and not m.coils_energised() and c.position is None


def test_beam_check_at_the_opening():
    m, st, c, j = rig(10)
    run(c.calibrate())
    m.load(3, 5)
    run(c.goto_compartment(3, "o3", expect_beam=True))  # pills under the opening
    e = raises(BeamFault, c.goto_compartment(4, "o4", expect_beam=True))  # empty
    assert e.code == "E4" and not m.coils_energised()
    assert j.rec == {"at": 7, "occ": "o4", "ph": st.phase} and c.at_compartment() == 4
    m.break_beam()  # a hand in the opening is seen too
    run(c.goto(compartment(4), "o4", expect_beam=True))
    m.break_beam(False)
    run(c.goto_compartment(5, expect_beam=True))
    assert m.take() == 5 and m.beam.value() == 1


def test_loop_not_held_during_a_long_goto():
    m, st, c, j = rig(100)
    run(c.calibrate())
    ticks = [0]
    gaps = []

    async def counter():
        last = m.steps
        while True:
            ticks[0] += 1
            gaps.append(m.steps - last)
            last = m.steps
            await sleep_ms(0)

    async def main():
        t = asyncio.create_task(counter())
        await c.goto_compartment(28)
        await c.goto_compartment(27)  # nearly a whole turn, round through home
        t.cancel()

    run(main())
    moved = centre(28) + SPR - centre(28) + centre(27)
    assert ticks[0] >= moved // 64 - 2 and max(gaps) <= 64


# -- power cuts and recovery ------------------------------------------------------------------


def test_power_cut_mid_move_recovers_closed_before_the_target():
    j = FakeJournal()
    m, st, c, _ = rig(1500, journal=j)
    run(c.calibrate())
    run(c.goto(closed_after(4), "o4"))
    m.load(12)
    assert cut_after(c.goto_compartment(12, "o12"), m, 400)
    assert j.rec == {"moving": 23, "from": 8, "occ": "o12"}  # what the flash holds now
    cut_at = m.angle()
    assert closed(4) < cut_at < centre(12)
    # reboot: a new stepper (its phase lost) and carousel, same motor, same journal
    exposed_before = len(m.exposed)
    back_before = m.back
    m2, st2, c2, _ = rig(motor=m, journal=j)
    res = run(c2.recover())
    assert res == {
        "was": "moving",
        "target": 23,
        "from": 8,
        "occ": "o12",
        "at": 22,
        "rehomed": True,
    }
    assert m.angle() == closed(11) and m.opening() == 0 and c2.slot == 22
    assert not m.coils_energised()
    assert j.rec == {"at": 22, "occ": "o12", "ph": st2.phase}
    # the re-sync with a stepper that lost its phase can pull back at most one half-step
    assert m.back - back_before <= 1
    # what the citizen saw: on to home, then on to the park slot, each compartment passing
    # the opening once, except those between the cut and the target (here 8..11): twice
    first = [k for k in range(1, 29) if centre(k) > cut_at][0]
    assert m.exposed[exposed_before:] == list(range(first, 29)) + list(range(1, 12))
    # the dose is still valid: the dose logic opens it, half a compartment further
    n = m.steps
    run(c2.goto_compartment(12, "o12", expect_beam=True))
    assert m.angle() == centre(12) and m.steps - n == centre(12) - closed(11)


def test_power_cut_while_closing_never_reoffers_the_dose():
    j = FakeJournal()
    m, st, c, _ = rig(700, journal=j)
    run(c.calibrate())
    run(c.goto_compartment(5, "o5"))
    assert cut_after(c.close("o5"), m, 1)  # a half-compartment move, cut at its first yield
    assert j.rec == {"moving": 10, "from": 9, "occ": "o5"}
    m2, st2, c2, _ = rig(motor=m, journal=j)
    res = run(c2.recover())
    assert res["was"] == "moving" and res["at"] == 10 and res["target"] == 10
    assert m.angle() == closed(5) and m.opening() == 0 and c2.at_compartment() is None


def test_second_cut_during_recovery_recovers_the_same_way():
    j = FakeJournal()
    m, st, c, _ = rig(300, journal=j)
    run(c.calibrate())
    assert cut_after(c.goto_compartment(20, "o20"), m, 900)
    m2, st2, c2, _ = rig(motor=m, journal=j)
    assert cut_after(c2.recover(), m, 700)  # cut again while re-homing
    assert j.rec == {"moving": 39, "from": 0, "occ": "o20"}  # unchanged
    m3, st3, c3, _ = rig(motor=m, journal=j)
    res = run(c3.recover())
    assert res["was"] == "moving" and res["occ"] == "o20" and res["at"] == 38
    assert m.angle() == closed(19)


def test_cut_mid_calibrate_rehomes_at_boot():
    j = FakeJournal({"at": 13, "occ": "o7", "ph": 3})
    m, st, c, _ = rig(2000, journal=j)
    assert cut_after(c.calibrate(), m, 300)
    assert j.rec == {"moving": 0, "from": None, "occ": None}
    m2, st2, c2, _ = rig(motor=m, journal=j)
    res = run(c2.recover())
    assert res["was"] == "moving" and res["rehomed"] and m.angle() == 0


def test_clean_rest_is_trusted_without_motion():
    j = FakeJournal()
    m, st, c, _ = rig(2222, journal=j)
    run(c.calibrate())
    run(c.goto_compartment(7, "o7"))
    steps = m.steps
    m2, st2, c2, _ = rig(motor=m, journal=j)  # reboot while compartment 7 is on offer
    res = run(c2.recover())
    want = {"was": "at", "target": 13, "from": None, "occ": "o7", "at": 13, "rehomed": False}
    assert res == want
    assert m.steps == steps and c2.at_compartment() == 7
    # the stepper got its phase back: closing is exact, with no jerk back
    run(c2.close("o7"))
    assert m.angle() == closed(7) and m.back == 0 and m.misses == 0
    # and the next pass over home agrees with the count
    run(c2.goto_compartment(2))
    assert m.angle() == centre(2) and c2.drifts == 0


def test_rest_record_contradicted_by_the_home_sensor_is_not_trusted():
    j = FakeJournal({"at": 30, "occ": "o15", "ph": 0})
    m, st, c, _ = rig(10, journal=j)  # in the flag, not at compartment 15
    res = run(c.recover())
    assert res["was"] == "at" and res["rehomed"] and res["at"] == 30
    assert m.angle() == closed(15)
    assert j.writes[0][0] == {"moving": 30, "from": None, "occ": "o15"}


def test_first_boot_and_unreadable_journal_calibrate():
    for rec in (None, {}, {"at": 99}, {"moving": "x"}, "junk"):
        j = FakeJournal(rec)
        m, st, c, _ = rig(1800, journal=j)
        res = run(c.recover())
        assert res["was"] is None and res["target"] is None and res["at"] == 0
        assert m.angle() == 0 and c.slot == 0 and not m.coils_energised()
        assert j.rec == {"at": 0, "occ": None, "ph": st.phase}


def test_recover_trust_rest_false_rehomes():
    j = FakeJournal()
    m, st, c, _ = rig(2222, journal=j)
    run(c.calibrate())
    run(c.goto_compartment(7, "o7"))
    m2, st2, c2, _ = rig(motor=m, journal=j)
    res = run(c2.recover(trust_rest=False))
    assert res["rehomed"] and res["at"] == 12 and m.angle() == closed(6)
