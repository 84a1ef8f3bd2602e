"""Power-cut campaign: the firmware on the simulated board, killed (SIGKILL) at random instants
and restarted, again and again, with the flash checked by host-side code after every cut.

    python tests/campaign.py --cuts 1000 --seed 1 --state build/campaign [--jobs 2]

Each run is one process of the MicroPython unix port (`micropython -m sim.scenario`) on the
same state directory, with a script this module writes: the example schedule (and two variants
that a "schedule update" switches between), a fill at the first boot and whenever the carousel
runs low (or a new schedule moves the dose times: the nurse brings a new loading map), a citizen
who presses on time, takes the pills out (beam), presses late or not at all (so there are taken,
late, missed doses), and the gateway acknowledging the log it has stored. The run is killed at
a random real instant: either after a uniform delay (0 to `max_delay` s: the warp clock runs a
day in about 2 s, so this lands anywhere), or a few milliseconds after a chosen event line
(the flash work that follows it: state saves, journal writes, carousel moves, the records after
it), or just before the log's segment fills up (a rotation). The next run starts where the
device had got to (the last event, record or "seen" time) plus an offline gap (0 to 3 hours).

After every run the files are read back here (CPython, `dosiscore.logrec.decode`) and checked:

- log scans clean: every record of every `.seg` decodes (CRC) and its seq is the segment's
  first + its index; a damaged segment is only allowed if the next boot reports it
  (LOG_TRUNCATED / LOG_QUARANTINED) and repairs it; the log's `state` file has a valid CRC;
- nothing durable is lost: every record ever read back is still there, byte for byte, unless
  the gateway had acknowledged it (then retention may delete it);
- at most the record being written is lost at a cut: every event the run printed (the
  firmware prints after `append()` returns, and flushes before that unless the record is
  chatter deferred by the flash-wear budget) whose record is not chatter is on the flash;
- seqs strictly increase, across segments and across boots: a record new since the last
  check has a seq above every seq ever read back (never reused);
- no occurrence (its instant + dose) has two terminal records (taken, missed, skipped);
- nothing is offered twice: an OPENED record names a compartment already opened for another
  occurrence since the last fill, or an occurrence that already has a terminal record; an
  AVAILABLE or DUE record (the light or the tone) comes after the occurrence's terminal record;
- settings: both schedule copies (`schedule.a`, `schedule.b`) have a valid CRC, the active one
  hashes to a schedule this campaign sent, and is the version from before the run or one sent
  during it; the NVS copy, `doses.json` and `journal.json` parse;
- the carousel's belief matches the physics: when `journal.json` says "at slot S", the simulated
  rotor (persisted at every release of the coils) is at S;
- every run ends by the kill or cleanly ("END"), with no Traceback, no crashed task and no
  watchdog complaint in its output.

Not deterministic in one respect: the seed fixes the schedule, the citizen, the gaps and every
delay, but where a kill lands in virtual time depends on how fast the machine runs. A failure
is reproduced from the state directory kept in DIR/failures/ (the state before the failing run,
its script and its output).
"""

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
if str(FIRMWARE) not in sys.path:
    sys.path.insert(0, str(FIRMWARE))

from dispenser.eventlog import LogSink  # noqa: E402  (after the path set-up)
from dosiscore import civil, logrec, planner, schedule, tz  # noqa: E402

REC = logrec.RECORD_SIZE
SEG_RECORDS = 170  # dispenser.doselog._SEG_RECORDS
SPR = 4096  # half-steps per carousel turn (Carousel default)
COMPARTMENTS = 28
TERMINAL = {logrec.TAKEN: "taken", logrec.MISSED: "missed", logrec.SKIPPED: "skipped"}
LOG_REPORTS = (
    logrec.LOG_TRUNCATED,
    logrec.LOG_QUARANTINED,
    logrec.LOG_OVERFLOW,
    logrec.LOG_LOST,
    logrec.LOG_ERROR,
)
# Event lines after which a kill lands in the flash work that follows (see module notes).
TRIGGERS = (
    "available",
    "available",
    "due",
    "taken",
    "taken",
    "missed",
    "opened",
    "opened",
    "closed",
    "closed",
    "louder",
    "notify",
    "boot",
    "schedule",
    "filled",
    "ack",
    "schedule_update",
    "recovered",
    "replayed",
    "press",
)
INVARIANTS = (
    "log_damaged",  # a segment with a bad record that the next boot did not report and repair
    "log_state_bad",  # log/state unreadable or its CRC wrong
    "record_lost",  # a durable, unacknowledged record disappeared
    "record_changed",  # a durable record reads back different
    "printed_not_durable",  # an event printed (logged) whose record, not chatter, never landed
    "seq_order",  # seqs not strictly increasing in the files
    "seq_reused",  # a new record with a seq at or below one already seen
    "double_terminal",  # an occurrence with two terminal records
    "compartment_twice",  # one compartment opened for two occurrences within one fill
    "opened_after_terminal",  # a compartment opened for an occurrence that had ended
    "offered_after_terminal",  # light or tone for an occurrence that had ended
    "settings_mixed",  # a schedule copy damaged, unknown, or neither the old nor the new one
    "state_unreadable",  # doses.json, journal.json or the NVS copy does not parse
    "carousel_mismatch",  # journal "at S" but the rotor is elsewhere
    "run_failed",  # Traceback, a crashed task, a watchdog complaint, or an unclean end
)


def micropython_binary():
    cand = Path(sys.executable).parent / "micropython"
    if cand.exists():
        return str(cand)
    found = shutil.which("micropython")
    if found:
        return found
    venv = ROOT / ".venv" / "bin" / "micropython"
    return str(venv)


# -- schedules -------------------------------------------------------------------------------


def schedule_versions():
    """The example schedule and two variants: [(name, validated doc, moves dose times)]."""
    from dosis import schedules

    base = schedules.load_document(ROOT / "examples" / "schedule.toml")
    alerts = json.loads(json.dumps(base))
    alerts["alerts"]["notify_min"] = 45  # care team told later: no dose moves
    alerts["alerts"]["louder_every_min"] = 5
    times = json.loads(json.dumps(base))
    for d in times["dose"]:
        if d["id"] == "middag":
            d["time"] = "13:00"
        elif d["id"] == "aften":
            d["time"] = "17:30"
    out = []
    for name, doc, moves in (("example", base, False), ("alerts", alerts, False)):
        out.append((name, schedule.validate(doc), moves))
    out.append(("times", schedule.validate(times), True))
    return out


def hash_of(doc):
    return schedule.content_hash(doc)


def read_ab(state):
    """[(slot, generation or None, doc or None, damaged)] of the schedule's A/B copies."""
    out = []
    for slot in ("a", "b"):
        p = state / ("schedule." + slot)
        if not p.exists():
            continue
        raw = p.read_bytes()
        try:
            cut = raw.rindex(b"\n")
            body, tail = raw[:cut], raw[cut + 1 :].split()
            gen, crc = int(tail[0]), int(tail[1], 16)
            if logrec.crc32(body) != crc:
                raise ValueError("crc")
            out.append((slot, gen, json.loads(body), False))
        except (ValueError, IndexError):
            out.append((slot, None, None, True))
    return out


def active_schedule(state):
    good = [c for c in read_ab(state) if not c[3]]
    if not good:
        return None
    return max(good, key=lambda c: c[1])[2]


# -- local time, as the scenario runner reads it -------------------------------------------


class Wall:
    def __init__(self, doc):
        self.zone = tz.Tz(doc["tz_rule"])

    def text(self, utc):
        """Local "YYYY-MM-DD HH:MM" of the minute at or before `utc`, and the UTC that the
        runner will read it as (the repeated autumn hour reads as its first occurrence)."""
        wall = self.zone.local(utc) // 60 * 60
        z, s = divmod(wall, civil.DAY)
        y, m, d = civil.civil_from_days(z)
        txt = f"{y:04d}-{m:02d}-{d:02d} {s // 3600:02d}:{s % 3600 // 60:02d}"
        return txt, self.zone.utc(wall)

    def at_or_after(self, utc):
        """(text, utc) of the first whole local minute the runner reads as >= `utc`."""
        u = -(-utc // 60) * 60
        for _ in range(200):
            txt, back = self.text(u)
            if back >= utc:
                return txt, back
            u += 60
        raise RuntimeError(f"no local minute at or after {utc}")


def iso_utc(text):
    try:
        return int(datetime.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return None


# -- reading the flash ------------------------------------------------------------------------


class LogScan:
    def __init__(self, state):
        d = state / "log"
        self.segs = []  # [(first, [(seq, raw)], damaged reason or None)]
        self.bad = []
        self.tmps = []
        self.state = None  # (acked, hwm), or "bad", or None when absent
        if not d.exists():
            return
        for p in sorted(d.iterdir()):
            name = p.name
            if name.endswith(".tmp"):
                self.tmps.append(name)
            elif name.endswith(".bad"):
                self.bad.append(name)
            elif name == "state":
                raw = p.read_bytes()
                if len(raw) == 12 and struct.unpack_from("<I", raw, 8)[0] == logrec.crc32(raw[:8]):
                    self.state = struct.unpack_from("<II", raw, 0)
                else:
                    self.state = "bad"
            elif name.endswith(".seg") and len(name) == 12:
                self.segs.append(self._seg(int(name[:8], 16), p.read_bytes()))
        self.segs.sort(key=lambda s: s[0])

    @staticmethod
    def _seg(first, raw):
        recs = []
        damaged = None
        if len(raw) % REC:
            damaged = f"partial record ({len(raw)} bytes)"
        if len(raw) > SEG_RECORDS * REC:
            damaged = f"longer than a segment ({len(raw)} bytes)"
        for i in range(len(raw) // REC):
            chunk = raw[i * REC : (i + 1) * REC]
            r = logrec.decode(chunk)
            if r is None:
                damaged = damaged or f"bad CRC at slot {i}"
                break
            if r[0] != first + i:
                damaged = damaged or f"seq {r[0]} at slot {i} of {first:08x}"
                break
            recs.append((r[0], bytes(chunk)))
        return first, recs, damaged


# -- the citizen ------------------------------------------------------------------------------


def behaviour(seed, t, dose):
    """What the citizen does about occurrence (t, dose): [(utc, action)] (deterministic)."""
    rnd = random.Random(f"{seed}/{t}/{dose['id']}")
    late = dose["late_lock_min"] * 60
    x = rnd.random()
    if dose["reminder_only"]:
        return [(t + rnd.randrange(60, 30 * 60), "press")] if x < 0.7 else []
    if x < 0.40:
        return [(t + rnd.randrange(0, 25 * 60), "press")]  # on time
    if x < 0.55:
        early = dose["early_min"] * 60
        return [(t + rnd.randrange(-early + 60, 25 * 60), "take")]  # pills out: the beam
    if x < 0.72:
        lo = dose["notify_min"] * 60 + 60
        return [(t + rnd.randrange(lo, max(lo + 60, late - 60)), "press")]  # late
    if x < 0.77:
        return [(t - dose["early_min"] * 60 - rnd.randrange(60, 20 * 60), "press")]  # too soon
    return []  # missed


# -- one campaign -----------------------------------------------------------------------------


class Campaign:
    def __init__(
        self,
        state_dir,
        seed=1,
        max_delay=2.0,
        start="2026-11-02 06:00",
        micropython=None,
        firmware=None,
        keep_failures=True,
        log=None,
    ):
        self.root = Path(state_dir)
        self.state = self.root / "state"
        self.seed = seed
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.mp = micropython or micropython_binary()
        self.firmware = Path(firmware) if firmware else FIRMWARE  # another tree: mutation tests
        self.keep_failures = keep_failures
        self.say = log or (lambda msg: None)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.state.mkdir(parents=True)
        self.versions = []  # (name, doc, moves, hash, path)
        for name, doc, moves in schedule_versions():
            p = self.root / (f"schedule-{name}.json")
            p.write_bytes(schedule.canonical(doc))
            self.versions.append((name, doc, moves, hash_of(doc), p))
        self.by_hash = {v[3]: v for v in self.versions}
        self.by_prefix = {logrec.hash_prefix(v[3]): v for v in self.versions}
        self.active = self.versions[0]
        self.wall = Wall(self.active[1])
        z = civil.parse_date(start.split()[0])
        m = civil.parse_hhmm(start.split()[1])
        assert z is not None and m is not None
        self.t0 = self.wall.zone.utc(z * civil.DAY + m * 60)
        self.reached = self.t0
        # the host's copy of the log, and what the records have said so far
        self.host = {}  # seq -> 24 raw bytes (never forgotten)
        self.present = set()  # seqs still on flash at the last check
        self.max_seq = 0
        self.acked = 0  # the highest ack the device accepted
        self.ids = [d["id"] for d in self.active[1]["dose"]]
        self.terminal = {}  # (occ, dose id) -> kind
        self.epoch = 0
        self.opened = {}  # compartment -> (occ, dose id), since the last FILLED record
        self.pending_damage = {}  # segment first -> reason, waiting for the next boot
        self.seg_firsts = set()  # every segment file ever seen
        self.last_seg_count = 0  # records in the newest segment at the last check
        # plans
        self.fill_pending = True
        self.refill_after = self._refill_span()
        self.next_update = self.t0 + self._update_span()
        self.update_to = 1
        # figures
        self.n = Counter()  # counters for the summary
        self.where = Counter()  # where kills landed
        self.kinds = Counter()  # record kinds read back
        self.lost_at_cut = Counter()  # records printed but not durable, per cut
        self.violations = Counter()
        self.failures = []  # (cut number, invariant, detail)
        self.real = 0.0

    def _refill_span(self):
        return self.rng.randrange(4 * 86400, 8 * 86400)

    def _update_span(self):
        # More often than a nurse would: each update is a chance to cut during a settings save.
        return self.rng.randrange(2 * 86400, 6 * 86400)

    # -- planning a run ---------------------------------------------------------------------

    def _script(self, start, end, fill, final):
        name, doc, moves, h, path = self.active
        s_txt, s_utc = start
        e_txt, e_utc = end
        lines = [f"schedule {path}", f"start {s_txt}", f"end {e_txt}"]
        if fill:
            lines.append("fill")
        acts = []
        for t, i in planner.occurrences(doc, s_utc - 6 * 3600, e_utc):
            d = next(x for x in doc["dose"] if x["id"] == i)
            for when, what in behaviour(self.seed, t, d):
                acts.append((when, what))
        day = s_utc // 86400
        while day * 86400 < e_utc:
            rnd = random.Random(f"{self.seed}/prn/{day}")
            if rnd.random() < 0.2:
                acts.append((day * 86400 + rnd.randrange(86400), "hold"))
            day += 1
        # the gateway: acknowledge what the host has stored, once or twice a run
        for _ in range(self.rng.choice((0, 1, 1, 2))):
            if self.max_seq:
                acts.append((s_utc + self.rng.randrange(0, 6 * 3600), f"ack {self.max_seq}"))
        if not final and self.next_update < e_utc:
            target = self.versions[self.update_to]
            acts.append((max(self.next_update, s_utc + 60), f"schedule {target[4]}"))
        out = []
        for when, what in sorted(acts):
            if when < s_utc or when >= e_utc:
                continue
            txt, back = self.wall.text(when)
            if back < s_utc:
                continue
            out.append(f"{txt} {what}")
        return "\n".join(lines + out) + "\n"

    def _kill_plan(self, update):
        """("uniform", deadline) or ("event", deadline, kind, nth, extra s) or ("rotation",
        deadline, records to let through, extra s). A run that delivers a new schedule is
        killed in the 0-3 ms after it says so (the A/B save, the log sync, the reboot) half the
        time."""
        deadline = self.rng.uniform(0.0, self.max_delay)
        x = self.rng.random()
        if update and self.rng.random() < 0.5:
            extra = self.rng.uniform(0, 0.003)
            return ("event", self.max_delay + 1.0, "schedule_update", 1, extra)
        if x < 0.45:
            return ("uniform", deadline)
        deadline = self.rng.uniform(0.3, self.max_delay) if self.max_delay > 0.3 else deadline
        extra = self.rng.uniform(0, 0.003)
        if x < 0.9:
            return ("event", deadline, self.rng.choice(TRIGGERS), self.rng.randint(1, 3), extra)
        last = self.last_seg_count
        left = SEG_RECORDS - last if last else SEG_RECORDS
        return ("rotation", deadline, max(0, left - 1 - self.rng.randint(0, 1)), extra)

    # -- one run ----------------------------------------------------------------------------

    def run_once(self, final=False):
        gap = 0 if (self.rng.random() < 0.3 or self.fill_pending) else self.rng.randrange(3 * 3600)
        start = self.wall.at_or_after(self.reached + gap)
        end = self.wall.at_or_after(start[1] + (86400 if final else 3 * 86400))
        fill = self.fill_pending
        script = self._script(start, end, fill, final)
        update = " schedule " in script  # an action line (the head line starts the line)
        sp = self.root / "run.txt"
        sp.write_text(script)
        before = self.root / "before"
        if self.keep_failures:
            if before.exists():
                shutil.rmtree(before)
            shutil.copytree(self.state, before)
        plan = ("none", None) if final else self._kill_plan(update)
        out, err, rc, killed, t_kill = self._spawn(sp, plan)
        self.n["runs"] += 1
        if killed:
            self.n["cuts"] += 1
            self.n["kill_" + plan[0]] += 1
        else:
            self.n["clean_ends"] += 1
        cut_no = self.n["cuts"]
        known = len(self.failures)
        self.check(out, err, rc, killed, start, fill, cut_no, plan)
        if self.keep_failures and len(self.failures) > known:
            self._keep(cut_no, killed, script, out, err, plan)
        return killed

    def _spawn(self, script, plan):
        env = dict(os.environ, MICROPYPATH=f".frozen:{self.firmware}")
        t0 = time.monotonic()
        p = subprocess.Popen(
            [self.mp, "-m", "sim.scenario", str(script), str(self.state)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        lines = []
        errs = []
        fire = threading.Event()
        mode = plan[0]
        seen = Counter()
        rec_lines = [0]
        sink_probe = _RecordProbe()

        def reader():
            assert p.stdout is not None
            for raw in p.stdout:
                line = raw.decode(errors="replace")
                lines.append(line)
                if not line.startswith("EV "):
                    continue
                parts = line.split(" ", 4)
                kind = parts[2]
                seen[kind] += 1
                if mode == "event" and kind == plan[2] and seen[kind] == plan[3]:
                    _spin(plan[4])
                    fire.set()
                elif mode == "rotation":
                    rec_lines[0] += sink_probe.records(kind, parts[4] if len(parts) > 4 else "")
                    if rec_lines[0] >= plan[2]:
                        _spin(plan[3])
                        fire.set()

        def ereader():
            assert p.stderr is not None
            errs.append(p.stderr.read().decode(errors="replace"))

        th = threading.Thread(target=reader, daemon=True)
        te = threading.Thread(target=ereader, daemon=True)
        th.start()
        te.start()
        killed = False
        t_kill = None
        if mode != "none":
            deadline = t0 + plan[1]
            while p.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0 or fire.is_set():
                    break
                fire.wait(min(left, 0.05))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                killed = True
                t_kill = time.monotonic() - t0
        try:
            rc = p.wait(timeout=600)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            rc = p.wait()
        th.join(10)
        te.join(10)
        self.real += time.monotonic() - t0
        if killed and rc != -signal.SIGKILL:
            killed = False  # it ended by itself between the check and the kill
        return "".join(lines), "".join(errs), rc, killed, t_kill

    def _keep(self, cut_no, killed, script, out, err, plan):
        # Named by the cut; a run that was not killed is the one after that cut ("+").
        d = self.root / "failures" / (f"cut-{cut_no:04d}" + ("" if killed else "+"))
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        (d / "script.txt").write_text(script)
        (d / "stdout.txt").write_text(out)
        (d / "stderr.txt").write_text(err)
        (d / "kill.txt").write_text(repr(plan) + "\n")
        if (self.root / "before").exists():
            shutil.copytree(self.root / "before", d / "before")
        shutil.copytree(self.state, d / "after")

    # -- the checks -------------------------------------------------------------------------

    def fail(self, cut_no, what, detail):
        self.violations[what] += 1
        self.failures.append((cut_no, what, detail))
        self.say(f"VIOLATION cut {cut_no}: {what}: {detail}")

    def check(self, out, err, rc, killed, start, fill, cut_no, plan):
        ev = [ln.split(" ", 4) for ln in out.splitlines() if ln.startswith("EV ")]
        self._check_run(out, err, rc, killed, ev, cut_no)
        scan = LogScan(self.state)
        self._check_log(scan, cut_no, ev)
        self._check_world(cut_no)
        self._advance(ev, scan, start, fill)
        before = self.active
        self._check_settings(ev, cut_no)  # after _advance: a new dose timing wants a refill
        if killed and any(e[2] == "schedule_update" for e in ev):
            if not any(e[2] == "reboot" for e in ev):
                kept = "the new one" if self.active is not before else "the old one"
                self.where[f"during a schedule save: {kept} in force after"] += 1
        if killed:
            self._where(ev, plan, scan)

    def _check_run(self, out, err, rc, killed, ev, cut_no):
        problems = []
        if "Traceback" in out or "Traceback" in err:
            problems.append("Traceback: " + (err or out)[-600:])
        for e in ev:
            detail = e[4] if len(e) > 4 else ""
            if e[2] == "fault" and ("crashed" in detail or "watchdog" in detail):
                problems.append(" ".join(e).strip())
        ends = [ln for ln in out.splitlines() if ln.startswith("END")]
        if not killed and (rc != 0 or not ends):
            problems.append(f"rc={rc} end={ends}")
        if problems:
            self.fail(cut_no, "run_failed", " | ".join(problems))
        for e in ev:
            if e[2] == "replayed":
                self.n["replayed_boots"] += 1
                self.n["replayed_records"] += int(e[4]) if len(e) > 4 else 0
            elif e[2] == "recovered":
                self.n["recovered_moves"] += 1
            elif e[2] == "ack":
                self.n["acks"] += 1
                try:
                    self.acked = max(self.acked, int(e[4].split("->")[1]))
                except (IndexError, ValueError):
                    pass

    def _check_log(self, scan, cut_no, ev):
        if scan.state == "bad":
            self.fail(cut_no, "log_state_bad", "log/state unreadable or CRC wrong")
        # damage found after the last run must have been reported and repaired by this boot
        reported = set()
        for seq in sorted(self._all_present(scan)):
            r = logrec.decode(self._raw(scan, seq))
            if r and r[2] in (logrec.LOG_TRUNCATED, logrec.LOG_QUARANTINED) and seq > self.max_seq:
                reported.add(r[5])
        for first, reason in list(self.pending_damage.items()):
            still = any(s[0] == first and s[2] for s in scan.segs)
            if first not in reported or still:
                self.fail(cut_no, "log_damaged", f"segment {first:08x}: {reason}")
            del self.pending_damage[first]
        present = {}
        prev = 0
        for first, recs, damaged in scan.segs:
            if damaged:
                self.n["damaged_segments"] += 1
                self.pending_damage[first] = damaged
            for seq, raw in recs:
                if seq <= prev:
                    self.fail(cut_no, "seq_order", f"seq {seq} after {prev} (segment {first:08x})")
                prev = seq
                present[seq] = raw
        self.n["quarantined_files"] = len(scan.bad)
        for seq in sorted(self.present - present.keys()):
            if seq <= self.acked:
                self.n["records_retired"] += 1
            else:
                self.fail(cut_no, "record_lost", f"seq {seq} ({_show(self.host[seq])}) is gone")
        for seq, raw in present.items():
            old = self.host.get(seq)
            if old is not None and old != raw:
                self.fail(
                    cut_no,
                    "record_changed",
                    f"seq {seq} was {_show(old)}, now {_show(raw)}",
                )
        new = sorted(s for s in present if s not in self.host)
        for seq in new:
            if seq <= self.max_seq:
                self.fail(
                    cut_no,
                    "seq_reused",
                    f"new record {_show(present[seq])} at or below seq {self.max_seq}",
                )
        for seq in new:
            self.host[seq] = present[seq]
            self._record(logrec.decode(present[seq]), cut_no)
        if new:
            self.max_seq = max(self.max_seq, new[-1])
        self.present = set(present)
        self.last_seg_count = len(scan.segs[-1][1]) if scan.segs else 0
        self.n["segments_max"] = max(self.n["segments_max"], len(scan.segs))
        self.seg_firsts |= {s[0] for s in scan.segs}
        self.n["segment_files_seen"] = len(self.seg_firsts)
        self.n["segments_deleted_by_retention"] = len(self.seg_firsts) - len(scan.segs)
        self._lost_at_cut(ev, new, cut_no)

    @staticmethod
    def _all_present(scan):
        return [seq for _, recs, _ in scan.segs for seq, _ in recs]

    @staticmethod
    def _raw(scan, seq):
        for first, recs, _ in scan.segs:
            if first <= seq < first + len(recs):
                return recs[seq - first][1]
        return b""

    def _record(self, r, cut_no):
        seq, utc, kind, occ, dose, detail, small = r
        self.kinds[logrec.NAMES[kind] if kind < len(logrec.NAMES) else kind] += 1
        if kind == logrec.SCHEDULE and detail:
            v = self.by_prefix.get(detail)
            if v is None:
                self.fail(cut_no, "settings_mixed", f"log names schedule {detail:08x}")
            else:
                self.ids = [d["id"] for d in v[1]["dose"]]
            return
        if kind == logrec.FILLED:
            self.epoch += 1
            self.opened = {}
            return
        if dose is None or dose >= len(self.ids):
            return
        key = (occ, self.ids[dose])
        label = f"{_local(self.wall, occ)} {self.ids[dose]}"
        if kind == logrec.OPENED:
            self.n["opened"] += 1
            if key in self.terminal:
                self.fail(
                    cut_no,
                    "opened_after_terminal",
                    f"seq {seq}: compartment {detail} for {label} after {self.terminal[key]}",
                )
            other = self.opened.get(detail)
            if other is not None and other != key:
                self.fail(
                    cut_no,
                    "compartment_twice",
                    f"seq {seq}: compartment {detail} for {label}, already opened for "
                    f"{_local(self.wall, other[0])} {other[1]} (fill {self.epoch})",
                )
            self.opened[detail] = key
        elif kind in (logrec.AVAILABLE, logrec.DUE):
            if key in self.terminal:
                self.fail(
                    cut_no,
                    "offered_after_terminal",
                    f"seq {seq}: {logrec.NAMES[kind]} for {label} after {self.terminal[key]}",
                )
        elif kind in TERMINAL:
            self.n[TERMINAL[kind]] += 1
            if kind == logrec.TAKEN and utc - occ > 30 * 60:
                self.n["taken_late"] += 1
            if key in self.terminal:
                self.fail(
                    cut_no,
                    "double_terminal",
                    f"seq {seq}: {TERMINAL[kind]} for {label}, already {self.terminal[key]}",
                )
            else:
                self.terminal[key] = f"{TERMINAL[kind]} (seq {seq})"

    def _lost_at_cut(self, ev, new, cut_no):
        """Records whose events the run printed (so `append()` had returned) but which did not
        reach the flash. Chatter may wait for a sync (the wear budget); anything else is
        flushed before the event is printed, so losing one is a violation."""
        probe = _RecordProbe()
        for e in ev:
            probe.records(e[2], e[4] if len(e) > 4 else "")
        durable = Counter()
        for seq in new:
            r = logrec.decode(self.host[seq])
            if r and r[2] not in LOG_REPORTS:
                durable[r[2]] += 1
        lost = probe.kinds - durable  # Counter subtraction keeps the positive counts
        self.lost_at_cut[sum(lost.values())] += 1
        urgent = {logrec.NAMES[k]: n for k, n in lost.items() if k not in logrec.CHATTER}
        if urgent:
            self.fail(cut_no, "printed_not_durable", f"printed, not on flash: {urgent}")

    def _check_settings(self, ev, cut_no):
        copies = read_ab(self.state)
        sent = {self.active[3]}
        for e in ev:
            if e[2] == "schedule_update" and len(e) > 4:
                for v in self.versions:
                    if v[3].startswith(e[4].strip()):
                        sent.add(v[3])
        for slot, _gen, doc, damaged in copies:
            if damaged:
                self.fail(cut_no, "settings_mixed", f"schedule.{slot}: CRC or layout damaged")
                continue
            try:
                h = hash_of(schedule.validate(doc))
            except schedule.ScheduleError as e:
                self.fail(cut_no, "settings_mixed", f"schedule.{slot} invalid: {e}")
                continue
            if h not in self.by_hash:
                self.fail(cut_no, "settings_mixed", f"schedule.{slot}: unknown hash {h}")
        doc = active_schedule(self.state)
        if doc is None:
            self.fail(cut_no, "settings_mixed", "no valid schedule copy")
        else:
            h = hash_of(schedule.validate(doc))
            if h not in sent:
                self.fail(cut_no, "settings_mixed", f"active schedule {h} is neither old nor new")
            elif h != self.active[3]:
                old = self.active
                self.active = self.by_hash[h]
                self.n["schedule_updates"] += 1
                if _timing(old[1]) != _timing(self.active[1]):
                    # The nurse brings a new loading map: refill at the next boot.
                    self.fill_pending = True
                self.update_to = (self.versions.index(self.active) + 1) % len(self.versions)
                self.next_update = self.reached + self._update_span()
        for name in ("doses.json", "journal.json"):
            p = self.state / name
            if p.exists():
                try:
                    json.loads(p.read_text())
                except ValueError:
                    self.fail(cut_no, "state_unreadable", name)
        p = self.state / "sim-nvs.json"
        if p.exists():
            try:
                nvs = json.loads(p.read_text())
                if "sched" in nvs:
                    h = hash_of(schedule.validate(json.loads(nvs["sched"])))
                    if h not in self.by_hash:
                        self.fail(cut_no, "settings_mixed", f"NVS copy: unknown hash {h}")
            except (ValueError, schedule.ScheduleError) as e:
                self.fail(cut_no, "state_unreadable", f"sim-nvs.json: {e}")

    def _check_world(self, cut_no):
        try:
            journal = json.loads((self.state / "journal.json").read_text())
            world = json.loads((self.state / "sim-motor.json").read_text())
        except (OSError, ValueError):
            return
        if not isinstance(journal, dict) or "at" not in journal:
            if isinstance(journal, dict) and "moving" in journal:
                self.n["journal_moving_after_cut"] += 1
            return
        slot = journal["at"]
        want = (slot * SPR + COMPARTMENTS) // (2 * COMPARTMENTS)
        got = world["pos"] % SPR
        d = (got - want + SPR // 2) % SPR - SPR // 2
        if abs(d) > 1:
            self.fail(
                cut_no,
                "carousel_mismatch",
                f"journal at slot {slot} (half-step {want}), rotor at {got}",
            )

    def _advance(self, ev, scan, start, fill):
        """Where the device had got to, for the next run's start; what is pending."""
        reached = start[1]
        for e in ev:
            t = iso_utc(e[1])
            if t is not None:
                reached = max(reached, t)
        for _, recs, _ in scan.segs[-2:]:
            for _, raw in recs[-20:]:
                r = logrec.decode(raw)
                if r and r[1]:
                    reached = max(reached, r[1])
        try:
            st = json.loads((self.state / "doses.json").read_text())
        except (OSError, ValueError):
            st = {}
        if st.get("seen"):
            reached = max(reached, st["seen"])
        self.reached = max(self.reached, reached)
        f = st.get("fill")
        if fill and f is not None and f >= start[1]:
            self.fill_pending = False
            self.n["fills"] += 1
            self.refill_after = self._refill_span()
        elif not self.fill_pending and (f is None or self.reached - f > self.refill_after):
            self.fill_pending = True

    def _where(self, ev, plan, scan):
        if not ev:
            self.where["before any event (interpreter start, boot)"] += 1
        if scan.segs and len(scan.segs[-1][1]) == SEG_RECORDS:
            self.where["newest segment full: in a rotation"] += 1
        elif scan.segs and len(scan.segs[-1][1]) == 1 and len(scan.segs) > 1:
            self.where["newest segment has 1 record: just rotated"] += 1
        try:
            journal = json.loads((self.state / "journal.json").read_text())
        except (OSError, ValueError):
            journal = {}
        if isinstance(journal, dict) and "moving" in journal:
            self.where["mid-move (journal says moving)"] += 1
        if ev:
            self.where[f"after '{ev[-1][2]}'"] += 1
        if plan[0] == "rotation":
            self.where["aimed at a segment rotation"] += 1

    # -- the whole campaign -----------------------------------------------------------------

    def run(self, cuts):
        t0 = time.monotonic()
        while self.n["cuts"] < cuts:
            self.run_once()
            if self.n["runs"] > 3 * cuts + 20:
                break  # runs keep ending by themselves: do not loop for ever
        self.run_once(final=True)
        self.wall_time = time.monotonic() - t0
        return self.summary()

    def summary(self):
        return {
            "seed": self.seed,
            "cuts": self.n["cuts"],
            "runs": self.n["runs"],
            "clean_ends": self.n["clean_ends"],
            "simulated_days": round((self.reached - self.t0) / 86400, 1),
            "first": _local(self.wall, self.t0),
            "last": _local(self.wall, self.reached),
            "real_s": round(getattr(self, "wall_time", self.real), 1),
            "violations": {k: self.violations[k] for k in INVARIANTS},
            "failures": self.failures[:20],
            "counts": dict(self.n),
            "kills": dict(self.where),
            "records_by_kind": dict(self.kinds),
            "records_lost_at_a_cut": dict(sorted(self.lost_at_cut.items())),
            "records_seen": len(self.host),
            "max_seq": self.max_seq,
            "acked": self.acked,
        }


class _RecordProbe:
    """How many dose-log records an event line stands for (the firmware's own LogSink)."""

    def __init__(self):
        self.count = 0
        self.kinds = Counter()  # record kind -> records
        self.sink = LogSink(self, _NoClock())

    def append(self, utc, kind, *args):
        self.count += 1
        self.kinds[kind] += 1

    def records(self, kind, detail):
        n = self.count
        self.sink(kind, None, detail.rstrip("\n"))
        return self.count - n


class _NoClock:
    def valid(self):
        return False

    def now(self):
        return 0


def _timing(doc):
    """What decides the compartments' order: each dose's id, time, days, reminder_only."""
    return sorted((d["id"], d["time"], str(d["days"]), d["reminder_only"]) for d in doc["dose"])


def _spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _show(raw):
    r = logrec.decode(raw)
    if r is None:
        return "<undecodable>"
    seq, utc, kind, occ, dose, detail, small = r
    name = logrec.NAMES[kind] if kind < len(logrec.NAMES) else str(kind)
    return f"#{seq} {name} utc={utc} occ={occ} dose={dose} detail={detail} small={small}"


def _local(wall, utc):
    if not utc:
        return "-"
    return wall.text(utc)[0]


# -- command line -----------------------------------------------------------------------------


def _job(args):
    cuts, seed, state, max_delay, verbose, firmware = args
    say = (lambda m: print(m, flush=True)) if verbose else None
    c = Campaign(state, seed=seed, max_delay=max_delay, log=say, firmware=firmware)
    return c.run(cuts)


def merge(results):
    out = {
        "seeds": [r["seed"] for r in results],
        "cuts": sum(r["cuts"] for r in results),
        "runs": sum(r["runs"] for r in results),
        "clean_ends": sum(r["clean_ends"] for r in results),
        "simulated_days": round(sum(r["simulated_days"] for r in results), 1),
        "violations": {k: sum(r["violations"][k] for r in results) for k in INVARIANTS},
        "failures": [f for r in results for f in r["failures"]][:20],
        "records_seen": sum(r["records_seen"] for r in results),
    }
    for key in ("counts", "kills", "records_by_kind", "records_lost_at_a_cut"):
        c = Counter()
        for r in results:
            c.update(r[key])
        out[key] = dict(sorted(c.items(), key=lambda kv: str(kv[0])))
    return out


def report(s, real_s):
    lines = []
    lines.append(
        f"campaign: {s['cuts']} cuts in {s['runs']} runs ({s['clean_ends']} ended cleanly), "
        f"{s['simulated_days']} simulated days, {real_s:.0f} s real"
    )
    lines.append("invariants (violations):")
    for k in INVARIANTS:
        lines.append(f"  {k:<24} {s['violations'][k]}")
    lines.append("counts:")
    for k, v in s["counts"].items():
        lines.append(f"  {k:<32} {v}")
    lines.append("where the kills landed:")
    for k, v in sorted(s["kills"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<44} {v}")
    lost = s["records_lost_at_a_cut"]
    lines.append(f"records printed but not durable at a cut (records: cuts): {lost}")
    lines.append(f"records read back by kind: {s['records_by_kind']}")
    for f in s["failures"]:
        lines.append(f"FAILURE cut {f[0]}: {f[1]}: {f[2]}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuts", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--state", default=str(ROOT / "build" / "campaign"))
    ap.add_argument("--max-delay", type=float, default=2.0, help="seconds (real) before a kill")
    ap.add_argument("--jobs", type=int, default=1, help="campaigns in parallel (seeds S, S+1..)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--firmware", help="run another firmware tree (default: firmware/)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    jobs = max(1, a.jobs)
    per = [a.cuts // jobs + (1 if i < a.cuts % jobs else 0) for i in range(jobs)]
    args = [
        (per[i], a.seed + i, os.path.join(a.state, f"job{i}"), a.max_delay, a.verbose, a.firmware)
        for i in range(jobs)
    ]
    if jobs == 1:
        results = [_job(args[0])]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as ex:
            results = list(ex.map(_job, args))
    s = merge(results)
    s["jobs"] = results
    real = time.monotonic() - t0
    s["real_s"] = round(real, 1)
    s["command"] = " ".join(["python tests/campaign.py"] + (argv or sys.argv[1:]))
    s["date"] = datetime.date.today().isoformat()
    print(report(s, real))
    if a.json:
        Path(a.json).write_text(json.dumps(s, indent=1, default=str))
    return 1 if any(s["violations"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
