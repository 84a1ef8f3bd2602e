"""A/B settings copies with a CRC: old or new, never a mix; runs under pytest and MicroPython."""

import os

from dispenser.settings import ABStore

_N = [0]


def _dir():
    _N[0] += 1
    d = "/tmp/dosis-ab-%d" % _N[0]
    try:
        os.mkdir(d)
    except OSError:
        pass
    for n in os.listdir(d):
        os.remove(d + "/" + n)
    return d


def test_saves_alternate_and_the_newest_wins():
    d = _dir()
    s = ABStore(d)
    assert s.load("cfg") is None
    s.save("cfg", {"v": 1})
    s.save("cfg", {"v": 2})
    s.save("cfg", {"v": 3})
    assert s.load("cfg") == {"v": 3}
    assert sorted(os.listdir(d)) == ["cfg.a", "cfg.b"]
    assert s.writes == 3 and s.fallbacks == []


def test_damaged_newest_falls_back_to_previous_and_says_so():
    d = _dir()
    s = ABStore(d)
    s.save("cfg", {"v": 1})  # A, generation 0
    s.save("cfg", {"v": 2})  # B, generation 1
    with open(d + "/cfg.b", "rb") as f:
        data = bytearray(f.read())
    data[3] ^= 0x20  # one flipped bit in the payload
    with open(d + "/cfg.b", "wb") as f:
        f.write(data)
    assert s.load("cfg") == {"v": 1}
    assert s.fallbacks == ["cfg"]
    s.save("cfg", {"v": 3})  # goes over the damaged copy, not over the good one
    assert s.load("cfg") == {"v": 3}
    with open(d + "/cfg.a", "rb") as f:
        kept = f.read()
    assert b'"v": 1' in kept or b'"v":1' in kept  # the good copy was left alone


def test_torn_temp_and_garbage():
    d = _dir()
    s = ABStore(d)
    s.save("cfg", {"v": 1})
    with open(d + "/cfg.b.tmp", "wb") as f:
        f.write(b'{"v": 2')  # a cut before the rename
    assert s.load("cfg") == {"v": 1}
    for junk in (b"", b"no newline", b'{"v": 9}\n0 zz', b'{"v": 9}\n7 00000000'):
        with open(d + "/cfg.a", "wb") as f:
            f.write(junk)
        assert s.load("cfg") is None, junk
