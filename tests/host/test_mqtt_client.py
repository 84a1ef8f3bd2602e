"""dispenser.mqtt on the real MicroPython VM against a private mosquitto (tests/host/mosq.py).

Each test runs tests/mp/mqtt_probe.py with one scenario and reads its lines as they come, acting
on the broker (kill, freeze, restart) or publishing from a CPython peer in between. Every
scenario also runs a 10 ms "dose loop" and ends with "gap N": the longest the client held the
event loop, which must stay under 100 ms whatever the network does.
"""

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
from mosq import MOSQUITTO, Broker, Peer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = Path(sys.executable).parent / "micropython"
PROBE = ROOT / "tests" / "mp" / "mqtt_probe.py"
MAX_GAP_MS = 100

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto") or os.path.exists(MOSQUITTO)),
    reason="mosquitto is not installed (.ci/run installs it)",
)


class Probe:
    """The probe in a micropython subprocess, its stdout lines in a queue."""

    def __init__(self, broker, scenario, flags):
        self.flags = flags
        self.lines = []
        self._q = queue.Queue()
        env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT / 'firmware'}")
        self.proc = subprocess.Popen(
            [str(MICROPYTHON), str(PROBE), str(broker.port), scenario, str(flags)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def expect(self, word, timeout=10.0):
        """The next line starting with `word`, split into words; fails on 'error' or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {word!r} within {timeout} s; output so far: {self.lines}")
            if line is None:
                pytest.fail(f"probe ended before {word!r}: {self.lines}")
            self.lines.append(line)
            if line.startswith("error") or line.startswith("Traceback"):
                pytest.fail(f"probe failed: {self.lines}")
            if line.split()[0] == word:
                return line.split()

    def flag(self, name):
        (self.flags / name).touch()

    def finish(self, timeout=15.0):
        """Wait for the end; check and return the loop's longest gap in ms."""
        gap = int(self.expect("gap", timeout)[1])
        self.proc.wait(timeout=5)
        assert gap < MAX_GAP_MS, self.lines
        return gap

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
def run(broker, tmp_path):
    probes = []

    def start(scenario):
        p = Probe(broker, scenario, tmp_path)
        probes.append(p)
        return p

    yield start
    for p in probes:
        p.kill()


@pytest.fixture
def peer(broker):
    p = Peer(broker)
    yield p
    p.close()


def test_qos0_and_qos1_publish_arrive(run, peer):
    peer.subscribe("dosis/basic/#")
    p = run("basic")
    assert p.expect("connected") == ["connected", "False"]  # clean session: nothing kept
    p.expect("puback")
    assert p.expect("done") == ["done", "False"]
    p.finish()
    got = peer.collect(2, timeout=5)
    assert got == [("dosis/basic/q0", b"hello0"), ("dosis/basic/q1", b"hello1")]


def test_100_qos1_publishes_in_flight(run, peer):
    peer.subscribe("dosis/inflight")
    p = run("inflight")
    words = p.expect("acked", timeout=20)
    assert words[1:4] == ["100", "pending", "0"], p.lines  # each ack woke its own publish
    p.finish()
    got = peer.collect(100, timeout=5)
    assert sorted(m for _, m in got) == sorted(b"m%d" % i for i in range(100))


def test_subscribe_receives_qos0_and_qos1(run, broker):
    p = run("subscribe")
    assert p.expect("subscribed") == ["subscribed", "1"]
    outside = Peer(broker, "outside")
    outside.publish("dosis/sub/a", "one", qos=1)
    outside.publish("dosis/sub/b", "two", qos=0)
    outside.close()
    assert p.expect("msg") == ["msg", "dosis/sub/a", "one"]
    assert p.expect("msg") == ["msg", "dosis/sub/b", "two"]
    p.finish()


def test_broker_killed_mid_stream_fails_fast_without_holding_the_loop(run, broker):
    p = run("kill")
    p.expect("streaming")
    broker.kill()
    words = p.expect("failed")
    # MQTTError (connection lost/not connected) or TimeoutError, within the 1 s timeout
    assert words[1] in ("MQTTError", "TimeoutError"), p.lines
    assert int(words[2]) <= 1100, p.lines
    assert words[3] == "False", p.lines  # the client knows it is disconnected
    again = p.expect("again")
    assert again[1] == "MQTTError" and int(again[2]) < 50, p.lines
    print("kill:", words, again, "max loop gap", p.finish(), "ms")


def test_silent_broker_times_out_and_keepalive_declares_it_dead(run, broker):
    p = run("stall")
    p.expect("connected")
    broker.freeze()
    p.flag("frozen")
    words = p.expect("timeout", timeout=5)
    assert words[1] == "TimeoutError" and 950 <= int(words[2]) <= 1200, p.lines
    dead = p.expect("dead", timeout=10)
    # keepalive 2 s: a PINGREQ within ~1.5 s of silence, declared dead 2 s later
    assert dead[1] == "True" and int(dead[2]) <= 5000, p.lines
    assert "PINGRESP" in " ".join(dead[3:]), p.lines
    print("stall:", words, dead, "max loop gap", p.finish(), "ms")


def test_reconnect_after_broker_restart_keeps_the_session(run, broker):
    p = run("reconnect")
    assert p.expect("connected") == ["connected", "False"]
    p.expect("subscribed")
    broker.stop()  # SIGTERM: mosquitto writes its persistence file
    p.expect("lost")
    p.expect("refused")  # a connect while the broker is down fails, and does not hang
    broker.start()  # same port, same persistence
    outside = Peer(broker, "outside")
    outside.subscribe("dosis/rc/up")
    outside.publish("dosis/rc/cmd", "while-away", qos=1)  # queued for the persistent session
    p.flag("go")
    words = p.expect("reconnected")
    assert words[1] == "True", p.lines  # session present: restored from persistence
    assert p.expect("msg") == ["msg", "dosis/rc/cmd", "while-away"]
    p.expect("puback")
    p.finish()
    assert outside.collect(1, timeout=5) == [("dosis/rc/up", b"back")]
    outside.close()


def test_last_will_on_drop_and_not_on_disconnect(run, peer):
    peer.subscribe("dosis/will/#")
    p = run("will_clean")
    p.expect("done")
    p.finish()
    assert peer.collect(1, timeout=0.5) == []
    p = run("will")
    p.expect("connected")
    p.kill()  # SIGKILL: the socket closes without DISCONNECT
    assert peer.collect(1, timeout=5) == [("dosis/will/status", b"offline")]


def test_oversized_frame_disconnects_without_allocating_it(run, broker, peer):
    peer.subscribe("dosis/big/#")
    p = run("oversized")
    p.expect("subscribed")
    peer.publish("dosis/big", b"x" * 65536)
    words = p.expect("dropped")
    assert words[1] == "[]", p.lines  # never delivered
    assert "exceeds" in " ".join(words), p.lines
    p.expect("puback")  # the loop ran on, and the client connects again
    p.finish()
    assert ("dosis/big/after", b"still here") in peer.collect(2, timeout=5)
