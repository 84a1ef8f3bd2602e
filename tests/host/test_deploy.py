"""Deploy and rollback end to end: a bundle onto the virtual dispenser through the `service`
command and REAL mpremote (raw REPL), a one-file update, and a broken app that the device
replaces with the previous one by itself (boot.py), with the dose log kept throughout."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from dosis import bundle, deploy, ops
from dosis.device import open_device
from dosis.errors import DosisError
from dosis.keystore import Keystore
from dosis.simhost import VirtualDispenser
from dosiscore import VERSION

ROOT = Path(__file__).resolve().parents[2]


def _firmware_copy(tmp: Path, name: str, version: str, broken: bool = False) -> Path:
    src = tmp / name
    shutil.copytree(ROOT / "firmware", src, ignore=shutil.ignore_patterns("__pycache__"))
    init = src / "dosiscore" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{VERSION}"', f'"{version}"'))
    if broken:  # an app that cannot start: its boot module fails at import
        rt = src / "dispenser" / "runtime.py"
        rt.write_text(rt.read_text() + '\nraise ImportError("broken on purpose")\n')
    return src


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    keys = Keystore(tmp / "keys.json")
    log = open(tmp / "firmware.log", "wb")  # noqa: SIM115
    sim = VirtualDispenser(
        tmp / "state", speed=1, schedule=ROOT / "examples" / "schedule.toml", stderr=log
    )
    port = sim.start()
    with open_device(port, keystore=keys, timeout=10) as dev:
        ops.pair_virtual(dev)
    yield {"tmp": tmp, "keys": keys, "port": port, "sim": sim, "log": tmp / "firmware.log"}
    sim.stop()
    log.close()


def _log_records(w) -> list[bytes]:
    import base64

    with open_device(w["port"], keystore=w["keys"], timeout=10) as dev:
        last = dev.call("info")["log"]["last"]
        out, frm = [], 1
        while frm <= last:
            r = dev.call("log.read", {"from": frm, "n": 170})
            blob = base64.b64decode(r["recs"])
            out += [blob[i : i + 24] for i in range(0, len(blob), 24)]
            frm = r["next"]
        return out


def test_1_first_deploy_writes_the_whole_app_and_it_runs(world):
    before = _log_records(world)
    b1 = bundle.build_bundle(world["tmp"] / "b1")
    res = deploy.deploy_bundle(world["port"], world["tmp"] / "b1", keystore=world["keys"])
    assert res.version_after == VERSION
    assert len(res.written) == len(b1.files)  # the virtual flash was empty
    assert res.bytes_written == b1.total_size
    # the app now runs from the flash, and nothing logged before was lost
    assert "running the app deployed on the virtual flash" in world["log"].read_text()
    after = _log_records(world)
    assert after[: len(before)] == before
    v = deploy.verify_device(world["port"], world["tmp"] / "b1", keystore=world["keys"])
    assert v.ok and v.changed == [] and v.missing == []


def test_2_a_one_file_change_copies_one_file(world):
    src = _firmware_copy(world["tmp"], "fw2", "0.1.1-test")
    bundle.build_bundle(world["tmp"] / "b2", firmware_dir=src)
    res = deploy.deploy_bundle(world["port"], world["tmp"] / "b2", keystore=world["keys"])
    assert res.written == ["dosiscore/__init__.mpy"]
    assert res.version_before == VERSION and res.version_after == "0.1.1-test"
    with open_device(world["port"], keystore=world["keys"], timeout=10) as dev:
        assert dev.hello()["fw"] == "0.1.1-test"
    time.sleep(4)  # the new app confirms itself after a few seconds of running
    assert '"state": "ok"' in (world["tmp"] / "state" / "flash" / "deploy.json").read_text()


def test_3_a_broken_app_is_rolled_back_by_the_device(world):
    before = _log_records(world)
    src = _firmware_copy(world["tmp"], "fw3", "0.1.2-broken", broken=True)
    bundle.build_bundle(world["tmp"] / "b3", firmware_dir=src)
    with pytest.raises(DosisError, match=r"did not start: the dispenser rolled back to 0\.1\.1"):
        deploy.deploy_bundle(world["port"], world["tmp"] / "b3", keystore=world["keys"])
    with open_device(world["port"], keystore=world["keys"], timeout=10) as dev:
        assert dev.hello()["fw"] == "0.1.1-test"
        dev.call("info")  # the previous app answers, signed
    state = (world["tmp"] / "state" / "flash" / "deploy.json").read_text()
    assert '"rolled_back"' in state and "did not start" in state
    v = deploy.verify_device(world["port"], world["tmp"] / "b2", keystore=world["keys"])
    assert v.ok, v  # byte for byte the previous bundle again
    assert _log_records(world)[: len(before)] == before


def test_4_the_same_bundle_again_writes_nothing(world):
    res = deploy.deploy_bundle(world["port"], world["tmp"] / "b2", keystore=world["keys"])
    assert res.written == [] and res.version_after == "0.1.1-test"
    assert "Traceback" not in world["log"].read_text().split("broken on purpose")[-1]


def test_5_a_board_in_its_repl_gets_the_app_without_the_service_step(world):
    """What `dosis firmware flash` does after MicroPython: the REPL is open already (here:
    the service command opened it), so the app goes on with a clean soft reset first."""
    bundle.build_bundle(world["tmp"] / "b5")  # the repository's version again
    deploy._service(world["port"], world["keys"], 10)
    res = deploy.deploy_bundle(
        world["port"], world["tmp"] / "b5", fresh=True, keystore=world["keys"]
    )
    assert res.version_before is None and res.version_after == VERSION
    assert res.written == ["dosiscore/__init__.mpy"]
