"""The gateway's database: SQLite (embedded default) or PostgreSQL, one small layer over both.

`open_db("sqlite:///PATH")` or `open_db("postgresql://...")`. SQL is written once with `?`
placeholders (turned into `%s` for psycopg). SQLite runs in WAL mode with a busy timeout and
every write transaction starts with BEGIN IMMEDIATE, so two gateway processes on one file
serialise their writes instead of failing on a lock upgrade. PostgreSQL locks the device's row
(SELECT ... FOR UPDATE) where a transaction reads and rewrites per-device state.

The schema is versioned in `meta` (key "schema"); see docs/gateway.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import DosisError, InputError
from . import escalate
from .wire import Record, valid_device_id

SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS responders (
    name TEXT PRIMARY KEY, webhook TEXT, email TEXT, target_min {real} NOT NULL DEFAULT 15,
    added {real} NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, citizen TEXT NOT NULL, ukey TEXT NOT NULL,
    responder TEXT NOT NULL REFERENCES responders(name), enrolled {real} NOT NULL,
    last_seen {real}, acked BIGINT NOT NULL DEFAULT 0, health TEXT, health_at {real},
    status TEXT, status_at {real});
CREATE TABLE IF NOT EXISTS coverage (
    device_id TEXT NOT NULL, lo BIGINT NOT NULL, hi BIGINT NOT NULL,
    PRIMARY KEY (device_id, lo));
CREATE TABLE IF NOT EXISTS events (
    device_id TEXT NOT NULL, seq BIGINT NOT NULL, utc BIGINT NOT NULL, kind INTEGER NOT NULL,
    name TEXT NOT NULL, occ BIGINT NOT NULL, dose INTEGER, detail BIGINT NOT NULL,
    small INTEGER NOT NULL, stored {real} NOT NULL, PRIMARY KEY (device_id, seq));
CREATE INDEX IF NOT EXISTS events_kind ON events (device_id, kind);
CREATE TABLE IF NOT EXISTS alerts (
    id {serial}, device_id TEXT NOT NULL, kind TEXT NOT NULL, cause TEXT NOT NULL,
    created {real} NOT NULL, detail TEXT NOT NULL, responder TEXT, acked_at {real},
    acked_by TEXT, response_s {real}, UNIQUE (device_id, cause));
CREATE TABLE IF NOT EXISTS deliveries (
    id {serial}, alert_id BIGINT NOT NULL, channel TEXT NOT NULL, target TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    next_at {real} NOT NULL, owner TEXT, claim_until {real}, last_error TEXT, sent_at {real},
    UNIQUE (alert_id, channel));
CREATE TABLE IF NOT EXISTS rejects (
    id {serial}, at {real} NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL);
"""

_SQLITE = {"real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}
_PG = {"real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY"}

_CPR = re.compile(r"\d{6}-?\d{4}")
_PSEUDONYM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def default_url() -> str:
    """$DOSIS_DB, else sqlite:///$XDG_DATA_HOME/dosis/fleet.db (~/.local/share by default)."""
    env = os.environ.get("DOSIS_DB")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'dosis' / 'fleet.db'}"


def check_pseudonym(citizen: str) -> None:
    """Refuse what looks like a Danish CPR number (or a name with spaces): pseudonyms only."""
    if _CPR.search(citizen.replace(" ", "")):
        raise InputError(
            f'"{citizen}" looks like a CPR number: enrol with the citizen\'s pseudonym '
            "(e.g. c-0412), never a CPR number or a name"
        )
    if not _PSEUDONYM.match(citizen):
        raise InputError(
            f'"{citizen}" is not a pseudonym: use 1-64 letters, digits, ".", "_" or "-" '
            "(no spaces, no names)"
        )


def merge_ranges(ranges: Sequence[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """Half-open covered ranges with [lo, hi) added, sorted, overlapping/adjacent ones merged."""
    out: list[tuple[int, int]] = []
    for a, b in sorted([*ranges, (lo, hi)]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def contiguous(ranges: Sequence[tuple[int, int]]) -> int:
    """The highest seq N such that every seq 1..N is covered (0 if seq 1 is not)."""
    for a, b in ranges:
        if a <= 1 < b:
            return b - 1
    return 0


class Cur:
    """A cursor inside one transaction: `x` runs a statement, `all`/`one` fetch."""

    def __init__(self, db: DB, cur: Any) -> None:
        self.db = db
        self._cur = cur

    def x(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(self.db.sql(sql), tuple(params))
        return self._cur.rowcount

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(self.db.sql(sql), tuple(params))
        return [tuple(r) for r in self._cur.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self._cur.execute(self.db.sql(sql), tuple(params))
        r = self._cur.fetchone()
        return None if r is None else tuple(r)

    def lock_device(self, device_id: str) -> None:
        """Serialise per-device read-modify-write (PostgreSQL; SQLite's writer lock does it)."""
        if self.db.kind == "postgresql":
            self.x("SELECT 1 FROM devices WHERE device_id = ? FOR UPDATE", (device_id,))


class DB:
    """One connection (guarded by a lock, so threads may share the object)."""

    kind = "sqlite"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._conn: Any = None
        self._connect()
        with self.tx() as c:
            if self.kind == "postgresql":
                c.x("SELECT pg_advisory_xact_lock(770707)")
            subst = _PG if self.kind == "postgresql" else _SQLITE
            for stmt in _DDL.format(**subst).split(";"):
                if stmt.strip():
                    c.x(stmt)
            row = c.one("SELECT v FROM meta WHERE k = 'schema'")
            if row is None:
                c.x("INSERT INTO meta (k, v) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise DosisError(
                    f"{self.describe()}: schema version {row[0]} is newer than this dosis "
                    f"({SCHEMA_VERSION}): update dosis"
                )

    # -- plumbing -------------------------------------------------------------------------

    def _connect(self) -> None:
        raise NotImplementedError

    def sql(self, sql: str) -> str:
        return sql

    def describe(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.url)

    @contextlib.contextmanager
    def tx(self, write: bool = True) -> Iterator[Cur]:
        raise NotImplementedError
        yield  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def q(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.tx(write=False) as c:
            return c.all(sql, params)

    # -- enrolment ------------------------------------------------------------------------

    def add_responder(
        self,
        name: str,
        *,
        webhook: str | None = None,
        email: str | None = None,
        target_min: float = 15.0,
    ) -> bool:
        """Add or update a responder; True if it is new."""
        if not name or len(name) > 64 or not name.isprintable():
            raise InputError(f'"{name}" is not a usable responder name (1-64 characters)')
        if webhook is not None and not re.match(r"https?://\S+\Z", webhook):
            raise InputError(f'--webhook "{webhook}" is not an http:// or https:// URL')
        if email is not None and not re.match(r"[^@\s]+@[^@\s]+\Z", email):
            raise InputError(f'--email "{email}" is not an e-mail address')
        if target_min <= 0:
            raise InputError("--target must be more than 0 minutes")
        with self.tx() as c:
            old = c.one("SELECT 1 FROM responders WHERE name = ?", (name,))
            if old is None:
                c.x(
                    "INSERT INTO responders (name, webhook, email, target_min, added) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, webhook, email, target_min, time.time()),
                )
            else:
                c.x(
                    "UPDATE responders SET webhook = ?, email = ?, target_min = ? WHERE name = ?",
                    (webhook, email, target_min, name),
                )
        return old is None

    def responders(self) -> list[dict[str, Any]]:
        rows = self.q("SELECT name, webhook, email, target_min FROM responders ORDER BY name")
        cols = ("name", "webhook", "email", "target_min")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def enroll(self, device_id: str, citizen: str, responder: str, ukey: bytes) -> bool:
        """Enrol (or re-enrol) a device for a citizen's pseudonym; True if it is new."""
        if not valid_device_id(device_id):
            raise InputError(
                f'"{device_id}" is not a device id (lowercase letters, digits and "-", '
                "at most 32), e.g. d-3c71bf0a12e4"
            )
        check_pseudonym(citizen)
        if len(ukey) != 32:
            raise InputError("the uplink key must be 32 bytes (64 hex digits)")
        with self.tx() as c:
            if c.one("SELECT 1 FROM responders WHERE name = ?", (responder,)) is None:
                raise InputError(
                    f'no responder "{responder}": add it first with '
                    f"'dosis fleet responder add {responder} --webhook URL --email ADDR'"
                )
            old = c.one("SELECT 1 FROM devices WHERE device_id = ?", (device_id,))
            if old is None:
                c.x(
                    "INSERT INTO devices (device_id, citizen, ukey, responder, enrolled) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (device_id, citizen, ukey.hex(), responder, time.time()),
                )
            else:
                c.x(
                    "UPDATE devices SET citizen = ?, ukey = ?, responder = ? WHERE device_id = ?",
                    (citizen, ukey.hex(), responder, device_id),
                )
        return old is None

    def secret(self) -> bytes:
        """The fleet's ack-link secret (32 random bytes in `meta`, made once, shared by every
        gateway on this database): HTTP ack links carry HMAC(secret, alert id)."""
        with self.tx() as c:
            c.x(
                "INSERT INTO meta (k, v) VALUES ('ack_secret', ?) ON CONFLICT DO NOTHING",
                (os.urandom(32).hex(),),
            )
            row = c.one("SELECT v FROM meta WHERE k = 'ack_secret'")
        assert row is not None
        return bytes.fromhex(row[0])

    def ukey(self, device_id: str) -> bytes | None:
        rows = self.q("SELECT ukey FROM devices WHERE device_id = ?", (device_id,))
        return bytes.fromhex(rows[0][0]) if rows else None

    def devices(self) -> list[dict[str, Any]]:
        cols = ("device_id", "citizen", "responder", "enrolled", "last_seen", "acked", "status")
        rows = self.q(f"SELECT {', '.join(cols)} FROM devices ORDER BY citizen, device_id")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # -- ingest ---------------------------------------------------------------------------

    def ingest_events(
        self, device_id: str, frm: int, nxt: int, records: Sequence[Record], now: float
    ) -> tuple[int, int, list[int]]:
        """Store a verified batch in one transaction: records (idempotently), coverage,
        last_seen and alerts. Returns (ack seq, records newly stored, new alert ids)."""
        with self.tx() as c:
            c.lock_device(device_id)
            new: list[Record] = []
            for r in records:
                n = c.x(
                    "INSERT INTO events (device_id, seq, utc, kind, name, occ, dose, detail, "
                    "small, stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (
                        device_id,
                        r.seq,
                        r.utc,
                        r.kind,
                        r.kind_name,
                        r.occ,
                        r.dose,
                        r.detail,
                        r.small,
                        now,
                    ),
                )
                if n == 1:
                    new.append(r)
            acked = self._cover(c, device_id, frm, nxt, now)
            alerts = escalate.on_records(c, device_id, new, now)
        return acked, len(new), alerts

    def _cover(self, c: Cur, device_id: str, frm: int, nxt: int, now: float) -> int:
        ranges = [
            (int(a), int(b))
            for a, b in c.all("SELECT lo, hi FROM coverage WHERE device_id = ?", (device_id,))
        ]
        merged = merge_ranges(ranges, frm, nxt)
        if merged != sorted(ranges):
            c.x("DELETE FROM coverage WHERE device_id = ?", (device_id,))
            for a, b in merged:
                c.x(
                    "INSERT INTO coverage (device_id, lo, hi) VALUES (?, ?, ?)",
                    (device_id, a, b),
                )
        acked = contiguous(merged)
        c.x(
            "UPDATE devices SET acked = ?, last_seen = ? WHERE device_id = ?",
            (acked, now, device_id),
        )
        return acked

    def acked(self, device_id: str) -> int:
        """The device's ack pointer: every seq up to it is covered (0: none yet)."""
        rows = self.q("SELECT acked FROM devices WHERE device_id = ?", (device_id,))
        return int(rows[0][0]) if rows else 0

    def coverage(self, device_id: str) -> list[tuple[int, int]]:
        rows = self.q("SELECT lo, hi FROM coverage WHERE device_id = ? ORDER BY lo", (device_id,))
        return [(int(a), int(b)) for a, b in rows]

    def ingest_health(self, device_id: str, doc: dict[str, Any], now: float) -> list[int]:
        """Store a verified heartbeat; the device's own ack pointer counts as covered."""
        with self.tx() as c:
            c.lock_device(device_id)
            c.x(
                "UPDATE devices SET health = ?, health_at = ?, last_seen = ? WHERE device_id = ?",
                (json.dumps(doc, separators=(",", ":")), now, now, device_id),
            )
            acked = doc.get("acked")
            if isinstance(acked, int) and 0 < acked < 2**32:
                self._cover(c, device_id, 1, acked + 1, now)
            return escalate.on_health(c, device_id, doc, now)

    def set_status(self, device_id: str, status: str, now: float) -> None:
        with self.tx() as c:
            c.x(
                "UPDATE devices SET status = ?, status_at = ? WHERE device_id = ?",
                (status[:16], now, device_id),
            )

    def reject(self, topic: str, reason: str, now: float) -> None:
        with self.tx() as c:
            c.x(
                "INSERT INTO rejects (at, topic, reason) VALUES (?, ?, ?)",
                (now, topic[:128], reason[:80]),
            )

    def rejects(self) -> list[dict[str, Any]]:
        rows = self.q("SELECT at, topic, reason FROM rejects ORDER BY id")
        return [dict(zip(("at", "topic", "reason"), r, strict=True)) for r in rows]

    def check_timers(
        self, now: float, *, offline_after_s: float, mains_after_s: float, offline: bool = True
    ) -> list[int]:
        """Offline (if `offline`) and mains-lost alerts due at `now` (every gateway runs this)."""
        with self.tx() as c:
            return escalate.on_timer(
                c,
                now,
                offline_after_s=offline_after_s,
                mains_after_s=mains_after_s,
                offline=offline,
            )

    # -- reading --------------------------------------------------------------------------

    EVENT_COLS = ("seq", "utc", "kind", "name", "occ", "dose", "detail", "small", "stored")

    def events(self, device_id: str) -> list[dict[str, Any]]:
        rows = self.q(
            f"SELECT {', '.join(self.EVENT_COLS)} FROM events WHERE device_id = ? ORDER BY seq",
            (device_id,),
        )
        return [dict(zip(self.EVENT_COLS, r, strict=True)) for r in rows]

    def event_count(self) -> int:
        return int(self.q("SELECT COUNT(*) FROM events")[0][0])

    ALERT_COLS = (
        "id",
        "device_id",
        "kind",
        "cause",
        "created",
        "detail",
        "responder",
        "acked_at",
        "acked_by",
        "response_s",
    )

    def alerts(self, *, open_only: bool = False, device_id: str | None = None) -> list[dict]:
        where, params = [], []
        if open_only:
            where.append("acked_at IS NULL")
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        w = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.q(f"SELECT {', '.join(self.ALERT_COLS)} FROM alerts{w} ORDER BY id", params)
        return [dict(zip(self.ALERT_COLS, r, strict=True)) for r in rows]

    def ack_alert(self, alert_id: int, by: str | None = None, now: float | None = None) -> dict:
        """Acknowledge an alert: stores acked_at, acked_by and response_s; InputError if it
        does not exist or was acknowledged already."""
        now = time.time() if now is None else now
        with self.tx() as c:
            row = c.one("SELECT created, acked_at, acked_by FROM alerts WHERE id = ?", (alert_id,))
            if row is None:
                raise InputError(f"no alert {alert_id}: see 'dosis fleet alerts --open'")
            if row[1] is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row[1]))
                raise InputError(
                    f"alert {alert_id} was acknowledged already at {when}"
                    + (f" by {row[2]}" if row[2] else "")
                )
            resp = max(0.0, now - float(row[0]))
            c.x(
                "UPDATE alerts SET acked_at = ?, acked_by = ?, response_s = ? "
                "WHERE id = ? AND acked_at IS NULL",
                (now, by, resp, alert_id),
            )
        return self.alerts_by_id(alert_id)

    def alerts_by_id(self, alert_id: int) -> dict[str, Any]:
        rows = self.q(f"SELECT {', '.join(self.ALERT_COLS)} FROM alerts WHERE id = ?", (alert_id,))
        if not rows:
            raise InputError(f"no alert {alert_id}")
        return dict(zip(self.ALERT_COLS, rows[0], strict=True))

    DELIVERY_COLS = (
        "id",
        "alert_id",
        "channel",
        "target",
        "state",
        "attempts",
        "next_at",
        "owner",
        "claim_until",
        "last_error",
        "sent_at",
    )

    def deliveries(self, alert_id: int | None = None) -> list[dict[str, Any]]:
        w, p = ("WHERE alert_id = ? ", (alert_id,)) if alert_id is not None else ("", ())
        rows = self.q(f"SELECT {', '.join(self.DELIVERY_COLS)} FROM deliveries {w}ORDER BY id", p)
        return [dict(zip(self.DELIVERY_COLS, r, strict=True)) for r in rows]


class SqliteDB(DB):
    kind = "sqlite"

    def _connect(self) -> None:
        path = self.url[len("sqlite:///") :]
        if not path:
            raise InputError(f'--db "{self.url}": write sqlite:///PATH, e.g. sqlite:///fleet.db')
        if path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                str(Path(path).expanduser()) if path != ":memory:" else path,
                timeout=30.0,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed batch survives a power cut, since its ack lets the device
            # forget it.
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as e:
            raise DosisError(f"{self.url}: cannot open the database ({e})") from None
        self._conn = conn

    @contextlib.contextmanager
    def tx(self, write: bool = True) -> Iterator[Cur]:
        with self._lock:
            if self._conn is None:
                self._connect()
            conn: Any = self._conn
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Cur(self, conn.cursor())
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")


class PostgresDB(DB):
    kind = "postgresql"

    def _connect(self) -> None:
        try:
            import psycopg
        except ImportError:
            raise DosisError(
                "PostgreSQL needs psycopg: pip install 'dosis[postgres]' (or 'psycopg[binary]')"
            ) from None
        try:
            self._conn = psycopg.connect(self.url, autocommit=False, connect_timeout=10)
        except psycopg.Error as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DosisError(f"{self.describe()}: cannot connect ({msg})") from None

    def sql(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    @contextlib.contextmanager
    def tx(self, write: bool = True) -> Iterator[Cur]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._connect()
            conn: Any = self._conn
            try:
                with conn.cursor() as cur:
                    yield Cur(self, cur)
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise
            conn.commit()


def open_db(url: str | None = None, *, must_exist: bool = False) -> DB:
    """The database at `url` (default: `default_url()`), its schema created if missing.
    `must_exist`: an SQLite file that is not there is an error, not a new empty database."""
    url = url or default_url()
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :]).expanduser()
        if must_exist and str(path) != ":memory:" and not path.exists():
            raise InputError(
                f"no fleet database at {path}: enrol a dispenser first ('dosis fleet enroll'), "
                "or give --db (or $DOSIS_DB)"
            )
        return SqliteDB(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDB(url)
    raise InputError(
        f'--db "{url}" is not a database URL: use sqlite:///PATH or postgresql://HOST/DBNAME'
    )
