"""Domain errors of the host tools; the CLI turns them into one line on stderr."""

from __future__ import annotations

from typing import Any


class DosisError(Exception):
    """An error the user can act on; the message says what to do. Exit code 1."""

    exit_code = 1


class InputError(DosisError):
    """Bad input: a file, an argument or a value that cannot be used as given."""


class LinkError(DosisError):
    """The serial link failed: the port is missing or busy, or the device does not answer.

    The message says what to check (the cable, the port, another program holding it).
    """

    exit_code = 3


class DeviceError(DosisError):
    """The device refused a request. `code`, `msg` and `data` are its error reply: the `err`
    code, its sentence, and the whole reply object (e.g. `problems` of `invalid_schedule`)."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        msg: str = "",
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.msg = msg
        self.data: dict[str, Any] = data if data is not None else {}


class AuthError(DeviceError):
    """Authentication failed: the device is not paired, refused our key, a reply did not
    verify, or the keystore has no usable key for it. Exit code 4."""

    exit_code = 4


class ProtocolError(DosisError):
    """The device speaks another protocol version (or none). Exit code 5."""

    exit_code = 5
