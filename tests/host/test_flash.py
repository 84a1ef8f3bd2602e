"""`dosis firmware flash`: the API over a fake esptool, the command through CliRunner, and the
real esptool against a pseudo-terminal that nobody answers."""

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner
from esptool.util import FatalError

from dosis import flash
from dosis.cli import DosisGroup
from dosis.errors import DosisError, InputError, LinkError
from dosis.flash import CHIPS, EsptoolApi, Progress, flash_command, flash_micropython

MiB = 1024 * 1024
CONNECT_FAILED = (
    "Failed to connect to Espressif device: No serial data received.\n"
    "For troubleshooting steps visit: https://docs.espressif.com/projects/esptool/"
)


def esp_image(chip_id: int = 0, size: int = 4096) -> bytes:
    """An image that starts like one from ESP-IDF: magic, segments, flash mode and size, entry,
    then the extended header with the chip id at bytes 12..13."""
    head = bytes([0xE9, 3, 2, 0x20]) + (0x40080000).to_bytes(4, "little")
    ext = bytes([0xEE, 0, 0, 0]) + chip_id.to_bytes(2, "little") + bytes(10)
    return (head + ext).ljust(size, b"\xa5")


class FakeEsptool:
    """Records every call; `connect_error` is raised by detect_chip, `fail` maps a method name
    to the exception it raises."""

    def __init__(self, chip="ESP32", flash_size=4 * MiB, connect_error=None, fail=None):
        self.chip = chip
        self.size = flash_size
        self.connect_error = connect_error
        self.fail = fail or {}
        self.calls: list[tuple] = []

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if name in self.fail:
            raise self.fail[name]

    def detect_chip(self, port):
        self._call("detect_chip", port)
        if self.connect_error is not None:
            raise self.connect_error
        return SimpleNamespace(stub=False)

    def chip_name(self, esp):
        return self.chip

    def prepare(self, esp, baud):
        self._call("prepare", baud)
        return SimpleNamespace(stub=True)

    def read_mac(self, esp):
        return "24:0a:c4:00:00:01"

    def flash_size(self, esp):
        return self.size

    def erase_flash(self, esp):
        assert esp.stub
        self._call("erase_flash")

    def write_flash(self, esp, offset, data, on_progress):
        assert esp.stub
        self._call("write_flash", offset, len(data))
        for done in range(0, len(data) + 1, max(1, len(data) // 4)):
            on_progress(done, len(data))

    def hard_reset(self, esp):
        self._call("hard_reset")

    def close(self, esp):
        self._call("close")

    def names(self):
        return [c[0] for c in self.calls]


@pytest.fixture(autouse=True)
def no_sims(tmp_path, monkeypatch):
    """No virtual dispensers registered, and none found by accident on this machine."""
    monkeypatch.setenv("DOSIS_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("DOSIS_PORT", raising=False)


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "ESP32_GENERIC.bin"
    p.write_bytes(esp_image(0))
    return p


def cli_with_flash():
    """`dosis` with the command registered as cli_firmware does: firmware.add_command(...)."""
    root = DosisGroup(name="dosis")
    group = click.Group("firmware")
    group.add_command(flash_command)
    root.add_command(group)
    return root


def run(*args, input=None):
    # --no-app: these are about MicroPython's part (the app's install has its own tests)
    args = (*args, "--no-app") if "--app" not in args else tuple(a for a in args if a != "--app")
    return CliRunner().invoke(cli_with_flash(), ["firmware", "flash", *args], input=input)


@pytest.fixture
def fake(monkeypatch):
    f = FakeEsptool()
    monkeypatch.setattr(flash, "EsptoolApi", lambda: f)
    return f


# -- the API ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chip, offset",
    [("ESP32", 0x1000), ("ESP32-S2", 0x1000), ("ESP32-S3", 0x0), ("ESP32-C3", 0x0)]
    + [("ESP32-C6", 0x0)],
)
def test_image_goes_at_the_chips_offset(tmp_path, chip, offset):
    img = tmp_path / "mp.bin"
    img.write_bytes(esp_image(CHIPS[chip].image_chip_id, 8192))
    api = FakeEsptool(chip=chip)
    r = flash_micropython("/dev/ttyUSB0", img, esptool_api=api)
    assert ("write_flash", offset, 8192) in api.calls
    assert (r.chip, r.offset, r.bytes_written, r.flash_size) == (chip, offset, 8192, 4 * MiB)
    assert r.mac == "24:0a:c4:00:00:01"


def test_offsets_and_chip_ids_agree_with_esptool():
    from esptool.targets import CHIP_DEFS

    by_name = {cls.CHIP_NAME: cls for cls in CHIP_DEFS.values()}
    for name, kind in CHIPS.items():
        assert by_name[name].BOOTLOADER_FLASH_OFFSET == kind.offset, name
        assert by_name[name].IMAGE_CHIP_ID == kind.image_chip_id, name


def test_erase_then_write_then_reset(image):
    api = FakeEsptool()
    events: list[Progress] = []
    r = flash_micropython(
        "/dev/ttyUSB0", image, baud=921600, esptool_api=api, on_progress=events.append
    )
    assert api.names() == [
        "detect_chip",
        "prepare",
        "erase_flash",
        "write_flash",
        "hard_reset",
        "close",
    ]
    assert api.calls[0] == ("detect_chip", "/dev/ttyUSB0")
    assert api.calls[1] == ("prepare", 921600)
    assert r.erased and r.seconds >= 0
    stages = [e.stage for e in events]
    assert stages[:3] == ["connect", "chip", "erase"] and stages[-1] == "reset"
    writes = [(e.done, e.total) for e in events if e.stage == "write"]
    assert writes[0] == (0, 4096) and writes[-1] == (4096, 4096)
    assert [d for d, _ in writes] == sorted(d for d, _ in writes)
    assert "ESP32, MAC 24:0a:c4:00:00:01, 4 MB flash" in [e.detail for e in events]


def test_no_erase_skips_the_erase(image):
    api = FakeEsptool()
    r = flash_micropython("/dev/ttyUSB0", image, erase=False, esptool_api=api)
    assert api.names() == ["detect_chip", "prepare", "write_flash", "hard_reset", "close"]
    assert not r.erased


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\x7fELF\x01\x01", "an ELF file"),
        (b"UF2\nWQ]\x9e", "a UF2 file"),
        (b"", "empty"),
        (b"PK\x03\x04", "first byte 0x50, not 0xE9"),
        (b"\xe9\x03\x02", "truncated ESP image"),
    ],
)
def test_a_non_esp_image_is_refused_before_any_chip_contact(tmp_path, content, words):
    img = tmp_path / "x.bin"
    img.write_bytes(content)
    api = FakeEsptool()
    with pytest.raises(InputError) as e:
        flash_micropython("/dev/ttyUSB0", img, esptool_api=api)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert api.calls == []


def test_a_missing_image_is_refused(tmp_path):
    api = FakeEsptool()
    with pytest.raises(InputError, match="no such file"):
        flash_micropython("/dev/ttyUSB0", tmp_path / "nope.bin", esptool_api=api)
    assert api.calls == []


def test_an_image_larger_than_the_flash_is_refused_before_erasing(tmp_path):
    img = tmp_path / "big.bin"
    img.write_bytes(esp_image(0, 2 * MiB))  # at 0x1000 it ends past a 2 MB flash
    api = FakeEsptool(flash_size=2 * MiB)
    with pytest.raises(InputError, match="does not fit the 2 MB flash of /dev/ttyUSB0"):
        flash_micropython("/dev/ttyUSB0", img, esptool_api=api)
    assert api.names() == ["detect_chip", "prepare", "close"]


def test_an_image_for_another_chip_is_refused_before_erasing(tmp_path):
    img = tmp_path / "s3.bin"
    img.write_bytes(esp_image(CHIPS["ESP32-S3"].image_chip_id))
    api = FakeEsptool(chip="ESP32")
    with pytest.raises(
        InputError, match="is an image for ESP32-S3, but /dev/ttyUSB0 has an ESP32"
    ):
        flash_micropython("/dev/ttyUSB0", img, esptool_api=api)
    assert api.names() == ["detect_chip", "close"]


@pytest.mark.parametrize(
    "chip, words",
    [("ESP8266", "not an ESP32 family chip"), ("ESP32-H2", "which dosis does not flash")],
)
def test_chips_that_are_not_supported(image, chip, words):
    api = FakeEsptool(chip=chip)
    with pytest.raises(DosisError, match=words):
        flash_micropython("/dev/ttyUSB0", image, esptool_api=api)
    assert api.names() == ["detect_chip", "close"]


def test_failed_to_connect_means_no_chip_answered(image):
    api = FakeEsptool(connect_error=FatalError(CONNECT_FAILED))
    with pytest.raises(LinkError) as e:
        flash_micropython("/dev/ttyUSB0", image, esptool_api=api)
    assert str(e.value) == (
        "no chip answered on /dev/ttyUSB0: hold BOOT while pressing EN (or check the cable)"
    )


def test_an_unknown_chip_is_one_line(image):
    api = FakeEsptool(
        connect_error=FatalError(
            "Unexpected chip ID value 99. Failed to autodetect chip type.\nProbably ..."
        )
    )
    with pytest.raises(DosisError) as e:
        flash_micropython("/dev/ttyUSB0", image, esptool_api=api)
    assert not isinstance(e.value, LinkError)
    assert "ESP32 family boards only" in str(e.value) and "\n" not in str(e.value)


def test_esptool_failing_mid_write_says_flash_again(image):
    api = FakeEsptool(
        fail={"write_flash": FatalError("MD5 of file does not match data in flash!")}
    )
    with pytest.raises(DosisError) as e:
        flash_micropython("/dev/ttyUSB0", image, esptool_api=api)
    msg = str(e.value)
    assert msg.startswith("esptool failed while writing /dev/ttyUSB0 (MD5 of file does not")
    assert "flash again" in msg
    assert api.names()[-1] == "close" and "hard_reset" not in api.names()


def test_a_virtual_dispenser_is_not_flashed(tmp_path, image):
    run_dir = Path(os.environ["DOSIS_RUN_DIR"])
    run_dir.mkdir()
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        (run_dir / "sim.json").write_text(json.dumps({"pid": os.getpid(), "port": port}))
        api = FakeEsptool()
        with pytest.raises(InputError, match="is a virtual dispenser"):
            flash_micropython(port, image, esptool_api=api)
        assert api.calls == []
    finally:
        os.close(master)
        os.close(slave)


def test_real_api_reports_write_progress_and_restores_esptools_logger(monkeypatch):
    """EsptoolApi.write_flash turns esptool's progress bar (compressed bytes) into image
    bytes, and puts esptool's logger back afterwards."""
    import esptool.cmds
    from esp_pylib.logger import EspLog, log

    def fake_write_flash(esp, addr_data, **kwargs):
        assert kwargs["compress"] is True and addr_data == [(0x1000, b"x" * 1000)]
        log.print("Writing at 0x00001000...")  # esptool's chatter: kept off stdout
        with log.progress(total=100, unit="B") as p:
            for _ in range(4):
                p.update(advance=25)

    monkeypatch.setattr(esptool.cmds, "write_flash", fake_write_flash)
    before = EspLog.instance
    seen: list[tuple[int, int]] = []
    EsptoolApi().write_flash(object(), 0x1000, b"x" * 1000, lambda d, t: seen.append((d, t)))
    assert seen == [(250, 1000), (500, 1000), (750, 1000), (1000, 1000)]
    assert EspLog.instance is before


# -- the command ------------------------------------------------------------------------------


def test_cli_flashes_and_prints_the_next_step(fake, image):
    r = run("--micropython", str(image), "--port", "/dev/ttyUSB0", "--yes")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    err = r.stderr.splitlines()
    assert err[0] == "connecting to /dev/ttyUSB0..."
    assert "found ESP32, MAC 24:0a:c4:00:00:01, 4 MB flash" in err
    assert "erasing the whole flash (up to a minute)..." in err
    assert err.count("writing ESP32_GENERIC.bin (4 KB)...") == 1
    assert err[-2].startswith(
        "flashed MicroPython onto the ESP32 (MAC 24:0a:c4:00:00:01, 4 MB flash): "
        "4 KB at 0x1000 in "
    )
    assert err[-1] == "now install the app: dosis firmware deploy --port /dev/ttyUSB0"
    assert fake.names() == [
        "detect_chip",
        "prepare",
        "erase_flash",
        "write_flash",
        "hard_reset",
        "close",
    ]
    assert fake.calls[1] == ("prepare", 460800)


def test_cli_confirmation_no_aborts_and_touches_nothing(fake, image):
    r = run("--micropython", str(image), "--port", "/dev/ttyUSB0", input="n\n")
    assert r.exit_code == 1
    assert "This erases /dev/ttyUSB0 completely, including the dose log: continue?" in r.stderr
    assert r.stderr.splitlines()[-1] == "aborted"
    assert fake.calls == []


def test_cli_confirmation_yes_flashes(fake, image):
    r = run("--micropython", str(image), "--port", "/dev/ttyUSB0", input="y\n")
    assert r.exit_code == 0, r.stderr
    assert "erase_flash" in fake.names()


def test_cli_no_erase_does_not_ask(fake, image):
    r = run("--micropython", str(image), "--port", "/dev/ttyUSB0", "--no-erase")
    assert r.exit_code == 0, r.stderr
    assert "continue?" not in r.stderr
    assert "erase_flash" not in fake.names()


def test_cli_failed_to_connect_is_exit_3_and_one_line(monkeypatch, image):
    f = FakeEsptool(connect_error=FatalError(CONNECT_FAILED))
    monkeypatch.setattr(flash, "EsptoolApi", lambda: f)
    r = run("--micropython", str(image), "--port", "/dev/ttyUSB0", "--yes")
    assert r.exit_code == 3
    assert r.stderr.splitlines()[-1] == (
        "error: no chip answered on /dev/ttyUSB0: hold BOOT while pressing EN (or check the cable)"
    )
    assert "Traceback" not in r.stderr


def test_cli_refuses_a_non_esp_image_before_looking_for_a_port(fake, tmp_path, monkeypatch):
    def no_port_lookup(port):
        raise AssertionError("the port was looked up")

    monkeypatch.setattr(flash.ports, "resolve_port", no_port_lookup)
    img = tmp_path / "firmware.uf2"
    img.write_bytes(b"UF2\nWQ]\x9e" + bytes(100))
    r = run("--micropython", str(img), "--yes")
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        f"error: {img}: a UF2 file, which the ESP32 ROM cannot flash: give the MicroPython "
        ".bin for the board (e.g. ESP32_GENERIC-....bin from micropython.org/download)"
    ]
    assert fake.calls == []


def test_cli_too_big_image_is_exit_1(monkeypatch, tmp_path):
    f = FakeEsptool(flash_size=2 * MiB)
    monkeypatch.setattr(flash, "EsptoolApi", lambda: f)
    img = tmp_path / "big.bin"
    img.write_bytes(esp_image(0, 2 * MiB))
    r = run("--micropython", str(img), "--port", "/dev/ttyUSB0", "--yes")
    assert r.exit_code == 1
    assert "does not fit the 2 MB flash" in r.stderr.splitlines()[-1]
    assert "erase_flash" not in f.names()


def test_cli_port_from_env_or_found(fake, image, monkeypatch):
    r = CliRunner(env={"DOSIS_PORT": "/dev/ttyACM7"}).invoke(
        cli_with_flash(), ["firmware", "flash", "--micropython", str(image), "--yes", "--no-app"]
    )
    assert r.exit_code == 0, r.stderr
    assert fake.calls[0] == ("detect_chip", "/dev/ttyACM7")

    asked = []
    monkeypatch.setattr(flash.ports, "resolve_port", lambda p: asked.append(p) or "/dev/ttyUSB3")
    r = run("--micropython", str(image), "--yes")
    assert r.exit_code == 0, r.stderr
    assert asked == [None]
    assert fake.calls[-6] == ("detect_chip", "/dev/ttyUSB3")
    assert (
        r.stderr.splitlines()[-1]
        == "now install the app: dosis firmware deploy --port /dev/ttyUSB3"
    )


# -- the real esptool -------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_real_esptool_on_a_silent_port_gives_up_quickly(image):
    """esptool's own reset-and-sync attempts (its default, 7) on a pseudo-terminal nobody
    answers: about 5 s, then the one-line error and exit 3."""
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        t = time.monotonic()
        r = run("--micropython", str(image), "--port", port, "--yes")
        took = time.monotonic() - t
    finally:
        os.close(master)
        os.close(slave)
    assert took < 30
    assert r.exit_code == 3, r.stderr
    assert r.stdout == ""  # esptool's "Connecting...." is kept off stdout
    assert r.stderr.splitlines() == [
        f"connecting to {port}...",
        f"error: no chip answered on {port}: hold BOOT while pressing EN (or check the cable)",
    ]


def test_real_esptool_on_a_missing_port(image, tmp_path):
    port = str(tmp_path / "ttyUSB9")
    r = run("--micropython", str(image), "--port", port, "--yes")
    assert r.exit_code == 3
    assert r.stderr.splitlines()[-1].startswith(f"error: port {port} does not exist: ")
    assert "Traceback" not in r.stderr


def test_cli_installs_the_app_after_micropython(fake, image, tmp_path, monkeypatch):
    """Without --no-app the bundle is installed through the fresh board's REPL, after the
    flashing (nothing is paired); a missing bundle is refused before anything is erased."""
    from dosis import bundle, deploy

    calls = []

    def fake_deploy(port, bundle_dir, **kw):
        calls.append((port, str(bundle_dir), kw.get("fresh"), list(fake.names())))
        return deploy.DeployResult(None, "9.9.9", written=["main.py"])

    monkeypatch.setattr(deploy, "deploy_bundle", fake_deploy)
    monkeypatch.setattr("time.sleep", lambda _s: None)
    missing = tmp_path / "nothing"
    r = run(
        "--micropython",
        str(image),
        "--port",
        "/dev/ttyUSB0",
        "--yes",
        "--app",
        "--bundle",
        str(missing),
    )
    assert r.exit_code == 1 and fake.names() == [] and calls == []
    b = tmp_path / "bundle"
    bundle.build_bundle(b)
    r = run(
        "--micropython", str(image), "--port", "/dev/ttyUSB0", "--yes", "--app", "--bundle", str(b)
    )
    assert r.exit_code == 0, r.stderr
    (port, where, fresh, flashed_before) = calls[0]
    assert (port, where, fresh) == ("/dev/ttyUSB0", str(b), True)
    assert "write_flash" in flashed_before and "hard_reset" in flashed_before
    assert r.stderr.splitlines()[-1].startswith("installed the app 9.9.9 (1 files); pair it")
