"""The gateway without a broker: ingest, coverage, escalation, acks of alerts, the report, and
the `dosis fleet` commands (CliRunner), on a real SQLite file."""

import csv
import datetime as dt
import io
import json
import os
import statistics
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from dosis.cli import cli
from dosis.errors import InputError
from dosis.gateway import fleet, wire
from dosis.gateway.db import contiguous, merge_ranges, open_db
from dosis.gateway.notify import Notifier
from dosis.gateway.service import Gateway
from dosiscore import logrec

KEY = bytes(range(32))
CPH = ZoneInfo("Europe/Copenhagen")


def ts(day, hhmm):
    h, m = map(int, hhmm.split(":"))
    return int(dt.datetime.combine(dt.date.fromisoformat(day), dt.time(h, m), CPH).timestamp())


@pytest.fixture
def gw(tmp_path):
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    db = open_db(url)
    db.add_responder("team-a", webhook="http://127.0.0.1:9/hook", email="a@x.test", target_min=10)
    db.add_responder("team-b", email="b@x.test", target_min=5)
    db.enroll("d-1", "c-0001", "team-a", KEY)
    db.enroll("d-2", "c-0002", "team-b", bytes(32))
    db.close()
    lines = []
    g = Gateway("mqtt://127.0.0.1:1", url, client_id="t", log=lines.append)
    g.lines = lines
    yield g
    g.db.close()


def batch(dev, frm, nxt, *records, key=KEY):
    return wire.encode_events(key, dev, frm, nxt, b"".join(records))


def rec(seq, kind=logrec.TAKEN, **kw):
    return wire.record_bytes(seq, kind, **kw)


def test_ranges():
    assert merge_ranges([], 4, 7) == [(4, 7)]
    assert merge_ranges([(4, 7)], 1, 4) == [(1, 7)]
    assert merge_ranges([(1, 3), (5, 7)], 9, 10) == [(1, 3), (5, 7), (9, 10)]
    assert merge_ranges([(1, 3), (5, 7)], 2, 6) == [(1, 7)]
    assert contiguous([(1, 3), (5, 7)]) == 2
    assert contiguous([(2, 9)]) == 0


def test_a_batch_twice_is_stored_once_and_acked_the_same(gw):
    t, p = batch("d-1", 1, 4, rec(1), rec(2), rec(3))
    assert gw.handle(t, p, now=100.0) == 3
    assert gw.handle(t, p, now=101.0) == 3
    ev = gw.db.events("d-1")
    assert [e["seq"] for e in ev] == [1, 2, 3]
    assert {e["stored"] for e in ev} == {100.0}
    assert gw.db.event_count() == 3


def test_out_of_order_batches_and_gaps(gw):
    t, p = batch("d-1", 4, 7, rec(4), rec(6))  # seq 5 does not exist: covered by [4, 7)
    assert gw.handle(t, p, now=1.0) == 0  # 1..3 still to come: no ack jumps them
    assert any("not yet covered" in line for line in gw.lines)
    t, p = batch("d-1", 1, 4, rec(1), rec(2), rec(3))
    assert gw.handle(t, p, now=2.0) == 6
    t, p = batch("d-1", 9, 11, rec(9), rec(10))  # [7, 9) never sent yet: a gap
    assert gw.handle(t, p, now=3.0) == 6
    assert gw.db.coverage("d-1") == [(1, 7), (9, 11)]
    assert [e["seq"] for e in gw.db.events("d-1")] == [1, 2, 3, 4, 6, 9, 10]
    t, p = batch("d-1", 7, 9)  # the device says 7 and 8 do not exist
    assert gw.handle(t, p, now=4.0) == 10
    assert gw.db.acked("d-1") == 10


def test_health_ack_pointer_counts_as_covered(gw):
    t, p = wire.encode_health(KEY, "d-1", wire.health_fields(seq=50, acked=40))
    gw.handle(t, p, now=5.0)
    assert gw.db.acked("d-1") == 40
    t, p = batch("d-1", 41, 43, rec(41), rec(42))
    assert gw.handle(t, p, now=6.0) == 42
    row = gw.db.q("SELECT health, last_seen FROM devices WHERE device_id = 'd-1'")[0]
    assert json.loads(row[0])["seq"] == 50 and row[1] == 6.0


def test_rejects_are_recorded_without_content(gw):
    t, p = batch("d-1", 1, 2, rec(1))
    gw.handle("dosis/d-9/events", p, now=1.0)  # unknown device
    gw.handle("dosis/d-2/events", p, now=1.0)  # d-1's batch on d-2's topic
    gw.handle(t, p[:-1] + bytes([p[-1] ^ 1]), now=1.0)
    gw.handle("dosis/d-1/ack", p, now=1.0)
    reasons = [r["reason"] for r in gw.db.rejects()]
    assert reasons == ["unknown device", "forged or misrouted", "forged or misrouted", "topic"]
    assert gw.db.event_count() == 0
    assert gw.stats["rejects"] == 4


def test_escalation_rules_and_keys(gw):
    occ = 1_800_000_000
    gw.handle(
        *batch(
            "d-1",
            1,
            3,
            rec(1, logrec.NOTIFY, occ=occ, dose=0),
            rec(2, logrec.MISSED, occ=occ, dose=0, utc=occ + 3600),
        ),
        now=10.0,
    )
    gw.handle(*batch("d-1", 3, 4, rec(3, logrec.NOTIFY, occ=occ, dose=0)), now=11.0)
    alerts = gw.db.alerts()
    assert [(a["kind"], a["cause"]) for a in alerts] == [("missed", f"dose:{occ}:0")]
    assert alerts[0]["responder"] == "team-a"
    assert sorted(d["channel"] for d in gw.db.deliveries(alerts[0]["id"])) == ["email", "webhook"]
    # jam, refill once per fill cycle, time invalid once per clock setting
    gw.handle(
        *batch(
            "d-1",
            4,
            12,
            rec(4, logrec.JAM, detail=3),
            rec(5, logrec.REFILL, small=3),
            rec(6, logrec.EMPTY),
            rec(7, logrec.FILLED, small=28),
            rec(8, logrec.REFILL, small=2),
            rec(9, logrec.TIME_MISSING),
            rec(10, logrec.HOME_LOST),
        ),
        now=12.0,
    )
    gw.handle(*wire.encode_health(KEY, "d-1", wire.health_fields(tv=False)), now=13.0)
    causes = [a["cause"] for a in gw.db.alerts()]
    assert causes == [f"dose:{occ}:0", "jam:4", "refill:0", "refill:7", "time:0", "jam:10"]
    gw.handle(
        *batch("d-1", 12, 14, rec(12, logrec.CLOCK_SET), rec(13, logrec.TIME_MISSING)), now=14.0
    )
    assert gw.db.alerts()[-1]["cause"] == "time:12"
    # d-2's responder has only e-mail
    gw.handle(*batch("d-2", 1, 2, rec(1, logrec.JAM), key=bytes(32)), now=15.0)
    a = gw.db.alerts(device_id="d-2")[0]
    assert [d["channel"] for d in gw.db.deliveries(a["id"])] == ["email"]


def test_timers_mains_and_offline(gw):
    now = 1_800_000_000.0
    gw.handle(*batch("d-1", 1, 2, rec(1, logrec.MAINS_LOST, utc=int(now) - 600)), now=now)
    gw.handle(
        *batch(
            "d-2",
            1,
            3,
            rec(1, logrec.MAINS_LOST, utc=int(now) - 7200),
            rec(2, logrec.MAINS_RESTORED, utc=int(now) - 100),
            key=bytes(32),
        ),
        now=now,
    )
    assert gw.db.check_timers(now, offline_after_s=1800, mains_after_s=3600) == []
    later = now + 3100  # d-1's mains lost for 3600 s now; d-2's came back
    # a gateway that is not connected (or only just) does not judge devices offline
    assert gw.offline_checks_enabled() is False
    quiet = gw.db.check_timers(later, offline_after_s=1800, mains_after_s=3600, offline=False)
    assert [gw.db.alerts_by_id(a)["kind"] for a in quiet] == ["mains"]
    new = gw.db.check_timers(later, offline_after_s=1800, mains_after_s=3600)
    kinds = sorted((a["device_id"], a["kind"], a["cause"]) for a in gw.db.alerts())
    assert len(new) == 2
    assert kinds == [
        ("d-1", "mains", "mains:1"),
        ("d-1", "offline", f"offline:{int(now * 1000)}"),
        ("d-2", "offline", f"offline:{int(now * 1000)}"),
    ]
    assert gw.db.check_timers(later + 5, offline_after_s=1800, mains_after_s=3600) == []
    # back, then gone again: a fresh outage is a fresh alert
    gw.handle(*wire.encode_health(KEY, "d-1", wire.health_fields()), now=later + 10)
    assert gw.db.check_timers(later + 20, offline_after_s=1800, mains_after_s=3600) == []
    again = gw.db.check_timers(later + 2000, offline_after_s=1800, mains_after_s=3600)
    assert len(again) == 1
    assert gw.db.alerts_by_id(again[0])["cause"] == f"offline:{int((later + 10) * 1000)}"


def test_ack_stores_the_response_time_and_refuses_a_second(gw):
    gw.handle(*batch("d-1", 1, 2, rec(1, logrec.MISSED, occ=1000, dose=2)), now=500.0)
    (a,) = gw.db.alerts(open_only=True)
    done = gw.db.ack_alert(a["id"], "nurse-7", now=500.0 + 312.5)
    assert done["response_s"] == 312.5 and done["acked_by"] == "nurse-7"
    assert gw.db.alerts(open_only=True) == []
    with pytest.raises(InputError, match="acknowledged already"):
        gw.db.ack_alert(a["id"], "nurse-8")
    with pytest.raises(InputError, match="no alert 99"):
        gw.db.ack_alert(99)


def test_enrolment_refuses_cpr_numbers_and_unknown_responders(tmp_path):
    db = open_db(f"sqlite:///{tmp_path / 'f.db'}")
    db.add_responder("r", email="r@x.test")
    for cpr in ("010203-1234", "0102031234", "c0102031234"):
        with pytest.raises(InputError, match="CPR"):
            db.enroll("d-1", cpr, "r", KEY)
    with pytest.raises(InputError, match="pseudonym"):
        db.enroll("d-1", "Karen Jensen", "r", KEY)
    with pytest.raises(InputError, match='no responder "q"'):
        db.enroll("d-1", "c-1", "q", KEY)
    with pytest.raises(InputError, match="device id"):
        db.enroll("D 1", "c-1", "r", KEY)
    assert db.enroll("d-1", "c-1", "r", KEY) is True
    assert db.enroll("d-1", "c-2", "r", KEY) is False
    assert db.devices()[0]["citizen"] == "c-2"


# -- the report on a constructed dataset ----------------------------------------------------


def build_month(gw):
    """c-0001 (d-1): 3 on time, 2 late, 1 missed in March; c-0002 (d-2): 1 on time, 2 missed.
    Alerts of c-0001 answered after 60, 120, 300, 900, 1200 s (target 10 min)."""
    day = "2026-03-10"
    d1 = [
        rec(1, logrec.TAKEN, occ=ts(day, "08:00"), dose=0, utc=ts(day, "08:05")),
        rec(2, logrec.TAKEN, occ=ts(day, "12:00"), dose=1, utc=ts(day, "12:30")),  # 30 min: on
        rec(3, logrec.TAKEN, occ=ts(day, "18:00"), dose=2, utc=ts(day, "18:31")),  # late
        rec(4, logrec.MISSED, occ=ts(day, "22:00"), dose=3, utc=ts(day, "23:00")),
        rec(5, logrec.TAKEN, occ=ts("2026-03-11", "08:00"), dose=0, utc=ts("2026-03-11", "10:00")),
        rec(6, logrec.TAKEN, occ=ts("2026-03-11", "12:00"), dose=1, utc=ts("2026-03-11", "12:00")),
        rec(7, logrec.TAKEN, occ=ts("2026-04-01", "08:00"), dose=0, utc=ts("2026-04-01", "08:00")),
    ]
    gw.handle(*batch("d-1", 1, 8, *d1), now=float(ts(day, "23:00")))
    d2 = [
        rec(1, logrec.TAKEN, occ=ts(day, "08:00"), dose=0, utc=ts(day, "08:01")),
        rec(2, logrec.NOTIFY, occ=ts(day, "12:00"), dose=1, utc=ts(day, "12:45")),
        rec(3, logrec.MISSED, occ=ts(day, "12:00"), dose=1, utc=ts(day, "13:00")),
        rec(4, logrec.MISSED, occ=ts(day, "18:00"), dose=2, utc=ts(day, "19:00")),
        rec(5, logrec.TAKEN, occ=ts(day, "18:00"), dose=2, utc=ts(day, "19:05")),  # after all
    ]
    gw.handle(*batch("d-2", 1, 6, *d2, key=bytes(32)), now=float(ts(day, "23:00")))
    created = float(ts(day, "20:00"))
    for i, resp in enumerate((60, 120, 300, 900, 1200)):
        with gw.db.tx() as c:
            c.x(
                "INSERT INTO alerts (device_id, kind, cause, created, detail, responder) "
                "VALUES ('d-1', 'jam', ?, ?, '', 'team-a')",
                (f"jam:t{i}", created + i),
            )
        aid = gw.db.alerts()[-1]["id"]
        gw.db.ack_alert(aid, "n", now=created + i + resp)


def test_report_figures(gw):
    build_month(gw)
    rows = {r["citizen"]: r for r in fleet.report(gw.db, "2026-03-01", "2026-03-31")}
    a, b = rows["c-0001"], rows["c-0002"]
    assert (a["doses_on_time"], a["doses_late"], a["doses_missed"]) == (3, 2, 1)
    # d-2's 12:00 dose: NOTIFY and MISSED are one dose; the 18:00 one was taken in the end
    assert (b["doses_on_time"], b["doses_late"], b["doses_missed"]) == (1, 1, 1)
    assert a["alerts"] == 5 + 1 and a["alerts_acked"] == 5  # + the alert for the missed dose
    # by hand: sorted 60 120 300 900 1200 -> median 300; p90 nearest rank = ceil(4.5) = 5th
    assert a["median_response_s"] == 300 and a["p90_response_s"] == 1200
    assert a["target_s"] == 600 and a["within_target"] == 3
    assert statistics.median([60, 120, 300, 900, 1200]) == 300
    assert b["alerts"] == 2 and b["median_response_s"] is None  # 12:00 and 18:00
    late15 = {
        r["citizen"]: r for r in fleet.report(gw.db, "2026-03-10", "2026-03-10", late_after_s=900)
    }
    assert late15["c-0001"]["doses_late"] == 2 and late15["c-0001"]["doses_on_time"] == 1
    with pytest.raises(InputError):
        fleet.report(gw.db, "2026-03-31", "2026-03-01")


def test_status_counts_today_in_copenhagen(gw):
    now = ts("2026-06-01", "23:30")  # 21:30 UTC: still June 1st in Copenhagen
    gw.handle(
        *batch(
            "d-1",
            1,
            4,
            rec(1, logrec.TAKEN, occ=ts("2026-06-01", "00:30"), dose=0),  # 22:30 UTC
            rec(2, logrec.MISSED, occ=ts("2026-06-01", "12:00"), dose=1),
            rec(3, logrec.TAKEN, occ=ts("2026-05-31", "12:00"), dose=1),
        ),
        now=float(now),
    )
    rows = {r["device_id"]: r for r in fleet.status(gw.db, now=now)}
    assert (rows["d-1"]["taken_today"], rows["d-1"]["missed_today"]) == (1, 1)
    assert rows["d-1"]["open_alerts"] == 1 and rows["d-2"]["open_alerts"] == 0
    assert rows["d-2"]["last_seen"] == ""


# -- the CLI ----------------------------------------------------------------------------------


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env)


def test_fleet_cli(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DOSIS_DB", url)
    r = run(
        "fleet",
        "responder",
        "add",
        "team",
        "--webhook",
        "http://127.0.0.1:9/h",
        "--email",
        "t@x.test",
        "--target",
        "15m",
    )
    assert r.exit_code == 0, r.output
    r = run(
        "fleet", "enroll", "d-1", "--citizen", "c-1", "--responder", "team", "--key-hex", KEY.hex()
    )
    assert r.exit_code == 0 and "enrolled" in r.output
    r = run(
        "fleet",
        "enroll",
        "d-2",
        "--citizen",
        "120345-6789",
        "--responder",
        "team",
        "--key-hex",
        KEY.hex(),
    )
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "CPR" in r.output
    assert "Traceback" not in r.output
    r = run("fleet", "enroll", "d-2", "--citizen", "c-2", "--responder", "team", "--key-hex", "ab")
    assert r.exit_code == 1 and "64 hex" in r.output
    # the key from the keystore's uplink_key field
    ks = tmp_path / "keys.json"
    ks.write_text(json.dumps({"d-3": {"key": "00" * 32, "ctr": 0, "uplink_key": "11" * 32}}))
    os.chmod(ks, 0o600)
    monkeypatch.setenv("DOSIS_KEYSTORE", str(ks))
    r = run("fleet", "enroll", "d-3", "--citizen", "c-3", "--responder", "team")
    assert r.exit_code == 0, r.output
    assert open_db(url).ukey("d-3") == bytes([0x11]) * 32
    r = run("fleet", "enroll", "d-4", "--citizen", "c-4", "--responder", "team")
    assert r.exit_code == 1 and "dosis provision mqtt" in r.output

    gw = Gateway("mqtt://127.0.0.1:1", url, client_id="t", log=lambda s: None)
    gw.handle(*batch("d-1", 1, 2, rec(1, logrec.MISSED, occ=1_800_000_000, dose=0)))
    gw.db.close()

    r = run("fleet", "status", "--format", "json")
    assert r.exit_code == 0, r.output
    st = {d["device_id"]: d for d in json.loads(r.output)}
    assert st["d-1"]["citizen"] == "c-1" and st["d-1"]["open_alerts"] == 1
    r = run("fleet", "alerts", "--open", "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert len(rows) == 1 and rows[0]["kind"] == "missed" and rows[0]["text"] == "Dosis ikke taget"
    aid = rows[0]["id"]
    r = run("fleet", "ack", aid, "--by", "nurse-1")
    assert r.exit_code == 0 and "acknowledged after" in r.output
    r = run("fleet", "ack", aid)
    assert r.exit_code == 1 and r.output.startswith("error: alert") and r.output.count("\n") == 1
    r = run("fleet", "alerts", "--open", "--format", "json")
    assert json.loads(r.output) == []
    r = run("fleet", "alerts")
    assert r.exit_code == 0 and "nurse-1" in r.output
    day = fleet.today()
    r = run("fleet", "report", "--from", day, "--to", day, "--format", "json")
    assert r.exit_code == 0, r.output
    assert [row["alerts_acked"] for row in json.loads(r.output)] == [1, 0]
    r = run("fleet", "report", "--from", "15-01-2027", "--to", "2027-01-15")
    assert r.exit_code == 1 and "YYYY-MM-DD" in r.output
    r = run("fleet", "status", "--db", f"sqlite:///{tmp_path / 'typo.db'}")
    assert r.exit_code == 1 and "no fleet database" in r.output
    assert not (tmp_path / "typo.db").exists()
    r = run("fleet", "status", "--db", "mysql://x")
    assert r.exit_code == 1 and "sqlite:///PATH" in r.output
    r = run("fleet", "responder", "add", "x", "--target", "soon", "--email", "x@y.z")
    assert r.exit_code == 1 and "duration" in r.output
    r = run("gateway", "--broker", "http://x", "--db", url)
    assert r.exit_code == 1 and "mqtts://" in r.output


def test_a_delivery_is_claimed_by_one_gateway_only(gw):
    gw.handle(*batch("d-1", 1, 2, rec(1, logrec.MISSED, occ=1000, dose=0)), now=100.0)
    other = open_db(gw.db.url)
    n1 = Notifier(gw.db, "gw-a")
    n2 = Notifier(other, "gw-b")
    due1, due2 = n1.due(200.0), n2.due(200.0)
    assert due1 == due2 and len(due1) == 2  # webhook and e-mail, both seen by both
    assert [n1.claim(d, 200.0) for d in due1] == [True, True]
    assert [n2.claim(d, 200.0) for d in due2] == [False, False]
    assert {d["owner"] for d in other.deliveries()} == {"gw-a"}
    # a claim that expired (its gateway died) can be taken over
    later = 200.0 + 61
    assert n2.due(later) == due1 and n2.claim(due1[0], later) is True
    other.close()
