"""The gateway against a real mosquitto, a real SQLite file, a real SMTP server and a real HTTP
server: exactly-once ingest, signed acks after commit, garbage, a broker restart and a gateway
down, two gateways on one database, alert delivery and acknowledgement."""

import hashlib
import hmac
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from dosis.gateway import wire
from dosis.gateway.db import open_db
from dosis.gateway.service import Gateway
from dosiscore import logrec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mosq import MOSQUITTO, Broker, Peer  # noqa: E402
from smtpsink import SmtpSink  # noqa: E402
from webhooksink import WebhookSink  # noqa: E402

pytestmark = pytest.mark.skipif(
    not os.path.exists(MOSQUITTO), reason="mosquitto is not installed (make sysdeps)"
)

KEYS = {f"d-{i}": hashlib.sha256(b"k%d" % i).digest() for i in range(1, 6)}


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def dburl(tmp_path):
    return f"sqlite:///{tmp_path / 'fleet.db'}"


def enroll(url, webhook=None, email=None):
    db = open_db(url)
    db.add_responder("team", webhook=webhook, email=email or "team@x.test", target_min=10)
    for i, (dev, key) in enumerate(KEYS.items()):
        db.enroll(dev, f"c-{i + 1:04d}", "team", key)
    db.close()


def gateway(broker, url, cid="gw-1", **kw):
    lines = []
    g = Gateway(f"mqtt://{broker.host}:{broker.port}", url, client_id=cid, log=lines.append, **kw)
    g.lines = lines
    return g.start()


class AckWatcher:
    """A paho client on dosis/+/ack that verifies every ack's mac (as a device does) and notes
    how many rows were committed when it arrived."""

    def __init__(self, broker, dburl):
        self.acks = queue.Queue()
        self.best = {}
        self.db = open_db(dburl)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ack-watcher")
        self.c.on_message = self._msg
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.on_connect = lambda c, *a: c.subscribe("dosis/+/ack", 1)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        assert done.wait(5)

    def _msg(self, client, userdata, msg):
        dev = msg.topic.split("/")[1]
        body, _, tail = msg.payload.rpartition(b',"mac":"')
        mac = hmac.new(KEYS[dev], msg.topic.encode() + b"\n" + body, hashlib.sha256)
        ok = tail == mac.digest()[:16].hex().encode() + b'"}'
        seq = int(body[len(b'{"seq":') :])
        stored = self.db.q(
            "SELECT COUNT(*) FROM events WHERE device_id = ? AND seq <= ?", (dev, seq)
        )[0][0]
        self.acks.put((dev, seq, ok, stored))
        self.best[dev] = max(self.best.get(dev, 0), seq)

    def wait_for(self, want, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.best.get(d, 0) >= s for d, s in want.items()):
                return True
            time.sleep(0.05)
        return False

    def drain(self):
        out = []
        while True:
            try:
                out.append(self.acks.get_nowait())
            except queue.Empty:
                return out

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()
        self.db.close()


def records(first, n, kind=logrec.TAKEN, **kw):
    return b"".join(
        wire.record_bytes(s, kind, utc=1_800_000_000 + s, occ=1_800_000_000 + s, **kw)
        for s in range(first, first + n)
    )


def publish_batch(peer, dev, frm, n, raw=None):
    topic, payload = wire.encode_events(KEYS[dev], dev, frm, frm + n, raw or records(frm, n))
    peer.publish(topic, payload, qos=1)


def test_exactly_once_and_signed_acks_after_commit(broker, dburl):
    enroll(dburl)
    g = gateway(broker, dburl)
    w = AckWatcher(broker, dburl)
    p = Peer(broker, "dev-1")
    try:
        publish_batch(p, "d-1", 1, 5)
        publish_batch(p, "d-1", 1, 5)  # a resend: the device missed the ack
        publish_batch(p, "d-1", 6, 3)
        assert w.wait_for({"d-1": 8})
        time.sleep(0.3)
        acks = w.drain()
        assert [a[1] for a in acks] == [5, 5, 8]
        assert all(ok for _, _, ok, _ in acks), "every ack's mac verifies with the device key"
        assert all(stored == seq for _, seq, _, stored in acks), "acked rows were committed"
        db = open_db(dburl)
        assert [e["seq"] for e in db.events("d-1")] == list(range(1, 9))
    finally:
        p.close()
        w.close()
        g.stop()


def test_garbage_never_stops_the_gateway(broker, dburl):
    enroll(dburl)
    g = gateway(broker, dburl)
    w = AckWatcher(broker, dburl)
    p = Peer(broker, "evil")
    key = KEYS["d-1"]
    t, good = wire.encode_events(key, "d-1", 1, 3, records(1, 2))
    ht, health = wire.encode_health(key, "d-1", wire.health_fields())
    wrong_version = bytearray(good)
    wrong_version[0] = 3
    cases = [
        (t, b""),
        (t, os.urandom(200)),
        (t, good[:30]),
        (t, bytes(wrong_version)),
        (t, good[:-1] + bytes([good[-1] ^ 0x55])),  # wrong tag
        ("dosis/d-2/events", good),  # misrouted
        ("dosis/d-99/events", good),  # unknown device
        ("dosis/D-1/events", good),  # bad device id
        ("dosis/d-1/health", good),  # events on the health topic
        (ht, b"\xff\xfe\x00" * 10),  # not UTF-8
        (ht, health.replace(b'"v":1', b'"v":7')),  # changed after signing
        (ht, b"{" * 70000),
        (t, os.urandom(1_000_000)),  # huge
        ("dosis/d-1/status", os.urandom(64)),  # only a hint; stored clipped
    ]
    try:
        for topic, payload in cases:
            p.publish(topic, payload, qos=1)
        p.publish(t, good, qos=1)
        assert w.wait_for({"d-1": 2}), g.lines
        db = open_db(dburl)
        assert [e["seq"] for e in db.events("d-1")] == [1, 2]
        assert len(db.rejects()) == len(cases) - 1
        assert not any("error handling" in line for line in g.lines), g.lines
        assert sum("rejected" in line for line in g.lines) == len(cases) - 1
    finally:
        p.close()
        w.close()
        g.stop()


def test_broker_restart_and_gateway_down_lose_nothing(broker, dburl):
    enroll(dburl)
    g = gateway(broker, dburl, cid="gw-restart")
    w = AckWatcher(broker, dburl)
    p = Peer(broker, "dev-r")
    try:
        for i in range(5):
            publish_batch(p, "d-1", 1 + 10 * i, 10)
        assert w.wait_for({"d-1": 50})
        g.stop()  # a clean stop: the persistent session stays at the broker
        for i in range(5, 10):
            publish_batch(p, "d-1", 1 + 10 * i, 10)  # queued for the gateway's session
        p.close()
        broker.restart()  # SIGTERM: mosquitto saves its persistence file
        g = gateway(broker, dburl, cid="gw-restart")
        w.close()
        w = AckWatcher(broker, dburl)
        p = Peer(broker, "dev-r")
        for i in range(10, 15):
            publish_batch(p, "d-1", 1 + 10 * i, 10)
        assert w.wait_for({"d-1": 150}), (w.best, g.lines)
        # The broker restarts under a running gateway. Mosquitto (2.0.11 here) does not restore
        # a persistent session's *shared* subscriptions from its file, so what is published
        # before the gateway has reconnected and subscribed again is dropped by the broker; the
        # device's resend of everything not acked by the gateway is what loses nothing.
        p.close()
        w.close()
        broker.restart()
        p = Peer(broker, "dev-r")
        w = AckWatcher(broker, dburl)
        for _ in range(10):  # the device: send what is not acked, wait, resend
            acked = w.best.get("d-1", 150)
            for frm in range(acked + 1, 201, 10):
                publish_batch(p, "d-1", frm, 10)
            if w.wait_for({"d-1": 200}, timeout=2.0):
                break
        assert w.best.get("d-1") == 200, (w.best, g.lines)
        assert any("reconnecting" in line for line in g.lines)
        db = open_db(dburl)
        assert [e["seq"] for e in db.events("d-1")] == list(range(1, 201))
    finally:
        p.close()
        w.close()
        g.stop()


def test_two_gateways_one_database_one_alert_one_webhook_one_email(broker, dburl):
    with SmtpSink() as smtp, WebhookSink() as hook:
        enroll(dburl, webhook=hook.url, email="team@x.test")
        g1 = gateway(broker, dburl, cid="gw-a", smtp=smtp.address)
        g2 = gateway(broker, dburl, cid="gw-b", smtp=smtp.address)
        w = AckWatcher(broker, dburl)
        p = Peer(broker, "fleet")
        occ = 1_800_003_600
        try:
            for dev in ("d-2", "d-3", "d-4"):
                for i in range(10):
                    for _ in range(2):  # every batch twice
                        publish_batch(p, dev, 1 + 5 * i, 5)
            # the missed dose: NOTIFY and MISSED in two batches, each sent twice
            notify = wire.record_bytes(1, logrec.NOTIFY, utc=occ + 1800, occ=occ, dose=1)
            missed = wire.record_bytes(2, logrec.MISSED, utc=occ + 3600, occ=occ, dose=1)
            for _ in range(2):
                publish_batch(p, "d-1", 1, 1, notify)
                publish_batch(p, "d-1", 2, 1, missed)
            assert w.wait_for({"d-1": 2, "d-2": 50, "d-3": 50, "d-4": 50}), w.best
            assert g1.stats["messages"] > 0 and g2.stats["messages"] > 0, "shared, not copied"
            db = open_db(dburl)
            assert db.event_count() == 2 + 3 * 50
            assert len(db.q("SELECT DISTINCT device_id, seq FROM events")) == 2 + 3 * 50
            (alert,) = db.alerts()
            assert alert["kind"] == "missed" and alert["cause"] == f"dose:{occ}:1"
            hooks = hook.wait(1)
            mails = smtp.wait(1)
            time.sleep(1.5)  # both gateways poll the outbox meanwhile
            assert len(hook.bodies) == 1 and len(smtp.messages) == 1
            body = hooks[0]
            assert body["alert"] == alert["id"] and body["citizen"] == "c-0001"
            assert body["text"] == "Dosis ikke taget" and body["device"] == "d-1"
            assert body["ack"] == f"dosis fleet ack {alert['id']}"
            assert body["time_utc"].endswith("Z") and "Europe/Copenhagen" in body["time_local"]
            rcpt, msg = mails[0]
            assert rcpt == ["team@x.test"] and "Dosis ikke taget" in msg["Subject"]
            text = msg.get_payload(decode=True).decode()
            assert f"dosis fleet ack {alert['id']}" in text and "c-0001" in text
            states = sorted((d["channel"], d["state"]) for d in db.deliveries())
            assert states == [("email", "sent"), ("webhook", "sent")]
            done = db.ack_alert(alert["id"], "nurse-3")
            assert done["response_s"] > 0 and done["acked_by"] == "nurse-3"
        finally:
            p.close()
            w.close()
            g1.stop()
            g2.stop()


def test_offline_alert_with_a_short_threshold_and_a_retried_webhook(broker, dburl):
    with SmtpSink() as smtp, WebhookSink(fail_first=1) as hook:
        enroll(dburl, webhook=hook.url, email="team@x.test")
        g = gateway(broker, dburl, smtp=smtp.address, offline_after_s=0.5, check_every_s=0.1)
        p = Peer(broker, "dev-o")
        try:
            topic, payload = wire.encode_health(KEYS["d-5"], "d-5", wire.health_fields())
            p.publish(topic, payload, qos=1)
            # every enrolled device goes quiet: d-5 after its heartbeat, the others were
            # never heard from at all (counted from their enrolment)
            n = len(KEYS)
            bodies = hook.wait(n, timeout=10)
            assert sorted(b["device"] for b in bodies) == sorted(KEYS), g.lines
            assert all(b["kind"] == "offline" for b in bodies)
            assert next(b for b in bodies if b["device"] == "d-5")["citizen"] == "c-0005"
            assert len(smtp.wait(n)) == n
            time.sleep(0.5)
            db = open_db(dburl)
            hooks = [d for d in db.deliveries() if d["channel"] == "webhook"]
            assert len(hooks) == n and all(d["state"] == "sent" for d in hooks)
            assert sum(d["attempts"] for d in hooks) == n + 1  # one 503, then delivered
            assert [a["kind"] for a in db.alerts()] == ["offline"] * n
        finally:
            p.close()
            g.stop()


def test_dosis_gateway_command_runs_and_stops_on_sigterm(broker, dburl, tmp_path):
    enroll(dburl)
    dosis = Path(sys.executable).with_name("dosis")
    cmd = [str(dosis)] if dosis.exists() else [sys.executable, "-m", "dosis.cli"]
    log = tmp_path / "gw.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [
                *cmd,
                "gateway",
                "--broker",
                f"mqtt://{broker.host}:{broker.port}",
                "--db",
                dburl,
                "--client-id",
                "gw-cli",
                "--check-every",
                "0.2s",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while "subscribed as gw-cli" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert "for a lab only" in log.read_text()
        p = Peer(broker, "dev-cli")
        publish_batch(p, "d-2", 1, 3)
        p.close()
        db = open_db(dburl)
        while db.acked("d-2") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.acked("d-2") == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
    assert rc == 0, log.read_text()
    assert "stopping" in log.read_text() and "Traceback" not in log.read_text()


def _post(url, body=None, ctype="application/json"):
    req = urllib.request.Request(
        url, data=body or b"{}", method="POST", headers={"Content-Type": ctype}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_ack_link_in_the_webhook_and_the_mail(broker, dburl):
    with SmtpSink() as smtp, WebhookSink() as hook:
        enroll(dburl, webhook=hook.url, email="team@x.test")
        g = gateway(broker, dburl, smtp=smtp.address, http="127.0.0.1:0")
        p = Peer(broker, "dev-h")
        try:
            missed = wire.record_bytes(1, logrec.MISSED, utc=1_800_003_600, occ=1_800_000_000)
            publish_batch(p, "d-1", 1, 1, missed)
            (body,) = hook.wait(1)
            url = body["ack_url"]
            assert url.startswith(f"http://127.0.0.1:{g.ack_server.port}/alerts/{body['alert']}/")
            (_, mail), *_ = smtp.wait(1)
            assert url in mail.get_payload(decode=True).decode()
            with urllib.request.urlopen(url, timeout=5) as r:  # GET: a page, never an ack
                assert r.status == 200 and "Kvittér" in r.read().decode()
            db = open_db(dburl)
            assert db.alerts(open_only=True) != []
            assert _post(url[:-4] + "0000")[0] == 403
            assert _post(url.replace(f"/alerts/{body['alert']}/", "/alerts/999/"))[0] == 403
            code, doc = _post(url, b'{"by": "nurse-9"}')
            assert code == 200 and doc["alert"] == body["alert"] and doc["response_s"] > 0
            assert _post(url, b"by=x", "application/x-www-form-urlencoded")[0] == 409
            assert db.alerts_by_id(body["alert"])["acked_by"] == "nurse-9"
        finally:
            p.close()
            g.stop()
