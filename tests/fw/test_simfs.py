"""The simulated flash's power-loss semantics: unsynced writes are lost, syncs are atomic."""

import os

from sim.simfs import SimFS

_N = [0]


def _root():
    _N[0] += 1
    d = "/tmp/dosis-simfs-%d-%d" % (os.getpid() if hasattr(os, "getpid") else 0, _N[0])
    try:
        os.mkdir(d)
    except OSError:
        for n in os.listdir(d):
            os.remove(d + "/" + n)
    return d


def _cut(fs):
    """A power cut: the process's RAM is gone; only what the host directory holds remains."""
    return SimFS(fs.root)


def test_unsynced_write_is_lost_at_a_cut():
    fs = SimFS(_root())
    f = fs.open("a.bin", "wb")
    f.write(b"hello")
    fs2 = _cut(fs)  # the writer never flushed nor closed
    assert not fs2.exists("a.bin")
    f.flush()
    assert fs2.open("a.bin", "rb").read() == b"hello"
    f.write(b" world")
    assert fs2.open("a.bin", "rb").read() == b"hello"  # the last sync, not a mix
    f.close()
    assert fs2.open("a.bin", "rb").read() == b"hello world"


def test_rewrite_keeps_old_contents_until_synced():
    fs = SimFS(_root())
    with fs.open("s.json", "w") as f:
        f.write("old")
    f = fs.open("s.json", "w")  # truncating open: the old contents stay durable
    f.write("ne")
    assert _cut(fs).open("s.json").read() == "old"
    f.close()
    assert _cut(fs).open("s.json").read() == "ne"


def test_append_seek_and_atomic_rename():
    fs = SimFS(_root())
    with fs.open("log", "ab") as f:
        f.write(b"12")
    with fs.open("log", "ab") as f:
        f.write(b"34")
    with fs.open("log", "r+b") as f:
        f.seek(1)
        f.write(b"X")
    assert fs.open("log", "rb").read() == b"1X34"
    buf = bytearray(3)
    g = fs.open("log", "rb")
    assert g.readinto(buf) == 3 and bytes(buf) == b"1X3"
    fs.rename("log", "log2")
    assert not fs.exists("log") and fs.size("log2") == 4
    assert sorted(fs.listdir("")) == ["log2"]
    fs.remove("log2")
    assert fs.listdir("") == []
    assert fs.syncs >= 5
