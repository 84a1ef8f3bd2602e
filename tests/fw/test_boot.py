"""boot.py's update undo (deploy.json: committing / trial / ok): both VMs, a temp directory."""

import json
import os
import sys

sys.path.append(__file__.replace("\\", "/").rsplit("/", 3)[0] + "/firmware")

import boot

_BASE = "/tmp/dosis-test-boot-" + sys.implementation.name  # one per VM: they may run at once


def _rmtree(d):
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        p = d + "/" + n
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(d)


def _tree(files):
    _rmtree(_BASE)
    os.mkdir(_BASE)
    for rel, text in files.items():
        parts = rel.split("/")
        for i in range(1, len(parts)):
            try:
                os.mkdir(_BASE + "/" + "/".join(parts[:i]))
            except OSError:
                pass
        with open(_BASE + "/" + rel, "w") as f:
            f.write(text)
    return _BASE


def _read(rel):
    try:
        with open(_BASE + "/" + rel) as f:
            return f.read()
    except OSError:
        return None


def _state(root, d):
    with open(root + "/deploy.json", "w") as f:
        json.dump(d, f)


def _updated():
    # after the swap: a.mpy replaced (old in prev/), b.mpy added, c.mpy untouched
    root = _tree(
        {
            "a.mpy": "new a",
            "b.mpy": "new b",
            "c.mpy": "c",
            "manifest.json": "new",
            "prev/a.mpy": "old a",
            "prev/manifest.json": "old",
        }
    )
    files = ["a.mpy", "b.mpy"]
    return root, {"files": files, "added": ["b.mpy"], "version": "2"}


def test_no_update_nothing_happens():
    root = _tree({"a.mpy": "a"})
    assert boot.trial(root) is None
    assert _read("a.mpy") == "a"


def test_a_trial_gets_two_boots_then_is_undone():
    root, d = _updated()
    d["state"] = "trial"
    _state(root, d)
    assert boot.trial(root) == "trial"
    assert boot.trial(root) == "trial"
    assert _read("a.mpy") == "new a"
    assert boot.trial(root) == "rolled_back"  # the third boot without a confirmation
    assert _read("a.mpy") == "old a"
    assert _read("b.mpy") is None
    assert _read("c.mpy") == "c"
    assert _read("manifest.json") == "old"
    assert boot._read(root)["state"] == "rolled_back"
    assert boot.trial(root) is None  # and it stays so


def test_a_confirmed_trial_is_kept():
    root, d = _updated()
    d["state"] = "trial"
    _state(root, d)
    assert boot.trial(root) == "trial"
    assert boot.confirm(root)
    for _ in range(4):
        assert boot.trial(root) is None
    assert _read("a.mpy") == "new a" and _read("b.mpy") == "new b"
    assert not boot.confirm(root)  # nothing to confirm any more


def test_an_interrupted_swap_is_undone_at_once():
    # the power went halfway: a.mpy already swapped, b.mpy still staged as .new
    root = _tree(
        {
            "a.mpy": "new a",
            "b.mpy.new": "new b",
            "c.mpy": "c",
            "prev/a.mpy": "old a",
            "manifest.json": "old",
        }
    )
    _state(root, {"state": "committing", "files": ["a.mpy", "b.mpy"], "added": ["b.mpy"]})
    assert boot.trial(root) == "rolled_back"
    assert _read("a.mpy") == "old a"
    assert _read("b.mpy") is None and _read("b.mpy.new") is None
    assert _read("manifest.json") == "old"
    assert boot._read(root)["why"] == "interrupted"


def test_cleanup():
    _rmtree(_BASE)
    assert _read("a.mpy") is None
