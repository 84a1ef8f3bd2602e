"""Runs first, after MicroPython's own _boot.py: check the filesystem, finish or undo an app
update, never hang, never loop.

If the filesystem cannot be written and read back, count it in NVS (so the technician can see
how often it happens) and go on: main.py then runs the dispenser from the schedule copy in NVS,
shows fault E9 and tells the care team. Nothing here may raise: every step is guarded.

App updates (`dosis firmware deploy`, see docs/deploy.md) leave `deploy.json` at the root:
- "committing": the host was swapping files in when the power or the link went: undo it now;
- "trial": a new app is installed; it confirms itself once it has booted (main.py calls
  `confirm()`); a third boot without that confirmation means it does not start: undo it.
Undo = every file the update replaced is moved back from `prev/`, every file it added is
removed. The previous app is kept in `prev/` until the next update, so the device is never
left without working firmware. This logic lives here, in source form, because the app's own
modules may be the broken part.
"""

import json
import os

_STATE = "deploy.json"
_PREV = "prev"
_MAX_TRIES = 2


def _p(root, path):
    return root + "/" + path if root else "/" + path


def _read(root):
    try:
        with open(_p(root, _STATE)) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _write(root, d):
    tmp = _p(root, _STATE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(d, f)
    os.rename(tmp, _p(root, _STATE))


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def rollback(root, d):
    """Put the previous app back: the replaced files from prev/, the added files removed."""
    for rel in d.get("files", ()):
        cur = _p(root, rel)
        old = _p(root, _PREV + "/" + rel)
        for leftover in (cur + ".new",):
            if _exists(leftover):
                os.remove(leftover)
        if _exists(old):
            if _exists(cur):
                os.remove(cur)
            os.rename(old, cur)
        elif rel in d.get("added", ()) and _exists(cur):
            os.remove(cur)
    old_manifest = _p(root, _PREV + "/manifest.json")
    if _exists(old_manifest):
        if _exists(_p(root, "manifest.json")):
            os.remove(_p(root, "manifest.json"))
        os.rename(old_manifest, _p(root, "manifest.json"))


def trial(root=""):
    """At every boot: undo an interrupted or failing update. Returns what was done."""
    d = _read(root)
    if d is None:
        return None
    state = d.get("state")
    if state == "trial":
        d["tries"] = d.get("tries", 0) + 1
        if d["tries"] <= _MAX_TRIES:
            _write(root, d)
            return "trial"
    elif state != "committing":
        return None
    rollback(root, d)
    d["state"] = "rolled_back"
    d["why"] = "interrupted" if state == "committing" else "did not start"
    _write(root, d)
    return "rolled_back"


def confirm(root=""):
    """The new app has booted: keep it (called by main.py once the dispenser runs)."""
    d = _read(root)
    if d is not None and d.get("state") == "trial":
        d["state"] = "ok"
        _write(root, d)
        return True
    return False


def _fs_ok():
    try:
        with open("/.probe", "w") as f:
            f.write("ok")
        with open("/.probe") as f:
            ok = f.read() == "ok"
        os.remove("/.probe")
        return ok
    except Exception:  # any failure at all means "not usable"; boot goes on regardless
        return False


def _count_failure():
    try:
        import esp32

        nvs = esp32.NVS("dosis")
        try:
            n = nvs.get_i32("fsfail")
        except OSError:
            n = 0
        nvs.set_i32("fsfail", n + 1)
        nvs.commit()
    except Exception:  # no NVS either (or not an ESP32): nothing more to record
        pass


def main():
    if not _fs_ok():
        _count_failure()
        print("dosis: filesystem unusable: starting from the NVS copy")
        return
    try:
        done = trial("")
        if done == "rolled_back":
            print("dosis: the app update did not start: the previous app is back")
    except Exception as e:  # an undo that fails must not stop the boot either
        print("dosis: update check failed:", e)


# MicroPython runs boot.py as __main__; main.py and the simulator import it for its functions.
if __name__ == "__main__":
    main()
