"""Boot of the dispenser on any board: time from the RTC, the stored schedule, then the tasks.

The ESP32's main.py and the simulator call the same `start()`, so the simulator runs the
firmware's own boot path, not a re-implementation of it.
"""

import gc

from dispenser.app import App
from dispenser.ds3231 import DS3231
from dispenser.eventlog import LogSink
from dispenser.settings import ABStore

SCHEDULE = "schedule"  # schedule.a / schedule.b: see dispenser.settings


def read_rtc(board, emit):
    """UTC from the DS3231, or None: then the device shows "time missing", dispenses nothing."""
    try:
        utc = DS3231(board.i2c).read()
    except OSError:
        emit("fault", None, "E3 rtc not answering")
        return None
    if utc is None:
        emit("rtc_lost", None, "oscillator stopped")
    return utc


def load_schedule(store, emit):
    ab = ABStore(store.root, store.fs)
    doc = ab.load(SCHEDULE)
    if ab.fallbacks:
        emit("settings_fallback", None, "schedule")
    if doc is None:
        emit("no_schedule", None, "")
        return None
    from dosiscore import schedule  # large: imported only here, then released

    try:
        doc = schedule.validate(doc)
    except schedule.ScheduleError as e:
        emit("fault", None, "stored schedule invalid: %s" % e)
        return None
    emit("schedule", None, schedule.content_hash(doc)[:12])
    return doc


_NVS_LEN = "schedlen"
_NVS_BLOB = "sched"


def nvs_keep_schedule(board, doc, emit):
    """Keep a copy of the active schedule in NVS (only written when it differs), so that a
    filesystem that will not mount still leaves the device reminding."""
    from dosiscore import schedule

    data = schedule.canonical(doc)
    try:
        nvs = board.nvs()
        if nvs_schedule_bytes(nvs) == data:
            return
        nvs.set_blob(_NVS_BLOB, data)
        nvs.set_i32(_NVS_LEN, len(data))
        nvs.commit()
        emit("nvs_copy", None, len(data))
    except (OSError, AttributeError) as e:
        emit("fault", None, "E9 nvs copy failed: %s" % e)


def nvs_schedule_bytes(nvs):
    try:
        n = nvs.get_i32(_NVS_LEN)
        buf = bytearray(n)
        nvs.get_blob(_NVS_BLOB, buf)
        return bytes(buf)
    except (OSError, ValueError):
        return None


def nvs_schedule(board, emit):
    """The schedule from NVS (validated), or None."""
    import json

    try:
        data = nvs_schedule_bytes(board.nvs())
    except (OSError, AttributeError):
        data = None
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    from dosiscore import schedule

    try:
        return schedule.validate(doc)
    except schedule.ScheduleError:
        return None


def open_log(board, utc):
    """The dose log on the board's flash, recovered (torn tail cut, corrupt segment set aside:
    each reported in the log itself). None if it cannot be opened at all: dispensing goes on."""
    from dispenser.doselog import DoseLog

    try:
        log = DoseLog(board.fs(), "log", ticks_ms=board.clock.ticks_ms)
        log.recover(utc or 0)
        return log
    except (OSError, ValueError, AttributeError):
        return None


_REPLAY = 1500  # records read back at boot: more than a week at 50 events a day
_CHUNK = 40


def replay_terminal(log, machine, doc, store=None):
    """Feed the terminal records of the log's recent past into the dose state machine (in
    small chunks: no big list on the heap). Returns how many were new to the stored state.

    A record's dose index belongs to the schedule in force when it was written: each boot
    logs a SCHEDULE record with that schedule's hash prefix. Records under this schedule are
    read with its dose list; records under another one with that schedule's list if it is
    still on flash (the other A/B copy in `store`: the schedule before a change), so a dose
    given under the old schedule is known after a change even if the stored state is not;
    records under a schedule no longer stored are left out."""
    from dosiscore import logrec, schedule

    ids = [d["id"] for d in doc["dose"]]
    mine = logrec.hash_prefix(schedule.content_hash(doc))
    tables = None  # hash prefix -> dose ids of the stored schedules, read when first needed
    table = ids  # records before the window's first SCHEDULE record: taken as this one's
    st = log.stats()
    seq = max(st["first"] or 1, st["durable"] - _REPLAY + 1)
    new = 0
    terminal = {logrec.TAKEN: "taken", logrec.MISSED: "missed", logrec.SKIPPED: "skipped"}
    while seq <= st["durable"]:
        recs = log.read(seq, _CHUNK)
        if not recs:
            break
        for r in recs:
            if r is None:
                continue
            seq = r[0] + 1
            if r[2] == logrec.SCHEDULE and r[5]:
                if r[5] == mine:
                    table = ids
                else:
                    if tables is None:
                        tables = _stored_dose_ids(store, mine)
                    table = tables.get(r[5])
            if table is None:
                continue
            state = terminal.get(r[2])
            dose = r[4]
            if state is not None and dose is not None and dose < len(table) and r[3]:
                if machine.merge_terminal(r[3], table[dose], state, "log", r[1]):
                    new += 1
    return new


def _stored_dose_ids(store, mine):
    """{hash prefix: dose ids} of the schedule copies on flash other than the one in force
    (hash prefix `mine`). One copy at a time is parsed, hashed and dropped: only its dose ids
    stay on the heap. A copy whose CRC fails is left out."""
    out = {}
    if store is None or not store.usable():
        return out
    from dosiscore import logrec, schedule

    ab = ABStore(store.root, store.fs)
    for slot in ("a", "b"):
        got = ab._read(SCHEDULE, slot)
        if not got:
            continue
        try:
            # It is stored normalised (validated before it was saved); the hash tells whether
            # it is the schedule a SCHEDULE record names.
            h = logrec.hash_prefix(schedule.content_hash(got[1]))
            if h != mine:
                out[h] = [d["id"] for d in got[1]["dose"]]
        except (KeyError, TypeError, ValueError):
            pass
        got = None
        gc.collect()
    return out


class MemStore:
    """A store in RAM: the degraded mode when the filesystem cannot be used."""

    root = ""
    fs = None

    def __init__(self):
        self.data = {}
        self.writes = 0

    def load(self, name):
        return self.data.get(name)

    def save(self, name, obj):
        self.data[name] = obj
        self.writes += 1

    def usable(self):
        return False


def start(board, store, user_emit, link=None):
    """Set the clock, load the schedule, create the app's tasks. Returns the App or None.

    Never hangs and never gives up while any schedule exists: a filesystem that cannot be
    used (or a schedule file that is gone or corrupt) falls back to the copy in NVS, with a
    fault shown and reported (E9). `link` (dispenser.link.Link), if given, is told about the
    log, the schedule and the app, and hears every event (with its log sequence number)."""
    sinks = []  # the dose log's sink, once the log is open

    def emit(kind, occ, detail):  # every event goes to the dose log, then to the links
        before = log.next_seq if log is not None else 0
        for sink in sinks:
            try:
                sink(kind, occ, detail)
            except MemoryError:  # a fragmented heap may refuse the log: never the dose loop
                lost[0] += 1
        user_emit(kind, occ, detail)
        if link is not None:
            seq = log.next_seq - 1 if log is not None and log.next_seq != before else None
            link.on_event(kind, occ, detail, seq)

    lost = [0]

    early = []  # what happens before the log is open is logged right after it opens
    utc = read_rtc(board, lambda k, o, d: early.append((k, o, d)))
    if utc is not None:
        board.clock.set(utc, "rtc")
        board.clock.changed.clear()
    degraded = None
    log = None
    if not store.usable():
        degraded = "filesystem unusable"
        store = MemStore()
    else:
        log = open_log(board, utc)
    if log is not None:
        sinks.append(LogSink(log, board.clock))
    if link is not None:
        link.log = log
        link.emit_fn = emit
    emit("boot", None, board.name)
    for k, o, d in early:
        emit(k, o, d)
    doc = None if degraded else load_schedule(store, emit)
    if doc is None:
        doc = nvs_schedule(board, emit)
        if doc is not None:
            degraded = degraded or "schedule file lost"
            emit("schedule", None, "from NVS")
    elif hasattr(board, "nvs"):
        nvs_keep_schedule(board, doc, emit)
    gc.collect()
    if doc is None:
        return None
    if link is not None:
        from dosiscore import schedule

        link.sched_doc = doc
        link.sched_hash = schedule.content_hash(doc)
    for sink in sinks:
        sink.set_schedule(doc)
    app = App(board, doc, store, emit, log=log)
    app.log_lost = lost
    saved = store.load("settings.json")
    if saved:
        from dispenser.commands import apply_settings

        apply_settings(app, saved)
    if link is not None:
        link.app = app
    if log is not None:
        n = replay_terminal(log, app.doses, doc, store)
        if n:
            emit("replayed", None, n)
    if degraded:
        app.fault("E9", degraded + ": reminding from the NVS copy")
    _release_validator()
    app.start()
    return app


def _release_validator():
    """The validator (about 20 KB of heap) is only needed when a schedule arrives: drop it."""
    import sys

    sys.modules.pop("dosiscore.schedule", None)
    import dosiscore

    if hasattr(dosiscore, "schedule"):
        delattr(dosiscore, "schedule")
    gc.collect()
