"""The service path (docs/protocol.md, "Service mode") on the virtual dispenser, driven by REAL
mpremote: its SerialTransport over the pseudo-terminal, and the `mpremote` command itself.

The authenticated `service` command stops the app safely (refused while a dose is open),
syncs the log and hands the link to MicroPython's REPL protocol (firmware/sim/rawrepl.py, the
unix port's stand-in for the ESP32's own REPL), with STATE_DIR/flash as the device's "/".
`machine.reset()` there restarts the firmware in normal mode; a soft reset leaves the watchdog
unfed, as on the ESP32, so the device resets by itself; an app deployed to the flash runs.

One virtual dispenser serves the module; the tests run in file order and build on each other.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mpremote.transport import TransportExecError
from mpremote.transport_serial import SerialTransport

from dosis.device import Device, open_device
from dosis.errors import DeviceError
from dosis.keystore import Keystore
from dosis.simhost import VirtualDispenser
from dosiscore import logrec

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
from linkharness import compile_example, local_to_utc  # noqa: E402

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals are POSIX only")

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
MPREMOTE = Path(sys.executable).parent / "mpremote"
DAY = "2026-11-23"
START = "07:24"  # local: the 08:00 dose ("morgen") becomes available at 07:30


@dataclass
class World:
    root: Path
    port: str
    sim: VirtualDispenser
    keys: Path
    flash: Path
    fw_log: Path
    doc: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)

    def fw_text(self) -> str:
        return self.fw_log.read_text(errors="replace")


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("service")
    sched, doc = compile_example(root / "schedule.json")
    fw_log = root / "firmware.log"
    with open(fw_log, "wb") as err:
        sim = VirtualDispenser(
            root / "state",
            speed=1,
            schedule=sched,
            start_utc=local_to_utc(doc, DAY, START),
            stderr=err,
        )
        port = sim.start()
        try:
            world = World(
                root, port, sim, root / "keys.json", root / "state" / "flash", fw_log, doc
            )
            with device(world) as dev:
                dev.call("sim.press", {"button": "service"})
                deadline = time.monotonic() + 10
                while not dev.hello()["pairing"]:
                    assert time.monotonic() < deadline, "the pairing window did not open"
                    time.sleep(0.05)
                world.state["device"] = dev.pair()
                dev.call("fill")  # pills in every compartment: the 08:00 dose opens one
            yield world
        finally:
            sim.stop()
    assert "Traceback" not in fw_log.read_text(errors="replace")


@contextlib.contextmanager
def device(w: World, keys: Path | None = None, timeout: float = 10) -> Iterator[Device]:
    dev = open_device(w.port, keystore=Keystore(keys or w.keys), timeout=timeout)
    try:
        yield dev
    finally:
        dev.close()


def service(w: World) -> dict[str, Any]:
    """The `service` command (retried while the carousel is still closing)."""
    deadline = time.monotonic() + 10
    with device(w) as dev:
        while True:
            try:
                return dev.call("service")
            except DeviceError as e:
                if e.code != "busy" or "moving" not in e.msg or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def back_in_app(w: World, timeout: float = 20) -> dict[str, Any]:
    """hello from the app again (after a reset the supervisor restarts the firmware)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with device(w, timeout=2) as dev:
                return dev.hello()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def repl(w: World, soft_reset: bool = False) -> Iterator[SerialTransport]:
    t = SerialTransport(w.port, baudrate=115200)
    try:
        t.enter_raw_repl(soft_reset=soft_reset)
        yield t
    finally:
        t.close()


def reset(t: SerialTransport) -> None:
    """What a deploy ends with (and `mpremote reset`): no reply, the device restarts."""
    t.exec_raw_no_follow("import machine\nmachine.reset()")


def log_records(w: World) -> list[tuple[Any, ...]]:
    out = []
    with device(w) as dev:
        seq = 1
        while True:
            got = dev.call("log.read", {"from": seq, "n": 170})
            blob = base64.b64decode(got["recs"])
            out += [logrec.decode(blob, i * 24) for i in range(got["n"])]
            if got["n"] == 0 or got["next"] > got["last"]:
                return out
            seq = got["next"]


def mpremote(w: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MPREMOTE), "connect", w.port, *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


# -- the command ---------------------------------------------------------------------------------


def test_service_needs_the_key(w: World) -> None:
    with device(w) as dev:
        dev.link.write_line(b'{"id":7,"cmd":"service","args":{}}')
        reply = json.loads(dev.link.read_line(5) or b"{}")
        assert reply["ok"] is False and reply["err"] == "auth", reply
        refused = dev.call("info")["refused"]
    wrong = w.root / "wrong-keys.json"
    Keystore(wrong).put(w.state["device"], "ab" * 32)
    with device(w, keys=wrong) as dev, pytest.raises(DeviceError) as e:
        dev.call("service")
    assert e.value.code == "auth"
    with device(w) as dev:  # still the app, dispensing
        assert dev.call("info")["refused"] == refused + 1


def test_service_is_refused_while_a_dose_is_open(w: World) -> None:
    with device(w) as dev:
        dev.call("sim.advance", {"s": 8 * 60})  # 07:32: "morgen" is available
        deadline = time.monotonic() + 10
        while dev.call("display.snapshot")["screen"] != "available":
            assert time.monotonic() < deadline, "the dose did not open"
            time.sleep(0.1)
        with pytest.raises(DeviceError) as e:
            dev.call("service")
        assert e.value.code == "busy" and "morgen" in e.value.msg, e.value
        dev.call("sim.take")  # the citizen takes the pills: the beam clears
        deadline = time.monotonic() + 10
        while dev.call("display.snapshot")["screen"] != "taken":
            assert time.monotonic() < deadline, "the dose was not taken"
            time.sleep(0.1)
    taken = [r for r in log_records(w) if r[2] == logrec.TAKEN]
    assert taken, "no taken record"
    w.state["taken_seq"] = taken[-1][0]


# -- the REPL, with mpremote's Python API ---------------------------------------------------------


def test_mpremote_api_in_service_mode(w: World) -> None:
    assert service(w) == {"repl": True, "budget_s": 900}
    with repl(w) as t:
        assert t.exec("print(1+1)") == b"2\r\n"
        t.exec("x = 41")
        assert t.eval("x + 1") == 42  # one namespace until a soft reset

        # the file system: STATE_DIR/flash is "/"
        assert t.fs_listdir("") == []
        data = bytes(range(256)) * 9 + b"tail"
        t.fs_writefile("/blob.bin", data)
        assert (w.flash / "blob.bin").read_bytes() == data
        assert t.fs_readfile("/blob.bin") == data
        assert t.fs_readfile("blob.bin", chunk_size=1000) == data
        assert t.fs_stat("/blob.bin").st_size == len(data)
        assert t.fs_hashfile("/blob.bin", "sha256") == hashlib.sha256(data).digest()
        t.fs_mkdir("/lib")
        assert t.fs_isdir("/lib") and not t.fs_isdir("/blob.bin")
        t.fs_writefile("lib/mod.py", b"V = 7\n")
        t.fs_touchfile("/lib/empty.txt")
        names = {(e.name, e.st_mode, e.st_size) for e in t.fs_listdir("/lib")}
        assert names == {("mod.py", 0x8000, 6), ("empty.txt", 0x8000, 0)}
        assert {e.name for e in t.fs_listdir("/")} == {"blob.bin", "lib"}
        t.fs_rmfile("/lib/empty.txt")
        assert not (w.flash / "lib" / "empty.txt").exists()
        with pytest.raises(TransportExecError, match="OSError: 39"):
            t.fs_rmdir("/lib")  # not empty: littlefs's -39, which the ESP32 prints as a number
        t.fs_rmfile("/lib/mod.py")
        t.fs_rmdir("/lib")
        assert sorted(p.name for p in w.flash.iterdir()) == ["blob.bin"]
        with pytest.raises(OSError) as e:
            t.fs_stat("/missing.py")
        assert e.value.errno == errno.ENOENT

        # confined: ".." never leaves the flash (the state dir holds the device's sim-id)
        assert (w.flash.parent / "sim-id").exists()
        for path in ("/../sim-id", "../sim-id", "/lib/../../sim-id"):
            with pytest.raises(OSError) as e:
                t.fs_readfile(path)
            assert e.value.errno == errno.ENOENT, path
        assert t.exec("import os\nos.chdir('..')\nprint(os.getcwd())") == b"/\r\n"

        # errors come back as MicroPython prints them, without the emulator's frames
        with pytest.raises(TransportExecError) as ex:
            t.exec("def f():\n    return 1 / 0\nf()")
        text = ex.value.error_output
        assert text.startswith("Traceback (most recent call last):\r\n"), text
        assert 'File "<stdin>", line 2, in f' in text
        assert text.endswith("ZeroDivisionError: divide by zero\r\n"), text
        assert "rawrepl" not in text
        with pytest.raises(TransportExecError) as ex:
            t.exec("def (")
        assert "SyntaxError" in ex.value.error_output

        # raw-paste mode (default) and the plain raw REPL, with programs over several windows
        program = "s = 0\n" + "".join(f"s += {i}  # {'-' * 40}\n" for i in range(100))
        program += "print(s)"
        assert len(program) > 4 * 128
        assert t.exec(program) == b"4950\r\n"
        t.use_raw_paste = False
        assert t.exec(program) == b"4950\r\n"
        assert t.exec("print('a\\nb')") == b"a\r\nb\r\n"
        t.use_raw_paste = True

        # the friendly REPL and back (mpremote's exit and a second connection)
        t.exit_raw_repl()
        t.enter_raw_repl(soft_reset=False)
        assert t.eval("x") == 41

        # soft reset: a fresh namespace, still the raw REPL
        t.enter_raw_repl(soft_reset=True)
        with pytest.raises(TransportExecError) as ex:
            t.exec("print(x)")
        assert "NameError" in ex.value.error_output
        assert t.exec("print(2)") == b"2\r\n"
        reset(t)
    hello = back_in_app(w)
    assert hello["board"] == "sim" and hello["paired"] is True
    assert "machine.reset()" in w.fw_text()
    assert (w.flash / "blob.bin").exists()  # the flash keeps what was written


def test_the_log_is_synced_before_the_repl(w: World) -> None:
    """A power cut in service mode (SIGKILL of the firmware in the REPL) loses nothing: the
    taken record, the service record and the dose state were on flash before the REPL."""
    last = log_records(w)[-1][0]
    service(w)
    with repl(w) as t:
        assert t.exec("print('in service')") == b"in service\r\n"
        pid = w.sim.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    back_in_app(w)
    recs = log_records(w)
    seqs = [r[0] for r in recs]
    assert w.state["taken_seq"] in seqs
    services = [r for r in recs if r[2] == logrec.SERVICE and r[0] > last]
    assert services, f"no service record after seq {last}"
    with device(w) as dev:
        info = dev.call("info")
    today_8 = local_to_utc(w.doc, DAY, "08:00")
    assert info["next"] is not None and info["next"] > today_8  # "morgen" is not offered again


# -- the mpremote command -------------------------------------------------------------------------


def test_mpremote_cli(w: World) -> None:
    service(w)
    local = w.root / "cli.txt"
    local.write_text("from the cli\n")
    # `resume`: no soft reset, as a deploy connects (a soft reset stops the watchdog's feeder)
    r = mpremote(w, "resume", "fs", "cp", str(local), ":/cli.txt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (w.flash / "cli.txt").read_text() == "from the cli\n"
    # mpremote's default: a soft reset on connecting, then the command
    r = mpremote(w, "fs", "ls", ":")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cli.txt" in r.stdout and "blob.bin" in r.stdout, r.stdout
    r = mpremote(w, "exec", "print(42)")
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stdout + r.stderr
    # Nothing feeds the watchdog since that soft reset: the device resets into the app.
    back_in_app(w, timeout=25)
    assert "watchdog: nothing fed it since the soft reset" in w.fw_text()


# -- deploying an app to the flash ----------------------------------------------------------------


def test_a_deployed_app_runs_from_the_flash(w: World) -> None:
    with device(w) as dev:
        assert dev.hello()["fw"] != "9.9.9-deployed"
    service(w)
    files = sorted(p for pkg in ("dosiscore", "dispenser") for p in (FIRMWARE / pkg).glob("*.py"))
    with repl(w) as t:
        for pkg in ("dosiscore", "dispenser"):
            t.fs_mkdir("/" + pkg)
        for p in files:
            data = p.read_bytes()
            if p.relative_to(FIRMWARE).as_posix() == "dosiscore/__init__.py":
                data = data.replace(b'VERSION = "', b'VERSION = "9.9.9-deployed"  # "', 1)
            dest = "/" + p.relative_to(FIRMWARE).as_posix()
            t.fs_writefile(dest, data, chunk_size=4096)
            assert t.fs_hashfile(dest, "sha256") == hashlib.sha256(data).digest(), dest
        reset(t)
    hello = back_in_app(w)
    assert hello["fw"] == "9.9.9-deployed", hello
    assert "running the app deployed on the virtual flash" in w.fw_text()
    with device(w) as dev:
        assert dev.call("info")["schedule"] is not None  # the deployed app runs the device
    shutil.rmtree(w.flash / "dispenser")  # the next boot runs the repository's app again
