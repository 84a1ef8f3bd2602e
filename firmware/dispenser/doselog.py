"""The dose log on flash: append-only segment files, boot-time recovery, retention by ack.

Records are dosiscore.logrec's 24-byte records. The log lives in a directory (`log/`) of
segment files named by the seq of their first record in 8 hex digits (`log/0000a1b2.seg`);
records in a segment are consecutive (seq = first + index), so a read seeks straight to a seq.
Beside them: `state` (12 bytes: acked seq, high-water mark, CRC-32; replaced by temp + rename)
and quarantined segments (`.bad`). The filesystem is passed in (`OsFS` below, or the
simulated power-loss filesystem); written data counts as durable only after flush() or close().

Capacity (defaults): 170 records x 24 bytes = 4080 bytes a segment, one 4 KB littlefs block;
a 256 KB budget holds 262144 // 4080 = 64 segments = 10880 records. A rotation deletes the
oldest segment only when 64 exist, so the newest 63 x 170 = 10710 records always survive:
at 50 events a day that is 214 days, against 30 days x 50 = 1500 records = 36000 bytes
(9 segments) required. Even a power cut with a torn tail every day (each starts a fresh
segment) leaves 30 + 9 = 39 of 64 segments in use after 30 days.

Flash wear (the device may sync at most 100 times an hour). On littlefs a sync commits
metadata and, when appending, copies the file's last block: the expensive operation. Policy:
- every record is written at once; it is flushed at once while the sync budget allows, so in
  normal use (about 50 records a day) a power cut loses at most the record being written;
- the budget is a token bucket: 12 syncs, one more every 2 minutes. Chatter (logrec.CHATTER:
  louder, ignored presses, clearances...) flushes only while more than 4 tokens remain; other
  records flush while any remains. A deferred record stays in the file's write buffer until the
  next flush: the next record with a token, `service()` (call it at idle points) or `close()`;
- acks are persisted the same way (a deferred ack only costs a re-read after a reboot);
- maintenance (closing a full segment, the state file at rotation, deleting the oldest segment)
  is charged to the same bucket but never waits: 4 syncs per 170 records.
Worst case: at most 12 + 30 = 42 record and ack syncs in any hour, plus 4 per 170 records
written (a pathological storm of 1000 records an hour: 42 + 24 = 66).

Recovery (`recover()` at boot; never raises, repairs and reports, then appends the reports):
- a segment whose damage is only at its end (a torn tail: a partial record, or records that
  fail their CRC or are out of sequence, with nothing valid after them) is rewritten to its
  last good record (temp file + rename) and reported with LOG_TRUNCATED;
- a segment with a bad record followed by valid ones (corruption, not a tear) is renamed to
  `.bad` (kept for a technician, no longer read) and reported with LOG_QUARANTINED;
- the next seq is above every seq any file could hold (a partial record's slot counts), so a
  seq is never reused; a repaired log starts a fresh segment. If the newest segment vanished
  (the high-water mark in `state` names a segment that is gone), the next seq skips that whole
  segment and LOG_LOST says so.
Seqs therefore strictly increase; gaps occur only where a LOG_TRUNCATED, LOG_QUARANTINED,
LOG_OVERFLOW, LOG_LOST or LOG_ERROR record explains them.

Retention: `ack(seq)` means the host has stored every record this log holds up to seq. When a
new segment is needed and the budget is full, the oldest segment is deleted: acknowledged ones
are always the oldest, so they go first; if it held unacknowledged records, LOG_OVERFLOW says
which. Logging never stops and never raises: a failed write is counted, reported with
LOG_ERROR when possible, and the next append starts a new segment.

The filesystem object needs: open(path, mode) with modes "rb", "wb" and "ab", returning files
with readinto, seek, write, flush and close; rename(a, b) that atomically replaces b;
remove, listdir, size, exists; and mkdir (optional: without it the directory must exist).
A rotation never opens "wb" over an existing segment (if the boot scan missed one because a
listing failed, the new segment skips past it instead of destroying it).

Time: appends and reads are synchronous. On the unix port an append with its flush takes
about 0.2 ms and recovering a full 256 KB log about 11 ms; on the ESP32 a littlefs sync can
erase a 4 KB sector (tens of ms), so append from a task that can afford that pause, and read
for the serial link in small batches (read_into, ~40 records).

An acknowledgement of the log itself is not logged (the host would read that record, ack it,
and so on forever); care-team acknowledgements of alerts are (logrec.ALERT_ACK).
"""

import struct
import time

from micropython import const

from dosiscore import logrec

_REC = const(24)  # logrec.RECORD_SIZE
_SEG_RECORDS = const(170)  # 4080 bytes: one 4 KB littlefs block
_MIN_SEG_RECORDS = const(8)  # room for a rotation's reports and the record that caused it
_BUDGET = const(262144)  # 256 KB
_CHUNK = const(16)  # records read at a time (384 bytes, allocated once)
_BURST = const(12)  # sync tokens in the bucket
_RESERVE = const(4)  # tokens chatter may not use
_REFILL_MS = const(120000)  # one token every 2 minutes: 30 an hour
_STATE = "state"
_STATE_TMP = "state.tmp"


def _errno(e):
    a = e.args
    return a[0] if a and isinstance(a[0], int) else 0


def _default_ticks():
    t = getattr(time, "ticks_ms", None)  # MicroPython
    if t is not None:
        return t
    mono = getattr(time, "monotonic", time.time)  # CPython (not in the ESP32 stubs)
    return lambda: int(mono() * 1000)


def _first_of(name):
    """The first seq encoded in a log file name ("0000a1b2.seg"), or None if not ours."""
    if len(name) != 12 or name[8] != ".":
        return None
    try:
        return int(name[:8], 16)
    except ValueError:
        return None


class OsFS:
    """The filesystem interface of the log over the real one (littlefs on the device, a
    directory under CPython or the unix port). Paths are relative to `root`."""

    def __init__(self, root=""):
        self.root = root

    def _p(self, path):
        return (self.root + "/" + path) if self.root else path

    def open(self, path, mode):
        return open(self._p(path), mode)

    def rename(self, a, b):
        import os

        os.rename(self._p(a), self._p(b))  # replaces b: atomic on littlefs and POSIX

    def remove(self, path):
        import os

        os.remove(self._p(path))

    def listdir(self, path):
        import os

        return os.listdir(self._p(path))

    def mkdir(self, path):
        import os

        os.mkdir(self._p(path))

    def size(self, path):
        import os

        return os.stat(self._p(path))[6]

    def exists(self, path):
        try:
            self.size(path)
            return True
        except OSError:
            return False


class DoseLog:
    """Append-only record log in `root` on `fs`. Call recover() at boot (append() does it if
    it was not), then append(); read()/ack() serve the host; service() at idle points."""

    def __init__(self, fs, root="log", budget=_BUDGET, seg_records=_SEG_RECORDS, ticks_ms=None):
        self.fs = fs
        self.root = root
        self.seg_records = max(_MIN_SEG_RECORDS, seg_records)
        self.budget = budget
        self.max_segments = max(2, budget // (self.seg_records * _REC))
        self._ticks = ticks_ms or _default_ticks()
        self._buf = bytearray(_REC)  # the record being written
        self._chunk = bytearray(_CHUNK * _REC)  # scans and reads
        self._sbuf = bytearray(12)  # the state file
        self._segs = []  # [first seq, records] of readable segments, oldest first
        self._bad = []  # [first seq, bytes] of quarantined segments (still on flash)
        self._queue = []  # reports waiting for a record: (kind, occ, detail, small)
        self._f = None  # the segment being appended to (the last of _segs)
        self._ready = False
        self.next_seq = 1
        self.acked = 0
        self._durable = 0  # highest seq known flushed
        self._pending = 0  # records written since the last flush
        self._pending_urgent = False
        self._hwm = 0  # first seq of the newest segment holding a durable record
        self._hwm_next = 0  # first seq of a new segment whose first record is not durable yet
        self._state_due = False  # the state file is behind (a new high-water mark)
        self._ack_dirty = False
        self._utc = 0  # last time given to append(), stamped on the log's own reports
        self._tokens = _BURST
        self._t_refill = self._ticks()
        # counters (since boot) for stats() and the wear benchmark
        self.syncs = 0
        self.errors = 0
        self.dropped = 0  # unacknowledged records deleted by retention
        self.lost = 0  # records that could not be written at all

    # -- paths -------------------------------------------------------------------------------

    def _path(self, name):
        return (self.root + "/" + name) if self.root else name

    def _seg_path(self, first, ext=".seg"):
        return self._path("%08x%s" % (first, ext))

    # -- the sync budget ----------------------------------------------------------------------

    def _refill(self):
        now = self._ticks()
        d = now - self._t_refill
        if d < 0:  # tick wrap-around or a new clock: start over, grant nothing
            self._t_refill = now
            return
        if d >= _REFILL_MS:
            n = d // _REFILL_MS
            self._tokens = min(_BURST, self._tokens + n)
            self._t_refill += n * _REFILL_MS
            if self._tokens == _BURST:
                self._t_refill = now

    def _may_sync(self, urgent):
        self._refill()
        return self._tokens > (0 if urgent else _RESERVE)

    def _spend(self, n):
        self.syncs += n
        self._tokens -= n  # maintenance may run into debt: later chatter waits longer

    # -- errors ------------------------------------------------------------------------------

    def _error(self, where, e):
        self.errors += 1
        err = _errno(e) if e is not None else 0
        q = self._queue
        for i in range(len(q)):  # one waiting report per kind of failure: the queue is bounded
            if q[i][0] == logrec.LOG_ERROR and q[i][3] == where:
                q[i] = (logrec.LOG_ERROR, 0, err, where)
                return
        q.append((logrec.LOG_ERROR, 0, err, where))

    def _drop_writer(self):
        """The write segment failed: forget it; the next append starts a new segment. Only
        records known durable stay readable; their seqs stay used (never reused)."""
        f = self._f
        self._f = None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        if self._segs:
            seg = self._segs[-1]
            seg[1] = max(0, min(seg[1], self._durable - seg[0] + 1))
        self._pending = 0
        self._pending_urgent = False

    # -- writing -----------------------------------------------------------------------------

    def append(self, utc, kind, occ=0, dose=None, detail=0, small=0):
        """Log one event; returns its seq, or None if it could not be written (never raises,
        never blocks on a full log). See the module notes for when it becomes durable."""
        if not self._ready:
            self.recover(utc)
        if utc:
            self._utc = utc
        self._drain()  # the report of an earlier error goes first
        return self._put(utc, kind, occ, dose, detail, small)

    def _put(self, utc, kind, occ, dose, detail, small):
        if self._f is None or self._segs[-1][1] >= self.seg_records:
            if not self._rotate():
                self.lost += 1
                return None
            self._drain()  # LOG_OVERFLOW before the record that needed the room
        return self._write(utc, kind, occ, dose, detail, small)

    def _drain(self):
        # Bounded: a filesystem that fails every write must not keep us here.
        for _ in range(4):
            if not self._queue:
                return
            kind, occ, detail, small = self._queue.pop(0)
            if self._f is None or self._segs[-1][1] >= self.seg_records:
                if not self._rotate():
                    self.lost += 1
                    return
            self._write(self._utc, kind, occ, None, detail, small)

    def _write(self, utc, kind, occ, dose, detail, small):
        f = self._f
        if f is None:
            return None
        seq = self.next_seq
        self.next_seq = seq + 1  # used from now on, even if the write fails: never reused
        logrec.encode_into(self._buf, 0, seq, utc, kind, occ, dose, detail, small)
        try:
            n = f.write(self._buf)
            if n is not None and n != _REC:
                raise OSError(28)  # ENOSPC: a short write
        except OSError as e:
            self._error(logrec.ERR_WRITE, e)
            self._drop_writer()
            self.lost += 1
            return None
        self._segs[-1][1] += 1
        self._pending += 1
        urgent = kind not in logrec.CHATTER
        if urgent:
            self._pending_urgent = True
        if self._may_sync(urgent):
            self._flush()
        return seq

    def _durable_now(self):
        self._durable = self.next_seq - 1
        self._pending = 0
        self._pending_urgent = False
        h = self._hwm_next
        if h and self._durable >= h:
            # The newest segment now holds a durable record: from here on its absence at
            # boot means it was lost. Saved any earlier, a cut between creating the file
            # and flushing its first record would look like a lost segment.
            self._hwm = h
            self._hwm_next = 0
            self._state_due = True

    def _flush(self):
        if self._pending and self._f is not None:
            try:
                self._f.flush()
            except OSError as e:
                self._error(logrec.ERR_WRITE, e)
                self._drop_writer()
                return False
            self._spend(1)
            self._durable_now()
        if self._state_due or self._ack_dirty:
            self._save_state()
        return True

    def _close_writer(self):
        f = self._f
        if f is None:
            return
        try:
            f.close()  # a sync if anything is pending
        except OSError as e:
            self._error(logrec.ERR_WRITE, e)
            self._drop_writer()
            return
        self._f = None
        if self._pending:
            self._spend(1)
            self._durable_now()

    def _rotate(self):
        """Close the full (or failed) segment, make room, open a new one at next_seq."""
        self._close_writer()
        self._make_room()
        first = self.next_seq
        path = self._seg_path(first)
        try:
            for _ in range(8):
                # Never "wb" over a segment: if one is there, the scan at boot missed it (a
                # listing failed), so skip every seq it could hold rather than destroy it.
                if not self.fs.exists(path):
                    break
                self._error(logrec.ERR_LIST, None)
                first += self.seg_records
                path = self._seg_path(first)
            self._f = self.fs.open(path, "wb")
        except OSError as e:
            self._f = None
            self._error(logrec.ERR_WRITE, e)
            return False
        self.next_seq = first
        self._segs.append([first, 0])
        self._hwm_next = first
        return True

    def _make_room(self):
        """Delete the oldest segments (acknowledged ones are always the oldest) until a new
        one fits the budget; queue LOG_OVERFLOW if unacknowledged records went."""
        lo = hi = 0
        n = 0
        while len(self._segs) + len(self._bad) >= self.max_segments:
            bad = bool(self._bad) and (not self._segs or self._bad[0][0] < self._segs[0][0])
            if bad:
                first, nbytes = self._bad[0]
                count = (nbytes + _REC - 1) // _REC
                path = self._seg_path(first, ".bad")
            else:
                first, count = self._segs[0]
                path = self._seg_path(first)
            try:
                self.fs.remove(path)
            except OSError as e:
                self._error(logrec.ERR_REMOVE, e)
                break  # over budget by a segment rather than stop logging
            self._spend(1)
            if bad:
                self._bad.pop(0)
            else:
                self._segs.pop(0)
            last = first + count - 1
            if count and last > self.acked:
                a = max(first, self.acked + 1)
                lo = lo or a
                hi = last
                n += last - a + 1
        if n:
            self.dropped += n
            self._queue.append((logrec.LOG_OVERFLOW, lo, hi, min(n, 0xFFFF)))

    def _save_state(self):
        b = self._sbuf
        struct.pack_into("<II", b, 0, self.acked, self._hwm)
        struct.pack_into("<I", b, 8, logrec.crc32(memoryview(b)[:8]))
        tmp = self._path(_STATE_TMP)
        try:
            f = self.fs.open(tmp, "wb")
            try:
                f.write(b)
            finally:
                f.close()
            self.fs.rename(tmp, self._path(_STATE))
        except OSError as e:
            self._error(logrec.ERR_STATE, e)
            return False
        self._spend(2)
        self._state_due = False
        self._ack_dirty = False
        return True

    def _load_state(self, reports):
        """(acked, hwm) from the state file; (0, 0) if there is none or it is damaged."""
        b = self._sbuf
        try:
            f = self.fs.open(self._path(_STATE), "rb")
        except OSError:
            return 0, 0  # none yet: nothing acknowledged, no segment rotated
        try:
            try:
                n = f.readinto(b)
            finally:
                f.close()
        except OSError as e:
            reports.append((logrec.LOG_ERROR, 0, _errno(e), logrec.ERR_STATE))
            return 0, 0
        acked, hwm, crc = struct.unpack_from("<III", b, 0)
        if n != 12 or crc != logrec.crc32(memoryview(b)[:8]):
            reports.append((logrec.LOG_ERROR, 0, 0, logrec.ERR_STATE))
            return 0, 0
        return acked, hwm

    # -- idle, shutdown ----------------------------------------------------------------------

    def service(self):
        """At idle points: flush deferred records and a deferred ack if the budget allows."""
        if self._pending and self._may_sync(self._pending_urgent):
            self._flush()
        elif (self._ack_dirty or self._state_due) and self._may_sync(False):
            self._save_state()

    def sync(self):
        """Make everything durable now, whatever the budget (before a planned reset)."""
        if self._ready:
            self._flush()

    def close(self):
        self.sync()
        self._close_writer()
        self._ready = False

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, utc=0):
        """Scan the segments, repair what a power cut or bad flash left, open for appending and
        log what was done. Never raises. Returns the reports appended, as (kind, occ, detail,
        small) tuples."""
        if self._f is not None:
            self._close_writer()
        self._ready = True
        if utc:
            self._utc = utc
        self._segs = []
        self._bad = []
        self._queue = []
        reports = []
        names = self._list(reports)
        acked, hwm = self._load_state(reports)
        nxt = 1
        newest = 0  # highest first seq among all segment files, good or bad
        segs = []
        tmps = []
        for name in names:
            if name.endswith(".tmp"):
                tmps.append(name)
                continue
            first = _first_of(name)
            if first is None:
                continue
            if name.endswith(".seg"):
                segs.append(first)
            elif name.endswith(".bad"):
                try:
                    nbytes = self.fs.size(self._path(name))
                except OSError:
                    nbytes = 0
                self._bad.append([first, nbytes])
                nxt = max(nxt, first + (nbytes + _REC - 1) // _REC)
            else:
                continue
            newest = max(newest, first)
        segs.sort()
        self._bad.sort(key=lambda s: s[0])
        empties = []
        clean_last = False
        for i in range(len(segs)):
            first = segs[i]
            clean_last = False
            try:
                good, slots, later, nbytes = self._scan(first)
            except OSError as e:  # unreadable: keep it out of the log, for a technician
                reports.append((logrec.LOG_ERROR, 0, _errno(e), logrec.ERR_READ))
                try:
                    nbytes = self.fs.size(self._seg_path(first))
                except OSError:
                    nbytes = self.seg_records * _REC  # assume it was full: skip its seqs
                nxt = max(nxt, first + (nbytes + _REC - 1) // _REC)
                self._quarantine(first, nbytes, 0, 0, reports)
                continue
            nxt = max(nxt, first + slots)
            if good == slots:
                if good or i == len(segs) - 1:
                    self._segs.append([first, good])
                    clean_last = True
                else:
                    empties.append(first)  # removed once the state is safe (below)
            elif later:
                self._quarantine(first, nbytes, good + later, good, reports)
            else:
                self._truncate(first, good, slots, nbytes, reports)
        if hwm and newest < hwm:
            skip = hwm + self.seg_records - nxt
            if skip > 0:
                nxt += skip
            reports.append((logrec.LOG_LOST, max(0, skip), hwm, 0))
        self.next_seq = nxt
        self._durable = nxt - 1
        self._hwm = hwm
        self._hwm_next = 0
        self._state_due = False
        self.acked = min(acked, nxt - 1)
        if self.acked != acked:
            self._ack_dirty = True
        last = self._segs[-1] if self._segs else None
        if (
            clean_last
            and last is not None
            and last[0] + last[1] == nxt
            and last[1] < self.seg_records
        ):
            try:
                self._f = self.fs.open(self._seg_path(last[0]), "ab")
            except OSError as e:
                reports.append((logrec.LOG_ERROR, 0, _errno(e), logrec.ERR_WRITE))
                self._f = None
        for kind, occ, detail, small in reports:
            self._put(self._utc, kind, occ, None, detail, small)
        if self._ack_dirty or self._state_due:
            self._flush()
        for first in empties:
            self._remove_quiet(self._seg_path(first))
        for name in tmps:
            self._remove_quiet(self._path(name))
        return reports

    def _list(self, reports):
        try:
            return self.fs.listdir(self.root)
        except OSError:
            pass
        mkdir = getattr(self.fs, "mkdir", None)
        if mkdir is not None and self.root:
            try:
                mkdir(self.root)
                return []
            except OSError as e:
                reports.append((logrec.LOG_ERROR, 0, _errno(e), logrec.ERR_LIST))
        return []

    def _remove_quiet(self, path):
        try:
            self.fs.remove(path)
            self._spend(1)
        except OSError:
            pass

    def _scan(self, first):
        """(good, slots, later, bytes) of a segment: leading records that are valid and in
        sequence; record slots (a partial record counts); valid records after the first bad
        one; file size. Raises OSError if it cannot be read."""
        buf = self._chunk
        mv = memoryview(buf)
        good = later = nbytes = have = 0
        bad = False
        f = self.fs.open(self._seg_path(first), "rb")
        try:
            while True:
                n = f.readinto(mv[have:])
                if not n:
                    break
                nbytes += n
                have += n
                whole = have - have % _REC
                off = 0
                while off < whole:
                    s = logrec.check(buf, off)
                    if not bad and s == first + good:
                        good += 1
                    else:
                        bad = True
                        if s >= 0:
                            later += 1
                    off += _REC
                rest = have - whole
                if rest and whole:
                    mv[0:rest] = mv[whole:have]
                have = rest
        finally:
            f.close()
        return good, (nbytes + _REC - 1) // _REC, later, nbytes

    def _truncate(self, first, good, slots, nbytes, reports):
        """Rewrite a segment to its first `good` records (temp file + rename)."""
        path = self._seg_path(first)
        tmp = path + ".tmp"
        mv = memoryview(self._chunk)
        try:
            src = self.fs.open(path, "rb")
            try:
                dst = self.fs.open(tmp, "wb")
                try:
                    left = good * _REC
                    while left:
                        n = src.readinto(mv[: min(left, len(mv))])
                        if not n:
                            raise OSError(5)  # EIO: shorter than just scanned
                        dst.write(mv[:n])
                        left -= n
                finally:
                    dst.close()
            finally:
                src.close()
            self.fs.rename(tmp, path)
            self._spend(2)
        except OSError as e:
            # Could not rewrite it: the good records stay readable (reads stop at `good`) and
            # the next boot tries again; the log goes on in a new segment.
            reports.append((logrec.LOG_ERROR, 0, _errno(e), logrec.ERR_RENAME))
        self._segs.append([first, good])
        reports.append((logrec.LOG_TRUNCATED, nbytes - good * _REC, first, slots - good))

    def _quarantine(self, first, nbytes, valid, bad_at, reports):
        try:
            self.fs.rename(self._seg_path(first), self._seg_path(first, ".bad"))
            self._spend(1)
            self._bad.append([first, nbytes])
            self._bad.sort(key=lambda s: s[0])
        except OSError as e:
            reports.append((logrec.LOG_ERROR, 0, _errno(e), logrec.ERR_RENAME))
        reports.append((logrec.LOG_QUARANTINED, valid, first, bad_at))

    # -- reading, acknowledging --------------------------------------------------------------

    def read_into(self, buf, from_seq):
        """Copy durable records with seq >= from_seq into `buf` (whole 24-byte records, as many
        as fit), in seq order; a record failing its CRC is skipped. Returns (records copied,
        the seq to ask for next). For the serial link: the host decodes with logrec."""
        cap = len(buf) // _REC
        mv = memoryview(buf)
        n = 0
        seq = from_seq if from_seq > 0 else 1
        for seg in self._segs:
            if n >= cap:
                break
            first = seg[0]
            last = min(first + seg[1] - 1, self._durable)
            if last < seq:
                continue
            if seq < first:
                seq = first
            want = min(cap - n, last - seq + 1)
            got = 0
            try:
                f = self.fs.open(self._seg_path(first), "rb")
                try:
                    f.seek((seq - first) * _REC)
                    while got < want * _REC:
                        k = f.readinto(mv[n * _REC + got : (n + want) * _REC])
                        if not k:
                            break
                        got += k
                finally:
                    f.close()
            except OSError as e:
                self._error(logrec.ERR_READ, e)
            k = got // _REC
            w = n
            for i in range(k):
                off = (n + i) * _REC
                if logrec.check(buf, off) == seq + i:
                    if w != n + i:
                        mv[w * _REC : (w + 1) * _REC] = mv[off : off + _REC]
                    w += 1
            n = w
            seq = seq + k if k == want else last + 1
        return n, seq

    def read(self, from_seq, max_n):
        """Decoded records (logrec.decode tuples) with seq >= from_seq, at most max_n."""
        out = []
        seq = from_seq
        mv = memoryview(self._chunk)
        while len(out) < max_n and seq <= self._durable:
            k = min(_CHUNK, max_n - len(out))
            sub = mv[: k * _REC]
            n, nxt = self.read_into(sub, seq)
            for i in range(n):
                out.append(logrec.decode(sub, i * _REC))
            if nxt <= seq:
                break
            seq = nxt
        return out

    def ack(self, seq):
        """The host has stored every record up to `seq`. Returns the acknowledged seq (an ack
        never goes back, and never past the last durable record)."""
        if seq > self._durable:
            seq = self._durable
        if seq > self.acked:
            self.acked = seq
            self._ack_dirty = True
            if self._may_sync(False):
                self._save_state()
        return self.acked

    def stats(self):
        held = 0
        for s in self._segs:
            held += s[1]
        nbytes = held * _REC
        for b in self._bad:
            nbytes += b[1]
        first = None
        for s in self._segs:
            if s[1]:
                first = s[0]
                break
        self._refill()
        return {
            "first": first,
            "last": self.next_seq - 1,
            "durable": self._durable,
            "acked": self.acked,
            "records": held,
            "segments": len(self._segs),
            "quarantined": len(self._bad),
            "bytes": nbytes,
            "budget": self.budget,
            "free": self.budget - nbytes,
            "pending": self._pending,
            "syncs": self.syncs,
            "tokens": self._tokens,
            "errors": self.errors,
            "dropped": self.dropped,
            "lost": self.lost,
        }
