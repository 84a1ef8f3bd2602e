"""End to end, as a municipality runs it: virtual dispenser -> Mosquitto -> gateway -> SQLite.

The real firmware (the MicroPython unix port, `dosis.simhost.VirtualDispenser`) is paired,
given the example schedule, filled and provisioned with `dosis.provision` exactly as a nurse
does it; it reaches a private Mosquitto (persistence on, loopback) over TLS with a CA made at
test time, through the unix port's own socket and ssl modules. The gateway (`dosis.gateway`)
stores into a real SQLite file and alerts a real local webhook and a real local SMTP server.
The device's whole log is read back over the serial link at the end and compared record by
record with the database: nothing lost, nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
import tlsca  # noqa: E402
from dosis import ops, provision, schedules  # noqa: E402
from dosis.device import Device, open_device  # noqa: E402
from dosis.gateway.db import open_db  # noqa: E402
from dosis.gateway.service import Gateway  # noqa: E402
from dosis.keystore import Keystore  # noqa: E402
from dosis.simhost import VirtualDispenser  # noqa: E402
from dosiscore import civil, logrec, tz  # noqa: E402
from mosq import MOSQUITTO, Broker  # noqa: E402
from smtpsink import SmtpSink  # noqa: E402
from webhooksink import WebhookSink  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto") or os.path.exists(MOSQUITTO)),
    reason="mosquitto is not installed (make test installs it)",
)

ROOT = Path(__file__).resolve().parents[2]
DOC = schedules.load_schedule(ROOT / "examples" / "schedule.toml")
ZONE = tz.Tz(DOC["tz_rule"])
STEP_S = 600  # virtual seconds per sim.advance


# -- the world -----------------------------------------------------------------------------------


@dataclass
class Fleet:
    root: Path
    broker: Broker
    ca: tlsca.PKI
    db_url: str
    hooks: WebhookSink  # a real HTTP server on loopback: .bodies
    mails: SmtpSink  # a real SMTP server on loopback (aiosmtpd): .messages
    keys: Keystore
    gateways: list[Gateway] = field(default_factory=list)

    def gateway(self, **kw: Any) -> Gateway:
        kw.setdefault("offline_after_s", 3600)
        g = Gateway(
            f"mqtts://127.0.0.1:{self.broker.tls_port}",  # the gateway always over TLS
            self.db_url,
            ca=str(self.ca.ca_pem),
            smtp=self.mails.address,
            check_every_s=0.5,
            log=lambda line: None,
            **kw,
        ).start()
        self.gateways.append(g)
        return g


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ca = tlsca.make_pki(tmp_path / "pki")
    broker = Broker(tmp_path, tls=ca).start()
    hooks, mails = WebhookSink().__enter__(), SmtpSink().__enter__()
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    db = open_db(db_url)
    db.add_responder("team-nord", webhook=hooks.url, email="nord@kommune.example", target_min=15)
    db.close()
    f = Fleet(tmp_path, broker, ca, db_url, hooks, mails, Keystore(tmp_path / "keys.json"))
    try:
        yield f
    finally:
        for g in f.gateways:
            with contextlib.suppress(Exception):
                g.stop()
        broker.stop()
        hooks.__exit__(None, None, None)
        mails.__exit__(None, None, None)


@contextlib.contextmanager
def dispenser(
    fleet: Fleet, tls: bool = False, at_min: int = 6 * 60 + 50
) -> Iterator[tuple[Device, str, int]]:
    """A new virtual dispenser at `at_min` minutes past local midnight, paired, scheduled,
    filled, provisioned with the fleet's broker (TLS, or the plain lab listener) and enrolled
    at the gateway: (device, id, virtual now).

    Why not always TLS: the unix port's select() takes a 1 ms slow path per poll while an ssl
    socket is registered (measured: 1,100 us a scheduler pass against 2.4 us plain), and the
    virtual dispenser's fast-forward makes thousands of passes per simulated hour. So the TLS
    test covers hours, the plain ones days; the uplink code is the same."""
    name = "state"
    today = civil.parse_date(time.strftime("%Y-%m-%d", time.gmtime()))
    assert today is not None
    start = ZONE.utc(today * civil.DAY + at_min * 60)
    log = open(fleet.root / f"{name}.log", "wb")  # noqa: SIM115
    sim = VirtualDispenser(fleet.root / name, speed=1, start_utc=start, stderr=log)
    port = sim.start()
    try:
        dev = open_device(port, keystore=fleet.keys, timeout=10)
        did = ops.pair_virtual(dev)
        plan = ops.plan_push(dev, DOC)
        ops.push_schedule(dev, plan, lambda: open_device(port, keystore=fleet.keys, timeout=10))
        dev = open_device(port, keystore=fleet.keys, timeout=10)
        dev.call("fill")
        if tls:
            broker = provision.parse_broker(f"mqtts://127.0.0.1:{fleet.broker.tls_port}")
        else:
            broker = provision.parse_broker(f"mqtt://127.0.0.1:{fleet.broker.port}")
        st = provision.mqtt(
            dev,
            broker,
            ca_pem=fleet.ca.ca_pem.read_text() if tls else None,
            insecure=not tls,
            heartbeat_s=10,
            backoff=(0.2, 1.0),
            resend_s=5,  # a broker restart drops what the gateway had no subscription for
        )
        assert st["mqtt"]["tls"] is tls and st["mqtt"]["ukey_set"] is True
        db = open_db(fleet.db_url)
        ukey = fleet.keys.uplink_key(did)
        assert ukey is not None
        db.enroll(did, "borger-0042", "team-nord", ukey)
        db.close()
        now = int(dev.call("info")["utc"])
        yield dev, did, now
        dev.close()
    finally:
        sim.stop()
        log.close()


def run_day(
    dev: Device, now: int, hours: float, skip: tuple[str, ...] = ("aften",), step: int = STEP_S
) -> int:
    """Advance the virtual clock `hours` in `step`s, the citizen taking every dose but `skip`
    at the first step after its tone. Returns the virtual time at the end."""
    end = now + int(hours * 3600)
    dev.call("monitor", {"on": True})
    due: dict[str, int] = {}
    while now < end:
        now = int(dev.call("sim.advance", {"s": step})["utc"])
        for ev in dev.events(timeout=0.02):
            if ev.get("ev") == "due" and ev.get("dose"):
                due[ev["dose"]] = now
        for dose in list(due):
            if dose not in skip:
                dev.call("sim.press", {"button": "taken"})
                del due[dose]
    dev.call("monitor", {"on": False})
    return now


def device_records(dev: Device) -> list[tuple[int, ...]]:
    last = dev.call("info")["log"]["last"]
    return [tuple(r) for r in ops.read_log(dev, 1, last).records]


def stored(fleet: Fleet, did: str) -> list[dict[str, Any]]:
    db = open_db(fleet.db_url)
    try:
        return db.events(did)
    finally:
        db.close()


def wait_all_stored(fleet: Fleet, dev: Device, did: str, timeout: float = 60) -> None:
    """Until the device's ack pointer reaches its last durable record (the gateway acks only
    what it committed)."""
    deadline = time.monotonic() + timeout
    while True:
        log = dev.call("info")["log"]
        if log["acked"] >= log["last"]:
            return
        if time.monotonic() > deadline:
            state = dev.call("net.get")
            raise AssertionError(f"not all acked: {log}, uplink {state.get('uplink')}")
        time.sleep(0.3)


def assert_exactly_once(fleet: Fleet, dev: Device, did: str) -> list[tuple[int, ...]]:
    recs = device_records(dev)
    rows = stored(fleet, did)
    seqs = [r["seq"] for r in rows]
    assert len(seqs) == len(set(seqs)), "a record stored twice"
    by_seq = {r["seq"]: r for r in rows}
    missing = [r[0] for r in recs if r[0] not in by_seq]
    assert not missing, f"records the gateway never stored: {missing[:20]}"
    for r in recs:
        row = by_seq[r[0]]
        assert (row["utc"], row["kind"], row["occ"]) == (r[1], r[2], r[3]), (r, row)
    extra = set(by_seq) - {r[0] for r in recs}
    assert not extra, f"rows the device never wrote: {sorted(extra)[:20]}"
    return recs


def dose_alerts(fleet: Fleet, did: str) -> list[dict[str, Any]]:
    db = open_db(fleet.db_url)
    try:
        return [a for a in db.alerts(device_id=did) if a["kind"] == "missed"]
    finally:
        db.close()


def wait_for(what: str, cond: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- the tests -----------------------------------------------------------------------------------


def test_a_simulated_day_arrives_exactly_once(fleet: Fleet) -> None:
    fleet.gateway()
    with dispenser(fleet) as (dev, did, now):
        run_day(dev, now, 24)  # 06:50 -> 06:50: every dose but the evening one taken
        wait_all_stored(fleet, dev, did)
        recs = assert_exactly_once(fleet, dev, did)
        kinds = [logrec.NAMES[r[2]] for r in recs]
        assert kinds.count("missed") == 1 and kinds.count("taken") >= 3, kinds
        # the evening dose: notified at +30 min, locked as missed at +120: one alert, one
        # webhook and one e-mail
        wait_for("the alert's deliveries", lambda: fleet.hooks.bodies and fleet.mails.messages)
        time.sleep(1.5)  # anything extra would arrive now
        alerts = dose_alerts(fleet, did)
        assert len(alerts) == 1, alerts
        assert [p["alert"] for p in fleet.hooks.bodies] == [alerts[0]["id"]]
        assert len(fleet.mails.messages) == 1


def test_over_tls_a_missed_dose_alerts_once_by_webhook_and_mail_and_the_ack_is_timed(
    fleet: Fleet,
) -> None:
    fleet.gateway()
    with dispenser(fleet, tls=True, at_min=17 * 60 + 55) as (dev, did, now):
        run_day(dev, now, 0.6)  # 17:55 -> 18:35: the evening dose due at 18:00, notified at 18:30
        wait_all_stored(fleet, dev, did)
        recs = assert_exactly_once(fleet, dev, did)
        assert [logrec.NAMES[r[2]] for r in recs].count("notify") == 1
        assert dev.call("net.get")["uplink"]["connected"] is True
        wait_for("the alert's deliveries", lambda: fleet.hooks.bodies and fleet.mails.messages)
        time.sleep(1.5)  # anything extra would arrive now
        alerts = dose_alerts(fleet, did)
        assert len(alerts) == 1, alerts
        a = alerts[0]
        assert len(fleet.hooks.bodies) == 1 and len(fleet.mails.messages) == 1
        assert fleet.hooks.bodies[0]["alert"] == a["id"]
        rcpt, msg = fleet.mails.messages[0]
        assert rcpt == ["nord@kommune.example"]
        mail = msg.as_string() + str(msg.get_payload(decode=True), "utf-8")
        assert "borger-0042" in mail and f"dosis fleet ack {a['id']}" in mail
        # a heartbeat arrived and nothing personal went out: the pseudonym only
        for text in (json.dumps(fleet.hooks.bodies[0]), mail):
            assert "Metformin" not in text
        time.sleep(0.5)
        db = open_db(fleet.db_url)
        try:
            acked = db.ack_alert(a["id"], by="sygeplejerske-7")
            assert acked["response_s"] is not None and acked["response_s"] > 0
            again = db.alerts_by_id(a["id"])
            assert again["acked_by"] == "sygeplejerske-7"
            assert abs(again["response_s"] - (again["acked_at"] - again["created"])) < 1e-6
            health = db.q("SELECT health FROM devices WHERE device_id = ?", (did,))[0][0]
            beat = json.loads(health)  # the last heartbeat, stored as the device sent it
            assert beat["tv"] is True and beat["mains"] is True and beat["heap"] > 0
        finally:
            db.close()


def test_broker_killed_and_restarted_mid_stream_loses_nothing(fleet: Fleet) -> None:
    fleet.gateway()
    with dispenser(fleet) as (dev, did, now):
        now = run_day(dev, now, 4)
        fleet.broker.kill()  # SIGKILL: no persistence written since the last autosave
        now = run_day(dev, now, 4)
        fleet.broker.restart()
        run_day(dev, now, 4)
        wait_all_stored(fleet, dev, did)
        assert_exactly_once(fleet, dev, did)


def test_three_days_offline_then_back_nothing_lost_nothing_twice(fleet: Fleet) -> None:
    g = fleet.gateway(offline_after_s=3)
    with dispenser(fleet) as (dev, did, now):
        now = run_day(dev, now, 2)
        wait_all_stored(fleet, dev, did)
        dev.call("sim.net", {"up": False})  # out of Wi-Fi range
        now = run_day(dev, now, 72, skip=("morgen", "middag", "aften", "nat"), step=3600)
        wait_for(
            "an offline alert",
            lambda: any(
                a["kind"] == "offline" for a in open_db(fleet.db_url).alerts(device_id=did)
            ),
        )
        assert dev.call("info")["log"]["acked"] < dev.call("info")["log"]["last"]
        dev.call("sim.net", {"up": True})
        wait_all_stored(fleet, dev, did, timeout=90)
        recs = assert_exactly_once(fleet, dev, did)
        assert [logrec.NAMES[r[2]] for r in recs].count("missed") >= 8
        offline = [
            a for a in open_db(fleet.db_url).alerts(device_id=did) if a["kind"] == "offline"
        ]
        assert len(offline) == 1, offline
        assert g.stats["stored"] > 0


def test_two_gateways_share_the_stream_without_duplicate_rows_or_alerts(fleet: Fleet) -> None:
    g1 = fleet.gateway(client_id="gw-a")
    g2 = fleet.gateway(client_id="gw-b")
    with dispenser(fleet) as (dev, did, now):
        now = run_day(dev, now, 17, skip=("middag", "aften"))
        wait_all_stored(fleet, dev, did)
        assert_exactly_once(fleet, dev, did)
        wait_for(
            "two alerts delivered twice each",
            lambda: len(fleet.hooks.bodies) >= 2 and len(fleet.mails.messages) >= 2,
        )
        time.sleep(2)
        alerts = dose_alerts(fleet, did)
        assert len(alerts) == 2, alerts
        assert sorted(p["alert"] for p in fleet.hooks.bodies) == sorted(a["id"] for a in alerts)
        assert len(fleet.mails.messages) == 2
        # both gateways really took part (the broker shares the subscription between them)
        assert g1.stats["messages"] > 0 and g2.stats["messages"] > 0, (g1.stats, g2.stats)
