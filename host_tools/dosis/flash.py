"""Flashing MicroPython onto a bare board: `dosis firmware flash`, over esptool's Python API.

`flash_micropython` checks the image, finds the chip, erases the flash (unless told not to),
writes the image with esptool's compression and its MD5 verification, and resets the board.
It never prints: progress goes to `on_progress`, failures are `dosis.errors` with one
sentence. It does not pair or deploy anything; `dosis firmware deploy` is the next step.

esptool is reached through a small object (`EsptoolApi`; tests pass a fake with the same
methods). esptool is imported only when a board is flashed: `dosis --help` does not need it.
esptool's own console output is captured while it works (`_captured_log`) so stdout stays
clean; its write progress is turned into `Progress` events.

Where the image goes depends on the chip: the second-stage bootloader sits at 0x1000 on the
ESP32 and ESP32-S2 and at 0x0 on the ESP32-S3, -C3 and -C6 (esptool's
`BOOTLOADER_FLASH_OFFSET`), and MicroPython's downloads are images that start with it.

Connecting uses esptool's defaults (7 attempts of its reset-and-sync sequence, about 5 s when
nothing answers; ESPTOOL_CONNECT_ATTEMPTS or esptool.cfg change it), or
`EsptoolApi(connect_attempts=N)`.
"""

from __future__ import annotations

import contextlib
import errno
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import click

from . import ports
from .errors import DosisError, InputError, LinkError
from .transport import _open_error

__all__ = [
    "CHIPS",
    "DEFAULT_BAUD",
    "EsptoolApi",
    "EsptoolLike",
    "FlashResult",
    "Progress",
    "flash_command",
    "flash_micropython",
    "read_image",
]

DEFAULT_BAUD = 460800
ROM_BAUD = 115200  # every ESP ROM bootloader syncs at this rate; the stub then speeds up
ESP_IMAGE_MAGIC = 0xE9
_HEADER_LEN = 24  # the image header (8 bytes) and the extended header (16 bytes)


@dataclass(frozen=True)
class ChipKind:
    """An ESP32 family chip dosis can flash: where the image goes, and the chip id that the
    image's extended header carries for it."""

    name: str
    offset: int
    image_chip_id: int


CHIPS: dict[str, ChipKind] = {
    k.name: k
    for k in (
        ChipKind("ESP32", 0x1000, 0),
        ChipKind("ESP32-S2", 0x1000, 2),
        ChipKind("ESP32-S3", 0x0, 9),
        ChipKind("ESP32-C3", 0x0, 5),
        ChipKind("ESP32-C6", 0x0, 13),
    )
}
_BY_IMAGE_ID = {k.image_chip_id: k.name for k in CHIPS.values()}

NO_CHIP = "no chip answered on {port}: hold BOOT while pressing EN (or check the cable)"


@dataclass(frozen=True)
class Progress:
    """One step of a flash. `stage` is "connect", "chip" (`detail` describes the chip),
    "erase", "write" (`done` of `total` image bytes written) or "reset"."""

    stage: str
    done: int = 0
    total: int = 0
    detail: str = ""


@dataclass(frozen=True)
class FlashResult:
    """A flashed board. `mac` (e.g. "24:0a:c4:12:34:56") identifies the board, not a person;
    `flash_size` is in bytes (None when the chip did not say)."""

    port: str
    chip: str
    mac: str | None
    flash_size: int | None
    offset: int
    bytes_written: int
    erased: bool
    seconds: float


class EsptoolLike(Protocol):
    """The few esptool operations a flash needs; `esp` is esptool's loader object, opaque
    here. Failures are esptool's FatalError, or OSError / pyserial errors."""

    def detect_chip(self, port: str) -> Any: ...
    def chip_name(self, esp: Any) -> str: ...
    def prepare(self, esp: Any, baud: int) -> Any: ...
    def read_mac(self, esp: Any) -> str | None: ...
    def flash_size(self, esp: Any) -> int | None: ...
    def erase_flash(self, esp: Any) -> None: ...
    def write_flash(
        self, esp: Any, offset: int, data: bytes, on_progress: Callable[[int, int], None]
    ) -> None: ...
    def hard_reset(self, esp: Any) -> None: ...
    def close(self, esp: Any) -> None: ...


# -- esptool itself ---------------------------------------------------------------------------


@contextlib.contextmanager
def _captured_log(on_bar: Callable[[int, int], None] | None = None) -> Iterator[list[str]]:
    """Route esptool's console output into a list while the block runs (esptool prints to
    stdout, which belongs to dosis's data); its progress bars go to `on_bar(done, total)`."""
    from esp_pylib.logger import EspLog, EspLogBase

    lines: list[str] = []

    class Captured(EspLogBase):
        def print(self, *args: Any, **kwargs: Any) -> None:
            text = " ".join(str(a) for a in args).strip()
            if text:
                lines.append(text)

        def err(self, *args: Any, suggestion: str | None = None) -> None:
            self.print(*args)

        def warn(self, *args: Any, suggestion: str | None = None) -> None:
            self.print(*args)

        def note(self, *args: Any) -> None:
            self.print(*args)

        def hint(self, *args: Any) -> None:
            self.print(*args)

        def debug(self, *args: Any) -> None:
            pass

        def set_verbosity(self, mode: int | str) -> None:
            pass

        def progress_bar(
            self,
            cur_iter: int,
            total_iters: int,
            prefix: str = "",
            suffix: str = "",
            bar_length: int = 30,
        ) -> None:
            if on_bar is not None:
                on_bar(cur_iter, total_iters)

    captured = Captured()
    # A few one-shot warnings were bound to esptool's own logger when it was imported (e.g.
    # "Chip was NOT reset" on ports without RTS/DTR, such as pseudo-terminals): follow them too.
    once = [_reset_warning_once()]
    saved = [(o, o.print_callback) for o in once if o is not None]
    before = EspLog.instance
    EspLog.instance = captured
    for o, _ in saved:
        o.print_callback = captured.warn
    try:
        yield lines
    finally:
        EspLog.instance = before
        for o, callback in saved:
            o.print_callback = callback


def _reset_warning_once() -> Any:
    from esptool import reset

    once = getattr(getattr(reset, "ResetStrategy", None), "print_once", None)
    return once if hasattr(once, "print_callback") else None


class EsptoolApi:
    """esptool 5's Python API (esptool.cmds), in the steps its own CLI takes: detect the chip,
    run the stub flasher, raise the baud rate, attach the flash, then erase, write, reset."""

    def __init__(self, connect_attempts: int | None = None) -> None:
        self.connect_attempts = connect_attempts

    def detect_chip(self, port: str) -> Any:
        from esptool.cmds import detect_chip
        from esptool.loader import DEFAULT_CONNECT_ATTEMPTS

        attempts = self.connect_attempts or DEFAULT_CONNECT_ATTEMPTS
        with _captured_log():
            return detect_chip(port, ROM_BAUD, "default-reset", False, attempts)

    def chip_name(self, esp: Any) -> str:
        return str(esp.CHIP_NAME)

    def prepare(self, esp: Any, baud: int) -> Any:
        from esptool.cmds import attach_flash, run_stub
        from esptool.util import NotImplementedInROMError

        with _captured_log():
            esp = run_stub(esp)
            if baud > ROM_BAUD:
                with contextlib.suppress(NotImplementedInROMError):
                    esp.change_baud(baud)  # the ROM keeps 115200 if it cannot change
            attach_flash(esp)
        return esp

    def read_mac(self, esp: Any) -> str | None:
        from esptool.util import FatalError, NotImplementedInROMError

        try:
            with _captured_log():
                mac = esp.read_mac()
        except (FatalError, NotImplementedInROMError):
            return None
        if not mac:
            return None
        return ":".join(f"{b:02x}" for b in mac)

    def flash_size(self, esp: Any) -> int | None:
        from esptool.cmds import detect_flash_size
        from esptool.util import flash_size_bytes

        if getattr(esp, "secure_download_mode", False):
            return None  # the chip will not tell
        with _captured_log():
            size = flash_size_bytes(detect_flash_size(esp))
        return int(size) if size else None

    def erase_flash(self, esp: Any) -> None:
        from esptool.cmds import erase_flash

        with _captured_log():
            erase_flash(esp)

    def write_flash(
        self, esp: Any, offset: int, data: bytes, on_progress: Callable[[int, int], None]
    ) -> None:
        from esptool.cmds import write_flash

        def bar(done: int, total: int) -> None:
            # esptool counts compressed bytes sent; report the share of the image instead.
            if total > 0:
                on_progress(len(data) * min(done, total) // total, len(data))

        with _captured_log(bar):
            write_flash(esp, [(offset, data)], compress=True)  # verifies the MD5 after

    def hard_reset(self, esp: Any) -> None:
        from esptool.cmds import reset_chip

        with _captured_log():
            reset_chip(esp, "hard-reset")

    def close(self, esp: Any) -> None:
        port = getattr(esp, "_port", None)
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()


# -- the API ----------------------------------------------------------------------------------


def _describe_magic(head: bytes) -> str:
    if head.startswith(b"\x7fELF"):
        return "an ELF file, not a flashable image"
    if head.startswith(b"UF2\n"):
        return "a UF2 file, which the ESP32 ROM cannot flash"
    if not head:
        return "empty"
    return f"not an ESP firmware image (first byte 0x{head[0]:02X}, not 0xE9)"


def read_image(image: Path | str) -> bytes:
    """The firmware image in `image`; InputError when it is missing or not an ESP image."""
    path = Path(image)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"{path}: no such file: download the board's MicroPython .bin from "
            "https://micropython.org/download/"
        ) from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory; give the MicroPython .bin file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not data or data[0] != ESP_IMAGE_MAGIC:
        raise InputError(
            f"{path}: {_describe_magic(data[:4])}: give the MicroPython .bin for the board "
            "(e.g. ESP32_GENERIC-....bin from micropython.org/download)"
        )
    if len(data) < _HEADER_LEN:
        raise InputError(f"{path}: truncated ESP image ({len(data)} bytes): download it again")
    return data


def _image_chip_id(data: bytes) -> int:
    return int.from_bytes(data[12:14], "little")


def _size_text(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    return f"{(n + 1023) // 1024} KB"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].rstrip(".") if text else type(e).__name__


def _errno_of(e: BaseException | None) -> int | None:
    while e is not None:
        code = getattr(e, "errno", None)
        if isinstance(code, int):
            return code
        e = e.__cause__ or e.__context__
    return None


_OPEN_ERRNOS = (
    errno.ENOENT,
    errno.ENODEV,
    errno.ENXIO,
    errno.EACCES,
    errno.EPERM,
    errno.EBUSY,
    errno.EAGAIN,
)


def _connect_error(port: str, e: Exception) -> DosisError:
    """What a failure to reach the chip means, in one sentence."""
    text = str(e)
    code = _errno_of(e)
    if text.startswith("Could not open") or code in _OPEN_ERRNOS:
        # esptool wraps pyserial's error in a FatalError; dosis.transport words the cause.
        cause = e.__context__ if text.startswith("Could not open") and e.__context__ else e
        return _open_error(port, OSError(code, _first_line(cause)) if code else cause)
    if "autodetect chip type" in text or "Unexpected chip" in text:
        return DosisError(
            f"the chip on {port} is not one esptool knows ({_first_line(e)}): dosis flashes "
            "ESP32 family boards only"
        )
    return LinkError(NO_CHIP.format(port=port))


def _work_error(port: str, stage: str, e: Exception) -> DosisError:
    """A failure after the chip answered: the board may be left without firmware."""
    doing = {"erase": "erasing", "write": "writing", "reset": "resetting"}.get(stage, "preparing")
    if isinstance(e, OSError):
        return LinkError(
            f"lost {port} while {doing} ({_first_line(e)}): check the cable, then flash again"
        )
    return DosisError(
        f"esptool failed while {doing} {port} ({_first_line(e)}): flash again; the board may "
        "have no firmware until it succeeds"
    )


def _refuse_sim(port: str) -> None:
    for entry in ports.sim_entries():
        if str(entry.get("port")) == port:
            raise InputError(
                f"{port} is a virtual dispenser ('dosis sim'): flash a real ESP32 board"
            )


def flash_micropython(
    port: str,
    image: Path,
    *,
    baud: int = DEFAULT_BAUD,
    erase: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
    esptool_api: EsptoolLike | None = None,
) -> FlashResult:
    """Write the MicroPython image in `image` to the ESP32 family board on `port`.

    The image is checked before the board is touched (an ESP image, for this chip, that fits
    its flash); then the flash is erased (unless `erase` is false), the image written at the
    chip's offset (compressed, then verified by esptool) and the board hard-reset.

    Raises InputError (the image), LinkError (the port, or no chip answering) or DosisError
    (an unsupported chip, esptool failing); never prints.
    """
    started = time.monotonic()
    report = on_progress or (lambda p: None)
    data = read_image(image)
    _refuse_sim(port)
    api: EsptoolLike = esptool_api if esptool_api is not None else EsptoolApi()
    from esptool.util import FatalError

    report(Progress("connect"))
    try:
        esp = api.detect_chip(port)
    except (FatalError, OSError) as e:
        raise _connect_error(port, e) from None
    stage = "prepare"
    try:
        name = api.chip_name(esp)
        kind = CHIPS.get(name)
        if kind is None:
            if name.startswith("ESP32"):
                supported = ", ".join(CHIPS)
                raise DosisError(
                    f"{port} has an {name}, which dosis does not flash: use a board with "
                    f"one of {supported}"
                )
            raise DosisError(
                f"{port} has an {name}, not an ESP32 family chip: dosis needs an ESP32 board"
            )
        image_chip = _image_chip_id(data)
        if image_chip != kind.image_chip_id:
            other = _BY_IMAGE_ID.get(image_chip, f"another chip (id {image_chip})")
            raise InputError(
                f"{image} is an image for {other}, but {port} has an {name}: download the "
                f"{name} MicroPython image"
            )
        esp = api.prepare(esp, baud)
        mac = api.read_mac(esp)
        size = api.flash_size(esp)
        detail = name + (f", MAC {mac}" if mac else "")
        if size:
            detail += f", {_size_text(size)} flash"
        report(Progress("chip", detail=detail))
        if size is not None and kind.offset + len(data) > size:
            raise InputError(
                f"{image} ({_size_text(len(data))} at 0x{kind.offset:X}) does not fit the "
                f"{_size_text(size)} flash of {port}: use the image for a {_size_text(size)} "
                "board"
            )
        if erase:
            stage = "erase"
            report(Progress("erase"))
            api.erase_flash(esp)
        stage = "write"
        report(Progress("write", 0, len(data)))
        api.write_flash(
            esp,
            kind.offset,
            data,
            lambda done, total: report(Progress("write", done, total)),
        )
        stage = "reset"
        report(Progress("reset"))
        api.hard_reset(esp)
    except (FatalError, OSError) as e:
        raise _work_error(port, stage, e) from None
    finally:
        api.close(esp)
    return FlashResult(
        port=port,
        chip=name,
        mac=mac,
        flash_size=size,
        offset=kind.offset,
        bytes_written=len(data),
        erased=erase,
        seconds=time.monotonic() - started,
    )


# -- the command ------------------------------------------------------------------------------


class _Reporter:
    """Stage lines on stderr, and a bar while writing when stderr is a terminal."""

    def __init__(self, port: str, image: Path) -> None:
        self.port = port
        self.image = image
        self.bar: Any = None
        self.writing = False
        self.shown = 0

    def __call__(self, p: Progress) -> None:
        if p.stage == "write":
            self._write(p)
            return
        self.close()
        if p.stage == "connect":
            _say(f"connecting to {self.port}...")
        elif p.stage == "chip":
            _say(f"found {p.detail}")
        elif p.stage == "erase":
            _say("erasing the whole flash (up to a minute)...")
        elif p.stage == "reset":
            _say("written and verified; resetting the board")

    def _write(self, p: Progress) -> None:
        if not self.writing:
            self.writing = True
            _say(f"writing {self.image.name} ({_size_text(p.total)})...")
            if sys.stderr.isatty() and p.total:
                self.bar = click.progressbar(length=p.total, label="writing", file=sys.stderr)
                self.bar.__enter__()
        if self.bar is not None and p.done > self.shown:
            self.bar.update(p.done - self.shown)
        self.shown = max(self.shown, p.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _say(text: str) -> None:
    click.echo(text, err=True)


@click.command("flash")
@click.option(
    "--micropython",
    "image",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.bin",
    help="The MicroPython image for the board (from micropython.org/download).",
)
@click.option(
    "-p",
    "--port",
    envvar="DOSIS_PORT",
    show_envvar=True,
    metavar="PORT",
    help="The board's serial port, e.g. /dev/ttyUSB0 [default: the one ESP32 board found].",
)
@click.option(
    "--baud",
    type=click.IntRange(min=ROM_BAUD),
    default=DEFAULT_BAUD,
    show_default=True,
    help="Baud rate while writing (try 115200 with a long or poor cable).",
)
@click.option(
    "--no-erase",
    is_flag=True,
    help="Do not erase first: only the image's own area is rewritten.",
)
@click.option("-y", "--yes", is_flag=True, help="Erase without asking.")
@click.option(
    "--bundle",
    "bundle_dir",
    default="build/bundle",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The app to install after MicroPython ('dosis firmware build' makes it).",
)
@click.option("--no-app", is_flag=True, help="Install MicroPython only, not the app.")
def flash_command(
    image: Path,
    port: str | None,
    baud: int,
    no_erase: bool,
    yes: bool,
    bundle_dir: Path,
    no_app: bool,
) -> None:
    """Flash MicroPython onto an ESP32 board, erasing it first.

    \b
    The image goes where the chip expects it (0x1000 on the ESP32 and ESP32-S2, 0x0 on the
    ESP32-S3, -C3, -C6); esptool compresses and verifies it; the board is reset afterwards.
    If no chip answers, hold BOOT while pressing EN. Then the app from --bundle is installed
    through the REPL (unless --no-app). Nothing is paired: that is the nurse's step."""
    read_image(image)  # a wrong file is refused before any port is looked for
    if not no_app:
        from .bundle import load_manifest

        load_manifest(bundle_dir)  # a missing bundle is refused before anything is erased
    port = ports.resolve_port(port)
    if not no_erase and not yes:
        click.confirm(
            f"This erases {port} completely, including the dose log: continue?",
            default=False,
            abort=True,
            err=True,
        )
    reporter = _Reporter(port, image)
    try:
        r = flash_micropython(port, image, baud=baud, erase=not no_erase, on_progress=reporter)
    finally:
        reporter.close()
    about = [f"MAC {r.mac}"] if r.mac else []
    about += [f"{_size_text(r.flash_size)} flash"] if r.flash_size else []
    board = f"the {r.chip}" + (f" ({', '.join(about)})" if about else "")
    _say(
        f"flashed MicroPython onto {board}: {_size_text(r.bytes_written)} at 0x{r.offset:X} "
        f"in {r.seconds:.0f} s"
    )
    if no_app:
        _say(f"now install the app: dosis firmware deploy --port {port}")
        return
    from .deploy import deploy_bundle

    time.sleep(2.0)  # the board boots MicroPython after esptool's reset
    res = deploy_bundle(port, bundle_dir, fresh=True, on_step=_say)
    _say(
        f"installed the app {res.version_after} ({len(res.written)} files); "
        "pair it with 'dosis pair' after a press of its service button"
    )
