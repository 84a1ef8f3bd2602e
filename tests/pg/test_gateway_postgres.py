"""The gateway on PostgreSQL (a throw-away cluster from the Debian packages, on a unix socket):
the same idempotent ingest, one alert per cause and one delivery per channel when two gateways
race, against a real mosquitto."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from dosis.gateway import wire
from dosis.gateway.db import open_db
from dosis.gateway.notify import Notifier
from dosis.gateway.service import Gateway
from dosiscore import logrec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))  # the shared helpers
from mosq import MOSQUITTO, Broker, Peer, free_port  # noqa: E402
from smtpsink import SmtpSink  # noqa: E402
from webhooksink import WebhookSink  # noqa: E402


def _pg_bin(name):
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


INITDB, PG_CTL = _pg_bin("initdb"), _pg_bin("pg_ctl")
# Run by `make test-postgres` (which installs PostgreSQL from Debian when it is missing), not
# by `make test`: a missing server is a failure here, never a skip.
if INITDB is None or PG_CTL is None:
    raise RuntimeError("PostgreSQL server binaries are not installed: run 'make test-postgres'")
KEY = bytes(range(32))


def _as_pg(cmd):
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="module")
def pgurl():
    d = Path(tempfile.mkdtemp(prefix="dosis-pg-"))
    if os.geteuid() == 0:
        shutil.chown(d, "postgres")
    port = free_port()
    data = d / "data"
    subprocess.run(
        _as_pg([INITDB, "-D", str(data), "-A", "trust", "-U", "dosis", "--no-sync", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    opts = f"-k {d} -p {port} -c listen_addresses='' -c fsync=off"
    subprocess.run(
        _as_pg([PG_CTL, "-D", str(data), "-o", opts, "-w", "-l", str(d / "log"), "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://dosis@/postgres?host={d}&port={port}"
    finally:
        subprocess.run(
            _as_pg([PG_CTL, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(d, ignore_errors=True)


def _reset(url):
    db = open_db(url)
    with db.tx() as c:
        c.x("TRUNCATE events, coverage, alerts, deliveries, rejects, devices, responders")
    return db


def test_postgres_two_gateways_race_on_one_cause(pgurl):
    db = _reset(pgurl)
    with SmtpSink() as smtp, WebhookSink() as hook:
        db.add_responder("team", webhook=hook.url, email="t@x.test", target_min=5)
        db.enroll("d-1", "c-1", "team", KEY)
        occ = 1_800_000_000
        batches = [
            wire.encode_events(
                KEY,
                "d-1",
                1 + 5 * i,
                6 + 5 * i,
                b"".join(
                    wire.record_bytes(
                        s, logrec.NOTIFY if s % 5 == 0 else logrec.TAKEN, occ=occ, dose=0
                    )
                    for s in range(1 + 5 * i, 6 + 5 * i)
                ),
            )
            for i in range(20)
        ]
        gws = [
            Gateway(
                "mqtt://127.0.0.1:1",
                pgurl,
                client_id=f"g{i}",
                smtp=smtp.address,
                log=lambda s: None,
            )
            for i in range(2)
        ]

        def run(g):
            for t, p in batches:
                g.handle(t, p)

        threads = [threading.Thread(target=run, args=(g,)) for g in gws]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert db.event_count() == 100 and db.acked("d-1") == 100
        assert [a["cause"] for a in db.alerts()] == [f"dose:{occ}:0"]
        notifiers = [Notifier(g.db, g.client_id, smtp=smtp.address) for g in gws]
        sent = []
        threads = [
            threading.Thread(target=lambda n=n: sent.append(n.run_once())) for n in notifiers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(sent) in ([0, 2], [1, 1])
        assert len(hook.wait(1)) == 1 and len(smtp.wait(1)) == 1
        assert all(d["state"] == "sent" for d in db.deliveries())
        (a,) = db.alerts()
        assert db.ack_alert(a["id"], "n")["response_s"] >= 0
        with db.tx() as c:  # the timers' SQL on PostgreSQL too
            c.x(
                "INSERT INTO events (device_id, seq, utc, kind, name, occ, dose, detail, small, "
                "stored) VALUES ('d-1', 200, 1, ?, 'mains_lost', 0, NULL, 0, 0, 1)",
                (logrec.MAINS_LOST,),
            )
        new = db.check_timers(time.time() + 60, offline_after_s=30, mains_after_s=30)
        assert sorted(db.alerts_by_id(i)["cause"] for i in new)[0] == "mains:200"
        assert len(new) == 2
        for g in gws:
            g.db.close()


@pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto is not installed")
def test_postgres_behind_mosquitto(pgurl, tmp_path):
    db = _reset(pgurl)
    db.add_responder("team", email="t@x.test")
    db.enroll("d-2", "c-2", "team", KEY)
    broker = Broker(tmp_path).start()
    gws = [
        Gateway(
            f"mqtt://{broker.host}:{broker.port}", pgurl, client_id=f"pg{i}", log=lambda s: None
        ).start()
        for i in range(2)
    ]
    p = Peer(broker, "dev-pg")
    try:
        for i in range(30):
            t, pl = wire.encode_events(
                KEY,
                "d-2",
                1 + 4 * i,
                5 + 4 * i,
                b"".join(wire.record_bytes(s, logrec.TAKEN) for s in range(1 + 4 * i, 5 + 4 * i)),
            )
            p.publish(t, pl, qos=1)
            p.publish(t, pl, qos=1)
        deadline = time.monotonic() + 15
        while db.acked("d-2") < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.acked("d-2") == 120
        assert [e["seq"] for e in db.events("d-2")] == list(range(1, 121))
        assert all(g.stats["messages"] > 0 for g in gws)
    finally:
        p.close()
        for g in gws:
            g.stop()
        broker.stop()
