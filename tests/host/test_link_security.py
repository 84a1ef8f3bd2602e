"""Authentication of the device protocol on the virtual dispenser (docs/protocol.md).

Each refusal must come with its documented code, be written to the dose log as an auth_fail
record with the right reason (dosiscore.logrec.AUTH_REASONS), read back over log.read, and
change nothing: settings, time and schedule stay as they were. Also: the key is only ever sent
by `pair`, re-pairing invalidates the old key, and a restart (clean or a power cut) never
re-accepts a counter used before it. One fresh device (state directory) per test.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from dosiscore import logrec, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
from linkharness import (  # noqa: E402
    MAC_TAIL,
    Device,
    auth_fails,
    compile_example,
    kinds,
    local_to_utc,
)

DAY = "2026-11-23"
QUIET = "02:00"  # local: no dose for hours (the first, 08:00, opens at 07:30)
FLUSH_S = 1800  # virtual seconds that refill the log's sync budget (deferred records flush)


class Bench:
    """Devices for one test, all on one state directory, killed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sched, self.doc = compile_example(tmp / "schedule.json")
        self.state = tmp / "state"
        self.devices: list[Device] = []

    def at(self, hhmm: str) -> int:
        return local_to_utc(self.doc, DAY, hhmm)

    def boot(self, start: int | None = None, speed: float = 1.0) -> Device:
        if start is None and not self.devices:
            start = self.at(QUIET)
        n = len(self.devices)
        dev = Device(self.state, self.sched, self.tmp / f"stderr{n}.txt", start, speed)
        self.devices.append(dev.start())
        return dev


@pytest.fixture
def bench(tmp_path):
    b = Bench(tmp_path)
    yield b
    for dev in b.devices:
        dev.kill()
    for dev in b.devices:
        err = dev.stderr_text()
        assert "Traceback" not in err, err


def state_of(dev: Device) -> dict[str, Any]:
    """What a refused request must not change: settings, schedule, clock (with the key)."""
    info = dev.ok("info")
    return {
        "settings": dev.ok("settings", {}),
        "schedule": dev.ok("schedule.get"),
        "hash": info["schedule"],
        "utc": info["utc"],
        "mode": info["mode"],
        "time_source": info["time_source"],
    }


def same_state(before: dict[str, Any], after: dict[str, Any], slack: int = 5) -> None:
    """Equal but for the clock, which may only have run on (no step)."""
    assert 0 <= after["utc"] - before["utc"] <= slack, (before["utc"], after["utc"])
    a = dict(after, utc=None)
    b = dict(before, utc=None)
    assert a == b


def refused(reply: dict[str, Any], err: str) -> None:
    assert reply["ok"] is False and reply["err"] == err, reply
    if err == "replay":
        # the mac was good: the refusal is signed, so the host may trust its "min"
        assert "ctr" in reply and "mac" in reply, reply
    else:
        # refused before authentication: no counter, no mac (nothing vouches for it)
        assert "ctr" not in reply and "mac" not in reply, reply


def logged(dev: Device, after_seq: int) -> list[tuple[Any, ...]]:
    """The log records after `after_seq`, once every deferred record is durable."""
    dev.advance(FLUSH_S)
    return [r for r in dev.log() if r[0] > after_seq]


def last_seq(dev: Device) -> int:
    return dev.ok("info")["log"]["last"]


def hostile_requests(dev: Device, key: bytes, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Requests that would change settings, mode, time, schedule and the carousel's fill,
    signed with `key`; their replies."""
    other = json.loads(json.dumps(doc))
    other["dose"][1]["time"] = "13:00"
    data = schedule.canonical(schedule.validate(other)).decode()
    out = []
    for cmd, args in (
        ("settings", {"volume": 1, "tone": "low", "language": "en", "mode": "paused"}),
        ("time.set", {"utc": 1798761600}),  # 2027-01-01
        ("schedule.put", {"at": 0, "data": data, "more": False}),
        ("fill", None),
    ):
        out.append(dev.call(cmd, args, key=key))
    return out


def only_refusals(recs: list[tuple[Any, ...]]) -> None:
    """Nothing but auth_fail records: no settings, mode, clock, schedule or fill record."""
    assert set(kinds(recs)) <= {"auth_fail"}, kinds(recs)


def refusals_logged(dev: Device, after_seq: int) -> list[str]:
    """The reasons logged after `after_seq`, where nothing but refusals may have been."""
    recs = logged(dev, after_seq)
    only_refusals(recs)
    return auth_fails(recs)


# -- refusals ----------------------------------------------------------------------------------


def test_before_pairing_every_command_is_not_paired(bench):
    dev = bench.boot()
    assert dev.request("hello")["data"]["paired"] is False
    stranger = os.urandom(32)
    replies = hostile_requests(dev, stranger, bench.doc) + [dev.call("info", key=stranger)]
    for reply in replies:
        refused(reply, "not_paired")
    # without any mac at all: the same
    refused(dev.request("info"), "not_paired")
    dev.pair()
    state = state_of(dev)
    assert state["settings"] == {"language": "da", "volume": 4, "tone": "normal", "mode": "normal"}
    assert 0 <= state["utc"] - bench.at(QUIET) < 60
    assert state["time_source"] == "rtc"
    assert state["hash"] == schedule.content_hash(schedule.validate(bench.doc))
    recs = logged(dev, 0)
    assert auth_fails(recs) == ["not_paired"] * 6
    names = kinds(recs)
    assert names.index("paired") > max(i for i, k in enumerate(names) if k == "auth_fail")
    for k in ("settings", "mode", "clock_set", "filled", "schedule_bad"):
        assert k not in names, names


def test_wrong_key_is_auth(bench):
    dev = bench.boot()
    dev.pair()
    before = state_of(dev)
    seq = last_seq(dev)
    for reply in hostile_requests(dev, os.urandom(32), bench.doc):
        refused(reply, "auth")
    same_state(before, state_of(dev))
    recs = logged(dev, seq)
    only_refusals(recs)
    assert auth_fails(recs) == ["auth"] * 4
    assert dev.ok("info")["refused"] == 4


def test_replayed_counter_is_replay(bench):
    dev = bench.boot()
    dev.pair()
    rid, ctr, first = dev.signed("settings", {"volume": 3})
    dev.send_raw(first + b"\n")
    assert dev.take(rid)["ok"] is True
    assert dev.ok("settings", {"volume": 2})["volume"] == 2
    before = state_of(dev)
    seq = last_seq(dev)
    dev.send_raw(first + b"\n")  # the very same line again, later
    r = dev.take(rid)
    refused(r, "replay")
    assert r["min"] == dev.ctr + 1
    # the last accepted request, replayed at once
    rid, ctr, last = dev.signed("settings", {"volume": 2})
    dev.send_raw(last + b"\n" + last + b"\n")
    dev.verify(dev.take(rid), ctr)
    r = dev.take(rid)
    refused(r, "replay")
    assert r["min"] == ctr + 1
    same_state(before, state_of(dev))
    assert before["settings"]["volume"] == 2
    assert refusals_logged(dev, seq) == ["replay", "replay"]


def test_older_counter_after_newer_is_replay(bench):
    dev = bench.boot()
    dev.pair()
    before = state_of(dev)
    seq = last_seq(dev)
    rid_a, ctr_a, a = dev.signed("settings", {"volume": 1})
    rid_b, ctr_b, b = dev.signed("info")
    assert ctr_b == ctr_a + 1
    dev.send_raw(b + b"\n")  # the newer one arrives first
    assert dev.take(rid_b)["ok"] is True
    dev.send_raw(a + b"\n")
    r = dev.take(rid_a)
    refused(r, "replay")
    assert r["min"] == ctr_b + 1
    # far-below counters are replays too; counter 0 is no counter at all
    r = dev.call("info", ctr=1)
    refused(r, "replay")
    assert r["min"] == ctr_b + 1
    refused(dev.call("info", ctr=0), "auth")
    same_state(before, state_of(dev))
    assert refusals_logged(dev, seq) == ["replay", "replay", "auth"]


def test_tampered_body_is_auth(bench):
    dev = bench.boot()
    dev.pair()
    before = state_of(dev)
    seq = last_seq(dev)
    lines = []
    rid, ctr, line = dev.signed("settings", {"volume": 2})
    assert b'"volume":2' in line
    lines.append((rid, line.replace(b'"volume":2', b'"volume":1')))  # one character of args
    rid, ctr, line = dev.signed("settings", {"tone": "low"})
    lines.append((rid, line.replace(b'"tone":"low"', b'"tone":"loW"')))
    rid, ctr, line = dev.signed("info")
    lines.append((rid, line.replace(b'"ctr":%d' % ctr, b'"ctr":%d' % (ctr + 1000))))
    rid, ctr, line = dev.signed("info")
    lines.append((rid + 1, line.replace(b'"id":%d' % rid, b'"id":%d' % (rid + 1))))
    rid, ctr, line = dev.signed("info")
    flipped = b"0" if line[-3:-2] != b"0" else b"1"
    lines.append((rid, line[:-3] + flipped + line[-2:]))  # the mac itself
    for rid, bad in lines:
        dev.send_raw(bad + b"\n")
        refused(dev.take(rid), "auth")
    same_state(before, state_of(dev))
    assert refusals_logged(dev, seq) == ["auth"] * len(lines)


def test_mac_not_last_is_auth(bench):
    dev = bench.boot()
    dev.pair()
    before = state_of(dev)
    seq = last_seq(dev)
    bad = []
    rid, ctr, line = dev.signed("settings", {"volume": 1})
    prefix, tail = line[:-MAC_TAIL], line[-MAC_TAIL:]
    mac = tail[8:-2]
    # the mac first, then the rest (a valid mac over the very same prefix)
    bad.append((rid, b'{"mac":"' + mac + b'",' + prefix[1:] + b"}"))
    # a member after the mac
    bad.append((rid, prefix + b',"mac":"' + mac + b'","x":1}'))
    # trailing bytes after the object (the line must end in the mac member)
    bad.append((rid, line + b" "))
    # the right mac, but written with a JSON escape: the line does not end in the mac's hex
    rid2, _, line2 = dev.signed("settings", {"volume": 1})
    esc = b"\\u%04x" % line2[-MAC_TAIL + 8]
    bad.append((rid2, line2[: -MAC_TAIL + 8] + esc + line2[-MAC_TAIL + 9 :]))
    # the right mac in uppercase hex: the spec says lowercase, one spelling only
    rid3, _, line3 = dev.signed("settings", {"volume": 1})
    bad.append((rid3, line3[:-MAC_TAIL] + line3[-MAC_TAIL:].upper().replace(b"MAC", b"mac")))
    for r, b in bad:
        dev.send_raw(b + b"\n")
        refused(dev.take(r), "auth")
    same_state(before, state_of(dev))
    assert refusals_logged(dev, seq) == ["auth"] * len(bad)


def test_pair_without_the_service_press_is_not_pairing(bench):
    dev = bench.boot()
    nonce = os.urandom(32).hex()
    refused(dev.request("pair", {"nonce": nonce}), "not_pairing")  # a new device, no press
    assert dev.request("hello")["data"]["paired"] is False
    key = dev.pair()
    seq = last_seq(dev)
    # the window closes with a successful pair: nobody else can pair in its remaining time
    refused(dev.request("pair", {"nonce": nonce}), "not_pairing")
    # and it closes 120 s after the press
    dev.open_window()
    dev.advance(121)
    assert dev.request("hello")["data"]["pairing"] is False
    refused(dev.request("pair", {"nonce": nonce}), "not_pairing")
    # the key in force still works: nothing changed
    assert dev.key == key
    assert dev.ok("info")["device"] == dev.request("hello")["data"]["device"]
    recs = logged(dev, 0)
    assert auth_fails(recs) == ["not_pairing"] * 3
    assert auth_fails([r for r in recs if r[0] > seq]) == ["not_pairing"] * 2
    assert kinds(recs).count("paired") == 1


def test_one_press_opens_the_window_again_after_a_pairing(bench):
    dev = bench.boot(start=bench.at("07:00"))
    dev.pair()
    dev.ok("fill")
    dev.advance(3600 + 60)  # 08:01: the morning dose is due
    dose_screen = dev.ok("display.snapshot")["screen"]
    dev.press_service()
    dev.poll(0.3)
    opened = dev.request("hello")["data"]["pairing"]
    assert (dose_screen, opened) == ("due", True)


def test_repairing_invalidates_the_old_key(bench):
    dev = bench.boot()
    old = dev.pair()
    for _ in range(3):
        dev.ok("info")
    old_ctr = dev.ctr
    new = dev.pair()
    assert new != old
    seq = dev.ok("info")["log"]["last"]  # counter 1: the new key's counter starts again
    assert dev.ctr == 1
    refused(dev.call("info", key=old, ctr=old_ctr + 1), "auth")
    refused(dev.call("settings", {"volume": 1}, key=old, ctr=old_ctr + 2), "auth")
    assert dev.ok("settings", {})["volume"] == 4
    assert refusals_logged(dev, seq) == ["auth", "auth"]


def test_the_key_is_only_ever_sent_by_pair(bench):
    dev = bench.boot()
    key = dev.pair()
    pair_replies = [r for r in dev.raw_replies if key.hex().encode() in r]
    assert len(pair_replies) == 1 and b'"key":"' in pair_replies[0]
    start = len(dev.raw_replies)
    dev.ok("monitor", {"on": True})
    dev.request("hello")
    dev.ok("info")
    dev.ok("settings", {})
    dev.ok("settings", {"volume": 3})
    dev.ok("schedule.get")
    dev.ok("selftest")
    snap = dev.ok("display.snapshot")
    dev.log()
    dev.request("sim.press", {"button": "service"})  # the pairing screen shows the device id
    dev.poll(0.3)
    snap2 = dev.ok("display.snapshot")
    dev.ok("monitor", {"on": False})
    texts = dev.raw_replies[start:] + [str(e).encode() for e in dev.events]
    for needle in (key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)):
        for t in texts:
            assert needle not in t, t
    for blob in (snap["fb"], snap2["fb"], *(base64.b64encode(r).decode() for r in dev.log_raw())):
        assert key not in base64.b64decode(blob)


@pytest.mark.parametrize("how", ["clean", "power_cut"])
def test_restart_never_reaccepts_an_old_counter(bench, how):
    dev = bench.boot()
    key = dev.pair()
    for _ in range(4):
        dev.ok("info")
    rid, used, old = dev.signed("settings", {"volume": 2})
    dev.send_raw(old + b"\n")
    assert dev.take(rid)["ok"] is True
    rid_u, unused, never_sent = dev.signed("settings", {"volume": 1})  # signed, never sent
    utc = dev.ok("info")["utc"]
    if how == "clean":
        assert dev.stop() == 0
        dev = bench.boot()  # the RTC kept running in its state file
    else:
        os.killpg(dev.proc.pid, signal.SIGKILL)
        dev.kill()
        dev = bench.boot(start=utc + 1)
    dev.key = key
    dev.send_raw(old + b"\n")
    r = dev.take(rid)
    refused(r, "replay")
    floor = r["min"]
    assert floor > unused > used
    dev.send_raw(never_sent + b"\n")  # below the reservation: never valid after a reboot
    refused(dev.take(rid_u), "replay")
    dev.ctr = floor - 1
    assert dev.ok("settings", {})["volume"] == 2  # a fresh counter at min works
    r = dev.call("info", ctr=floor)  # and is then used up
    refused(r, "replay")
    assert r["min"] == floor + 1
    recs = logged(dev, 0)
    boots = [r[0] for r in recs if r[2] == logrec.BOOT]
    assert len(boots) == 2
    assert auth_fails([r for r in recs if r[0] > boots[1]]) == ["replay"] * 3


def test_sim_hooks_need_no_key(bench):
    """The simulator's hooks stand for hands on the device: no key, before or after pairing;
    nothing is logged as a refusal."""
    dev = bench.boot()
    for cmd, args in (
        ("sim.battery", {"mv": 3000}),
        ("sim.mains", {"on": False}),
        ("sim.jam", {"on": False}),
        ("sim.press", {"button": "taken", "hold_s": 0.2}),
        ("sim.advance", {"s": 5}),
    ):
        r = dev.request(cmd, args)
        assert r["ok"] is True, (cmd, r)
        assert "mac" not in r
    dev.pair()
    info = dev.ok("info")
    assert info["battery_mv"] == 3000 and info["mains"] is False
    assert dev.request("sim.mains", {"on": True})["ok"] is True
    assert dev.ok("info")["mains"] is True
    # a hook with a counter and a bogus mac is still just a hook (no key is asked for)
    line = b'{"id":77,"cmd":"sim.battery","args":{"mv":4000},"ctr":1,"mac":"%s"}' % (b"0" * 64)
    dev.send_raw(line + b"\n")
    assert dev.take(77)["ok"] is True
    assert dev.ok("info")["battery_mv"] == 4000
    assert auth_fails(logged(dev, 0)) == []


# -- found while writing these tests -----------------------------------------------------------


def test_a_refusal_flood_is_logged_within_its_budget(bench):
    """docs/protocol.md: refusals are counted, and logged 8 at once then one every 5 min."""
    dev = bench.boot()
    dev.pair()
    seq = last_seq(dev)
    for i in range(20):  # anyone on the link: no key needed
        dev.send_raw(b'{"id":%d,"cmd":"info"}\n' % (1000 + i))
    assert {r["err"] for r in dev.wait_replies(20)} == {"auth"}
    info = dev.ok("info")
    assert (info["refused"], info["refused_unlogged"]) == (20, 12)
    dev.advance(300)
    refused(dev.request("settings"), "auth")  # one more is logged 5 minutes later
    refused(dev.request("settings"), "auth")  # but not two
    info = dev.ok("info")
    assert (info["refused"], info["refused_unlogged"]) == (22, 13)
    assert refusals_logged(dev, seq) == ["auth"] * 9


class Precondition(Exception):
    pass


def need(cond: object, what: object) -> None:
    if not cond:
        raise Precondition(what)


def test_a_refusal_flood_after_a_boot_does_not_make_dose_records_volatile(bench):
    dose = bench.at("08:00")
    dev = bench.boot(start=dose - 4 * 3600)
    key = dev.pair()
    dev.ok("fill")
    need(dev.stop() == 0, "clean stop")
    dev = bench.boot(start=dose - 20)  # power back 20 s before the dose
    dev.key, dev.ctr = key, 5000
    dev.ok("monitor", {"on": True})
    for i in range(40):  # anyone on the link: no key needed
        dev.send_raw(b'{"id":%d,"cmd":"info"}\n' % (1000 + i))
    for r in dev.wait_replies(40):
        need(r["err"] == "auth", r)
    dev.advance(30)
    need(dev.request("sim.press", {"button": "taken"})["ok"] is True, "press")
    dev.poll(0.5)
    seqs = {e["ev"]: e["seq"] for e in dev.events if e["ev"] in ("due", "taken")}
    need(set(seqs) == {"due", "taken"}, dev.events)
    os.killpg(dev.proc.pid, signal.SIGKILL)  # a power cut right after the citizen took it
    dev.kill()
    dev = bench.boot(start=dose + 60)
    dev.key, dev.ctr = key, 10_000
    recs = dev.log()
    got = {logrec.NAMES[r[2]] for r in recs if r[3] == dose}
    assert {"due", "taken"} <= got, kinds(recs)[-12:]
