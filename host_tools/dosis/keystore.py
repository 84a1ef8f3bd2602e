"""The host's keys: one 32-byte key and one request counter per paired dispenser.

A JSON file `{device_id: {"key": hex, "ctr": int, "paired": iso}}`, by default
`~/.config/dosis/keys.json` or `$DOSIS_KEYSTORE`. The file is mode 0600 (a new directory for
it 0700) and a keystore other users can read is refused. Every change is written to a temporary
file, synced and renamed over the old one, under a lock, so a crash leaves the old or the new
file and two `dosis` processes never lose each other's counters. Keys are never printed or
logged; `repr()` shows none.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import AuthError, DosisError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, no POSIX modes
    fcntl = None  # type: ignore[assignment]

CTR_MAX = 2**64 - 1
_POSIX = os.name == "posix"

__all__ = ["Keystore", "default_path"]


def default_path() -> Path:
    """`$DOSIS_KEYSTORE`, else `~/.config/dosis/keys.json`."""
    env = os.environ.get("DOSIS_KEYSTORE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".config" / "dosis" / "keys.json"


def _valid_key(key_hex: str) -> bool:
    return (
        isinstance(key_hex, str)
        and len(key_hex) == 64
        and all(c in "0123456789abcdef" for c in key_hex)
    )


class Keystore:
    """The keystore file at `path` (default: `default_path()`)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()

    def __repr__(self) -> str:
        return f"Keystore({str(self.path)!r})"

    # -- reading -------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return {}
        except PermissionError:
            raise DosisError(f"{self.path}: cannot be read (permission denied)") from None
        except OSError as e:
            raise DosisError(f"{self.path}: cannot be read ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if _POSIX and st.st_mode & 0o077:
                raise DosisError(
                    f"keystore {self.path} can be read by other users "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}): run 'chmod 600 {self.path}'"
                )
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(4 * 1024 * 1024)
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if not isinstance(doc, dict) or not all(
            isinstance(v, dict) and _valid_key(v.get("key", "")) for v in doc.values()
        ):
            raise DosisError(
                f"keystore {self.path} is damaged: restore it from a backup, or move it aside "
                "and pair the dispensers again"
            )
        return doc

    def get(self, device_id: str) -> bytes | None:
        """The 32-byte key of `device_id`, or None if it is not paired with this host."""
        entry = self._load().get(device_id)
        return None if entry is None else bytes.fromhex(entry["key"])

    def require(self, device_id: str) -> bytes:
        """The key of `device_id`; AuthError saying how to pair when there is none."""
        key = self.get(device_id)
        if key is None:
            raise self._no_key(device_id)
        return key

    def _no_key(self, device_id: str) -> AuthError:
        return AuthError(
            f"no key for device {device_id} in {self.path}: pair it with 'dosis pair'",
            code="no_key",
        )

    def device_ids(self) -> list[str]:
        """The paired devices, sorted."""
        return sorted(self._load())

    def paired_at(self, device_id: str) -> str | None:
        """When `device_id` was paired (ISO 8601 UTC), or None."""
        entry = self._load().get(device_id)
        return None if entry is None else entry.get("paired")

    # -- changing ------------------------------------------------------------------------

    def put(self, device_id: str, key_hex: str) -> None:
        """Store the key of `device_id` (replacing an older one). The counter never goes back."""
        if not isinstance(device_id, str) or not device_id:
            raise ValueError("device_id must be a non-empty string")
        if not _valid_key(key_hex):
            raise ValueError("the key must be 64 lowercase hex digits")
        with self._locked():
            doc = self._load()
            old = doc.get(device_id, {})
            doc[device_id] = {
                "key": key_hex,
                "ctr": int(old.get("ctr", 0)),
                "paired": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
            }
            if _valid_key(old.get("uplink_key", "")):
                # The device keeps its uplink key (net.json) when it is paired again.
                doc[device_id]["uplink_key"] = old["uplink_key"]
            self._save(doc)

    def uplink_key(self, device_id: str) -> bytes | None:
        """The device's uplink key (set by `dosis provision mqtt`), or None."""
        entry = self._load().get(device_id)
        k = None if entry is None else entry.get("uplink_key")
        return bytes.fromhex(k) if isinstance(k, str) and _valid_key(k) else None

    def set_uplink_key(self, device_id: str, key_hex: str) -> None:
        """Remember the uplink key given to `device_id` (for `dosis fleet enroll`)."""
        if not _valid_key(key_hex):
            raise ValueError("the key must be 64 lowercase hex digits")
        with self._locked():
            doc = self._load()
            entry = doc.get(device_id)
            if entry is None:
                raise self._no_key(device_id)
            entry["uplink_key"] = key_hex
            self._save(doc)

    def next_ctr(self, device_id: str, at_least: int = 0) -> int:
        """A request counter for `device_id`, strictly above every one handed out before and
        at least `at_least`; stored before it is returned.

        It starts from the clock in microseconds, so even a keystore restored from an old
        backup (or a second computer with the same key) does not go back in practice."""
        with self._locked():
            doc = self._load()
            entry = doc.get(device_id)
            if entry is None:
                raise self._no_key(device_id)
            ctr = max(int(entry.get("ctr", 0)) + 1, time.time_ns() // 1000, at_least)
            if ctr > CTR_MAX:
                raise AuthError(
                    f"the request counter for device {device_id} is exhausted: pair it again "
                    "with 'dosis pair'",
                    code="ctr",
                )
            entry["ctr"] = ctr
            self._save(doc)
            return ctr

    def remove(self, device_id: str) -> bool:
        """Forget `device_id`; False if it was not there."""
        with self._locked():
            doc = self._load()
            if doc.pop(device_id, None) is None:
                return False
            self._save(doc)
            return True

    # -- files ---------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        d = self.path.parent
        missing = []
        while not d.exists():
            missing.append(d)
            if d.parent == d:
                break
            d = d.parent
        for m in reversed(missing):
            try:
                os.mkdir(m, 0o700)
            except FileExistsError:
                continue
            except OSError as e:
                raise DosisError(f"{m}: cannot be created ({e.strerror})") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_dir()
        if fcntl is None:
            yield
            return
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise DosisError(f"{lock}: cannot be created ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _save(self, doc: dict[str, dict[str, Any]]) -> None:
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if _POSIX:
                    os.fchmod(fd, 0o600)  # whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise DosisError(f"{self.path}: cannot be written ({e.strerror})") from None
        if _POSIX:
            with contextlib.suppress(OSError):
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
