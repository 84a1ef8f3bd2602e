"""The hardware reference: pin map rules, the board module, the CLI, and nothing drifting apart."""

import ast
import csv
import importlib.util
import json
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from dosis.cli import DosisGroup
from dosis.cli_hardware import hardware
from dosis.errors import InputError
from dosis.pinmap import (
    check_pinmap,
    load_pinmap,
    parse_pinmap,
    render_svg,
    render_table,
    replace_table,
    table_in,
)

ROOT = Path(__file__).resolve().parents[2]
HW = ROOT / "hardware"
PINMAP = HW / "pinmap.json"
BOARD = ROOT / "firmware" / "dispenser" / "board_esp32.py"
SVG_NS = "{http://www.w3.org/2000/svg}"


def good_doc():
    return json.loads(PINMAP.read_text(encoding="utf-8"))


def problems_of(doc):
    return check_pinmap(parse_pinmap(doc))


def run(*args):
    # The `hardware` group under the CLI's own root class, so errors go through the same one
    # place as every `dosis` command (one line on stderr, exit 1).
    root = DosisGroup(name="dosis", commands=[hardware])
    return CliRunner().invoke(root, list(args), catch_exceptions=False)


# ---- the reference map ------------------------------------------------------------------------


def test_reference_map_has_no_errors_and_no_warnings():
    pm = load_pinmap(PINMAP)
    assert check_pinmap(pm) == []
    assert len(pm.signals) == 14
    assert dict(pm.i2c_devices) == {"ssd1306": 0x3C, "ds3231": 0x68}
    assert pm.i2c_freq_hz == 400_000
    battery = pm.signal("battery")
    assert battery is not None and battery.divider == 2.0 and battery.gpio in (34, 35, 36, 39)


def _board_consts():
    """`_NAME = const(N)` assignments of the board module, read without importing `machine`."""
    tree = ast.parse(BOARD.read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "const"
        ):
            out[node.targets[0].id] = ast.literal_eval(node.value.args[0])
    return out


def test_board_pin_constants_equal_the_pin_map():
    pm = load_pinmap(PINMAP)
    consts = _board_consts()
    pins = {k: v for k, v in consts.items() if k not in ("_I2C_FREQ", "_BATTERY_DIVIDER")}
    pins.pop("_BUZZER_HZ", None)
    assert pins == {"_" + s.name.upper(): s.gpio for s in pm.signals}
    assert consts["_I2C_FREQ"] == pm.i2c_freq_hz
    battery = pm.signal("battery")
    assert battery is not None and consts["_BATTERY_DIVIDER"] == battery.divider


class _Rec:
    """Records how a fake machine class was constructed."""

    built: list

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        type(self).built.append(self)


def _fake_machine():
    class Pin(_Rec):
        built = []
        IN, OUT, PULL_UP = 1, 3, 2

    class PWM(_Rec):
        built = []

    class I2C(_Rec):
        built = []

    class ADC(_Rec):
        built = []
        ATTN_11DB = 3

        def read_uv(self):
            return 2_050_000

    class WDT(_Rec):
        built = []

        def feed(self):
            pass

    m = types.ModuleType("machine")
    for cls in (Pin, PWM, I2C, ADC, WDT):
        setattr(m, cls.__name__, cls)
    return m


def test_board_builds_the_hardware_in_its_constructor_only(monkeypatch):
    machine = _fake_machine()
    upy = types.ModuleType("micropython")
    upy.const = lambda x: x  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "machine", machine)
    monkeypatch.setitem(sys.modules, "micropython", upy)
    spec = importlib.util.spec_from_file_location("board_esp32_under_test", BOARD)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert machine.Pin.built == []  # nothing at import time

    clock = object()
    board = mod.Board(clock=clock)
    pm = load_pinmap(PINMAP)
    gpio = {s.name: s.gpio for s in pm.signals}
    Pin = machine.Pin
    assert board.clock is clock
    assert [p.args for p in board.coils] == [(gpio[f"coil{i}"], Pin.OUT) for i in (1, 2, 3, 4)]
    assert all(p.kwargs == {"value": 0} for p in board.coils)  # de-energised from the start
    assert board.home.args == (gpio["home"], Pin.IN, Pin.PULL_UP)
    assert board.beam.args == (gpio["beam"], Pin.IN)  # input-only pin: no internal pull
    assert board.btn_taken.args == (gpio["btn_taken"], Pin.IN, Pin.PULL_UP)
    assert board.btn_service.args == (gpio["btn_service"], Pin.IN, Pin.PULL_UP)
    assert board.led.args == (gpio["led"], Pin.OUT) and board.led.kwargs == {"value": 0}
    assert board.mains.args == (gpio["mains"], Pin.IN)
    assert board.buzzer.args[0].args[0] == gpio["buzzer"]
    assert board.buzzer.kwargs["duty_u16"] == 0  # silent
    assert board.i2c.args == (0,)
    assert board.i2c.kwargs["sda"].args == (gpio["i2c_sda"],)
    assert board.i2c.kwargs["scl"].args == (gpio["i2c_scl"],)
    assert board.i2c.kwargs["freq"] == 400_000
    assert board.battery.args[0].args == (gpio["battery"],)
    assert board.battery.kwargs == {"atten": machine.ADC.ATTN_11DB}
    assert board.battery_mv() == 4100  # 2.05 V at the pin through the 2:1 divider
    assert board.step_delay_ms == 2
    assert board.path("log.bin") == "/log.bin"
    assert machine.WDT.built == []  # the watchdog starts only when asked for
    wdt = board.watchdog(8000)
    assert wdt.kwargs == {"timeout": 8000}


# ---- each ESP32 rule on a crafted map -------------------------------------------------------


def _with(name, **fields):
    doc = good_doc()
    doc["signals"][name].update(fields)
    return doc


@pytest.mark.parametrize(
    "doc, level, signal, sentence",
    [
        (
            _with("coil1", gpio=6),
            "error",
            "coil1",
            "GPIO6 is connected to the SPI flash (GPIO6-11): using it crashes the board",
        ),
        (
            _with("led", gpio=36),
            "error",
            "led",
            "GPIO36 is input-only (GPIO34-39) and cannot drive out: move it to an "
            "output-capable pin (free: 4, 13, 14, 23, 26)",
        ),
        (
            _with("i2c_scl", gpio=36),
            "error",
            "i2c_scl",
            "GPIO36 is input-only (GPIO34-39) and cannot drive i2c",
        ),
        (
            _with("beam", pull="up"),
            "error",
            "beam",
            "GPIO35 is input-only, no internal pull-up: use an external resistor and set pull "
            'to "external-up"',
        ),
        (
            _with("mains", pull="down"),
            "error",
            "mains",
            "GPIO39 is input-only, no internal pull-down: use an external resistor",
        ),
        (
            _with("led", gpio=19),
            "error",
            "led",
            "GPIO19 is also used by coil1: each signal needs its own pin",
        ),
        (
            _with("led", gpio=24),
            "error",
            "led",
            "GPIO24 does not exist on the ESP32 (it has GPIO0-19, 21-23, 25-27 and 32-39)",
        ),
        (_with("led", gpio=20), "error", "led", "GPIO20 does not exist on the ESP32"),
        (_with("led", gpio=30), "error", "led", "GPIO30 does not exist on the ESP32"),
        (_with("led", gpio=40), "error", "led", "GPIO40 does not exist on the ESP32"),
        (
            _with("battery", gpio=4),
            "error",
            "battery",
            "GPIO4 is on ADC2, and ADC2 cannot be read while Wi-Fi is on: use an ADC1 pin "
            "(free: 34, 36)",
        ),
        (_with("battery", gpio=23), "error", "battery", "GPIO23 has no ADC: use an ADC1 pin"),
        (
            _with("mains", gpio=37),
            "error",
            "mains",
            "GPIO37 is not brought out on the WROOM-32 module or the DevKitC: pick a header pin",
        ),
        (
            _with("led", gpio=1),
            "error",
            "led",
            "GPIO1 is UART0 TX, the USB serial the REPL and the dosis link use",
        ),
        (
            _with("battery", dir="in", active="low"),
            "error",
            "battery",
            'dir is "in" but the firmware drives this signal as "adc"',
        ),
        (
            _with("home", active="high"),
            "error",
            "home",
            'active is "high" but the firmware reads it as active low (docs/firmware.md)',
        ),
        (
            _with("battery", divider=0.5),
            "error",
            "battery",
            "divider 0.5 is not a ratio >= 1",
        ),
        (_with("led", gpio="26"), "error", "led", 'gpio "26" is not a whole number'),
        (_with("led", dir="output"), "error", "led", 'dir "output" is not valid; use one of'),
        (
            _with("btn_taken", pull="none"),
            "warning",
            "btn_taken",
            "active low but nothing pulls it up",
        ),
    ],
)
def test_rule(doc, level, signal, sentence):
    found = [p for p in problems_of(doc) if p.signal == signal and sentence in p.message]
    assert found, [str(p) for p in problems_of(doc)]
    assert found[0].level == level


@pytest.mark.parametrize(
    "gpio, what",
    [
        (0, "held low at reset it starts the serial bootloader instead of the firmware"),
        (2, "it must be low or floating at reset for flashing"),
        (5, "its level at reset sets the SDIO timing"),
        (12, "high at reset selects 1.8 V flash, and a WROOM-32 (3.3 V flash) then fails"),
        (15, "low at reset silences the boot log on UART0"),
    ],
)
def test_strapping_pins_warn_and_say_what_the_strap_does(gpio, what):
    problems = problems_of(_with("led", gpio=gpio))
    assert [p.level for p in problems] == ["warning"]
    assert problems[0].signal == "led"
    assert f"GPIO{gpio} is a strapping pin: {what}" in problems[0].message


def test_missing_signal():
    doc = good_doc()
    del doc["signals"]["home"]
    assert [str(p) for p in problems_of(doc)] == [
        "error home: missing; the firmware needs this signal: add it to the map"
    ]


def test_ds3231_int_is_optional_but_checked():
    doc = good_doc()
    doc["signals"]["ds3231_int"] = {"gpio": 36, "dir": "in", "pull": "up", "active": "low"}
    assert [str(p) for p in problems_of(doc)] == [
        "error ds3231_int: GPIO36 is input-only, no internal pull-up: use an external resistor "
        'and set pull to "external-up"'
    ]


def test_unknown_signal_name_suggests_the_right_one():
    doc = good_doc()
    doc["signals"]["btn_take"] = doc["signals"].pop("btn_taken")
    msgs = [str(p) for p in problems_of(doc)]
    assert 'error btn_take: unknown key "btn_take"; did you mean "btn_taken"?' in msgs
    assert "error btn_taken: missing; the firmware needs this signal: add it to the map" in msgs


def test_unknown_field_and_top_level_key_suggest_the_right_one():
    doc = _with("home", pul="up")
    doc["i2c"]["freq"] = 100_000
    doc["signal"] = {}
    msgs = [str(p) for p in problems_of(doc)]
    assert 'error home: unknown key "pul"; did you mean "pull"?' in msgs
    assert 'error i2c: unknown key "freq"; did you mean "freq_hz"?' in msgs
    assert 'error pinmap: unknown key "signal"; did you mean "signals"?' in msgs


def test_i2c_addresses_are_checked():
    doc = good_doc()
    doc["i2c"]["devices"] = {"ssd1306": "0x3C", "ds3231": "0x3C"}
    msgs = [str(p) for p in problems_of(doc)]
    assert (
        "error i2c: ds3231: address 0x3C is also used by ssd1306; two devices cannot share an "
        "address on one bus"
    ) in msgs
    assert any("ds3231 is at 0x68 on every module" in m for m in msgs)
    doc["i2c"]["devices"] = {"ssd1306": "0x3C", "ds3231": "0x80"}
    assert any('address "0x80" is not a 7-bit address' in str(p) for p in problems_of(doc))


def test_a_wrover_board_has_no_gpio16_17():
    doc = good_doc()
    doc["board"] = "ESP32-WROVER-E DevKitC"
    msgs = [str(p) for p in problems_of(doc)]
    assert "error coil3: GPIO17 is wired to the PSRAM on a WROVER module: pick another pin" in msgs
    assert "error coil4: GPIO16 is wired to the PSRAM on a WROVER module: pick another pin" in msgs


def test_every_problem_is_one_line():
    doc = good_doc()
    for i, name in enumerate(doc["signals"]):
        doc["signals"][name]["gpio"] = (6, 12, 36, 24, 1)[i % 5]
    problems = problems_of(doc)
    assert len(problems) > 10
    assert all("\n" not in str(p) and p.message.strip() == p.message for p in problems)


# ---- the CLI ----------------------------------------------------------------------------------


def test_check_reference_map_prints_one_summary_line():
    r = run("hardware", "check", str(PINMAP))
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.splitlines() == [
        f"{PINMAP}: ok: 14 signals on 14 GPIOs (ESP32-WROOM-32 DevKitC); I2C 400 kHz "
        "(ssd1306 0x3C, ds3231 0x68); 0 warnings"
    ]


def test_check_defaults_to_hardware_pinmap_json(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    r = run("hardware", "check")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("hardware/pinmap.json: ok: ")
    monkeypatch.chdir(tmp_path)
    r = run("hardware", "check")
    assert r.exit_code == 1
    assert r.stderr == (
        "error: no PINMAP given and there is no hardware/pinmap.json here: pass the file, or "
        "run from the repository root\n"
    )


def _write(tmp_path, doc, name="map.json"):
    f = tmp_path / name
    f.write_text(json.dumps(doc), encoding="utf-8")
    return f


def test_check_lists_problems_and_fails_on_errors(tmp_path):
    doc = _with("coil1", gpio=6)
    doc["signals"]["led"]["gpio"] = 12
    f = _write(tmp_path, doc)
    r = run("hardware", "check", str(f))
    assert r.exit_code == 1
    assert r.stdout == ""
    err = r.stderr.splitlines()
    assert err[0].startswith("error coil1: GPIO6 is connected to the SPI flash")
    assert err[1].startswith("warning led: GPIO12 is a strapping pin")
    assert err[2] == f"error: {f}: 1 error, 1 warning; fix the errors before wiring"
    assert len(err) == 3


def test_check_passes_with_warnings_only(tmp_path):
    f = _write(tmp_path, _with("led", gpio=2))
    r = run("hardware", "check", str(f))
    assert r.exit_code == 0
    assert r.stderr.splitlines()[0].startswith("warning led: GPIO2 is a strapping pin")
    assert r.stdout.strip().endswith("; 1 warning")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ('{"signals": {', "not valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "a pin map must be a JSON object, not a list or value"),
        (b"\xff\xfe{", "not UTF-8 text (byte 0); save it as UTF-8"),
    ],
)
@pytest.mark.parametrize("command", ["check", "svg", "table"])
def test_unreadable_files_give_one_line(tmp_path, content, message, command):
    f = tmp_path / "map.json"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content, encoding="utf-8")
    r = run("hardware", command, str(f))
    assert r.exit_code == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {f}: {message}"), r.stderr
    assert "Traceback" not in r.stderr


def test_svg_to_stdout_and_to_a_file(tmp_path):
    expected = render_svg(load_pinmap(PINMAP))
    r = run("hardware", "svg", str(PINMAP))
    assert r.exit_code == 0
    assert r.stdout == expected
    out = tmp_path / "w.svg"
    r = run("hardware", "svg", str(PINMAP), "-o", str(out))
    assert r.exit_code == 0
    assert r.stdout == ""
    assert out.read_text(encoding="utf-8") == expected


def test_svg_and_table_refuse_a_map_with_errors(tmp_path):
    f = _write(tmp_path, _with("coil1", gpio=6))
    for command in ("svg", "table"):
        r = run("hardware", command, str(f))
        assert r.exit_code == 1
        assert r.stderr == (
            f"error: {f}: 1 error in the pin map; run 'dosis hardware check {f}' to see them\n"
        )


def test_table_update_rewrites_only_the_generated_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Hw\n\nbefore\n\n<!-- BEGIN pinmap table: generated by `dosis hardware table "
        "--update`; do not edit -->\nold\n<!-- END pinmap table -->\n\nafter\n",
        encoding="utf-8",
    )
    r = run("hardware", "table", str(PINMAP), "--update", str(readme))
    assert r.exit_code == 0, r.stderr
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Hw\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert table_in(text) == render_table(load_pinmap(PINMAP))
    r = run("hardware", "table", str(PINMAP), "--update", str(readme))
    assert r.stderr == f"{readme}: already up to date\n"
    readme.write_text("# no markers\n", encoding="utf-8")
    r = run("hardware", "table", str(PINMAP), "--update", str(readme))
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: {readme}: no generated section: add the lines")
    assert len(r.stderr.splitlines()) == 1


def test_table_prints_markdown():
    r = run("hardware", "table", str(PINMAP))
    assert r.exit_code == 0
    assert r.stdout == render_table(load_pinmap(PINMAP)) + "\n"


# ---- the checked-in files cannot drift from the map --------------------------------------------


def test_wiring_svg_is_generated_from_the_map():
    pm = load_pinmap(PINMAP)
    svg = render_svg(pm)
    assert svg == render_svg(load_pinmap(PINMAP))  # deterministic
    assert (HW / "wiring.svg").read_text(encoding="utf-8") == svg, (
        "hardware/wiring.svg is stale: run 'dosis hardware svg -o hardware/wiring.svg'"
    )
    root = ET.fromstring(svg.encode("utf-8"))
    assert root.tag == SVG_NS + "svg"
    texts = list(root.iter(SVG_NS + "text"))
    labels = [t.text or "" for t in texts if t.get("class") == "signal"]
    assert sorted(labels) == sorted(s.name for s in pm.signals)
    gpios = [t.text or "" for t in texts if t.get("class") == "gpio"]
    assert sorted(gpios) == sorted(f"GPIO{s.gpio}" for s in pm.signals)


def test_readme_table_matches_the_map():
    readme = (HW / "README.md").read_text(encoding="utf-8")
    assert table_in(readme) == render_table(load_pinmap(PINMAP)), (
        "the pin table in hardware/README.md is stale: run 'dosis hardware table --update'"
    )


def test_replace_table_needs_markers():
    with pytest.raises(InputError, match="no generated section"):
        replace_table("# nothing here\n", "table")


def test_bom_parses_with_positive_quantities():
    with (HW / "bom.csv").open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["part", "part_number", "quantity", "purpose"]
        rows = list(reader)
    assert len(rows) >= 15
    for row in rows:
        assert all(row[k] and row[k].strip() == row[k] for k in reader.fieldnames or ()), row
        assert row["quantity"].isdigit() and int(row["quantity"]) > 0, row
        assert None not in row  # no stray extra columns
    text = " ".join(r["part"] + " " + r["part_number"] for r in rows)
    for part in (
        "ESP32",
        "28BYJ-48",
        "ULN2003",
        "SSD1306",
        "DS3231",
        "CR2032",
        "piezo",
        "break-beam",
        "18650",
        "5 V 2 A",
        "carousel",
    ):
        assert part in text, part
