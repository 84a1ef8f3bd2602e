"""Scenario runner: the firmware on the simulated board, driven by a script, on a warp clock.

    micropython -m sim.scenario SCRIPT STATE_DIR

Script lines (times are local, in the schedule's zone; "+Nd HH:MM" counts days from start):
    schedule FILE.json        the normalised schedule (as `dosis` stores it on a device)
    start YYYY-MM-DD HH:MM    when this run (boot) begins
    end YYYY-MM-DD HH:MM      when it ends (a clean stop: nothing is lost)
    fill                      the nurse filled the carousel at start
    rtc lost                  the RTC lost its time before this boot
    TIME press | hold | service | take (empty the open compartment: the beam clears)
    TIME jam | unjam | mains off | mains on | battery MV
    TIME clock +3h | clock -90m | clock YYYY-MM-DD HH:MM      (a clock step, as from a source)
    TIME mode normal|assisted|paused|travel
    TIME ntp +3h SOURCE       a network time answer (a step over 120 s needs two sources)
    TIME settime YYYY-MM-DD HH:MM   the nurse sets the time (trusted)
    TIME screen [FILE.pbm]    print what the screen shows (and save it as an image)
    TIME cut                  power cut: stop at once, nothing more is written
    TIME cut-move             power cut in the middle of the next carousel move
    TIME fill                 the nurse refilled the carousel (every compartment loaded)
    TIME ack SEQ              the gateway has stored every log record up to SEQ (DoseLog.ack)
    TIME schedule FILE.json   a new schedule arrives: validated, stored (temp + rename), then
                              the device reboots to use it: the log is synced and the run
                              stops ("END reboot"); the next run boots with it
Output: one line per event: "EV local-time kind occurrence-id detail"; at the end "HW" lines
with totals (beeps, moves, steps) and "END" ("END cut", "END reboot" when stopped early).
"""

import asyncio
import json
import os
import sys

from dispenser import runtime
from dispenser.settings import ABStore
from dispenser.store import Store
from dosiscore import civil, tz
from sim.board import PowerCut, SimBoard


class ScriptError(ValueError):
    pass


def _parse_when(text, start_day, zone):
    """Local "YYYY-MM-DD HH:MM", "+Nd HH:MM" or "HH:MM" (on the start day) -> UTC."""
    parts = text.split()
    if len(parts) == 2 and parts[0].startswith("+") and parts[0].endswith("d"):
        z = start_day + int(parts[0][1:-1])
        hm = parts[1]
    elif len(parts) == 2:
        z = civil.parse_date(parts[0])
        hm = parts[1]
    else:
        z, hm = start_day, parts[0]
    m = civil.parse_hhmm(hm)
    if z is None or m is None:
        raise ScriptError("bad time: %r" % text)
    return zone.utc(z * civil.DAY + m * 60)


def parse(lines):
    head = {}  # schedule, start, end: text; fill, rtc lost: "yes"
    acts = []
    for raw in lines:
        line = raw.split("#")[0].strip()
        if not line:
            continue
        w = line.split()
        if w[0] in ("schedule", "start", "end"):
            head[w[0]] = " ".join(w[1:])
        elif w[0] == "fill":
            head["fill"] = "yes"
        elif line == "rtc lost":
            head["rtc_lost"] = "yes"
        else:
            acts.append(line)
    for k in ("schedule", "start", "end"):
        if k not in head:
            raise ScriptError("missing '%s' line" % k)
    return head, acts


def _split_action(line):
    # The time is "HH:MM", "+Nd HH:MM" or "YYYY-MM-DD HH:MM"; the rest is the action.
    w = line.split()
    if w[0].startswith("+") or (len(w[0]) == 10 and w[0][4] == "-"):
        return w[0] + " " + w[1], w[2:]
    return w[0], w[1:]


def run(script_path, state_dir):
    with open(script_path) as f:
        head, acts = parse(f.readlines())
    with open(head["schedule"]) as f:
        doc = json.load(f)
    # The script's times are read in the schedule's zone (or the default one, so a broken
    # schedule can still be scripted: the firmware must refuse it, not the runner).
    zone = tz.Tz(doc.get("tz_rule") or tz.ZONES[tz.DEFAULT_ZONE])
    sp = head["start"].split()
    start_day = civil.parse_date(sp[0])
    if start_day is None:
        raise ScriptError("bad start date")
    start = _parse_when(head["start"], start_day, zone)
    end = _parse_when(head["end"], start_day, zone)
    store = Store(state_dir)
    ab = ABStore(state_dir)
    try:
        os.stat(ab.path(runtime.SCHEDULE, "a"))
    except OSError:  # first boot of this state dir: provision it (a corrupt one stays corrupt)
        ab.save(runtime.SCHEDULE, doc)
    board = SimBoard(state_dir, start, rtc_lost="rtc_lost" in head)
    clock = board.clock

    def emit(kind, occ, detail):
        t = clock.now() if clock.valid() else None
        when = civil.format_iso(t, zone.offset(t)) if t is not None else "--"
        oid = occ[1] if occ else "-"
        print("EV", when, kind, oid, detail)

    timeline = []
    for n, a in enumerate(acts):
        when, what = _split_action(a)
        timeline.append((_parse_when(when, start_day, zone), n, what))
        if what[0] == "schedule" and len(what) > 1:
            what.append(_prepare_schedule(what[1]))
    # By time, then in script order (MicroPython's sort is not stable: the index decides).
    timeline.sort(key=lambda x: (x[0], x[1]))

    async def main():
        app = runtime.start(board, store, emit)
        if app is not None and "fill" in head:
            _fill(app, board, start)
        clock.register(9 if app is not None else 1)  # the app's tasks + this driver
        warp = asyncio.create_task(clock.run_warp())
        cut = None
        for t, _, what in timeline:
            await clock.sleep(max(0, t - _now()))
            cut = await _act(app, board, store, what, emit)
            if cut:
                break
        if not cut:
            await clock.sleep(max(0, end - _now()))
            print(
                "HW beeps=%d moves=%d steps=%d frames=%d"
                % (
                    app.alerts.beeps if app else 0,
                    app.moves if app else 0,
                    board.motor.steps,
                    board.i2c.frames,
                )
            )
        clock.running = False
        warp.cancel()
        print("END " + cut if cut else "END")

    def _now():
        return clock.now() if clock.valid() else start + clock.ticks_ms() // 1000

    try:
        asyncio.run(main())
    except PowerCut:
        print("END cut")
        return
    board.save_world()


def _fill(app, board, now):
    # The nurse loads every compartment, then tells the device (which records the fill).
    board.motor.load(*range(1, app.doc["compartments"] + 1))
    board.save_world()
    app._events(app.doses.refilled(now))


async def _act(app, board, store, what, emit):
    """Apply one scripted action; None goes on, "cut" or "reboot" stops the run now."""
    clock = board.clock
    verb = what[0]
    arg = what[1] if len(what) > 1 else ""
    if verb == "press":
        await board.press(board.btn_taken, 0.3)
    elif verb == "hold":
        await board.press(board.btn_taken, 3)
    elif verb == "service":
        await board.press(board.btn_service, 0.3)
    elif verb == "take":
        board.motor.take()  # the citizen empties the open compartment: the beam clears
        board.save_world()
    elif verb == "fill" and app is not None:
        _fill(app, board, clock.now())
    elif verb == "ack" and app is not None:
        # The gateway's acknowledgement (not logged: see dispenser.doselog).
        if app.log is not None:
            emit("ack", None, "%d -> %d" % (int(arg), app.log.ack(int(arg))))
    elif verb == "schedule" and app is not None:
        return _new_schedule(app, board, store, what[-1], emit)
    elif verb == "jam":
        board.motor.jam()
    elif verb == "unjam":
        board.motor.unjam()
    elif verb == "mains":
        board.mains.value(1 if arg == "on" else 0)
    elif verb == "battery":
        board.battery_level_mv = int(arg)
    elif verb == "mode" and app is not None:
        app._events(app.doses.set_mode(arg, clock.now()))
        app._apply_view()
    elif verb == "clock":
        now = clock.now()
        if arg[0] in "+-":
            n, unit = int(arg[1:-1]), arg[-1]
            step = n * {"h": 3600, "m": 60, "d": 86400}[unit]
            new = now + step if arg[0] == "+" else now - step
        else:
            raise ScriptError("clock takes +Nh, -Nm, +Nd")
        old, new = clock.set(new, "test")
        if app is not None:
            app.on_clock_change(old, new, "test")
    elif verb in ("ntp", "settime") and app is not None:
        # "ntp +3h pool1": an answer from a network source, filtered; "settime YYYY-MM-DD
        # HH:MM": the nurse's tool, trusted (how a device that lost its time gets it back).
        if verb == "ntp":
            n, unit = int(arg[1:-1]), arg[-1]
            step = n * {"h": 3600, "m": 60, "s": 1, "d": 86400}[unit]
            base = clock.now() if clock.valid() else 0
            app.offer_time(base + (step if arg[0] == "+" else -step), what[2])
        else:
            app.offer_time(_parse_when(" ".join(what[1:3]), 0, app.zone), "nurse", True)
    elif verb == "screen" and app is not None:
        # What the citizen sees: the screen's name and its data; with a file name, also the
        # framebuffer as a PBM image.
        await clock.sleep(1)  # let the display task redraw for this instant first
        name, data = app.last_screen
        keys = sorted(data)
        emit("screen", None, name + " " + " ".join("%s=%s" % (k, data[k]) for k in keys))
        if arg and board.display is not None:
            with open(arg, "wb") as f:
                f.write(board.display.to_pbm())
    elif verb == "cut":
        emit("cut", None, "")
        board.save_world()
        return "cut"
    elif verb == "cut-move":
        # 30 half-steps into the next move (a compartment is 73 away): the journal says "moving".
        board.cut_after_steps(30, lambda: emit("cut", None, "mid-move"))
    else:
        raise ScriptError("unknown action: %s" % " ".join(what))
    return None


def _prepare_schedule(path):
    """Validate a schedule the script will deliver, before the firmware starts: (doc, hash)
    or (None, why). The validator and the canonical encoding need a few KB in one piece, and
    after a simulated day the unix port's heap has none to spare (the simulator's own logs
    scatter small objects over it); this keeps the action about the save and the reboot."""
    from dosiscore import schedule

    with open(path) as f:
        doc = json.load(f)
    try:
        doc = schedule.validate(doc)
    except schedule.ScheduleError as e:
        return None, str(e)
    return doc, schedule.content_hash(doc)


def _new_schedule(app, board, store, prepared, emit):
    """A schedule delivered to the device: refused if invalid (the run goes on), else stored
    atomically and the device reboots into it (the caller starts the next run)."""
    doc, digest = prepared
    if doc is None:
        emit("schedule_refused", None, digest)
        return None
    emit("schedule_update", None, digest[:12])
    ABStore(store.root, store.fs).save(runtime.SCHEDULE, doc)  # the old or the new, never a mix
    if app.log is not None:
        app.log.sync()  # a planned reboot loses nothing
    board.save_world()
    emit("reboot", None, "schedule")
    return "reboot"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: micropython -m sim.scenario SCRIPT STATE_DIR")
        sys.exit(2)
    run(sys.argv[1], sys.argv[2])
