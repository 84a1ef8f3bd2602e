"""Dose log on a real directory: runs under pytest (CPython) and mprun (MicroPython)."""

import os
import sys
import time

# pytest puts tests/fw on CPython's path but not firmware/ (MICROPYPATH has it): append it, a
# no-op wherever `dispenser` is already importable.
sys.path.append(__file__.replace("\\", "/").rsplit("/", 3)[0] + "/firmware")

from dispenser.doselog import DoseLog, OsFS
from dosiscore import logrec

REC = logrec.RECORD_SIZE
T0 = 1767225600  # 2026-01-01 00:00 UTC
_made = [0]


# -- a temporary directory on both interpreters (MicroPython has no tempfile) --------------


def _tmpdir():
    ns = getattr(time, "time_ns", None)
    stamp = ns() if ns is not None else int(time.time() * 1000000)
    for _ in range(100):
        _made[0] += 1
        path = "/tmp/dosis-log-%d-%d" % (stamp % 1000000007, _made[0])
        try:
            os.mkdir(path)
            return path
        except OSError:  # taken: try the next name
            continue
    raise OSError("no temporary directory under /tmp")


def _rmtree(path):
    for name in os.listdir(path):
        p = path + "/" + name
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(path)


class Ticks:
    """A millisecond clock for the sync budget: moves `step` ms each time it is read (the
    default, 2 minutes, earns a sync token on every read: a budget that never runs out), or
    only when a test moves it (step=0)."""

    def __init__(self, step=120000):
        self.ms = 0
        self.step = step

    def __call__(self):
        self.ms += self.step
        return self.ms


def _open(d, utc=T0, **kw):
    """A log on directory d, recovered as at boot (a new object is a reboot)."""
    ticks = kw.pop("ticks", None) or Ticks()
    log = DoseLog(OsFS(d), "log", ticks_ms=ticks, **kw)
    log.recover(utc)
    return log


def _fill(log, n, base=T0):
    return [log.append(base + i, logrec.DUE, base + 3600, i % 12, i) for i in range(n)]


def _seqs(log, from_seq=0):
    return [r[0] for r in log.read(from_seq, 1000000)]


def _kinds(log):
    return [r[2] for r in log.read(0, 1000000)]


def _files(d):
    names = os.listdir(d + "/log")
    names.sort()
    return names


def _flip(path, offset, mask=0x01):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def _size(path):
    return os.stat(path)[6]


def _increasing(seqs):
    for i in range(1, len(seqs)):
        if seqs[i] <= seqs[i - 1]:
            return False
    return True


# -- append and read ---------------------------------------------------------------------------


def test_append_and_read_across_segment_rotation():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8)
        assert _fill(log, 30) == list(range(1, 31))
        assert _files(d) == [
            "00000001.seg",
            "00000009.seg",
            "00000011.seg",
            "00000019.seg",
            "state",
        ]
        assert _size(d + "/log/00000001.seg") == 8 * REC
        recs = log.read(1, 100)
        assert len(recs) == 30
        for i in range(30):
            assert recs[i] == (i + 1, T0 + i, logrec.DUE, T0 + 3600, i % 12, i, 0)
        st = log.stats()
        assert (st["first"], st["last"], st["records"], st["segments"]) == (1, 30, 30, 4)
        assert st["bytes"] == 30 * REC and st["pending"] == 0
    finally:
        _rmtree(d)


def test_read_limits():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8)
        _fill(log, 30)
        assert _seqs(log) == list(range(1, 31))
        assert [r[0] for r in log.read(5, 3)] == [5, 6, 7]
        assert [r[0] for r in log.read(7, 4)] == [7, 8, 9, 10]  # across a segment boundary
        assert [r[0] for r in log.read(29, 10)] == [29, 30]
        assert [r[0] for r in log.read(0, 2)] == [1, 2]
        assert log.read(31, 5) == []
        assert log.read(1, 0) == []
        assert len(log.read(1, 17)) == 17  # more than one internal chunk
        # The raw form for the serial link: whole records, and where to go on from.
        buf = bytearray(5 * REC)
        n, nxt = log.read_into(buf, 6)
        assert (n, nxt) == (5, 11)
        assert [logrec.decode(buf, i * REC)[0] for i in range(5)] == [6, 7, 8, 9, 10]
        assert log.read_into(buf, 31) == (0, 31)
    finally:
        _rmtree(d)


def test_seq_strictly_increases_across_reopen():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8)
        _fill(log, 5)
        log = _open(d, seg_records=8)  # a reboot without close(): the same segment goes on
        assert log.append(T0, logrec.BOOT, 0, None, 0x000100, 1) == 6
        log.close()
        log = _open(d, seg_records=8)
        assert log.append(T0, logrec.BOOT) == 7
        for _ in range(10):  # reboots across rotations
            log = _open(d, seg_records=8)
            _fill(log, 3)
        seqs = _seqs(log)
        assert seqs == list(range(1, 38))  # nothing to repair: no gap either
        assert log.stats()["segments"] == 5
    finally:
        _rmtree(d)


# -- recovery ----------------------------------------------------------------------------------


def test_torn_tail_partial_record_is_truncated_and_reported():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=16)
        _fill(log, 10)
        before = log.read(0, 100)
        seg = d + "/log/00000001.seg"
        with open(seg, "ab") as f:  # the power went during the 11th record
            f.write(b"\x0b\x00\x00\x00" + b"\x00" * 8)
        log = DoseLog(OsFS(d), "log", seg_records=16, ticks_ms=Ticks())
        reports = log.recover(T0 + 100)
        assert reports == [(logrec.LOG_TRUNCATED, 12, 1, 1)]
        assert _size(seg) == 10 * REC
        recs = log.read(0, 100)
        assert recs[:10] == before  # nothing before the tear is lost
        # seq 11 (the torn slot) is never reused; the report says what happened
        assert recs[10] == (12, T0 + 100, logrec.LOG_TRUNCATED, 12, None, 1, 1)
        assert log.append(T0 + 200, logrec.BOOT) == 13
        assert _files(d) == ["00000001.seg", "0000000c.seg", "state"]
        assert _open(d, seg_records=16).recover(T0) == []  # the next boot scans clean
    finally:
        _rmtree(d)


def test_torn_tail_bad_crc_is_truncated_and_reported():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=16)
        _fill(log, 10)
        seg = d + "/log/00000001.seg"
        _flip(seg, 9 * REC + 20)  # the last record's CRC
        log = _open(d, seg_records=16)
        assert _seqs(log) == list(range(1, 10)) + [11]
        last = log.read(11, 1)[0]
        assert (last[2], last[3], last[5], last[6]) == (logrec.LOG_TRUNCATED, REC, 1, 1)
        assert _size(seg) == 9 * REC
    finally:
        _rmtree(d)


def test_torn_only_record_of_newest_segment():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8)
        _fill(log, 9)  # the 9th is alone in 00000009.seg
        _flip(d + "/log/00000009.seg", 4)
        log = _open(d, seg_records=8)
        assert _seqs(log) == list(range(1, 9)) + [10]
        assert _kinds(log)[-1] == logrec.LOG_TRUNCATED
        # Two more boots: the emptied segment is tidied away; no false "lost" alarm.
        log = _open(d, seg_records=8)
        assert log.recover(T0) == []
        assert "00000009.seg" not in _files(d)
        assert _seqs(log) == list(range(1, 9)) + [10]
    finally:
        _rmtree(d)


def test_corrupt_middle_segment_is_quarantined_and_later_ones_still_read():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8)
        _fill(log, 24)  # 00000001, 00000009, 00000011
        _flip(d + "/log/00000009.seg", 2 * REC + 5)  # seq 11's time: a bit gone bad
        log = DoseLog(OsFS(d), "log", seg_records=8, ticks_ms=Ticks())
        reports = log.recover(T0 + 50)
        assert reports == [(logrec.LOG_QUARANTINED, 7, 9, 2)]
        files = _files(d)
        assert "00000009.bad" in files and "00000009.seg" not in files
        assert _size(d + "/log/00000009.bad") == 8 * REC  # kept whole, for a technician
        assert _seqs(log) == list(range(1, 9)) + list(range(17, 26))
        assert log.read(25, 1)[0][2] == logrec.LOG_QUARANTINED
        st = log.stats()
        assert st["quarantined"] == 1 and st["bytes"] == 17 * REC + 8 * REC
        assert log.append(T0, logrec.BOOT) == 26
        assert _open(d, seg_records=8).recover(T0) == []
    finally:
        _rmtree(d)


def test_corrupt_newest_segment_start_is_quarantined_not_truncated():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8)
        _fill(log, 20)  # 00000011 holds 17..20
        _flip(d + "/log/00000011.seg", 0)  # its first record; three valid ones follow
        log = _open(d, seg_records=8)
        assert _seqs(log) == list(range(1, 17)) + [21]  # 17..20 never reused
        r = log.read(21, 1)[0]
        assert (r[2], r[3], r[5], r[6]) == (logrec.LOG_QUARANTINED, 3, 17, 0)
    finally:
        _rmtree(d)


def test_lost_newest_segment_skips_its_seqs():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8)
        _fill(log, 20)
        os.remove(d + "/log/00000011.seg")  # 17..20 vanished with their file
        log = _open(d, seg_records=8)
        seqs = _seqs(log)
        assert seqs == list(range(1, 17)) + [25]  # the whole segment's seqs are skipped
        r = log.read(25, 1)[0]
        assert (r[2], r[3], r[5]) == (logrec.LOG_LOST, 8, 17)
    finally:
        _rmtree(d)


def test_recover_never_raises_on_junk():
    d = _tmpdir()
    try:
        os.mkdir(d + "/log")
        for name, data in (
            ("notes.txt", b"not a segment"),
            ("zzzzzzzz.seg", b"\x00" * 48),  # not a hex name: not ours, left alone
            ("00000005.seg", b"\xff" * 50),  # erased flash, not even whole records
            ("state", b"\x01\x02\x03"),  # damaged state
            ("00000003.seg.tmp", b"half a rewrite"),  # a truncation cut short
            ("state.tmp", b"\x00"),
        ):
            with open(d + "/log/" + name, "wb") as f:
                f.write(data)
        log = DoseLog(OsFS(d), "log", seg_records=8, ticks_ms=Ticks())
        reports = log.recover(T0)
        assert (logrec.LOG_ERROR, 0, 0, logrec.ERR_STATE) in reports
        assert (logrec.LOG_TRUNCATED, 50, 5, 3) in reports
        files = _files(d)
        assert "00000003.seg.tmp" not in files and "state.tmp" not in files
        assert "notes.txt" in files and "zzzzzzzz.seg" in files
        seqs = _seqs(log)
        assert seqs[0] == 8 and _increasing(seqs)  # 5..7 were slots in the junk: not reused
        assert log.append(T0, logrec.BOOT) == seqs[-1] + 1
    finally:
        _rmtree(d)


def test_read_skips_a_record_gone_bad_after_boot():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=16)
        _fill(log, 10)
        _flip(d + "/log/00000001.seg", 4 * REC + 9)
        assert _seqs(log) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    finally:
        _rmtree(d)


class _FlakyFile:
    def __init__(self, f, fs):
        self.f = f
        self.fs = fs

    def write(self, b):
        if self.fs.fail:
            raise OSError(28)
        return self.f.write(b)

    def flush(self):
        return self.f.flush()

    def close(self):
        return self.f.close()


class _FlakyFS(OsFS):
    """Writes to log files fail while `fail` is set (a full or failing flash)."""

    def __init__(self, root):
        OsFS.__init__(self, root)
        self.fail = False

    def open(self, path, mode):
        f = OsFS.open(self, path, mode)
        return _FlakyFile(f, self) if ("w" in mode or "a" in mode) else f


def test_write_failure_never_raises_and_is_reported():
    d = _tmpdir()
    try:
        fs = _FlakyFS(d)
        log = DoseLog(fs, "log", seg_records=8, ticks_ms=Ticks())
        log.recover(T0)
        _fill(log, 5)
        fs.fail = True
        assert log.append(T0, logrec.TAKEN, T0, 1) is None
        assert log.append(T0, logrec.TAKEN, T0, 1) is None
        assert log.ack(100) == 5
        st = log.stats()
        assert st["errors"] >= 2 and st["lost"] >= 2
        fs.fail = False
        seq = log.append(T0 + 9, logrec.MISSED, T0, 1)
        assert seq is not None
        recs = log.read(0, 100)
        seqs = [r[0] for r in recs]
        assert seqs[:5] == [1, 2, 3, 4, 5] and seqs[-1] == seq and _increasing(seqs)
        reported = [(r[5], r[6]) for r in recs[5:-1] if r[2] == logrec.LOG_ERROR]
        assert (28, logrec.ERR_WRITE) in reported  # the failed append
        assert (28, logrec.ERR_STATE) in reported  # the ack that could not be saved
        # The next boot scans clean and keeps counting up.
        log = _open(d, seg_records=8)
        assert log.recover(T0) == []
        assert log.append(T0, logrec.BOOT) == seq + 1
    finally:
        _rmtree(d)


class _BlindFS(OsFS):
    """listdir fails (a flaky directory read at boot)."""

    def listdir(self, path):
        raise OSError(5)


def test_a_failed_listing_never_overwrites_a_segment():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=16)
        _fill(log, 10)
        log.close()
        with open(d + "/log/state", "wb") as f:  # and the state is unreadable too
            f.write(b"junk")
        log = DoseLog(_BlindFS(d), "log", seg_records=16, ticks_ms=Ticks())
        reports = log.recover(T0)  # sees no segment at all: would start again at seq 1
        assert (logrec.LOG_ERROR, 0, 0, logrec.ERR_STATE) in reports
        seq = log.append(T0, logrec.BOOT)
        assert seq is not None and seq > 10
        assert _size(d + "/log/00000001.seg") == 10 * REC  # untouched
        log = _open(d, seg_records=16)  # a normal boot sees both, in order
        seqs = _seqs(log)
        assert seqs[:10] == list(range(1, 11)) and seq in seqs and _increasing(seqs)
    finally:
        _rmtree(d)


# -- retention ---------------------------------------------------------------------------------


def test_overflow_with_nothing_acked_drops_oldest_and_says_so():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8, budget=4 * 8 * REC)  # room for 4 segments
        assert log.max_segments == 4
        seqs = _fill(log, 33)
        assert None not in seqs
        # The 33rd needed a 5th segment: 1..8 went, and the log said so before going on.
        assert _seqs(log) == list(range(9, 35))
        r = log.read(33, 1)[0]
        assert (r[2], r[3], r[5], r[6]) == (logrec.LOG_OVERFLOW, 1, 8, 8)
        assert seqs[-1] == 34
        assert log.stats()["dropped"] == 8
        # Logging never stops: hundreds more, always within the budget.
        for i in range(300):
            assert log.append(T0 + i, logrec.LOUDER, T0, 0, 0, 2) is not None
            st = log.stats()
            assert st["segments"] <= 4 and st["bytes"] <= log.budget
        seqs = _seqs(log)
        assert _increasing(seqs) and seqs[-1] == log.stats()["last"]
        assert len(_files(d)) <= 5  # 4 segments and the state file
    finally:
        _rmtree(d)


def test_acked_segments_go_first_and_no_unacked_record_is_lost():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8, budget=4 * 8 * REC)
        _fill(log, 24)
        assert log.ack(16) == 16
        _fill(log, 24)  # 25..48: deletes 1..8 and 9..16, both acknowledged
        assert logrec.LOG_OVERFLOW not in _kinds(log)
        assert _seqs(log) == list(range(17, 49))
        assert log.stats()["dropped"] == 0
        # Now only unacknowledged records are left to drop: 21..24 are, 17..20 were acked.
        log.ack(20)
        assert log.append(T0, logrec.TAKEN, T0, 0) == 50
        r = log.read(49, 1)[0]
        assert (r[2], r[3], r[5], r[6]) == (logrec.LOG_OVERFLOW, 21, 24, 4)
        assert log.stats()["dropped"] == 4
    finally:
        _rmtree(d)


def test_ack_persists_across_reopen_and_never_goes_back():
    d = _tmpdir()
    try:
        log = _open(d, seg_records=8)
        _fill(log, 10)
        assert log.ack(7) == 7
        log = _open(d, seg_records=8)  # no close(): persisted when given
        assert log.acked == 7
        assert log.ack(3) == 7
        assert log.ack(1000) == 10  # never past the last record
        log = _open(d, seg_records=8)
        assert log.acked == 10 and log.stats()["acked"] == 10
    finally:
        _rmtree(d)


def test_deferred_ack_is_written_by_close():
    d = _tmpdir()
    try:
        ticks = Ticks(0)
        log = _open(d, seg_records=200, ticks=ticks)
        _fill(log, 40)  # one instant: the sync budget is spent
        assert log.stats()["tokens"] <= 0
        log.ack(log.stats()["durable"])
        acked = log.acked
        assert _open(d, seg_records=200).acked < acked  # not on flash yet
        log.close()
        log = _open(d, seg_records=200)
        assert log.acked == acked and _seqs(log) == list(range(1, 41))
    finally:
        _rmtree(d)


# -- flash wear --------------------------------------------------------------------------------


def test_sync_budget_normal_day_and_worst_hour():
    d = _tmpdir()
    try:
        ticks = Ticks(0)
        log = _open(d, ticks=ticks)
        # A normal day, 50 events: every record is durable the moment it is written.
        for i in range(50):
            ticks.ms = i * 1728000
            log.append(T0 + i * 1728, logrec.DUE, T0, 0)
            assert log.stats()["pending"] == 0
        # A burst in one instant: at most the bucket's 12 syncs, the rest waits.
        ticks.ms += 3600000
        s0 = log.syncs
        for _ in range(100):
            log.append(T0 + 90000, logrec.MISSED, T0, 0)
        assert log.syncs - s0 <= 12
        assert log.stats()["pending"] > 0
        # Chatter waits while the reserve is all that is left; the next real record flushes.
        ticks.ms += 120000  # one token
        log.append(T0 + 90120, logrec.LOUDER, T0, 0, 0, 2)
        assert log.stats()["pending"] > 0
        log.append(T0 + 90120, logrec.TAKEN, T0, 0)
        assert log.stats()["pending"] == 0
        # The worst hour: a record every 10 s (360), each wanting a sync at once.
        ticks.ms += 3600000  # a full bucket again
        s0, segs0 = log.syncs, log.stats()["segments"]
        start = ticks.ms
        while ticks.ms < start + 3600000:
            log.append(T0 + 100000, logrec.FAULT, 0, None, 0, 9)
            ticks.ms += 10000
        rotations = log.stats()["segments"] - segs0
        syncs = log.syncs - s0
        # 12 + 30 record syncs, plus at most 4 per rotation (close, state x2, delete)
        assert syncs <= 12 + 3600000 // 120000 + 4 * rotations, (syncs, rotations)
        assert syncs < 100
        # service() at an idle point makes the rest durable once a token is back.
        ticks.ms += 120000
        log.service()
        assert log.stats()["pending"] == 0
    finally:
        _rmtree(d)


# -- capacity ----------------------------------------------------------------------------------


def test_capacity_30_days_of_50_events_fit_in_256_kb():
    d = _tmpdir()
    try:
        ticks = Ticks(0)
        log = _open(d, ticks=ticks)  # the defaults
        assert log.budget == 256 * 1024
        assert log.seg_records * REC == 4080  # one 4 KB littlefs block
        assert log.max_segments == 262144 // 4080 == 64
        kept = (log.max_segments - 1) * log.seg_records  # survives any rotation
        assert kept == 10710 >= 30 * 50
        assert kept // 50 == 214  # days at 50 events a day
        for day in range(30):
            for k in range(50):
                ticks.ms += 1728000
                assert log.append(T0 + day * 86400 + k * 1728, logrec.DUE, T0, k % 4) is not None
        st = log.stats()
        assert (st["first"], st["last"], st["dropped"], st["acked"]) == (1, 1500, 0, 0)
        assert st["bytes"] == 1500 * REC == 36000 <= st["budget"]
        assert st["segments"] == 9
        assert len(log.read(1, 2000)) == 1500
    finally:
        _rmtree(d)
