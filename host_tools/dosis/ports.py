"""Finding dispensers: ESP32 USB-serial bridges, and virtual dispensers started by `dosis sim`.

A running virtual dispenser announces itself with one JSON file in the run directory
(`$DOSIS_RUN_DIR`, else `$XDG_RUNTIME_DIR/dosis`, else `~/.cache/dosis/run`):
`{"pid": 1234, "port": "/dev/pts/5", "state": "/home/x/.cache/dosis/sim/default",
"started": "2026-03-29T08:00:00+00:00"}`. Files whose process is gone are ignored and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serial.tools import list_ports

from .errors import LinkError

# USB vendor:product ids of the bridges ESP32 boards use (None: any product of the vendor).
ESP32_USB_IDS: dict[tuple[int, int | None], str] = {
    (0x10C4, 0xEA60): "CP210x",
    (0x1A86, 0x7523): "CH340",
    (0x1A86, 0x55D4): "CH9102",
    (0x303A, None): "ESP32 native USB",
}

__all__ = ["PortInfo", "find_ports", "resolve_port", "run_dir", "sim_entries"]


@dataclass(frozen=True)
class PortInfo:
    """A candidate dispenser port. `kind` is "esp32" or "sim"."""

    port: str
    kind: str
    description: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    sim_pid: int | None = None  # the `dosis sim` process
    state: str | None = None  # the virtual dispenser's state directory

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def run_dir() -> Path:
    """Where running virtual dispensers register (not created here)."""
    env = os.environ.get("DOSIS_RUN_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "dosis"
    return Path.home() / ".cache" / "dosis" / "run"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True


def sim_entries(directory: Path | None = None) -> list[dict[str, Any]]:
    """The registry entries of running virtual dispensers; stale files are removed."""
    if os.name != "posix":
        return []  # virtual dispensers need pseudo-terminals
    d = run_dir() if directory is None else directory
    out = []
    try:
        files = sorted(d.glob("*.json"))
    except OSError:
        return []
    for f in files:
        try:
            entry = json.loads(f.read_text(encoding="utf-8"))
            pid = int(entry["pid"])
            port = str(entry["port"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: leave it
        if not _alive(pid) or not os.path.exists(port):
            with contextlib.suppress(OSError):
                f.unlink()
            continue
        out.append(entry)
    return out


def _bridge(vid: int | None, pid: int | None) -> str | None:
    if vid is None:
        return None
    return ESP32_USB_IDS.get((vid, pid)) or ESP32_USB_IDS.get((vid, None))


def find_ports() -> list[PortInfo]:
    """ESP32 boards on USB (by bridge id), then running virtual dispensers."""
    found = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        bridge = _bridge(p.vid, p.pid)
        if bridge is None:
            continue
        desc = p.description if p.description and p.description != "n/a" else bridge
        found.append(
            PortInfo(
                port=p.device,
                kind="esp32",
                description=f"{desc} ({p.vid:04X}:{p.pid:04X})",
                vid=p.vid,
                pid=p.pid,
                serial_number=p.serial_number or None,
            )
        )
    for e in sim_entries():
        state = str(e.get("state", ""))
        found.append(
            PortInfo(
                port=e["port"],
                kind="sim",
                description=f"virtual dispenser (pid {e['pid']}, state {state})",
                sim_pid=int(e["pid"]),
                state=state or None,
            )
        )
    return found


def resolve_port(port: str | None) -> str:
    """`port` if given, else the one dispenser found; LinkError when there are none or
    several."""
    if port:
        return port
    found = find_ports()
    if len(found) == 1:
        return found[0].port
    if not found:
        raise LinkError(
            "no dispenser found: plug it in, or start one with 'dosis sim', or give --port"
        )
    names = ", ".join(p.port for p in found)
    raise LinkError(f"several dispensers found ({names}): choose one with --port")
