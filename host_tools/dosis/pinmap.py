"""Pin maps on the host: read hardware/pinmap.json, check it with ESP32 rules, draw the wiring.

API functions never print; they return values or raise `InputError`. A pin map with mistakes in
it still loads: `check_pinmap` lists every problem, each with a sentence that says what to do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard
from xml.sax.saxutils import escape

from dosiscore.schedule import did_you_mean

from .errors import InputError

__all__ = [
    "Problem",
    "PinMap",
    "Signal",
    "check_pinmap",
    "load_pinmap",
    "parse_pinmap",
    "render_svg",
    "render_table",
    "replace_table",
    "summary",
]

MAX_FILE_BYTES = 64 * 1024
Level = Literal["error", "warning"]

# What the firmware expects of each signal: (direction, active level it assumes, required, kind).
# The active level is fixed because dispenser/board_esp32.py hands raw pins to the drivers, and
# the drivers read them as docs/firmware.md says (home, beam and buttons read 0 when active).
# kind picks the colour in the wiring diagram.
SIGNALS: dict[str, tuple[str, str | None, bool, str]] = {
    "coil1": ("out", "high", True, "motor"),
    "coil2": ("out", "high", True, "motor"),
    "coil3": ("out", "high", True, "motor"),
    "coil4": ("out", "high", True, "motor"),
    "home": ("in", "low", True, "input"),
    "beam": ("in", "low", True, "input"),
    "btn_taken": ("in", "low", True, "input"),
    "btn_service": ("in", "low", True, "input"),
    "led": ("out", "high", True, "output"),
    "buzzer": ("pwm", None, True, "output"),
    "i2c_sda": ("i2c", None, True, "i2c"),
    "i2c_scl": ("i2c", None, True, "i2c"),
    "mains": ("in", "high", True, "power"),
    "battery": ("adc", None, True, "power"),
    "ds3231_int": ("in", "low", False, "input"),
}
I2C_DEVICES = {"ssd1306": 0x3C, "ds3231": 0x68}  # the addresses the drivers use

DIRECTIONS = ("in", "out", "pwm", "adc", "i2c")
PULLS = ("none", "up", "down", "external-up", "external-down")
ACTIVE = ("high", "low")
TOP_KEYS = ("schema", "board", "i2c", "power", "signals")
I2C_KEYS = ("freq_hz", "devices")
SIGNAL_KEYS = ("gpio", "dir", "pull", "active", "part", "part_pin", "note", "divider")

# ESP32 (the chip in a WROOM-32) facts. GPIO20, 24 and 28-31 are not bonded out.
VALID_GPIOS = frozenset([*range(0, 20), 21, 22, 23, 25, 26, 27, *range(32, 40)])
FLASH_GPIOS = frozenset(range(6, 12))
INPUT_ONLY_GPIOS = frozenset(range(34, 40))
ADC1_GPIOS = frozenset(range(32, 40))
ADC2_GPIOS = frozenset([0, 2, 4, 12, 13, 14, 15, 25, 26, 27])
PSRAM_GPIOS = frozenset([16, 17])  # on WROVER modules only
UART0 = {1: "TX", 3: "RX"}
STRAPPING = {
    0: "held low at reset it starts the serial bootloader instead of the firmware",
    2: "it must be low or floating at reset for flashing, and drives the on-board LED on "
    "some DevKits",
    5: "its level at reset sets the SDIO timing, and it toggles during boot",
    12: "high at reset selects 1.8 V flash, and a WROOM-32 (3.3 V flash) then fails to boot",
    15: "low at reset silences the boot log on UART0, and it toggles during boot",
}
# The DevKitC V4 headers from the antenna end down to the USB end (power pins left out), so the
# diagram puts each pin on the side and in the order where it is on the board.
HEADER_LEFT = (36, 39, 34, 35, 32, 33, 25, 26, 27, 14, 12, 13, 9, 10, 11)
HEADER_RIGHT = (23, 22, 1, 3, 21, 19, 18, 5, 17, 16, 4, 0, 2, 15, 8, 7, 6)


@dataclass(frozen=True)
class Problem:
    """One finding: `level` error or warning, the `signal` (or section) and what to do."""

    level: Level
    signal: str
    message: str

    def __str__(self) -> str:
        return f"{self.level} {self.signal}: {self.message}"


@dataclass(frozen=True)
class Signal:
    """One wire from an ESP32 GPIO to a part; `gpio` is None when the map has no usable number."""

    name: str
    gpio: int | None
    dir: str
    pull: str = "none"
    active: str | None = None
    part: str = ""
    part_pin: str = ""
    note: str = ""
    divider: float | None = None


@dataclass(frozen=True)
class PinMap:
    """A parsed pin map; `problems` holds what was wrong with its shape (keys, types)."""

    board: str
    signals: tuple[Signal, ...]
    i2c_freq_hz: int | None
    i2c_devices: tuple[tuple[str, int], ...]
    power: tuple[tuple[str, str], ...]
    problems: tuple[Problem, ...] = ()

    def signal(self, name: str) -> Signal | None:
        for s in self.signals:
            if s.name == name:
                return s
        return None


def load_pinmap(path: str | Path) -> PinMap:
    """Read a pin map file (JSON). Raises InputError if it cannot be read as a JSON object."""
    p = Path(path)
    try:
        raw = p.read_bytes()[: MAX_FILE_BYTES + 1]
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, not a pin map file") from None
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(f"{p}: larger than {MAX_FILE_BYTES // 1024} KB; is this a pin map?")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise InputError(f"{p}: not valid JSON: {e.msg} ({where})") from None
    except RecursionError:
        raise InputError(f"{p}: not valid JSON: nested too deeply") from None
    return parse_pinmap(doc, source=str(p))


def _unknown(problems: list[Problem], where: str, key: Any, allowed: tuple[str, ...]) -> None:
    guess = did_you_mean(key, allowed) if isinstance(key, str) else None
    hint = f'did you mean "{guess}"?' if guess else "expected one of: " + ", ".join(allowed)
    problems.append(Problem("error", where, f'unknown key "{key}"; {hint}'))


def _text(problems: list[Problem], where: str, value: Any, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        problems.append(Problem("error", where, f"{json.dumps(value)} is not text"))
        return default
    return value


def _choice(
    problems: list[Problem], where: str, key: str, value: Any, allowed: tuple[str, ...]
) -> str:
    if isinstance(value, str) and value in allowed:
        return value
    what = "missing" if value is None else f"{json.dumps(value)} is not valid"
    problems.append(Problem("error", where, f"{key} {what}; use one of: {', '.join(allowed)}"))
    return ""


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _address(v: Any) -> int | None:
    if _is_int(v):
        return v
    if isinstance(v, str) and re.fullmatch(r"0[xX][0-9a-fA-F]{1,2}", v):
        return int(v, 16)
    return None


def _parse_signal(name: str, entry: Any, problems: list[Problem]) -> Signal | None:
    if not isinstance(entry, dict):
        problems.append(Problem("error", name, "must be an object with gpio, dir, pull, ..."))
        return None
    for k in entry:
        if k not in SIGNAL_KEYS:
            _unknown(problems, name, k, SIGNAL_KEYS)
    gpio = entry.get("gpio")
    if not _is_int(gpio):
        what = "missing" if gpio is None else f"{json.dumps(gpio)} is not a whole number"
        problems.append(Problem("error", name, f"gpio {what}; give the GPIO number, e.g. 23"))
        gpio = None
    direction = _choice(problems, name, "dir", entry.get("dir"), DIRECTIONS)
    pull = entry.get("pull", "none")
    pull = "none" if pull is None else _choice(problems, name, "pull", pull, PULLS) or "none"
    active = entry.get("active")
    if active is not None:
        active = _choice(problems, name, "active", active, ACTIVE) or None
    elif direction in ("in", "out"):
        problems.append(
            Problem("error", name, 'active missing; say "high" or "low" for a digital signal')
        )
    divider = entry.get("divider")
    if divider is not None:
        if isinstance(divider, bool) or not isinstance(divider, int | float) or divider < 1:
            problems.append(
                Problem(
                    "error",
                    name,
                    f"divider {json.dumps(divider)} is not a ratio >= 1 "
                    "(input voltage / voltage at the pin, e.g. 2.0)",
                )
            )
            divider = None
        else:
            divider = float(divider)
    return Signal(
        name=name,
        gpio=gpio,
        dir=direction,
        pull=pull,
        active=active,
        part=_text(problems, name, entry.get("part")),
        part_pin=_text(problems, name, entry.get("part_pin")),
        note=_text(problems, name, entry.get("note")),
        divider=divider,
    )


def parse_pinmap(doc: Any, source: str = "pin map") -> PinMap:
    """A PinMap from a parsed JSON document, recording shape problems instead of raising."""
    if not isinstance(doc, dict):
        raise InputError(f"{source}: a pin map must be a JSON object, not a list or value")
    problems: list[Problem] = []
    for k in doc:
        if k not in TOP_KEYS:
            _unknown(problems, "pinmap", k, TOP_KEYS)
    if doc.get("schema", 1) != 1:
        problems.append(
            Problem("error", "schema", f"{json.dumps(doc['schema'])} is not supported; use 1")
        )
    board = _text(problems, "board", doc.get("board"), "ESP32-WROOM-32 DevKitC")

    freq: int | None = None
    devices: list[tuple[str, int]] = []
    i2c = doc.get("i2c")
    if not isinstance(i2c, dict):
        problems.append(
            Problem("error", "i2c", 'missing; give {"freq_hz": 400000, "devices": {...}}')
        )
    else:
        for k in i2c:
            if k not in I2C_KEYS:
                _unknown(problems, "i2c", k, I2C_KEYS)
        f = i2c.get("freq_hz")
        if _is_int(f) and 10_000 <= f <= 1_000_000:
            freq = f
        else:
            problems.append(
                Problem("error", "i2c", f"freq_hz {json.dumps(f)} is not 10000..1000000 Hz")
            )
        devs = i2c.get("devices")
        if not isinstance(devs, dict):
            problems.append(Problem("error", "i2c", 'devices missing; e.g. {"ds3231": "0x68"}'))
            devs = {}
        seen: dict[int, str] = {}
        for dev, addr in devs.items():
            a = _address(addr)
            if a is None or not 0x08 <= a <= 0x77:
                problems.append(
                    Problem(
                        "error",
                        "i2c",
                        f"{dev}: address {json.dumps(addr)} is not a 7-bit address "
                        'from "0x08" to "0x77"',
                    )
                )
                continue
            if a in seen:
                problems.append(
                    Problem(
                        "error",
                        "i2c",
                        f"{dev}: address 0x{a:02X} is also used by {seen[a]}; two devices "
                        "cannot share an address on one bus",
                    )
                )
            seen[a] = dev
            devices.append((dev, a))

    power: list[tuple[str, str]] = []
    pw = doc.get("power", {})
    if not isinstance(pw, dict):
        problems.append(Problem("error", "power", 'must be an object, e.g. {"5V": "..."}'))
    else:
        for rail, what in pw.items():
            power.append((rail, _text(problems, "power", what)))

    signals: list[Signal] = []
    sigs = doc.get("signals")
    if not isinstance(sigs, dict):
        problems.append(Problem("error", "signals", "missing; give an object of signals"))
        sigs = {}
    for name, entry in sigs.items():
        if name not in SIGNALS:
            _unknown(problems, name, name, tuple(SIGNALS))
            # still read it, so its GPIO counts in the duplicate and pin checks
        s = _parse_signal(name, entry, problems)
        if s is not None:
            signals.append(s)
    return PinMap(
        board=board,
        signals=tuple(signals),
        i2c_freq_hz=freq,
        i2c_devices=tuple(devices),
        power=tuple(power),
        problems=tuple(problems),
    )


def _free_pins(pm: PinMap, pool: frozenset[int]) -> str:
    used = {s.gpio for s in pm.signals}
    bad = FLASH_GPIOS | set(STRAPPING) | set(UART0) | used
    if "WROVER" in pm.board.upper():
        bad |= PSRAM_GPIOS
    free = sorted((pool & frozenset(HEADER_LEFT + HEADER_RIGHT)) - bad)
    return ", ".join(str(g) for g in free) if free else "none left"


def check_pinmap(pm: PinMap) -> list[Problem]:
    """Every problem in the map: its shape, then the ESP32 rules, in the map's signal order."""
    out = list(pm.problems)
    outputs = VALID_GPIOS - INPUT_ONLY_GPIOS
    wrover = "WROVER" in pm.board.upper()
    names = {s.name for s in pm.signals}
    for name, (_, _, required, _) in SIGNALS.items():
        if required and name not in names:
            out.append(
                Problem(
                    "error", name, "missing; the firmware needs this signal: add it to the map"
                )
            )
    first_user: dict[int, str] = {}
    for s in pm.signals:
        spec = SIGNALS.get(s.name)
        if spec is not None:
            want_dir, want_active, _, _ = spec
            if s.dir and s.dir != want_dir:
                out.append(
                    Problem(
                        "error",
                        s.name,
                        f'dir is "{s.dir}" but the firmware drives this signal as "{want_dir}"',
                    )
                )
            if want_active and s.active and s.active != want_active:
                out.append(
                    Problem(
                        "error",
                        s.name,
                        f'active is "{s.active}" but the firmware reads it as active '
                        f"{want_active} (docs/firmware.md): rewire it or invert it in the board",
                    )
                )
        if s.name == "battery" and s.divider is None:
            out.append(
                Problem(
                    "error",
                    s.name,
                    "divider missing; give the ratio of the divider (e.g. 2.0 for 2:1)",
                )
            )
        g = s.gpio
        if g is None:
            continue
        if g in first_user:
            out.append(
                Problem(
                    "error",
                    s.name,
                    f"GPIO{g} is also used by {first_user[g]}: each signal needs its own pin",
                )
            )
        else:
            first_user[g] = s.name
        if g not in VALID_GPIOS:
            out.append(
                Problem(
                    "error",
                    s.name,
                    f"GPIO{g} does not exist on the ESP32 (it has GPIO0-19, 21-23, 25-27 and "
                    "32-39): pick another pin",
                )
            )
            continue
        if g in (37, 38):
            out.append(
                Problem(
                    "error",
                    s.name,
                    f"GPIO{g} is not brought out on the WROOM-32 module or the DevKitC: pick a "
                    f"header pin (free: {_free_pins(pm, ADC1_GPIOS | outputs)})",
                )
            )
            continue
        if g in FLASH_GPIOS:
            out.append(
                Problem(
                    "error",
                    s.name,
                    f"GPIO{g} is connected to the SPI flash (GPIO6-11): using it crashes the "
                    f"board; free pins: {_free_pins(pm, outputs)}",
                )
            )
            continue
        if g in UART0:
            out.append(
                Problem(
                    "error",
                    s.name,
                    f"GPIO{g} is UART0 {UART0[g]}, the USB serial the REPL and the dosis link "
                    f"use: pick another pin (free: {_free_pins(pm, outputs)})",
                )
            )
        if wrover and g in PSRAM_GPIOS:
            out.append(
                Problem(
                    "error",
                    s.name,
                    f"GPIO{g} is wired to the PSRAM on a WROVER module: pick another pin",
                )
            )
        if g in INPUT_ONLY_GPIOS:
            if s.dir in ("out", "pwm", "i2c"):
                out.append(
                    Problem(
                        "error",
                        s.name,
                        f"GPIO{g} is input-only (GPIO34-39) and cannot drive {s.dir}: move it "
                        f"to an output-capable pin (free: {_free_pins(pm, outputs)})",
                    )
                )
            if s.pull in ("up", "down"):
                out.append(
                    Problem(
                        "error",
                        s.name,
                        f"GPIO{g} is input-only, no internal pull-{s.pull}: use an external "
                        f'resistor and set pull to "external-{s.pull}"',
                    )
                )
        if s.dir == "adc":
            if g in ADC2_GPIOS:
                out.append(
                    Problem(
                        "error",
                        s.name,
                        f"GPIO{g} is on ADC2, and ADC2 cannot be read while Wi-Fi is on: use "
                        f"an ADC1 pin (free: {_free_pins(pm, ADC1_GPIOS)})",
                    )
                )
            elif g not in ADC1_GPIOS:
                out.append(
                    Problem(
                        "error",
                        s.name,
                        f"GPIO{g} has no ADC: use an ADC1 pin (free: "
                        f"{_free_pins(pm, ADC1_GPIOS)})",
                    )
                )
        if s.dir == "in" and s.active == "low" and s.pull not in ("up", "external-up"):
            out.append(
                Problem(
                    "warning",
                    s.name,
                    "active low but nothing pulls it up: it floats when idle unless the part "
                    'drives it high; set pull to "up" or fit a resistor ("external-up")',
                )
            )
        if g in STRAPPING:
            out.append(
                Problem(
                    "warning",
                    s.name,
                    f"GPIO{g} is a strapping pin: {STRAPPING[g]}; make sure the part cannot "
                    f"hold it at the wrong level at power-up, or move it (free: "
                    f"{_free_pins(pm, outputs)})",
                )
            )
    have = dict(pm.i2c_devices)
    for dev, addr in I2C_DEVICES.items():
        if have.get(dev, addr) != addr:
            out.append(
                Problem(
                    "error",
                    "i2c",
                    f"{dev} is at 0x{addr:02X} on every module the drivers support, not "
                    f"0x{have[dev]:02X}: check the module and the map",
                )
            )
        elif dev not in have:
            out.append(
                Problem("error", "i2c", f'devices: add "{dev}": "0x{addr:02X}" (the bus has it)')
            )
    return out


def summary(pm: PinMap, problems: list[Problem]) -> str:
    """One line for a map that has no errors."""
    used = sorted({s.gpio for s in pm.signals if s.gpio is not None})
    warnings = sum(1 for p in problems if p.level == "warning")
    devs = ", ".join(f"{d} 0x{a:02X}" for d, a in pm.i2c_devices)
    khz = (pm.i2c_freq_hz or 0) // 1000
    return (
        f"ok: {len(pm.signals)} signals on {len(used)} GPIOs ({pm.board}); I2C {khz} kHz "
        f"({devs}); {warnings} warning{'s' if warnings != 1 else ''}"
    )


# ---- the README table -------------------------------------------------------------------------

TABLE_BEGIN = (
    "<!-- BEGIN pinmap table: generated by `dosis hardware table --update`; do not edit -->"
)
TABLE_END = "<!-- END pinmap table -->"

_PULL_WORDS = {
    "none": "-",
    "up": "internal pull-up",
    "down": "internal pull-down",
    "external-up": "external pull-up",
    "external-down": "external pull-down",
}


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_table(pm: PinMap) -> str:
    """The Markdown tables (signals, I2C devices, power rails) that the README carries."""
    lines = [
        "| signal | GPIO | direction | pull | active | part | part pin | note |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    for s in pm.signals:
        gpio = "?" if s.gpio is None else str(s.gpio)
        direction = s.dir + (f", {s.divider:g}:1 divider" if s.divider else "")
        lines.append(
            f"| `{s.name}` | {gpio} | {direction} | {_PULL_WORDS.get(s.pull, s.pull)} | "
            f"{s.active or '-'} | {_md(s.part)} | {_md(s.part_pin) or '-'} | {_md(s.note)} |"
        )
    lines += ["", "| I2C device | address |", "|---|---|"]
    lines += [f"| {_md(d)} | 0x{a:02X} |" for d, a in pm.i2c_devices]
    khz = (pm.i2c_freq_hz or 0) // 1000
    lines += ["", f"I2C bus frequency: {khz} kHz.", ""]
    lines += ["| rail | feeds |", "|---|---|"]
    lines += [f"| {_md(r)} | {_md(w)} |" for r, w in pm.power]
    return "\n".join([TABLE_BEGIN, *lines, TABLE_END])


def table_in(readme: str) -> str | None:
    """The generated section of a README, or None if its markers are missing."""
    i = readme.find(TABLE_BEGIN)
    j = readme.find(TABLE_END, i + 1) if i >= 0 else -1
    if i < 0 or j < 0:
        return None
    return readme[i : j + len(TABLE_END)]


def replace_table(readme: str, table: str) -> str:
    """`readme` with its generated section replaced by `table`; InputError without markers."""
    old = table_in(readme)
    if old is None:
        raise InputError(
            f"no generated section: add the lines {TABLE_BEGIN} and {TABLE_END} where the "
            "table belongs"
        )
    return readme.replace(old, table, 1)


# ---- the wiring diagram -----------------------------------------------------------------------

COLOURS = {
    "power": "#c0392b",
    "i2c": "#1f6fb2",
    "motor": "#d35400",
    "input": "#1e8449",
    "output": "#7d3c98",
}
KIND_NAMES = {
    "power": "power and sense",
    "i2c": "I2C bus",
    "motor": "motor",
    "input": "inputs",
    "output": "outputs",
}
_ROW = 40  # vertical pitch of one wire
_WIRE = 230  # horizontal length of a wire
_CHIP_W = 270
_MARGIN = 20
_CHAR = 0.62  # average glyph width as a fraction of the font size (sans-serif)


def _header(gpio: int) -> tuple[str, int]:
    """Which side of the DevKitC a GPIO is on, and its place from the top; others go last."""
    if gpio in HEADER_LEFT:
        return "L", HEADER_LEFT.index(gpio)
    if gpio in HEADER_RIGHT:
        return "R", HEADER_RIGHT.index(gpio)
    return "R", 100 + gpio


def _kind(s: Signal) -> str:
    spec = SIGNALS.get(s.name)
    if spec is not None:
        return spec[3]
    return {"i2c": "i2c", "adc": "power", "in": "input"}.get(s.dir, "output")


def _width(text: str, size: int, bold: bool = False) -> int:
    return int(len(text) * size * (_CHAR + (0.06 if bold else 0)) + 0.999)


def _attrs(s: Signal) -> str:
    bits = [s.dir]
    if s.pull != "none":
        bits.append(_PULL_WORDS.get(s.pull, s.pull))
    if s.active and s.dir in ("in", "out"):
        bits.append(f"active {s.active}")
    if s.divider:
        bits.append(f"{s.divider:g}:1 divider")
    return ", ".join(bits)


def _subtitles(group: list[Signal], pm: PinMap) -> list[str]:
    subs: list[str] = []
    if any(s.dir == "i2c" for s in group):
        khz = (pm.i2c_freq_hz or 0) // 1000
        devs = ", ".join(f"{d} 0x{a:02X}" for d, a in pm.i2c_devices)
        subs.append(f"{khz} kHz: {devs}" if devs else f"{khz} kHz")
    return subs


def _t(x: int, y: int, text: str, cls: str, anchor: str = "start", fill: str = "") -> str:
    colour = f' fill="{fill}"' if fill else ""
    return (
        f'<text x="{x}" y="{y}" class="{cls}" text-anchor="{anchor}"{colour}>{escape(text)}</text>'
    )


def render_svg(pm: PinMap) -> str:
    """A wiring diagram: the DevKitC with its used pins where they are on the board, wires to
    labelled part boxes, coloured by kind. The same map always gives the same bytes."""
    sides: dict[str, list[list[Signal]]] = {"L": [], "R": []}
    for side in ("L", "R"):
        groups: dict[str, list[Signal]] = {}
        for s in pm.signals:
            if s.gpio is not None and _header(s.gpio)[0] == side:
                groups.setdefault(s.part or s.name, []).append(s)
        for g in groups.values():
            g.sort(key=lambda s: _header(s.gpio or 0)[1])
        sides[side] = sorted(groups.values(), key=lambda g: _header(g[0].gpio or 0)[1])

    # Box widths: the widest title, subtitle or pin label on each side.
    def side_width(groups: list[list[Signal]]) -> int:
        w = 160
        for g in groups:
            w = max(w, _width(g[0].part or g[0].name, 13, bold=True) + 20)
            for sub in _subtitles(g, pm):
                w = max(w, _width(sub, 11) + 20)
            for s in g:
                w = max(w, _width(s.part_pin, 11) + 40)
        return w

    wl, wr = side_width(sides["L"]), side_width(sides["R"])
    x_chip = _MARGIN + wl + _WIRE
    x_chip_r = x_chip + _CHIP_W
    width = x_chip_r + _WIRE + wr + _MARGIN
    for _, what in pm.power:  # a long rail description widens the drawing rather than spill
        width = max(width, 2 * _MARGIN + 70 + _width(what, 12))
    top = 78

    # Row positions: each group is a box with a title band and one row per wire.
    layout: dict[str, list[tuple[list[Signal], int, int, list[int]]]] = {"L": [], "R": []}
    bottom = top
    for side in ("L", "R"):
        y = top
        for g in sides[side]:
            subs = _subtitles(g, pm)
            band = 24 + 14 * len(subs)
            rows = [y + band + _ROW // 2 + i * _ROW for i in range(len(g))]
            height = band + len(g) * _ROW
            layout[side].append((g, y, height, rows))
            y += height + 18
        bottom = max(bottom, y)

    out: list[str] = []
    chip_top, chip_bottom = top - 10, bottom
    for side in ("L", "R"):
        box_x = _MARGIN if side == "L" else x_chip_r + _WIRE
        box_w = wl if side == "L" else wr
        for g, y, height, rows in layout[side]:
            colour = COLOURS[_kind(g[0])]
            out.append(
                f'<g class="part" id="part-{escape(g[0].name)}">'
                f'<rect x="{box_x}" y="{y}" width="{box_w}" height="{height}" rx="6" '
                f'fill="#ffffff" stroke="{colour}" stroke-width="2"/>'
            )
            out.append(_t(box_x + 10, y + 18, g[0].part or g[0].name, "title"))
            for i, sub in enumerate(_subtitles(g, pm)):
                out.append(_t(box_x + 10, y + 32 + 14 * i, sub, "sub"))
            for s, ry in zip(g, rows, strict=True):
                c = COLOURS[_kind(s)]
                if side == "L":
                    x1, x2 = box_x + box_w, x_chip
                    pin_x, pin_anchor = x1 - 8, "end"
                    glabel_x, glabel_anchor = x2 + 8, "start"
                else:
                    x1, x2 = box_x, x_chip_r
                    pin_x, pin_anchor = x1 + 8, "start"
                    glabel_x, glabel_anchor = x2 - 8, "end"
                mid = (x1 + x2) // 2
                out.append(
                    f'<line x1="{x1}" y1="{ry}" x2="{x2}" y2="{ry}" stroke="{c}" '
                    f'stroke-width="2.5"/>'
                )
                out.append(f'<circle cx="{x2}" cy="{ry}" r="3.5" fill="{c}"/>')
                out.append(f'<circle cx="{x1}" cy="{ry}" r="3.5" fill="{c}"/>')
                out.append(_t(mid, ry - 6, s.name, "signal", "middle", c))
                out.append(_t(mid, ry + 14, _attrs(s), "attrs", "middle"))
                if s.part_pin:
                    out.append(_t(pin_x, ry + 4, s.part_pin, "pin", pin_anchor))
                out.append(_t(glabel_x, ry + 4, f"GPIO{s.gpio}", "gpio", glabel_anchor))
            out.append("</g>")

    head = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<!-- Generated from hardware/pinmap.json by `dosis hardware svg`; do not edit. -->",
    ]
    mid_y = (chip_top + chip_bottom) // 2
    cx = (x_chip + x_chip_r) // 2
    body = [
        "<style>"
        "text{font-family:'DejaVu Sans',Verdana,Arial,sans-serif;fill:#222}"
        ".h1{font-size:18px;font-weight:bold}.h2{font-size:12px;fill:#555}"
        ".title{font-size:13px;font-weight:bold}.sub{font-size:11px;fill:#555}"
        ".signal{font-size:12px;font-weight:bold}.attrs{font-size:10px;fill:#555}"
        ".pin{font-size:11px}.gpio{font-size:11px;font-family:'DejaVu Sans Mono',monospace}"
        ".chip{font-size:15px;font-weight:bold;fill:#ffffff}.chipsub{font-size:11px;fill:#e8e8e8}"
        ".rail{font-size:12px}.legend{font-size:12px}"
        "</style>",
        f'<rect x="0" y="0" width="{width}" height="HEIGHT" fill="#fafafa"/>',
        _t(_MARGIN, 30, f"Dosis wiring: {pm.board}", "h1"),
        _t(
            _MARGIN,
            50,
            "Pins sit on the side and in the order of the DevKitC headers (antenna end at the "
            "top). Generated from hardware/pinmap.json.",
            "h2",
        ),
        f'<rect x="{x_chip}" y="{chip_top}" width="{_CHIP_W}" height="{chip_bottom - chip_top}" '
        'rx="8" fill="#2c3e50"/>',
        f'<rect x="{x_chip + 6}" y="{chip_top + 6}" width="{_CHIP_W - 12}" '
        f'height="{chip_bottom - chip_top - 12}" rx="6" fill="#f4f6f7"/>',
        f'<rect x="{cx - 55}" y="{mid_y - 42}" width="110" height="84" rx="4" fill="#2c3e50"/>',
        _t(cx, mid_y - 12, "ESP32", "chip", "middle"),
        _t(cx, mid_y + 6, "WROOM-32", "chipsub", "middle"),
        _t(cx, mid_y + 22, "DevKitC", "chipsub", "middle"),
        *out,
    ]
    y = chip_bottom + 30
    if pm.power:
        pw = COLOURS["power"]
        rail_h = 30 + 20 * len(pm.power)
        body.append(
            f'<rect x="{_MARGIN}" y="{y}" width="{width - 2 * _MARGIN}" height="{rail_h}" rx="6" '
            f'fill="#ffffff" stroke="{pw}" stroke-width="2" stroke-dasharray="6 4"/>'
        )
        body.append(_t(_MARGIN + 10, y + 20, "Power rails", "title", fill=pw))
        for i, (rail, what) in enumerate(pm.power):
            ry = y + 42 + 20 * i
            body.append(_t(_MARGIN + 10, ry, rail, "rail", fill=pw))
            body.append(_t(_MARGIN + 60, ry, what, "rail"))
        y += rail_h + 20
    x = _MARGIN
    for kind, colour in COLOURS.items():
        body.append(f'<rect x="{x}" y="{y}" width="22" height="10" rx="2" fill="{colour}"/>')
        body.append(_t(x + 28, y + 10, KIND_NAMES[kind], "legend"))
        x += 40 + _width(KIND_NAMES[kind], 12)
    height = y + 30
    svg_open = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-size="12">'
    )
    body[1] = body[1].replace("HEIGHT", str(height))
    return "\n".join([*head, svg_open, *body, "</svg>"]) + "\n"
