"""A small raw-pty harness for the device protocol (docs/protocol.md) on the virtual dispenser.

The real firmware (`micropython -m sim.serve`) runs with its stdin/stdout on the slave of a
pseudo-terminal in raw mode; the test holds the master and speaks bytes: no dependency on the
host tool's transport. Requests are built exactly as the protocol says (compact JSON, the
closing brace dropped, `,"mac":"<hex>"}` appended); every authenticated reply's mac is checked;
unsolicited event lines go to `events`, every other line to the reply queue (`noise` keeps
lines that are not JSON objects: there should be none).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

from dosis import schedules
from dosiscore import civil, logrec, schedule, tz

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
MICROPYTHON = Path(sys.executable).parent / "micropython"
EXAMPLE = ROOT / "examples" / "schedule.toml"
MAC_TAIL = 74  # len(',"mac":"') + 64 + len('"}')

# The error codes of docs/protocol.md ("Error codes").
ERRORS = frozenset(
    {
        "too_long",
        "bad_json",
        "bad_request",
        "unknown_cmd",
        "bad_args",
        "not_paired",
        "auth",
        "replay",
        "not_pairing",
        "busy",
        "invalid_schedule",
        "no_memory",
        "internal",
    }
)


def compile_example(path: Path) -> tuple[Path, dict[str, Any]]:
    """examples/schedule.toml compiled to the JSON the device stores; (file, document)."""
    data = schedule.canonical(schedules.load_schedule(EXAMPLE))
    path.write_bytes(data)
    return path, json.loads(data)


def local_to_utc(doc: dict[str, Any], day: str, hhmm: str) -> int:
    """UTC seconds of local wall time `day` `hhmm` in the schedule's time zone."""
    wall = civil.parse_date(day) * civil.DAY + civil.parse_hhmm(hhmm) * 60
    return tz.Tz(doc["tz_rule"]).utc(wall)


def mac_of(key: bytes, prefix: bytes) -> str:
    return hmac.new(key, prefix, hashlib.sha256).hexdigest()


def sign(key: bytes, obj: dict[str, Any]) -> bytes:
    """The request line (without the newline) for `obj` (which holds no mac)."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    prefix = body[:-1]
    return prefix + b',"mac":"' + mac_of(key, prefix).encode() + b'"}'


class LinkError(AssertionError):
    pass


class Device:
    """One virtual dispenser process on a raw pty. Use as a context manager or call stop()."""

    def __init__(
        self,
        state_dir: Path,
        schedule_json: Path | None,
        stderr_path: Path,
        start: int | None = None,
        speed: float = 1.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.schedule_json = schedule_json
        self.stderr_path = Path(stderr_path)
        self.start_utc = start
        self.speed = speed
        self.proc: subprocess.Popen[bytes] | None = None
        self.master = -1
        self.slave = -1
        self._rx = bytearray()
        self.replies: list[dict[str, Any]] = []  # parsed, not yet taken
        self.raw_replies: list[bytes] = []  # the raw line of every reply, in order
        self.events: list[dict[str, Any]] = []
        self.event_times: list[float] = []  # time.monotonic() when each event arrived
        self.noise: list[bytes] = []
        self.broken: str | None = None  # set once the device stopped answering or exited
        self.key: bytes | None = None
        self.ctr = 0  # the last counter used in a request
        self.accepted = 0  # the highest counter a verified reply showed accepted
        self.next_id = 0
        self._stderr = None
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._stop_reader = False
        self._eof = False

    # -- process -----------------------------------------------------------------------------

    def start(self) -> Device:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        cmd = [str(MICROPYTHON), "-m", "sim.serve", str(self.state_dir)]
        cmd += ["--speed", repr(float(self.speed))]
        if self.schedule_json is not None:
            cmd += ["--schedule", str(self.schedule_json)]
        if self.start_utc is not None:
            cmd += ["--start", str(self.start_utc)]
        env = dict(os.environ)
        env["MICROPYPATH"] = f".frozen:{FIRMWARE}"
        self._stderr = open(self.stderr_path, "ab")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self._stderr,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        os.close(self.slave)  # the child has it: its exit now shows as EIO on the master
        self.slave = -1
        self._reader = threading.Thread(target=self._read_loop, args=(self.master,), daemon=True)
        self._reader.start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        """hello until it answers (the firmware needs a moment to boot)."""
        end = time.monotonic() + timeout
        while True:
            rid = self._id()
            self.send_raw(b'{"id":%d,"cmd":"hello"}\n' % rid)
            try:
                return self.take(rid, timeout=1.0)["data"]
            except LinkError:
                if time.monotonic() > end or self.proc is None or self.proc.poll() is not None:
                    raise
                self.broken = None  # still booting

    def stop(self, timeout: float = 10.0) -> int | None:
        """Hang up (end of input: the firmware stops cleanly), else kill. The exit code."""
        rc = None
        if self._reader is not None:
            self._stop_reader = True  # before the master is closed: its number may be reused
            self._reader.join(5)
            self._reader = None
        if self.proc is not None:
            if self.master >= 0:
                os.close(self.master)  # hang-up: the firmware reads end of input
                self.master = -1
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                rc = self.proc.wait(5)
            self.proc = None
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.stop()

    def __enter__(self) -> Device:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def _fail(self, why: str) -> None:
        """Raise (and remember, so later waits fail at once instead of timing out again)."""
        if self.proc is not None and self.proc.poll() is not None:
            why += f"; the firmware exited with {self.proc.returncode}"
        tail = self.stderr_text()[-1500:] if self.stderr_path.exists() else ""
        self.broken = why
        raise LinkError(f"{why}\n-- stderr:\n{tail}")

    def _alive(self) -> None:
        if self.broken is not None:
            raise LinkError(f"the device is broken: {self.broken}")
        if self.proc is None or self.proc.poll() is not None:
            self._fail("the firmware is not running")

    # -- bytes -------------------------------------------------------------------------------
    # A reader thread takes every line as it arrives (so event arrival times are those of the
    # link, not of whenever the test next looks) and files it under the condition's lock.

    def _read_loop(self, fd: int) -> None:
        while not self._stop_reader:
            try:
                r, _, _ = select.select([fd], [], [], 0.05)
            except (OSError, ValueError):
                r, chunk = [], b""
                break
            if not r:
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the firmware is gone
                chunk = b""
            now = time.monotonic()
            with self._cond:
                if not chunk:
                    break
                self._rx += chunk
                self._split(now)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _split(self, now: float) -> None:
        while True:
            i = self._rx.find(b"\n")
            if i < 0:
                return
            line = bytes(self._rx[:i])
            del self._rx[: i + 1]
            try:  # leniently: a reply that is not UTF-8 is still a reply (tests check it)
                obj = json.loads(line.decode("utf-8", "surrogateescape"))
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                self.noise.append(line)
            elif "ev" in obj:
                self.events.append(obj)
                self.event_times.append(now)
            else:
                self.raw_replies.append(line)
                obj["_raw"] = line
                self.replies.append(obj)

    def _wait(self, found: Any, timeout: float, what: str) -> Any:
        """found() (called under the lock) until it is not None; raises on a timeout or
        when the firmware is gone."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.broken is not None:
                    raise LinkError(f"the device is broken: {self.broken}")
                got = found()
                if got is not None:
                    return got
                if self._eof:
                    if self.proc is not None:
                        try:
                            self.proc.wait(2)
                        except subprocess.TimeoutExpired:
                            pass
                    self._fail(f"the link closed while waiting for {what}")
                left = end - time.monotonic()
                if left <= 0:
                    self._fail(f"{what}: nothing in {timeout} s (queued: {self.replies[:5]})")
                self._cond.wait(min(left, 0.5))

    def send_raw(self, data: bytes) -> None:
        """Write every byte (the reader thread drains the replies meanwhile)."""
        mv = memoryview(data)
        end = time.monotonic() + 30.0
        while mv:
            self._alive()
            if time.monotonic() > end:
                self._fail(f"the firmware stopped reading ({len(mv)} bytes unsent)")
            _, w, _ = select.select([], [self.master], [], 0.5)
            if w:
                try:
                    n = os.write(self.master, mv[:4096])
                except BlockingIOError:
                    continue
                mv = mv[n:]

    def poll(self, seconds: float) -> None:
        """Let `seconds` pass (output keeps being collected); raises if the firmware died."""
        end = time.monotonic() + seconds
        with self._cond:
            while not self._eof:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
        self._alive()

    def event_log(self) -> list[tuple[dict[str, Any], float]]:
        """(event, time.monotonic() of its arrival) for every event so far."""
        with self._cond:
            return list(zip(self.events, self.event_times, strict=True))

    def wait_replies(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """At least `n` replies queued (then take them all); raises on timeout."""

        def found() -> list[dict[str, Any]] | None:
            if len(self.replies) < n:
                return None
            got, self.replies = self.replies, []
            return got

        return self._wait(found, timeout, f"{n} replies")

    def take(self, rid: int | None, timeout: float = 20.0) -> dict[str, Any]:
        """The reply with this id (replies with other ids stay queued)."""

        def found() -> dict[str, Any] | None:
            for i, r in enumerate(self.replies):
                if r.get("id") == rid:
                    del self.replies[i]
                    return r
            return None

        return self._wait(found, timeout, f"the reply to id {rid}")

    def through(self, rid: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every reply up to the one with id `rid` (a sentinel sent last): the replies before
        it, in order (the sentinel's own reply, a success, is dropped)."""

        def found() -> list[dict[str, Any]] | None:
            for i, r in enumerate(self.replies):
                if r.get("id") == rid and r.get("ok") is True:
                    got = self.replies[:i]
                    del self.replies[: i + 1]
                    return got
            return None

        return self._wait(found, timeout, f"sentinel {rid}")

    # -- requests ----------------------------------------------------------------------------

    def _id(self) -> int:
        self.next_id = self.next_id % 2_000_000_000 + 1
        return self.next_id

    def request(self, cmd: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """An unauthenticated request; the reply."""
        rid = self._id()
        obj: dict[str, Any] = {"id": rid, "cmd": cmd}
        if args is not None:
            obj["args"] = args
        line = json.dumps(obj, separators=(",", ":")).encode()
        self.send_raw(line + b"\n")
        return self.take(rid, **kw)

    def signed(
        self,
        cmd: str,
        args: dict[str, Any] | None = None,
        key: bytes | None = None,
        ctr: int | None = None,
        rid: int | None = None,
    ) -> tuple[int, int, bytes]:
        """(id, ctr, line) of an authenticated request, not sent. The counter moves on
        unless `ctr` is given."""
        if rid is None:
            rid = self._id()
        if ctr is None:
            self.ctr += 1
            ctr = self.ctr
        obj: dict[str, Any] = {"id": rid, "cmd": cmd}
        if args is not None:
            obj["args"] = args
        obj["ctr"] = ctr
        k = key if key is not None else self.key
        assert k is not None, "not paired"
        return rid, ctr, sign(k, obj)

    def call(
        self,
        cmd: str,
        args: dict[str, Any] | None = None,
        key: bytes | None = None,
        ctr: int | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """An authenticated request; the reply, its mac verified when it carries one."""
        rid, ctr, line = self.signed(cmd, args, key=key, ctr=ctr)
        self.send_raw(line + b"\n")
        reply = self.take(rid, timeout=timeout)
        self.verify(reply, ctr, key)
        return reply

    def ok(self, cmd: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        reply = self.call(cmd, args, **kw)
        if reply.get("ok") is not True:
            raise LinkError(f"{cmd} {args}: {reply}")
        return reply["data"]

    def verify(self, reply: dict[str, Any], ctr: int | None, key: bytes | None = None) -> None:
        """A reply to an authenticated request carries its ctr and a valid mac (unless it
        was refused before authentication: no ctr, no mac)."""
        raw: bytes = reply["_raw"]
        if "mac" not in reply:
            assert "ctr" not in reply, raw
            assert reply.get("ok") is False, raw
            return
        k = key if key is not None else self.key
        assert k is not None
        assert reply["ctr"] == ctr, raw
        tail = raw[-MAC_TAIL:]
        assert tail.startswith(b',"mac":"') and tail.endswith(b'"}'), raw
        want = mac_of(k, raw[:-MAC_TAIL])
        assert hmac.compare_digest(tail[8:-2].decode(), want), f"bad reply mac: {raw!r}"
        self.accepted = max(self.accepted, ctr or 0)

    # -- pairing, log, time ------------------------------------------------------------------

    def press_service(self) -> None:
        r = self.request("sim.press", {"button": "service"})
        assert r["ok"] is True, r

    def open_window(self) -> None:
        """Open the pairing window with one press of the service button."""
        self.press_service()
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            if self.request("hello")["data"]["pairing"]:
                return
            self.poll(0.02)
        raise LinkError("the pairing window never opened")

    def pair(self, nonce: bytes | None = None, press: bool = True) -> bytes:
        if press:
            self.open_window()
        nonce = nonce if nonce is not None else os.urandom(32)
        r = self.request("pair", {"nonce": nonce.hex()})
        assert r["ok"] is True, r
        self.key = bytes.fromhex(r["data"]["key"])
        assert len(self.key) == 32
        self.ctr = self.accepted = 0
        return self.key

    def log_raw(self, frm: int = 1) -> list[bytes]:
        """Every durable record from seq `frm` on, as raw 24-byte records."""
        out: list[bytes] = []
        seq = frm
        while True:
            data = self.ok("log.read", {"from": seq, "n": 128})
            blob = base64.b64decode(data["recs"])
            assert len(blob) == 24 * data["n"], data
            out += [blob[i : i + 24] for i in range(0, len(blob), 24)]
            if data["n"] == 0 or data["next"] > data["last"]:
                return out
            seq = data["next"]

    def log(self, frm: int = 1) -> list[tuple[Any, ...]]:
        recs = []
        for raw in self.log_raw(frm):
            r = logrec.decode(raw)
            assert r is not None, raw.hex()
            recs.append(r)
        return recs

    def advance(self, seconds: int) -> int:
        r = self.request("sim.advance", {"s": seconds}, timeout=60.0)
        assert r["ok"] is True, r
        return r["data"]["utc"]


def auth_fails(recs: list[tuple[Any, ...]]) -> list[str]:
    """The reasons of the auth_fail records among decoded log records, in order."""
    return [logrec.AUTH_REASONS[r[6]] for r in recs if r[2] == logrec.AUTH_FAIL]


def kinds(recs: list[tuple[Any, ...]]) -> list[str]:
    return [logrec.NAMES[r[2]] for r in recs]
