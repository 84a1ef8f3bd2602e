"""`make demo`: a day in the life of a virtual dispenser, through the same API the commands use.

Starts the real firmware on the MicroPython unix port (`dosis sim`) as a new, empty device,
pairs with it (an injected press of its service button), pushes examples/schedule.toml, fills
the carousel, then runs its clock fast through a day: the citizen takes every dose a few minutes
after the tone except the evening one (missed: the care-team notice and the lock follow). The
event stream is printed as it comes and the screen drawn at the interesting moments.

Then the care team's side: the dispenser, offline all day, is given the municipality's broker
(a private Mosquitto on loopback, TLS with a CA made just now) and its whole day arrives at the
gateway (`dosis gateway`, SQLite in build/demo-fleet/), stored once per record; the missed dose
becomes one alert, delivered by webhook and e-mail to local receivers, which a nurse
acknowledges; `dosis fleet status` and `report` close it. Finally the log is pulled by cable to
build/demo-log.csv (the gateway, not the cable, acknowledges it now).

    .venv/bin/python examples/demo.py [--state build/demo-state]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT / "tests" / "host"))  # the private broker, CA and mail/web receivers
import tlsca  # noqa: E402
from dosis import ops, provision, schedules  # noqa: E402
from dosis.device import Device, open_device  # noqa: E402
from dosis.gateway import fleet  # noqa: E402
from dosis.gateway.db import open_db  # noqa: E402
from dosis.gateway.service import Gateway  # noqa: E402
from dosis.keystore import Keystore  # noqa: E402
from dosis.screen import to_text  # noqa: E402
from dosis.simhost import VirtualDispenser  # noqa: E402
from dosiscore import civil, tz  # noqa: E402
from mosq import Broker  # noqa: E402
from smtpsink import SmtpSink  # noqa: E402
from webhooksink import WebhookSink  # noqa: E402

STEP_S = 120  # virtual seconds per fast-forward step
SKIP = "aften"  # the dose the citizen does not take today


def say(text: str) -> None:
    print(text, flush=True)


def draw(dev: Device, why: str) -> None:
    snap = ops.snapshot(dev)
    say(f"-- the screen ({why}): {snap.get('screen')}")
    say(to_text(snap["fb"], border=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", default=str(ROOT / "build" / "demo-state"))
    a = ap.parse_args()
    state = Path(a.state)
    shutil.rmtree(state, ignore_errors=True)
    state.parent.mkdir(parents=True, exist_ok=True)
    keys = Keystore(state.parent / "demo-keys.json")
    if keys.path.exists():
        keys.path.unlink()
    doc = schedules.load_schedule(ROOT / "examples" / "schedule.toml")
    zone = tz.Tz(doc["tz_rule"])
    today = civil.parse_date(time.strftime("%Y-%m-%d", time.gmtime()))
    assert today is not None
    start = zone.utc(today * civil.DAY + 6 * 3600 + 50 * 60)  # 06:50 local today
    log_file = open(state.parent / "demo-firmware.log", "wb")  # noqa: SIM115
    with VirtualDispenser(state, speed=1, start_utc=start, stderr=log_file) as sim:
        port = sim.port
        assert port is not None
        say(f"== virtual dispenser on {port} (the real firmware on the MicroPython unix port)")
        dev = open_device(port, keystore=keys, timeout=10)
        hello = dev.hello()
        say(f"hello: device {hello['device']}, firmware {hello['fw']}, protocol {hello['proto']}")
        say("== pairing: the nurse presses the service button, then runs 'dosis pair'")
        say(f"paired with {ops.pair_virtual(dev)} (key kept in {keys.path}, mode 0600)")
        say("== dosis schedule push examples/schedule.toml")
        plan = ops.plan_push(dev, doc)
        for c in plan.changes:
            say(f"  {c}")
        h = ops.push_schedule(dev, plan, lambda: open_device(port, keystore=keys, timeout=10))
        say(f"pushed; the device rebooted into it and reads back hash {h[:12]}")
        dev = open_device(port, keystore=keys, timeout=10)
        say("== the loading map for the nurse filling the carousel (first 6 of 28)")
        now = int(dev.call("info")["utc"])
        for line in ops.format_loading_map(ops.loading_map(doc, now)).splitlines()[:9]:
            say("  " + line)
        left = dev.call("fill")["doses_left"]
        say(f"carousel filled: {left} doses loaded")
        draw(dev, "after the fill")
        say("== a day at full speed: events as the device reports them")
        dev.call("monitor", {"on": True})
        end = now + 24 * 3600 - 3600
        due_seen: dict[str, int] = {}
        drawn = False
        while now < end:
            now = int(dev.call("sim.advance", {"s": STEP_S})["utc"])
            for ev in dev.events(timeout=0.05):
                if ev.get("ev") in ("louder", "opened", "closed", "press"):
                    continue  # the tone grows louder every 10 min: not worth a line each
                say("  " + ops.event_line(ops.format_event(ev, zone)))
                dose = ev.get("dose")
                if ev.get("ev") == "due" and dose:
                    due_seen[dose] = now
                    if not drawn:
                        drawn = True
                        draw(dev, "a dose is due: light, tone, compartment open")
            for dose, t in list(due_seen.items()):
                if dose != SKIP and now - t >= 240:
                    dev.call("sim.press", {"button": "taken"})  # the citizen presses
                    del due_seen[dose]
        draw(dev, "end of the day")
        dev.call("monitor", {"on": False})
        care_team(dev, keys, doc, state.parent / "demo-fleet")
        say("== dosis log pull --since 1 -o build/demo-log.csv (by cable, as a nurse can)")
        out = state.parent / "demo-log.csv"
        got, _ = ops.export_log(dev, "csv", str(out), sys.stdout, since=1, ack=False)
        say(f"{len(got.rows)} records written to {out} (the gateway acknowledges this log now)")
        kinds: dict[str, int] = {}
        for r in got.rows:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        say("  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        dev.close()
    log_file.close()
    say("== stopped (firmware diagnostics in build/demo-firmware.log)")


def wait(what: str, cond: Callable[[], Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.3)


def care_team(dev: Device, keys: Keystore, doc: dict[str, Any], where: Path) -> None:
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    say("== the care team's side: Mosquitto (persistence on, loopback, TLS with a CA made now)")
    pki = tlsca.make_pki(where / "pki")
    broker = Broker(where, tls=pki).start()
    url = f"mqtts://127.0.0.1:{broker.tls_port}"
    hooks, mails = WebhookSink().__enter__(), SmtpSink().__enter__()
    db_url = f"sqlite:///{where / 'fleet.db'}"
    db = open_db(db_url)
    gw = None
    try:
        db.add_responder("hjemmepleje-nord", webhook=hooks.url, email="nord@kommune.example")
        say(
            f"dosis fleet responder add hjemmepleje-nord --webhook {hooks.url} "
            "--email nord@kommune.example --target 15m"
        )
        say(f"dosis gateway --broker {url} --ca ca.pem --db {db_url} --smtp {mails.address}")
        gw = Gateway(url, db_url, ca=str(pki.ca_pem), smtp=mails.address, check_every_s=1,
                     log=lambda line: say("  gateway: " + line)).start()  # fmt: skip
        say(f"== dosis provision mqtt --broker {url} --ca ca.pem (offline all day until now)")
        did = dev.hello()["device"]
        st = provision.mqtt(dev, provision.parse_broker(url), ca_pem=pki.ca_pem.read_text(),
                            insecure=False, heartbeat_s=60)  # fmt: skip
        say(
            f"  broker {st['mqtt']['host']}:{st['mqtt']['port']}, tls {st['mqtt']['tls']}, "
            f"uplink key set {st['mqtt']['ukey_set']} (never shown; kept in {keys.path})"
        )
        ukey = keys.uplink_key(did)
        assert ukey is not None
        db.enroll(did, doc["citizen"], "hjemmepleje-nord", ukey)
        say(f"dosis fleet enroll {did} --citizen {doc['citizen']} --responder hjemmepleje-nord")
        t0 = time.monotonic()

        def all_acked() -> bool:
            log = dev.call("info")["log"]
            return log["acked"] >= log["last"]

        wait("the day's log at the gateway", all_acked)
        log = dev.call("info")["log"]
        n = db.event_count()
        say(
            f"  the day's {n} records are at the gateway after {time.monotonic() - t0:.1f} s, "
            f"each stored once; the gateway acknowledged up to seq {log['acked']}"
        )
        wait("the alert's webhook and e-mail", lambda: hooks.bodies and mails.messages)
        body = hooks.bodies[0]
        say(
            f"  webhook POST: alert {body['alert']}, {body['kind']}, {body['citizen']}: "
            f"{body.get('text') or body.get('title') or ''}"
        )
        rcpt, msg = mails.messages[0]
        say(f"  e-mail to {', '.join(rcpt)}: {msg['Subject']}")
        say("== dosis fleet status")
        say(fleet.render(fleet.status(db), fleet.STATUS_COLS, "table"))
        time.sleep(2)  # the nurse reads the message
        a = db.ack_alert(int(body["alert"]), by="sygeplejerske-7")
        say(
            f"== dosis fleet ack {body['alert']} --by sygeplejerske-7: answered in "
            f"{fleet.fmt_seconds(a['response_s'])}"
        )
        day = fleet.today()
        say(f"== dosis fleet report --from {day} --to {day}")
        say(fleet.render(fleet.report(db, day, day), fleet.REPORT_COLS, "table"))
    finally:
        if gw is not None:
            gw.stop()
        db.close()
        broker.stop()
        hooks.__exit__(None, None, None)
        mails.__exit__(None, None, None)


if __name__ == "__main__":
    os.environ.setdefault("DOSIS_KEYSTORE", str(ROOT / "build" / "demo-keys.json"))
    main()
