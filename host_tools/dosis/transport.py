"""The serial link to a dispenser: lines of bytes over pyserial, and nothing more.

Opening never resets an ESP32: DTR and RTS are de-asserted *before* the port is opened (on
most ESP32 boards they drive EN and GPIO0 through the auto-reset circuit). Every pyserial
failure becomes a `LinkError` whose message says what to check.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import Any

import serial

from .errors import LinkError

BAUD = 115200
MAX_LINE = 64 * 1024  # a longer incoming line is dropped as it arrives, never buffered
_POLL_S = 0.05  # pyserial read timeout; read_line loops on it until its own deadline

__all__ = ["BAUD", "MAX_LINE", "SerialLink"]


def _open_error(port: str, e: BaseException) -> LinkError:
    code = getattr(e, "errno", None)
    text = str(e)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or "FileNotFoundError" in text:
        return LinkError(
            f"port {port} does not exist: is the dispenser plugged in? "
            "('dosis devices' lists the dispensers found)"
        )
    if code in (errno.EACCES, errno.EPERM) or "PermissionError" in text:
        return LinkError(
            f"permission denied on {port}: add yourself to the dialout group "
            "(sudo usermod -aG dialout $USER), then log in again"
        )
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in text.lower():
        return LinkError(f"port {port} is busy: close other serial monitors using it")
    return LinkError(f"cannot open {port} ({text}): check the cable and the port name")


class SerialLink:
    """One open serial port, read and written a line at a time.

    `serial_factory` builds the unconfigured `serial.Serial` (tests pass a spy).
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = BAUD,
        serial_factory: Callable[[], Any] = serial.Serial,
    ) -> None:
        self.port = port
        self._buf = bytearray()
        self._skipping = False  # inside a line longer than MAX_LINE: drop until its newline
        s = serial_factory()  # unconfigured: nothing is opened yet
        s.port = port
        s.baudrate = baudrate
        # Before open(): pyserial applies these while opening, so the lines never pulse.
        s.dtr = False
        s.rts = False
        s.timeout = _POLL_S
        s.write_timeout = 5.0
        try:
            s.exclusive = True  # flock() on POSIX; Windows ports are always exclusive
        except (AttributeError, ValueError, NotImplementedError):
            pass
        try:
            s.open()
        except (serial.SerialException, OSError, ValueError) as e:
            raise _open_error(port, e) from None
        self.serial = s

    def _lost(self, e: BaseException) -> LinkError:
        return LinkError(
            f"lost the connection to {self.port} ({e}): was the dispenser unplugged? "
            "Reconnect it and try again"
        )

    def write_line(self, line: bytes) -> None:
        """Send `line` followed by a newline."""
        if b"\n" in line:
            raise ValueError("a line must not contain a newline")
        try:
            self.serial.write(line + b"\n")
            self.serial.flush()
        except serial.SerialTimeoutException:
            raise LinkError(
                f"{self.port} accepts no data: is the dispenser powered and is this its port?"
            ) from None
        except (serial.SerialException, OSError) as e:
            raise self._lost(e) from None

    def read_line(self, timeout: float | None) -> bytes | None:
        """The next line without its newline (and a `\\r` before it), or None when none has
        been completed within `timeout` seconds (None: wait as long as it takes). Lines longer
        than MAX_LINE bytes are dropped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            line = self._take_line()
            if line is not None:
                return line
            if deadline is not None and time.monotonic() >= deadline:
                return None
            try:
                waiting = self.serial.in_waiting
                chunk = self.serial.read(max(1, min(waiting, 4096)))
            except (serial.SerialException, OSError) as e:
                raise self._lost(e) from None
            if chunk:
                self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        self._buf += chunk
        if b"\n" not in chunk and len(self._buf) > MAX_LINE:
            self._buf.clear()
            self._skipping = True

    def _take_line(self) -> bytes | None:
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                return None
            line = bytes(self._buf[:i])
            del self._buf[: i + 1]
            if self._skipping:  # the tail of an over-long line
                self._skipping = False
                continue
            if len(line) > MAX_LINE:
                continue
            return line[:-1] if line.endswith(b"\r") else line

    def close(self) -> None:
        try:
            self.serial.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self) -> SerialLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SerialLink({self.port!r})"
