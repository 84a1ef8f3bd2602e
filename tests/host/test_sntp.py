"""dispenser.sntp on the real MicroPython VM against NTP servers in Python threads on loopback.

Each server (`NTPServer`) answers on 127.0.0.N:PORT with a configurable offset from the host's
clock, stratum, or a misbehaviour (garbage, a wrong originate timestamp, silence...).
tests/mp/sntp_probe.py runs sntp.sync with a real dosiscore.timesrc.StepFilter behind it, as
App.offer_time does, and a 10 ms "dose loop" that measures how long the loop was held.
"""

import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
import mprobe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "mp" / "sntp_probe.py"
NTP_DELTA = 2208988800
MAX_GAP_MS = 50  # the probe polls every 20 ms; nothing in it may hold the loop longer
TIMEOUT_MS = 400  # per query, in these tests (the firmware's default is 2000)


def ntp_ts(t):
    """NTP 64-bit timestamp for Unix time t (float), modulo the era."""
    secs = int(t) + NTP_DELTA
    return struct.pack("!II", secs & 0xFFFFFFFF, int((t % 1) * 2**32))


class NTPServer:
    """A tiny SNTP server: `offset` seconds off the host's clock; `behaviour` misbehaves."""

    def __init__(self, host, port, offset=0, stratum=2, behaviour="ok"):
        self.host, self.port = host, port
        self.offset, self.stratum, self.behaviour = offset, stratum, behaviour
        self.requests = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def reply(self, req):
        b = self.behaviour
        now = time.time() + self.offset
        li, vn, mode, stratum = 0, 4, 4, self.stratum
        origin = req[40:48]
        xmit = ntp_ts(now)
        if b == "garbage":
            return os.urandom(48)
        if b == "short":
            return b"\x24" * 47
        if b == "leap3":
            li = 3
        elif b == "mode3":
            mode = 3
        elif b == "version2":
            vn = 2
        elif b == "v3":
            vn = 3
        elif b == "kod":
            stratum = 0
        elif b == "stratum16":
            stratum = 16
        elif b == "wrong_origin":
            origin = b"\x00" * 7 + b"\x01"  # not the client's nonce
        elif b == "zero_xmit":
            xmit = bytes(8)
        head = bytes([li << 6 | vn << 3 | mode, stratum, 6, 0xEC])
        return head + bytes(8) + b"LOCL" + ntp_ts(now - 10) + origin + ntp_ts(now) + xmit

    def _loop(self):
        while not self._stop:
            try:
                req, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            self.requests += 1
            if self.behaviour == "silent" or len(req) < 48:
                continue
            if self.behaviour == "wrong_then_ok":  # a stale answer first, then the real one
                self.behaviour = "wrong_origin"
                self.sock.sendto(self.reply(req), addr)
                self.behaviour = "ok"
            self.sock.sendto(self.reply(req), addr)

    def close(self):
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


def free_udp_port(hosts):
    """A UDP port free on every one of `hosts`."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for h in hosts[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as t:
                    t.bind((h, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free UDP port")


HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


@pytest.fixture
def servers():
    """servers(spec, ...): start one NTPServer per (offset, behaviour[, stratum]) on
    127.0.0.1, .2, ... sharing one port; returns (port, [server, ...])."""
    made = []

    def start(*specs):
        port = free_udp_port(HOSTS[: max(1, len(specs))])
        for i, spec in enumerate(specs):
            offset, behaviour, *rest = spec
            made.append(NTPServer(HOSTS[i], port, offset, *(rest or [2]), behaviour=behaviour))
        return port, made

    yield start
    for s in made:
        s.close()


def probe(port, mode, rounds, *hosts, timeout_ms=TIMEOUT_MS):
    lines = mprobe.run(PROBE, port, mode, rounds, timeout_ms, *hosts)
    res = {"offers": [], "synced": [], "lines": lines}
    for line in lines:
        w = line.split()
        if w[0] == "offer":
            res["offers"].append((w[1], int(w[2]), w[3]))
        elif w[0] == "synced":
            res["synced"].append(int(w[1]))
        elif w[0] == "fds":
            res["fds"] = (int(w[1]), int(w[2]))
        elif w[0] == "offset":
            res["offset"] = None if w[1] == "None" else int(w[1])
        else:
            res[w[0]] = int(w[1])
    assert res["gap"] < MAX_GAP_MS, lines
    assert res["fds"][0] == res["fds"][1], lines  # every socket closed
    return res


def near(a, b, tol=2):
    return abs(a - b) <= tol


def test_small_drift_is_applied_at_once(servers):
    port, (srv,) = servers((0, "ok"))
    r = probe(port, -30, 1, "127.0.0.1")  # the device is 30 s slow
    assert [(o, near(d, 30), v) for o, d, v in r["offers"]] == [("127.0.0.1", True, "applied")]
    assert r["synced"] == [1] and near(r["clock"], 0), r["lines"]
    assert srv.requests == 1
    print("small drift: max loop gap", r["gap"], "ms, wall", r["ms"], "ms")


def test_one_server_two_hours_off_is_held_even_when_asked_again(servers):
    port, _ = servers((7200, "ok"))
    r = probe(port, 0, 3, "127.0.0.1")
    assert [v for _, _, v in r["offers"]] == ["held"] * 3, r["lines"]
    assert r["synced"] == [0, 0, 0] and near(r["clock"], 0), r["lines"]


def test_two_servers_agreeing_on_two_hours_are_applied(servers):
    port, _ = servers((7200, "ok"), (7201, "ok", 1))
    r = probe(port, 0, 1, "127.0.0.1", "127.0.0.2")
    assert [(o, v) for o, _, v in r["offers"]] == [
        ("127.0.0.1", "held"),
        ("127.0.0.2", "applied"),
    ], r["lines"]
    assert r["synced"] == [1] and near(r["clock"], 7201), r["lines"]


def test_device_two_hours_slow_is_fixed_by_two_servers(servers):
    port, _ = servers((0, "ok"), (0, "ok"))
    r = probe(port, -7200, 2, "127.0.0.1", "127.0.0.2")
    assert [v for _, _, v in r["offers"]] == ["held", "applied", "applied", "applied"]
    assert r["synced"] == [1, 2] and near(r["clock"], 0), r["lines"]


def test_two_servers_disagreeing_apply_nothing(servers):
    port, _ = servers((7200, "ok"), (-7200, "ok"), (7210, "ok"))
    r = probe(port, 0, 1, *HOSTS)
    assert [v for _, _, v in r["offers"]] == ["held"] * 3, r["lines"]
    assert r["synced"] == [0] and near(r["clock"], 0), r["lines"]


@pytest.mark.parametrize(
    "behaviour",
    ["garbage", "short", "leap3", "mode3", "version2", "kod", "stratum16", "zero_xmit"],
)
def test_bad_replies_are_refused_at_once(servers, behaviour):
    port, (srv,) = servers((-5, behaviour))
    r = probe(port, 0, 1, "127.0.0.1")
    assert r["offers"] == [] and r["synced"] == [0], r["lines"]
    assert srv.requests == 1
    if behaviour != "garbage":  # random bytes may come from "another request": then a timeout
        assert r["ms"] < TIMEOUT_MS, r["lines"]


@pytest.mark.parametrize("behaviour", ["silent", "wrong_origin"])
def test_no_answer_or_a_wrong_originate_times_out(servers, behaviour):
    port, (srv,) = servers((-5, behaviour))
    r = probe(port, 0, 1, "127.0.0.1")
    assert r["offers"] == [] and r["synced"] == [0], r["lines"]
    assert TIMEOUT_MS <= r["ms"] < TIMEOUT_MS + 300, r["lines"]
    print(behaviour, "max loop gap", r["gap"], "ms")


def test_a_stale_answer_is_skipped_for_the_real_one(servers):
    port, _ = servers((-20, "wrong_then_ok"))
    r = probe(port, 0, 1, "127.0.0.1")
    assert [(near(d, -20), v) for _, d, v in r["offers"]] == [(True, "applied")], r["lines"]


def test_version_3_and_a_bad_server_before_a_good_one(servers):
    port, _ = servers((0, "silent"), (40, "v3", 1))
    r = probe(port, 0, 1, "127.0.0.1", "127.0.0.2")
    assert [(o, near(d, 40), v) for o, d, v in r["offers"]] == [("127.0.0.2", True, "applied")]
    assert near(r["clock"], 40), r["lines"]


def test_nothing_listening_is_a_timeout_not_an_error():
    port = free_udp_port(["127.0.0.1"])
    r = probe(port, 0, 1, "127.0.0.1")
    assert r["offers"] == [] and r["synced"] == [0], r["lines"]


@pytest.mark.parametrize("offset", [0, 86400 * 365 * 15])  # today, and after 2036 (NTP era 1)
def test_query_converts_the_timestamp(servers, offset):
    port, _ = servers((offset + 0.6, "ok"))  # rounded to the nearest second
    r = probe(port, "query", 1, "127.0.0.1")
    assert r["offset"] is not None and near(r["offset"], offset + 1, 1), r["lines"]
