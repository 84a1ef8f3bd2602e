"""Update the app on a paired, running dispenser, never leaving it without working firmware.

`deploy_bundle` (behind `dosis firmware deploy`):
1. `service` (authenticated): the app stops its dose loop safely and hands the REPL over;
2. mpremote's own SerialTransport enters the raw REPL (no soft reset: that would restart the
   app) and hashes the device's app files in one script;
3. only changed or missing files are written, each as `<path>.new`, and every one is hashed
   back on the device; any failure removes the `.new` files and the old app runs on;
4. one script swaps them in: `deploy.json` says "committing" first, each replaced file moves
   to `prev/`, each new one into place, then "trial" (boot.py undoes a swap the power cut);
5. every file of the bundle is hashed again, then `machine.reset()`;
6. `hello` must answer with the bundle's version. The new app confirms itself once it runs
   (main.py); if it does not start, boot.py puts the previous app back at its third boot and
   this reports the rollback.
`verify_device` compares a device with a bundle (steps 1, 2, then a reset).
Nothing here prints; progress goes to an optional callback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import Manifest, diff_manifests, load_manifest
from .device import Device, open_device
from .errors import DeviceError, DosisError, LinkError
from .keystore import Keystore

# The device's app: everything under these, and the two entry scripts.
APP_DIRS = ("dispenser", "dosiscore")
ENTRY = ("boot.py", "main.py")
CHUNK = 512  # bytes per mpremote write (its repr() of each chunk travels as source text)

_HASH_SCRIPT = """
import os, hashlib, binascii
def _h(p):
    h = hashlib.sha256()
    b = bytearray(512)
    with open(p, 'rb') as f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            h.update(b if n == 512 else b[:n])
    return binascii.hexlify(h.digest()).decode()
def _walk(d):
    try:
        names = os.listdir('/' + d)
    except OSError:
        return
    for n in names:
        p = d + '/' + n
        if os.stat('/' + p)[0] & 0x4000:
            _walk(p)
        elif not n.endswith('.new'):
            print(p, _h('/' + p))
for _d in %(dirs)r:
    _walk(_d)
for _p in %(entry)r:
    try:
        print(_p, _h('/' + _p))
    except OSError:
        pass
"""

_COMMIT_SCRIPT = """
import os, json
FILES = %(files)r
ADDED = %(added)r
GONE = %(gone)r
def _ex(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
def _mk(p):
    d = ''
    for x in p.split('/')[1:-1]:
        d += '/' + x
        if not _ex(d):
            os.mkdir(d)
def _rm(d):
    for n in os.listdir(d):
        p = d + '/' + n
        if os.stat(p)[0] & 0x4000:
            _rm(p)
        else:
            os.remove(p)
    os.rmdir(d)
def _state(s):
    with open('/deploy.json.tmp', 'w') as f:
        json.dump(s, f)
    os.rename('/deploy.json.tmp', '/deploy.json')
if _ex('/prev'):
    _rm('/prev')
os.mkdir('/prev')
st = {'state': 'committing', 'files': FILES + GONE, 'added': ADDED, 'version': %(version)r}
_state(st)
for rel in FILES + GONE:
    cur = '/' + rel
    if _ex(cur):
        _mk('/prev/' + rel)
        os.rename(cur, '/prev/' + rel)
    if rel in FILES:
        _mk(cur)
        os.rename(cur + '.new', cur)
if _ex('/manifest.json'):
    os.rename('/manifest.json', '/prev/manifest.json')
os.rename('/manifest.json.new', '/manifest.json')
st['state'] = 'trial'
st['tries'] = 0
_state(st)
print('committed')
"""

_UNSTAGE_SCRIPT = """
import os
for rel in %(files)r:
    try:
        os.remove('/' + rel + '.new')
    except OSError:
        pass
"""

_LIST_SCRIPT = """
for _p in %(paths)r:
    try:
        print(_p, _h('/' + _p))
    except OSError:
        pass
"""

_MKDIRS_SCRIPT = """
import os
d = ''
for x in %(parent)r.split('/')[1:]:
    d += '/' + x
    try:
        os.stat(d)
    except OSError:
        os.mkdir(d)
"""

# A swap that failed its check: mark it interrupted, so boot.py undoes it at the reset.
_UNDO_SCRIPT = """
import json, os
with open('/deploy.json') as f:
    st = json.load(f)
st['state'] = 'committing'
with open('/deploy.json.tmp', 'w') as f:
    json.dump(st, f)
os.rename('/deploy.json.tmp', '/deploy.json')
"""


@dataclass
class DeployResult:
    version_before: str | None
    version_after: str | None
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    rolled_back: bool = False


@dataclass
class VerifyResult:
    version: str | None
    changed: list[str]
    missing: list[str]
    extra: list[str]

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing)


def _transport(port: str) -> Any:
    from mpremote.transport_serial import SerialTransport

    try:
        return SerialTransport(port, baudrate=115200)
    except Exception as e:  # mpremote raises its own TransportError or an OSError
        raise LinkError(f"cannot open {port} for the REPL: {e}") from None


def _exec(t: Any, script: str, what: str) -> str:
    from mpremote.transport import TransportError, TransportExecError

    try:
        out = t.exec(script)
    except TransportExecError as e:
        last = (e.error_output or "").strip().splitlines()[-1:] or ["?"]
        raise DosisError(f"{what} failed on the device: {last[0]}") from None
    except TransportError as e:
        raise LinkError(f"{what}: the device's REPL stopped answering ({e})") from None
    return out.decode("utf-8", "replace") if isinstance(out, bytes | bytearray) else str(out)


def device_hashes(t: Any) -> dict[str, str]:
    """path → SHA-256 of the app files on the device (one script, one round trip)."""
    out = _exec(t, _HASH_SCRIPT % {"dirs": APP_DIRS, "entry": ENTRY}, "hashing the app")
    got = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[1]) == 64:
            got[parts[0]] = parts[1]
    return got


def _service(port: str, keystore: Keystore | None, timeout: float) -> str | None:
    """Ask the app to stop and hand over the REPL; the version it ran."""
    with open_device(port, keystore=keystore, timeout=timeout) as dev:
        version = dev.hello().get("fw")
        try:
            dev.call("service", timeout=30.0)
        except DeviceError as e:
            if e.code == "busy":
                raise DosisError(f"the dispenser cannot stop now: {e.msg}") from None
            raise
    return version


def _enter_repl(port: str, soft_reset: bool = False) -> Any:
    from mpremote.transport import TransportError

    t = _transport(port)
    try:
        # In service mode a soft reset would start the app again (and, on the ESP32, stop the
        # watchdog's feeder): never there. A freshly flashed board has no app: a clean start.
        t.enter_raw_repl(soft_reset=soft_reset)
    except TransportError as e:
        t.close()
        raise LinkError(f"{port}: no REPL after the service command ({e})") from None
    return t


def _reset(t: Any) -> None:
    try:
        t.exec_raw_no_follow("import machine\nmachine.reset()")
    except Exception:  # the reset may cut the reply short: that is the point
        pass
    try:
        t.close()
    except Exception:
        pass


def _shadowing(extra: list[str], manifest: Manifest) -> list[str]:
    """Extra device files that would be imported instead of a bundle file: a stale `x.py`
    beside the bundle's `x.mpy` (MicroPython tries .py first)."""
    mpys = {f.path[:-4] for f in manifest.files if f.path.endswith(".mpy")}
    return [p for p in extra if p.endswith(".py") and p[:-3] in mpys]


def _wait_hello(port: str, keystore: Keystore | None, until: float) -> Device | None:
    while time.monotonic() < until:
        try:
            return open_device(port, keystore=keystore, timeout=3.0)
        except (LinkError, DosisError):
            time.sleep(0.5)
    return None


def deploy_bundle(
    port: str,
    bundle_dir: str | Path,
    *,
    keystore: Keystore | None = None,
    timeout: float = 10.0,
    boot_wait: float = 40.0,
    on_step: Callable[[str], None] | None = None,
    on_file: Callable[[str, int], None] | None = None,
    fresh: bool = False,
) -> DeployResult:
    """Deploy the bundle in `bundle_dir` to the paired dispenser on `port` (see the module).

    `fresh`: a board that runs MicroPython and no app yet (just flashed): its REPL is open
    already, so there is no `service` step and nothing to pair."""
    say = on_step or (lambda _s: None)
    bundle = Path(bundle_dir)
    manifest = load_manifest(bundle)
    t0 = time.monotonic()
    if fresh:
        before = None
    else:
        say("asking the dispenser to stop its dose loop and hand over the REPL")
        before = _service(port, keystore, timeout)
    res = DeployResult(before, None)
    t = _enter_repl(port, soft_reset=fresh)
    try:
        say("comparing the device's files with the bundle")
        have = device_hashes(t)
        diff = diff_manifests(have, manifest)
        todo = diff.changed + diff.missing_on_device
        gone = _shadowing(diff.extra_on_device, manifest)
        res.unchanged = len(manifest.files) - len(todo)
        if not todo and not gone and before == manifest.version:
            say("the device already runs this bundle")
            _reset(t)
            t = None
            res.version_after = _confirm_version(port, keystore, manifest, boot_wait, res)
            res.seconds = time.monotonic() - t0
            return res
        staged: list[str] = []
        try:
            for rel in todo:
                data = (bundle / rel).read_bytes()
                if on_file:
                    on_file(rel, len(data))
                _write(t, "/" + rel + ".new", data)
                staged.append(rel)
                res.bytes_written += len(data)
            _write(t, "/manifest.json.new", manifest.to_bytes())
            staged_hashes = device_hashes_of(t, [r + ".new" for r in todo])
            bad = [r for r in todo if staged_hashes.get(r + ".new") != manifest.hashes[r]]
            if bad:
                raise DosisError(f"{bad[0]} arrived damaged on the device: nothing was changed")
        except BaseException:
            try:
                _exec(t, _UNSTAGE_SCRIPT % {"files": staged + ["manifest.json"]}, "cleaning up")
            finally:
                _reset(t)
                t = None
            raise
        say(f"swapping in {len(todo)} files (the previous ones are kept in prev/)")
        _exec(
            t,
            _COMMIT_SCRIPT
            % {
                "files": todo,
                "added": diff.missing_on_device,
                "gone": gone,
                "version": manifest.version,
            },
            "swapping in the new files",
        )
        res.written = todo
        res.removed = gone
        after = device_hashes(t)
        wrong = [p for p, h in manifest.hashes.items() if after.get(p) != h]
        if wrong:
            _exec(t, _UNDO_SCRIPT, "marking the update for undo")
            _reset(t)
            t = None
            raise DosisError(
                f"{wrong[0]} does not match the bundle after the swap: the device restores the "
                "previous app at this reboot"
            )
        say("restarting the dispenser into the new app")
        _reset(t)
        t = None
    finally:
        if t is not None:
            _reset(t)
    res.version_after = _confirm_version(port, keystore, manifest, boot_wait, res)
    res.seconds = time.monotonic() - t0
    return res


def _confirm_version(
    port: str, keystore: Keystore | None, manifest: Manifest, boot_wait: float, res: DeployResult
) -> str | None:
    """Wait for the app to answer; it must run the bundle's version."""
    until = time.monotonic() + boot_wait
    seen = None
    dev = None
    hello: dict[str, Any] = {}
    while time.monotonic() < until:
        dev = _wait_hello(port, keystore, until)
        if dev is None:
            break
        with dev:
            hello = dev.hello()
            seen = hello.get("fw")
            if seen == manifest.version:
                if hello.get("paired"):
                    dev.call("info")  # the app itself answers, signed: it runs
                return seen
            if hello.get("update") == "rolled_back":
                break
        time.sleep(1.0)  # an old version: the device may be rolling back; look again
    if seen is not None and dev is not None and hello.get("update") == "rolled_back":
        res.rolled_back = True
        raise DosisError(
            f"the new app ({manifest.version}) did not start: the dispenser rolled back to "
            f"{seen} and goes on dispensing; check the bundle with 'dosis firmware verify'"
        )
    if seen is not None and seen != manifest.version:
        res.rolled_back = True
        raise DosisError(
            f"the new app ({manifest.version}) did not start: the dispenser rolled back to "
            f"{seen} and goes on dispensing; check the bundle with 'dosis firmware verify'"
        )
    raise LinkError(
        f"the dispenser did not answer within {boot_wait:.0f} s after the update: if it does "
        "not start, it restores the previous app by itself at its third boot"
    )


def device_hashes_of(t: Any, paths: list[str]) -> dict[str, str]:
    script = _HASH_SCRIPT.split("def _walk")[0] + _LIST_SCRIPT % {"paths": paths}
    got = {}
    for line in _exec(t, script, "checking the written files").splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[1]) == 64:
            got[parts[0]] = parts[1]
    return got


def _write(t: Any, path: str, data: bytes) -> None:
    from mpremote.transport import TransportError

    parent = path.rsplit("/", 1)[0]
    if parent:
        _exec(t, _MKDIRS_SCRIPT % {"parent": parent}, f"making {parent}")
    try:
        t.fs_writefile(path, data, chunk_size=CHUNK)
    except TransportError as e:
        raise LinkError(f"writing {path}: the device's REPL stopped answering ({e})") from None
    except OSError as e:
        raise DosisError(f"writing {path} on the device failed: {e}") from None


def verify_device(
    port: str, bundle_dir: str | Path, *, keystore: Keystore | None = None, timeout: float = 10.0
) -> VerifyResult:
    """Compare the device's app with a bundle (the app is stopped for it, then restarted)."""
    manifest = load_manifest(Path(bundle_dir))
    version = _service(port, keystore, timeout)
    t = _enter_repl(port)
    try:
        diff = diff_manifests(device_hashes(t), manifest)
    finally:
        _reset(t)
    return VerifyResult(version, diff.changed, diff.missing_on_device, diff.extra_on_device)


def as_json(res: DeployResult | VerifyResult) -> str:
    return json.dumps(res.__dict__ | ({"ok": res.ok} if isinstance(res, VerifyResult) else {}))
