"""dispenser.uplink on the real MicroPython VM, a private mosquitto, and a CPython gateway.

tests/mp/uplink_probe.py fills a real DoseLog and runs the uplink; its "stats" lines report the
log's durable and acked pointers and the uplink's counters. The `Gateway` here subscribes to
dosis/+/events, decodes the envelopes (checking every record's CRC), stores records by seq and,
unless told not to, answers each message with the highest contiguous seq it holds.
"""

import os
import queue
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
from mosq import MOSQUITTO, Broker, Peer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT / "firmware"))
from dosiscore import logrec  # noqa: E402

MICROPYTHON = Path(sys.executable).parent / "micropython"
PROBE = ROOT / "tests" / "mp" / "uplink_probe.py"
MAX_GAP_MS = 100

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto") or os.path.exists(MOSQUITTO)),
    reason="mosquitto is not installed (.ci/run installs it)",
)


class Gateway:
    """Collects records from dosis/+/events; acks the highest contiguous seq if `acking`."""

    def __init__(self, broker, acking=True, drop_first=0):
        self.broker = broker
        self.acking = acking
        self.drop_first = drop_first  # messages to lose (a gateway that was down meanwhile)
        self.records = {}  # seq -> 24 bytes
        self.covered = set()  # seqs stored or declared absent by an envelope's [from, next)
        self.received = []  # (from, next, [seqs]) per message, in order
        self.bad = []
        self.peer = None
        self._stop = False
        self._lock = threading.Lock()
        self._connect()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _connect(self):
        self.peer = Peer(self.broker, "gateway")
        self.peer.subscribe("dosis/+/events", qos=1)

    def contiguous(self):
        n = 0
        while n + 1 in self.covered:
            n += 1
        return n

    def _take(self, topic, payload):
        if self.drop_first:
            self.drop_first -= 1
            return
        ver, n, frm, nxt = struct.unpack_from("<BBII", payload)
        if ver != 1 or len(payload) != 10 + 24 * n:
            self.bad.append(payload)
            return
        seqs = []
        for i in range(n):
            off = 10 + 24 * i
            seq = logrec.check(payload, off)
            if seq < 0 or not frm <= seq < nxt:
                self.bad.append(payload)
                return
            seqs.append(seq)
            self.records[seq] = payload[off : off + 24]
        with self._lock:
            self.received.append((frm, nxt, seqs))
            self.covered.update(range(frm, nxt))
        if self.acking:
            device = topic.split("/")[1]
            self.peer.publish(f"dosis/{device}/ack", str(self.contiguous()))

    def _loop(self):
        while not self._stop:
            try:
                topic, payload = self.peer.messages.get(timeout=0.1)
            except queue.Empty:
                if not self.peer._thread.is_alive():  # the broker went away: reconnect
                    try:
                        self._connect()
                    except (OSError, RuntimeError, queue.Empty):
                        time.sleep(0.1)
                continue
            try:
                self._take(topic, payload)
            except OSError:
                pass  # the ack is lost with the connection; the device resends

    def seqs_received(self):
        with self._lock:
            return [s for _, _, seqs in self.received for s in seqs]

    def close(self):
        self._stop = True
        self._thread.join(timeout=2)
        self.peer.close()


class Probe:
    """The probe in a micropython subprocess; `stats()` is its latest stats line."""

    def __init__(
        self, broker, logdir, n, interval_ms=0, resend_s=300, backoff=(0.2, 1), ukey=None
    ):
        env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT / 'firmware'}")
        args = [broker.port, logdir, n, interval_ms, resend_s, backoff[0], backoff[1]]
        if ukey is not None:
            args.append(ukey.hex())
        self.proc = subprocess.Popen(
            [str(MICROPYTHON), str(PROBE), *map(str, args)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self.last = None
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            w = line.split()
            if w and w[0] == "stats":
                names = ("durable", "acked", "connects", "published", "rejected", "resends", "gap")
                self.last = dict(zip(names, map(int, w[1:]), strict=True))

    def wait(self, cond, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.last
            if s is not None and cond(s):
                return s
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(
            f"condition not met in {timeout} s; last {self.last}; output {self.lines[-20:]}"
        )

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.kill()


@pytest.fixture
def env(broker, tmp_path):
    made = []

    def start(n, acking=True, drop_first=0, **kw):  # kw: Probe's (ukey=... signs, v2)
        gw = Gateway(broker, acking, drop_first)
        logdir = tmp_path / f"dev{len(made)}"
        logdir.mkdir()
        p = Probe(broker, logdir, n, **kw)
        made.append((gw, p))
        return gw, p

    yield start
    for gw, p in made:
        p.kill()
        gw.close()


def test_200_records_arrive_and_acks_advance_the_pointer(env):
    t0 = time.monotonic()
    gw, p = env(200)
    s = p.wait(lambda s: s["acked"] == 200, timeout=15)
    assert s["durable"] == 200 and s["connects"] == 1 and s["rejected"] == 0, s
    assert sorted(gw.records) == list(range(1, 201)) and not gw.bad
    assert gw.contiguous() == 200
    # 200 records in batches of 8: 25 messages; nothing sent twice on a healthy link
    assert len(gw.seqs_received()) == 200, len(gw.seqs_received())
    assert s["gap"] < MAX_GAP_MS, s
    print(f"200 records acked in {time.monotonic() - t0:.2f} s, loop gap {s['gap']} ms")


def test_broker_killed_mid_stream_loses_nothing(env, broker):
    gw, p = env(200, interval_ms=15, resend_s=2)  # 200 records over ~3 s
    p.wait(lambda s: s["acked"] >= 40, timeout=10)
    broker.kill()  # SIGKILL mid-stream
    time.sleep(0.5)
    broker.start()  # same port, same persistence directory
    s = p.wait(lambda s: s["acked"] == 200, timeout=25)
    assert s["connects"] >= 2, s
    got = gw.seqs_received()
    assert set(got) == set(range(1, 201)), sorted(set(range(1, 201)) - set(got))
    assert not gw.bad
    assert s["gap"] < MAX_GAP_MS, s
    print(f"after a broker kill: {len(got)} records received for 200, {s}")


def test_no_gateway_ack_keeps_the_pointer_and_a_reconnect_resends_from_1(env, broker):
    gw, p = env(20, acking=False)
    p.wait(lambda s: s["published"] == 3, timeout=10)  # 8 + 8 + 4 records PUBACKed
    time.sleep(0.5)
    assert p.last["acked"] == 0, p.last
    assert gw.seqs_received() == list(range(1, 21))
    # A client with the device's id takes its session over: the broker drops the device.
    taker = Peer(broker, "dosis-probe")
    time.sleep(0.1)  # let its reader thread start (closing at once races Peer's settimeout)
    taker.close()
    s = p.wait(lambda s: s["connects"] == 2 and s["published"] == 6, timeout=10)
    assert s["acked"] == 0, s
    deadline = time.monotonic() + 5
    while len(gw.seqs_received()) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    got = gw.seqs_received()
    assert got[20:] == list(range(1, 21)), got  # everything again, from 1
    assert gw.received[3][0] == 1


def test_messages_lost_past_the_broker_are_resent_after_resend_after(env):
    # The broker PUBACKed everything but the gateway missed the first two messages: its acks
    # stay at 0, and after resend_after (1 s) the device sends again from 1 on the same link.
    gw, p = env(20, drop_first=2, resend_s=1)
    s = p.wait(lambda s: s["acked"] == 20, timeout=10)
    assert s["connects"] == 1 and s["resends"] >= 1, s
    assert sorted(gw.records) == list(range(1, 21))


def test_forged_and_garbage_acks_are_ignored(env, broker):
    gw, p = env(10, acking=False)
    p.wait(lambda s: s["published"] == 2, timeout=10)
    forger = Peer(broker, "forger")
    bad = [b"11", b"999", b"abc", b"", b"-1", b"1e3", b'{"seq": "5"}', b"{seq: 5}", b"\xff\xfe"]
    bad += [b'{"seq": 11}', b"[5]", b"5" * 40]
    for payload in bad:
        forger.publish("dosis/probe/ack", payload, qos=1)
    s = p.wait(lambda s: s["rejected"] == len(bad), timeout=5)
    assert s["acked"] == 0, s
    forger.publish("dosis/probe/ack", b'{"seq": 4}', qos=1)
    s = p.wait(lambda s: s["acked"] == 4, timeout=5)
    forger.publish("dosis/probe/ack", b"10", qos=1)
    s = p.wait(lambda s: s["acked"] == 10, timeout=5)
    forger.publish("dosis/probe/ack", b"3", qos=1)  # an ack never goes back
    time.sleep(0.5)
    assert p.last["acked"] == 10 and p.last["rejected"] == len(bad), p.last
    forger.close()


def test_signed_uplink_takes_only_acks_signed_with_its_key_for_its_own_topic(env, broker):
    # The device side of the v2 contract against the gateway's own codec (dosis.gateway.wire):
    # two implementations of one wire format, checked against each other.
    from dosis.gateway import wire

    key = bytes(range(32))
    watcher = Peer(broker, "watcher")
    watcher.subscribe("dosis/probe/events", qos=1)
    gw, p = env(10, acking=False, ukey=key)
    p.wait(lambda s: s["published"] == 2, timeout=10)
    seqs = []
    for topic, payload in watcher.collect(2, timeout=5):
        frm, nxt, records = wire.decode_events(topic, payload, key)  # raises if forged
        seqs += [r.seq for r in records]
        with pytest.raises(wire.WireError):
            wire.decode_events(topic, payload, bytes(32))  # another device's key
        with pytest.raises(wire.WireError):
            wire.decode_events("dosis/other/events", payload, key)  # misrouted
    assert sorted(seqs) == list(range(1, 11))
    watcher.close()
    forger = Peer(broker, "forger")
    _, good4 = wire.encode_ack(key, "probe", 4)
    bad = [
        b"10",  # unsigned, as a v1 gateway would ack
        b'{"seq": 10}',
        wire.encode_ack(bytes(32), "probe", 10)[1],  # the wrong key
        wire.encode_ack(key, "other", 10)[1],  # signed for another device's topic
        good4.replace(b'"seq":4', b'"seq":9'),  # a changed seq under a valid mac
        good4[:-3] + b'0"}',  # a changed mac
        wire.encode_ack(key, "probe", 11)[1],  # above what was sent
    ]
    for payload in bad:
        forger.publish("dosis/probe/ack", payload, qos=1)
    s = p.wait(lambda s: s["rejected"] == len(bad), timeout=5)
    assert s["acked"] == 0, s
    forger.publish("dosis/probe/ack", good4, qos=1)
    p.wait(lambda s: s["acked"] == 4, timeout=5)
    forger.close()


def test_online_retained_and_last_will_offline_on_sigkill(env, broker):
    gw, p = env(5)
    p.wait(lambda s: s["acked"] == 5, timeout=10)
    watcher = Peer(broker, "watcher")
    watcher.subscribe("dosis/+/status")
    assert watcher.collect(1, timeout=3) == [("dosis/probe/status", b"online")]  # retained
    p.kill()  # SIGKILL: no DISCONNECT
    assert watcher.collect(1, timeout=5) == [("dosis/probe/status", b"offline")]
    watcher.close()
