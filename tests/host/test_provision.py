"""`dosis provision wifi|mqtt|ntp|show` as a nurse runs them: the installed `dosis` executable
against the virtual dispenser over a real pseudo-terminal, a private Mosquitto on loopback and
two real (local) NTP servers. Secrets go in and never come out; bad input changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
import tlsca  # noqa: E402
from dosis import ops  # noqa: E402
from dosis.device import open_device  # noqa: E402
from dosis.keystore import Keystore  # noqa: E402
from dosis.simhost import VirtualDispenser  # noqa: E402
from dosisenv import clean_env  # noqa: E402
from mosq import MOSQUITTO, Broker, Peer  # noqa: E402
from test_sntp import NTPServer, free_udp_port  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto") or os.path.exists(MOSQUITTO)),
    reason="mosquitto is not installed (make test installs it)",
)

ROOT = Path(__file__).resolve().parents[2]
DOSIS = Path(sys.executable).parent / "dosis"
WIFI_PSK = "hemmelig-wifi-42"
MQTT_PASS = "hemmelig-mqtt-42"
BEHIND_S = 2 * 3600  # the virtual clock starts two hours slow: NTP must fix it


class World:
    def __init__(self, root: Path, port: str, device_id: str, broker: Broker, pki: tlsca.PKI):
        self.root, self.port, self.device_id = root, port, device_id
        self.broker, self.pki = broker, pki
        self.keys = Keystore(root / "keys.json")
        self.env = clean_env(root, DOSIS_PORT=port)

    def dosis(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DOSIS), *args], capture_output=True, text=True, env=self.env, timeout=60
        )

    def call(self, cmd: str, args: dict | None = None) -> dict:
        with open_device(self.port, keystore=self.keys, timeout=10) as dev:
            return dev.call(cmd, args or {})


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("prov")
    pki = tlsca.make_pki(root / "pki")
    broker = Broker(root, tls=pki).start()
    log = open(root / "fw.log", "wb")  # noqa: SIM115
    sim = VirtualDispenser(
        root / "state", speed=1, start_utc=int(time.time()) - BEHIND_S, stderr=log
    )
    port = sim.start()
    try:
        with open_device(port, keystore=Keystore(root / "keys.json"), timeout=10) as dev:
            did = ops.pair_virtual(dev)
            plan = ops.plan_push(dev, ops_doc())
            ops.push_schedule(
                dev,
                plan,
                lambda: open_device(port, keystore=Keystore(root / "keys.json"), timeout=10),
            )
        yield World(root, port, did, broker, pki)
    finally:
        sim.stop()
        broker.stop()
        log.close()


def ops_doc() -> dict:
    from dosis import schedules

    return schedules.load_schedule(ROOT / "examples" / "schedule.toml")


def one_line_error(r: subprocess.CompletedProcess[str], words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_wifi_password_goes_in_and_never_comes_back(w: World) -> None:
    pw = w.root / "wifi.txt"
    pw.write_text(WIFI_PSK + "\n")
    r = w.dosis("provision", "wifi", "--ssid", "Hjemmenet", "--password-file", str(pw), "--json")
    assert r.returncode == 0, r.stderr
    state = json.loads(r.stdout)
    assert state["wifi"] == {"ssid": "Hjemmenet", "psk_set": True}
    shown = w.dosis("provision", "show", "--json").stdout + w.dosis("info", "--json").stdout
    shown += json.dumps(w.call("net.get")) + json.dumps(w.call("info"))
    assert "Hjemmenet" in shown and WIFI_PSK not in shown


def test_mqtt_sets_the_uplink_key_and_the_device_talks_signed_to_the_broker(w: World) -> None:
    peer = Peer(w.broker)
    peer.subscribe(f"dosis/{w.device_id}/#", 1)
    pw = w.root / "mqtt.txt"
    pw.write_text(MQTT_PASS + "\n")
    r = w.dosis(
        "provision", "mqtt", "--broker", f"mqtts://127.0.0.1:{w.broker.tls_port}",
        "--ca", str(w.pki.ca_pem), "--user", w.device_id, "--password-file", str(pw),
        "--heartbeat", "10s", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    state = json.loads(r.stdout)
    assert state["mqtt"]["tls"] is True and state["mqtt"]["pass_set"] is True
    ukey = w.keys.uplink_key(w.device_id)
    assert ukey is not None
    text = r.stdout + json.dumps(w.call("net.get")) + json.dumps(w.call("info"))
    assert MQTT_PASS not in text and ukey.hex() not in text
    got = {t: p for t, p in peer.collect(3, timeout=20)}
    peer.close()
    assert got[f"dosis/{w.device_id}/status"] == b"online"
    events = got[f"dosis/{w.device_id}/events"]
    assert events[0] == 2  # the signed envelope
    import hashlib
    import hmac

    topic = f"dosis/{w.device_id}/events".encode()
    assert (
        hmac.new(ukey, topic + b"\n" + events[:-16], hashlib.sha256).digest()[:16] == events[-16:]
    )
    # provisioning again keeps the key (the gateway's enrolment stays valid)
    r = w.dosis(
        "provision", "mqtt", "--broker", f"mqtts://127.0.0.1:{w.broker.tls_port}",
        "--ca", str(w.pki.ca_pem),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert w.keys.uplink_key(w.device_id) == ukey


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["mqtt", "--broker", "http://x"], "mqtts://HOST"),
        (["mqtt", "--broker", "mqtts://127.0.0.1"], "needs --ca"),
        (["mqtt", "--broker", "mqtt://127.0.0.1"], "--insecure-lab"),
        (["mqtt", "--broker", "mqtts://127.0.0.1", "--ca", "/nonexistent"], "cannot be read"),
        (["mqtt", "--broker", "mqtt://127.0.0.1", "--insecure-lab", "--heartbeat", "2s"], "10s"),
        (["wifi", "--ssid", "Hjem", "--password-file", "/nonexistent"], "cannot be read"),
        (["ntp", "pool.ntp.org"], "IPv4"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(w: World, args: list[str], words: str) -> None:
    before = w.call("net.get")
    one_line_error(w.dosis("provision", *args), words)
    after = w.call("net.get")
    assert {k: before[k] for k in ("wifi", "mqtt", "ntp")} == {
        k: after[k] for k in ("wifi", "mqtt", "ntp")
    }


def test_a_ca_the_device_cannot_load_is_refused_and_changes_nothing(w: World) -> None:
    bad = w.root / "bad-ca.pem"
    bad.write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    before = w.call("net.get")
    r = w.dosis("provision", "mqtt", "--broker", "mqtts://127.0.0.1:8883", "--ca", str(bad))
    one_line_error(r, "not a certificate this device can load")
    assert w.call("net.get")["mqtt"] == before["mqtt"]


def test_short_wifi_password_is_refused_by_the_device_too(w: World) -> None:
    before = w.call("net.get")
    with open_device(w.port, keystore=w.keys, timeout=10) as dev:
        with pytest.raises(Exception, match="8..63"):
            dev.call("net.wifi", {"ssid": "Hjem", "psk": "kort"})
        with pytest.raises(Exception, match="insecure"):
            dev.call("net.mqtt", {"host": "1.2.3.4", "port": 1883, "tls": False, "ukey": "0" * 64})
    assert w.call("net.get")["wifi"] == before["wifi"]


def test_ntp_one_server_is_held_two_agreeing_servers_set_the_clock(w: World) -> None:
    hosts = ["127.0.0.1", "127.0.0.2"]
    port = free_udp_port(hosts)
    servers = [NTPServer(h, port) for h in hosts]
    try:
        info = w.call("info")
        assert abs(info["utc"] - (time.time() - BEHIND_S)) < 120  # still two hours slow
        r = w.dosis("provision", "ntp", hosts[0], "--ntp-port", str(port))
        assert r.returncode == 0, r.stderr
        time.sleep(3)
        info = w.call("info")
        assert info["utc"] < time.time() - BEHIND_S / 2, "one server alone moved the clock"
        assert servers[0].requests >= 1
        r = w.dosis("provision", "ntp", *hosts, "--ntp-port", str(port))
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            info = w.call("info")
            if abs(info["utc"] - time.time()) < 5:
                break
            time.sleep(0.5)
        assert abs(info["utc"] - time.time()) < 5, info
        assert info["time_source"] == "ntp"
    finally:
        for s in servers:
            s.close()


def test_on_a_gateway_a_log_pull_by_cable_does_not_acknowledge(w: World) -> None:
    # The device has a broker since test_mqtt_... (and no gateway acks it here): a nurse's
    # `dosis log pull` must not let it forget records the care team has not received.
    before = w.call("info")["log"]
    assert before["acked"] < before["last"]
    r = w.dosis("log", "pull", "-o", str(w.root / "log.csv"))
    assert r.returncode == 0, r.stderr
    assert "not acknowledged here" in r.stderr
    assert w.call("info")["log"]["acked"] == before["acked"]
    reply = w.call("log.ack", {"seq": before["last"]})
    assert reply == {"acked": before["acked"], "owner": "gateway"}


def test_per_device_credentials_and_topic_acl_at_the_broker(w: World) -> None:
    # A broker as a municipality runs it: no anonymous access, one account per dispenser, and
    # an ACL that lets a dispenser write only its own topics and read only its own acks.
    pki = w.pki
    root = w.root / "authbroker"
    root.mkdir()
    acl = [
        "user gateway",
        "topic readwrite dosis/#",
        "pattern write dosis/%u/events",
        "pattern write dosis/%u/health",
        "pattern write dosis/%u/status",
        "pattern read dosis/%u/ack",
    ]
    b = Broker(root, tls=pki, users={w.device_id: MQTT_PASS, "gateway": "gw-pass"}, acl=acl)
    b.start()
    try:
        gw = Peer(b, "gw", user="gateway", password="gw-pass", tls=True)
        gw.subscribe("dosis/#", 1)
        wrong = w.root / "wrong.txt"
        wrong.write_text("not-the-password\n")
        url = f"mqtts://127.0.0.1:{b.tls_port}"
        args = ["provision", "mqtt", "--broker", url, "--ca", str(pki.ca_pem)]
        r = w.dosis(*args, "--user", w.device_id, "--password-file", str(wrong))
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            up = w.call("net.get")["uplink"]
            if up["error"] and "not authori" in up["error"]:
                break
            time.sleep(0.3)
        assert "not authori" in (up["error"] or ""), up  # refused: the log waits, nothing lost
        assert up["connected"] is False
        right = w.root / "right.txt"
        right.write_text(MQTT_PASS + "\n")
        r = w.dosis(*args, "--user", w.device_id, "--password-file", str(right))
        assert r.returncode == 0, r.stderr
        got = gw.collect(2, timeout=20)
        topics = {t for t, _ in got}
        assert f"dosis/{w.device_id}/status" in topics or f"dosis/{w.device_id}/events" in topics
        # the dispenser's account cannot write another device's topic or read others' acks
        other = Peer(b, "intruder", user=w.device_id, password=MQTT_PASS, tls=True)
        other.publish("dosis/someone-else/events", b"x", qos=1)
        other.close()
        time.sleep(0.5)
        leaked = [t for t, _ in gw.messages.queue if t.startswith("dosis/someone-else/")]
        assert not leaked, leaked
        gw.close()
    finally:
        b.stop()
