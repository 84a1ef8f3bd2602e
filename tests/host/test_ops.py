"""The device commands (`dosis.ops`, `dosis.cli_device`, `dosis.screen`) against a fake device.

The fake is duck-typed like `dosis.device.Device`: it answers the protocol's commands from
in-memory state and records every call, so the tests can check the order of things (the log
is acknowledged only after it is on disk) as well as the results.
"""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dosis import cli_device, ops, screen
from dosis.cli import cli
from dosis.errors import AuthError, DeviceError, InputError, LinkError, ProtocolError
from dosis.schedules import load_schedule
from dosiscore import civil, logrec
from dosiscore.doses import Doses
from dosiscore.schedule import canonical, content_hash, validate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "schedule.toml"


def example() -> dict[str, Any]:
    return load_schedule(EXAMPLE)


def record(seq, utc, kind, occ=0, dose=None, detail=0, small=0) -> bytes:
    buf = bytearray(logrec.RECORD_SIZE)
    logrec.encode_into(buf, 0, seq, utc, kind, occ, dose, detail, small)
    return bytes(buf)


class FakeDevice:
    """A dispenser in memory. `calls` lists (cmd, args) in order; `log` maps seq -> record."""

    def __init__(self, doc: dict[str, Any] | None = None, **kw: Any) -> None:
        self.device_id: str | None = "dsp-0042"
        self.board: str | None = "sim"
        self.doc = doc
        self.calls: list[tuple[str, Any]] = []
        self.log: dict[int, bytes] = kw.get("log", {})
        self.acked = kw.get("acked", 0)
        self.pairing = kw.get("pairing", True)
        self.events_list = kw.get("events", [])
        self.fb = kw.get("fb", bytes(1024))
        self.wrong_put_hash = kw.get("wrong_put_hash", False)
        self.keep_old = kw.get("keep_old", False)  # "reboots" into the old schedule
        self.put_buf = ""
        self.closed = 0
        self.on_ack = kw.get("on_ack")
        self.settings = {"language": "da", "volume": 2, "tone": "normal", "mode": "normal"}
        self.fail: dict[str, Exception] = kw.get("fail", {})

    # -- the Device API
    def hello(self) -> dict[str, Any]:
        self.calls.append(("hello", None))
        if "hello" in self.fail:
            raise self.fail["hello"]
        return {
            "proto": 1,
            "fw": "0.9.0",
            "device": self.device_id,
            "board": self.board,
            "paired": True,
            "pairing": self.pairing,
        }

    def call(self, cmd: str, args: dict[str, Any] | None = None, *, timeout=None):
        self.calls.append((cmd, copy.deepcopy(args)))
        if cmd in self.fail:
            raise self.fail[cmd]
        return getattr(self, "_" + cmd.replace(".", "_"))(args or {})

    def call_many(self, reqs, window: int = 2):
        for cmd, args in reqs:
            yield self.call(cmd, args)

    def pair(self) -> str:
        self.calls.append(("pair", None))
        if not self.pairing:
            raise DeviceError("press the button", code="not_pairing")
        return self.device_id or ""

    def events(self, timeout=None):
        for e in self.events_list:
            if isinstance(e, BaseException):
                raise e
            yield e

    def close(self) -> None:
        self.closed += 1

    # -- commands
    def _info(self, args):
        seqs = sorted(self.log)
        return {
            "schedule": content_hash(self.doc) if self.doc else None,
            "utc": 1793520000,
            "local": "2026-11-01T09:00:00+01:00",
            "time_source": "rtc",
            "time_valid": True,
            "mains": True,
            "battery_mv": 4100,
            "heap_free": 51234,
            "log": {
                "first": seqs[0] if seqs else None,
                "last": seqs[-1] if seqs else 0,
                "acked": self.acked,
            },
            "faults": {},
            "mode": "normal",
            "next": 1793527200,
            "uptime_s": 93784,
        }

    def _schedule_get(self, args):
        if self.doc is None:
            return {"hash": None, "doc": None}
        return {"hash": content_hash(self.doc), "doc": copy.deepcopy(self.doc)}

    def _schedule_put(self, args):
        if args["at"] == 0:
            self.put_buf = ""
        assert args["at"] == len(self.put_buf.encode())
        self.put_buf += args["data"]
        if args["more"]:
            return {"have": len(self.put_buf.encode())}
        new = validate(json.loads(self.put_buf))
        self.put_buf = ""
        h = content_hash(new)
        if not self.keep_old:
            self.doc = new
        return {"hash": "0" * 64 if self.wrong_put_hash else h, "reboot": True}

    def _log_read(self, args):
        frm, n = args["from"], args["n"]
        assert 1 <= n <= 170
        seqs = [s for s in sorted(self.log) if s >= frm][:n]
        last = max(self.log, default=0)
        nxt = seqs[-1] + 1 if seqs else max(frm, last + 1)
        blob = b"".join(self.log[s] for s in seqs)
        return {"recs": base64.b64encode(blob).decode(), "next": nxt, "last": last}

    def _log_ack(self, args):
        if self.on_ack is not None:
            self.on_ack(args["seq"])
        self.acked = max(self.acked, args["seq"])
        return {"acked": self.acked}

    def _time_set(self, args):
        return {"utc": args["utc"], "step": 3}

    def _settings(self, args):
        self.settings.update(args)
        return dict(self.settings)

    def _display_snapshot(self, args):
        return {"screen": "clock", "w": 128, "h": 64, "fb": base64.b64encode(self.fb).decode()}

    def _monitor(self, args):
        return {"on": args["on"]}

    def cmds(self) -> list[str]:
        return [c for c, _ in self.calls]


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    """The reboot wait runs on a fake clock: sleeping advances it."""
    now = [1000.0]
    monkeypatch.setattr(ops, "_clock", lambda: now[0])
    monkeypatch.setattr(ops, "_sleep", lambda s: now.__setitem__(0, now[0] + s))


def run(dev, *args, input=None, opener=None):
    """Run `dosis ARGS` with `_open` giving `dev` (or calling `opener`)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(cli_device, "_open", opener or (lambda port: dev))
    try:
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    finally:
        mp.undo()


def run_main(dev, *args, opener=None):
    """Through DosisGroup.main, as the installed script runs: (exit code, stdout, stderr)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(cli_device, "_open", opener or (lambda port: dev))
    try:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)
    finally:
        mp.undo()


# -- the schedule diff ---------------------------------------------------------------------


def edited(doc: dict[str, Any], fn) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    fn(d)
    return validate(d)


def test_diff_added_removed_moved_and_the_rest():
    old = example()

    def change(d):
        d["timezone"] = "Europe/Oslo"
        d.pop("tz_rule")
        d["language"] = "en"
        d["alerts"]["early_min"] = 20
        d["dose"] = [x for x in d["dose"] if x["id"] != "middag"]
        for x in d["dose"]:
            if x["id"] == "morgen":
                x["time"] = "08:30"
                x["items"] = [
                    {"name": "Metformin 500 mg", "count": 2},
                    {"name": "Furix 40 mg", "count": 1},
                    {"name": "Panodil 500 mg", "count": 1},
                ]
            if x["id"] == "nat":
                x["days"] = ["mon", "thu"]
        d["dose"].append({"id": "frokost", "time": "11:00", "items": ["D-vitamin"]})

    new = edited(old, change)
    changes = ops.diff_schedules(old, new)
    kinds = {(c.kind, c.what) for c in changes}
    assert ("removed", "middag") in kinds
    assert ("added", "frokost") in kinds
    assert ("moved", "morgen") in kinds
    assert ("moved", "nat") in kinds
    assert ("medicines", "morgen") in kinds
    assert ("zone", "timezone") in kinds
    assert ("language", "language") in kinds
    assert ("alerts", "early_min") in kinds
    assert ("moved", "aften") not in kinds and ("medicines", "aften") not in kinds
    text = "\n".join(c.text for c in changes)
    assert "- dose middag 12:00 daily: 1 × Metformin 500 mg" in text
    assert "+ dose frokost 11:00 daily: 1 × D-vitamin" in text
    assert "~ dose morgen moved: 08:00 daily → 08:30 daily" in text
    assert "~ dose nat moved: 22:00 daily → 22:00 mon, thu" in text
    assert (
        "~ dose morgen medicines: + 1 × Panodil 500 mg; - 1 × Hjertemagnyl 75 mg; "
        "Metformin 500 mg 1 → 2" in text
    )
    assert "~ time zone: Europe/Copenhagen → Europe/Oslo" in text
    assert "~ language: da → en" in text
    assert "~ alerts.early_min: 30 → 20 min" in text


def test_diff_of_equal_schedules_is_empty_and_of_none_lists_everything():
    doc = example()
    assert ops.diff_schedules(doc, copy.deepcopy(doc)) == []
    first = ops.diff_schedules(None, doc)
    assert first[0].kind == "new"
    assert {c.what for c in first if c.kind == "added"} == {d["id"] for d in doc["dose"]}


# -- chunking and pushing ------------------------------------------------------------------


def big_schedule() -> dict[str, Any]:
    doses = []
    for k in range(12):
        items = [
            {"name": f'Medicin {k:02d}-{j} æøå "special" {"x" * 12}', "count": 1} for j in range(8)
        ]
        doses.append(
            {
                "id": f"d{k:02d}",
                "time": f"{k * 2:02d}:00",
                "items": items,
                "early_min": 10,
                "late_lock_min": 30,
                "notify_min": 15,
            }
        )
    return validate({"schema": 1, "citizen": "borger-1", "start": "2026-11-01", "dose": doses})


def test_chunks_are_small_whole_characters_and_join_up():
    doc = big_schedule()
    data = canonical(doc)
    assert 4096 < len(data) <= ops.MAX_SCHEDULE_BYTES
    chunks = ops.chunk_text(data.decode())
    assert len(chunks) >= 3
    assert "".join(chunks).encode() == data
    for c in chunks:
        assert len(c.encode()) <= ops.MAX_CHUNK_BYTES
        assert len(json.dumps(c)) <= ops.MAX_CHUNK_ESCAPED + 2
    # Quotes double in size when escaped: the escaped limit cuts first.
    quoted = ops.chunk_text('"' * 5000)
    assert all(len(json.dumps(c)) - 2 <= ops.MAX_CHUNK_ESCAPED for c in quoted)
    assert "".join(quoted) == '"' * 5000
    assert ops.chunk_text("") == [""]


def test_push_sends_chunks_and_verifies_the_hash_after_the_reboot():
    doc = big_schedule()
    dev = FakeDevice(example())
    plan = ops.plan_push(dev, doc)
    assert not plan.same and plan.changes
    opened = []

    def reconnect():
        opened.append(1)
        return dev

    h = ops.push_schedule(dev, plan, reconnect)
    assert h == content_hash(doc)
    puts = [a for c, a in dev.calls if c == "schedule.put"]
    assert len(puts) >= 3
    assert [p["more"] for p in puts] == [True] * (len(puts) - 1) + [False]
    assert [p["at"] for p in puts] == [
        sum(len(q["data"].encode()) for q in puts[:k]) for k in range(len(puts))
    ]
    assert "".join(p["data"] for p in puts).encode() == canonical(doc)
    assert all(len(p["data"].encode()) <= 2048 for p in puts)
    assert opened and dev.cmds()[-1] == "schedule.get"
    assert dev.doc == doc


def test_push_refuses_a_wrong_hash_from_the_device():
    dev = FakeDevice(example(), wrong_put_hash=True)
    plan = ops.plan_push(dev, big_schedule())
    with pytest.raises(ops.VerifyError, match="stored schedule 000000000000"):
        ops.push_schedule(dev, plan, lambda: dev)


def test_push_fails_when_the_device_comes_back_with_the_old_schedule():
    old = example()
    dev = FakeDevice(old, keep_old=True)
    plan = ops.plan_push(dev, big_schedule())
    with pytest.raises(ops.VerifyError, match=f"came back with schedule {content_hash(old)[:12]}"):
        ops.push_schedule(dev, plan, lambda: dev)
    # It kept asking until the deadline (the answer may have come before the reboot).
    assert dev.cmds().count("schedule.get") > 5


def test_push_waits_through_link_errors_then_gives_up():
    dev = FakeDevice(example())
    plan = ops.plan_push(dev, big_schedule())
    tries = []

    def reconnect():
        tries.append(1)
        if len(tries) < 4:
            raise LinkError("no such port")
        return dev

    assert ops.push_schedule(dev, plan, reconnect) == plan.hash
    assert len(tries) == 4

    def gone():
        raise LinkError("no such port")

    dev2 = FakeDevice(example())
    plan2 = ops.plan_push(dev2, big_schedule())
    with pytest.raises(LinkError, match="did not answer within 15 s"):
        ops.push_schedule(dev2, plan2, gone)


def test_push_cli_shows_the_diff_asks_and_pushes(tmp_path):
    dev = FakeDevice(example())
    f = tmp_path / "s.toml"
    f.write_text(EXAMPLE.read_text().replace('time = "12:00"', 'time = "12:30"'))
    r = run(dev, "schedule", "push", str(f), input="n\n")
    assert r.exit_code == 1
    assert "~ dose middag moved: 12:00 daily → 12:30 daily" in r.stdout
    assert "schedule.put" not in dev.cmds()
    r = run(dev, "schedule", "push", str(f), input="y\n")
    assert r.exit_code == 0, r.stderr
    assert "schedule.put" in dev.cmds()
    assert dev.doc == load_schedule(f)
    assert "now runs schedule" in r.stderr
    # The same schedule again: nothing is sent.
    n = len(dev.calls)
    r = run(dev, "schedule", "push", str(f), "--yes")
    assert r.exit_code == 0
    assert "already has this schedule" in r.stderr
    assert "schedule.put" not in dev.cmds()[n:]


def test_push_to_a_device_without_schedule_and_a_bad_file(tmp_path):
    dev = FakeDevice(None)
    r = run(dev, "schedule", "push", str(EXAMPLE), "--yes")
    assert r.exit_code == 0, r.stderr
    assert "no schedule yet" in r.stdout
    assert dev.doc == example()
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\ncitizen = "x"\n')
    r = run_main(dev, "schedule", "push", str(bad), "--yes")
    assert r.exit_code == 1
    assert "problem" in r.stderr


def test_push_cli_wrong_hash_exits_1():
    dev = FakeDevice(None, wrong_put_hash=True)
    r = run_main(dev, "schedule", "push", str(EXAMPLE), "--yes")
    assert r.exit_code == 1
    assert "error: the device stored schedule" in r.stderr


def test_push_refused_by_the_device_lists_its_problems():
    refusal = DeviceError(
        "dispenser dsp-0042 refused the schedule (2 problems)",
        code="invalid_schedule",
        data={"problems": ["dose[0].time: too early", "start: missing"]},
    )
    dev = FakeDevice(None, fail={"schedule.put": refusal})
    r = run_main(dev, "schedule", "push", str(EXAMPLE), "--yes")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-2:] == ["dose[0].time: too early", "start: missing"]


def test_schedule_pull(tmp_path):
    doc = example()
    dev = FakeDevice(doc)
    r = run(dev, "schedule", "pull")
    assert r.exit_code == 0
    assert r.stdout.strip().encode() == canonical(doc)
    r = run(dev, "schedule", "pull", "--json")
    assert json.loads(r.stdout) == {"hash": content_hash(doc), "doc": doc}
    out = tmp_path / "s.json"
    r = run(dev, "schedule", "pull", "-o", str(out))
    assert load_schedule(out) == doc
    r = run_main(FakeDevice(None), "schedule", "pull")
    assert r.exit_code == 1 and "no schedule" in r.stderr


# -- the loading map -----------------------------------------------------------------------


def every_other_day() -> dict[str, Any]:
    return validate(
        {
            "schema": 1,
            "citizen": "borger-7",
            "start": "2027-03-20",
            "end": "2027-05-01",
            "dose": [
                {"id": "morgen", "time": "08:00", "items": ["A"]},
                {"id": "nat", "time": "02:30", "days": {"every": 2}, "items": ["B"]},
                {"id": "tirsdag", "time": "14:00", "days": ["tue"], "items": ["C"]},
                {"id": "drops", "time": "20:00", "reminder_only": True, "items": ["D"]},
            ],
        }
    )


@pytest.mark.parametrize(
    "schedule, fill",
    [
        (example, ("2026-11-01", None)),
        (example, ("2026-11-03", "10:15")),
        (example, ("2027-03-27", "23:00")),  # across the spring-forward night
        (example, ("2027-10-30", "12:00")),  # across the autumn night
        (every_other_day, ("2027-03-26", None)),  # a 02:30 dose in the skipped hour
        (every_other_day, ("2027-04-20", "08:00")),  # at a dose's instant: it is included
        (every_other_day, ("2027-04-28", None)),  # the schedule ends before 28 doses
    ],
)
def test_loading_map_agrees_with_the_device(schedule, fill):
    doc = schedule()
    at = ops.fill_instant(doc, *fill)
    m = ops.loading_map(doc, at)
    doses = Doses(doc, {"fill": at}, at)
    assert len(m.compartments) == doc["compartments"]
    for c in m.compartments:
        if c.dose is not None:
            assert doses.compartment(c.utc, c.dose) == c.n
            assert c.utc >= at
    used = m.used
    assert [c.n for c in used] == list(range(1, len(used) + 1))
    assert all(not doses.by_id[c.dose]["reminder_only"] for c in used)
    # Every dispensed occurrence in the span is in the map, in order; reminders are in none.
    from dosiscore import planner

    if used:
        occ = planner.occurrences(doses.plan, at, used[-1].utc + 1)
        dispensed = [(t, i) for t, i in occ if not doses.by_id[i]["reminder_only"]]
        assert dispensed == [(c.utc, c.dose) for c in used]
        for t, i in occ:
            if doses.by_id[i]["reminder_only"]:
                assert doses.compartment(t, i) is None
    if len(used) == doc["compartments"]:
        nxt = planner.occurrences(doses.plan, used[-1].utc + 1, used[-1].utc + 7 * 86400)
        t, i = next((t, i) for t, i in nxt if not doses.by_id[i]["reminder_only"])
        assert doses.compartment(t, i) is None  # the 29th is in no compartment
    # Any fill after the previous dispensed dose, up to the first, gives the same map.
    if m.fill_after is not None and used:
        again = ops.loading_map(doc, m.fill_after + 1)
        assert again.compartments == m.compartments
        assert ops.loading_map(doc, used[0].utc).compartments == m.compartments


def test_loading_map_text_and_json():
    doc = example()
    at = ops.fill_instant(doc, "2026-11-02")
    m = ops.loading_map(doc, at)
    text = ops.format_loading_map(m)
    lines = text.splitlines()
    assert lines[0] == (
        f"Loading map 2026-11-02 to 2026-11-08 · borger-0042 · Europe/Copenhagen · "
        f"schedule {content_hash(doc)[:12]}"
    )
    assert (
        lines[1] == "Fill the carousel after 2026-11-01 22:00 and before 2026-11-02 08:00 "
        "(the first dose's time)."
    )
    body = [ln for ln in lines if ln[:3].strip().isdigit()]
    assert len(body) == 28
    assert body[0] == (
        "  1  2026-11-02  Mon  08:00  morgen            1 × Metformin 500 mg, "
        "1 × Hjertemagnyl 75 mg, 1 × Furix 40 mg"
    )
    assert body[3] == "  4  2026-11-02  Mon  22:00  nat               ½ × Zopiclon 7,5 mg"
    assert "ojendraaber" not in text and "Paracetamol" not in text
    j = m.as_json()
    assert j["first"] == "2026-11-02" and j["last"] == "2026-11-08"
    assert j["from"] == "2026-11-02T00:00:00+01:00"
    assert j["fill_after"] == "2026-11-01T22:00:00+01:00"
    assert j["fill_by"] == "2026-11-02T08:00:00+01:00"
    assert j["compartments"][0]["local"] == "2026-11-02T08:00:00+01:00"
    assert j["compartments"][0]["items"][0] == {"name": "Metformin 500 mg", "count": 1}


def test_loading_map_cli_from_file_and_device():
    r = run(None, "schedule", "loading-map", "--file", str(EXAMPLE), "--from", "2026-11-02")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("Loading map 2026-11-02 to 2026-11-08")
    dev = FakeDevice(example())
    r = run(dev, "schedule", "loading-map", "--from", "2026-11-02 12:00", "--json")
    j = json.loads(r.stdout)
    assert j["compartments"][0]["dose"] == "middag"
    assert j["compartments"][0]["date"] == "2026-11-02"
    # Without --from: from now on the device's clock (info's utc: 2026-11-01 09:00 local).
    j = json.loads(run(dev, "schedule", "loading-map", "--json").stdout)
    assert j["from"] == "2026-11-01T09:00:00+01:00"
    assert j["compartments"][0]["local"] == "2026-11-01T12:00:00+01:00"
    r = run_main(dev, "schedule", "loading-map", "--from", "2026-02-30")
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "is not a date" in r.stderr


# -- the dose log --------------------------------------------------------------------------


def device_log(doc, n=300, gap=range(100, 151), start=1):
    """A log of `n` seq numbers (minus `gap`): a boot with the schedule, then taken doses."""
    h = logrec.hash_prefix(content_hash(doc))
    t0 = 1793520000
    log = {}
    for s in range(start, start + n):
        if s in gap:
            continue
        if s == start:
            log[s] = record(s, t0, logrec.BOOT, small=1)
        elif s == start + 1:
            log[s] = record(s, t0, logrec.SCHEDULE, detail=h)
        else:
            log[s] = record(s, t0 + s * 60, logrec.TAKEN, occ=t0 + s * 60, dose=s % 4, small=1)
    return log


def test_decode_rows_resolves_dose_ids_only_under_this_schedule():
    doc = example()
    mine = logrec.hash_prefix(content_hash(doc))
    t = 1793520000
    recs = [
        (1, t, logrec.TAKEN, t, 0, 3, logrec.reason_code("button")),  # before a boot: unknown
        (2, t, logrec.BOOT, 0, None, 0, 1),
        (3, t, logrec.SCHEDULE, 0, None, 0xDEADBEEF, 0),  # another schedule
        (4, t, logrec.MISSED, t, 1, 0, logrec.reason_code("unseen")),
        (5, 0, logrec.BOOT, 0, None, 0, 3),
        (6, 0, logrec.SCHEDULE, 0, None, mine, 0),
        (7, t, logrec.TAKEN, t, 2, 5, logrec.reason_code("button,assisted")),
        (8, t, logrec.PRN, 0, 0, t + 3600, 0),
        (9, t, logrec.CLOCK_SET, t - 5, None, t, 3),
        (10, t, logrec.SETTINGS, 0, None, 0, 3 | 1 << 4 | 1 << 8),
    ]
    rows = ops.decode_rows(recs, doc)
    assert [r.dose for r in rows][:9] == [None] * 6 + ["aften", "smerte", None]
    assert rows[0].dose_index == 0
    assert rows[3].note == "unseen"
    assert rows[4].utc is None
    assert rows[6].note == "button, assisted"
    assert rows[7].note.startswith("refused until 2026-11-01T")
    assert rows[8].note.endswith("(nurse)")
    assert rows[9].note == "volume 3, tone low, language en"
    # No boot in the run: every record is under the device's current schedule.
    rows = ops.decode_rows([recs[0], recs[6]], doc)
    assert [r.dose for r in rows] == ["morgen", "aften"]
    assert [r.dose for r in ops.decode_rows([recs[0]], None)] == [None]


def test_decode_records_rejects_a_bad_crc():
    good = record(1, 5, logrec.BOOT)
    assert ops.decode_records(good)[0][0] == 1
    with pytest.raises(ProtocolError):
        ops.decode_records(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ProtocolError):
        ops.decode_records(good + b"\x00")


def test_read_log_pipelines_dedupes_and_crosses_gaps():
    doc = example()
    dev = FakeDevice(doc, log=device_log(doc))
    got = ops.read_log(dev, 1, 300, n=40)
    seqs = [r[0] for r in got.records]
    assert seqs == [s for s in range(1, 301) if s not in range(100, 151)]
    assert got.covered == 301
    froms = [a["from"] for c, a in dev.calls if c == "log.read"]
    assert froms[:8] == [1, 41, 81, 121, 161, 201, 241, 281]  # predicted from + n
    assert all(a["n"] == 40 for c, a in dev.calls if c == "log.read")


def test_rows_as_csv_json_and_jsonl():
    doc = example()
    recs = [r for s in (1, 2, 3) for r in ops.decode_records(device_log(doc, 3)[s])]
    rows = ops.decode_rows(recs, doc)
    c = list(csv.DictReader(io.StringIO(ops.format_rows(rows, "csv"))))
    assert list(c[0]) == list(ops.LOG_FIELDS)
    assert c[0]["kind"] == "boot" and c[0]["note"] == "power-on" and c[0]["dose"] == ""
    assert c[2] == {
        "seq": "3",
        "utc": "2026-11-01T08:03:00Z",
        "kind": "taken",
        "dose": "ojendraaber",
        "dose_index": "3",
        "due": "2026-11-01T08:03:00Z",
        "occ": str(1793520000 + 180),
        "detail": "0",
        "small": "1",
        "note": "button",
    }
    j = json.loads(ops.format_rows(rows, "json"))
    assert [x["seq"] for x in j] == [1, 2, 3]
    assert j[0]["dose"] is None and j[0]["due"] is None
    lines = ops.format_rows(rows, "jsonl").splitlines()
    assert [json.loads(x) for x in lines] == j
    with pytest.raises(InputError):
        ops.format_rows(rows, "xml")


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_log_pull_writes_then_acks(tmp_path, fmt):
    doc = example()
    out = tmp_path / f"log.{fmt}"
    seen_at_ack = []

    def on_ack(seq):
        seen_at_ack.append(out.read_text())

    dev = FakeDevice(doc, log=device_log(doc), acked=0, on_ack=on_ack)
    r = run(dev, "log", "pull", "--format", fmt, "-o", str(out))
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    text = out.read_text()
    assert seen_at_ack == [text]  # the whole file was on disk when the ack went out
    assert dev.calls[-1] == ("log.ack", {"seq": 300})
    assert dev.acked == 300
    assert "249 records (seq 1..300) written to" in r.stderr
    assert "acknowledged up to seq 300" in r.stderr
    if fmt == "json":
        assert len(json.loads(text)) == 249
    else:
        assert len(text.splitlines()) == 249 + (fmt == "csv")


def test_log_pull_from_acked_to_stdout_and_no_ack():
    doc = example()
    dev = FakeDevice(doc, log=device_log(doc), acked=290)
    r = run(dev, "log", "pull", "--format", "jsonl", "--no-ack")
    assert r.exit_code == 0
    assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == list(range(291, 301))
    assert "log.ack" not in dev.cmds()
    assert "not acknowledged (--no-ack)" in r.stderr
    r = run(dev, "log", "pull", "--format", "jsonl")
    assert dev.calls[-1] == ("log.ack", {"seq": 300})
    # Nothing new: nothing to acknowledge.
    r = run(dev, "log", "pull")
    assert r.exit_code == 0
    assert r.stdout == ",".join(ops.LOG_FIELDS) + "\n"
    assert dev.calls[-1][0] != "log.ack"


def test_log_pull_since_beyond_acked_does_not_ack():
    doc = example()
    dev = FakeDevice(doc, log=device_log(doc), acked=10)
    r = run(dev, "log", "pull", "--since", "200")
    assert r.exit_code == 0
    assert "log.ack" not in dev.cmds()
    assert "not acknowledged: --since 200 skips unacknowledged records from seq 11" in r.stderr
    # Re-reading from before the acknowledged point continues it: acknowledged.
    r = run(dev, "log", "pull", "--since", "5")
    assert dev.calls[-1] == ("log.ack", {"seq": 300})


def test_log_pull_write_failure_does_not_ack(tmp_path):
    doc = example()
    dev = FakeDevice(doc, log=device_log(doc))
    r = run_main(dev, "log", "pull", "-o", str(tmp_path / "missing" / "log.csv"))
    assert r.exit_code == 1
    assert "cannot be written" in r.stderr and "nothing was acknowledged" in r.stderr
    assert "log.ack" not in dev.cmds()

    class Broken(io.StringIO):
        def write(self, s):
            raise OSError(28, "No space left on device")

    got = ops.pull_log(FakeDevice(doc, log=device_log(doc)))
    with pytest.raises(InputError, match="No space left"):
        ops.write_rows(got.rows, "csv", None, Broken())
    dev = FakeDevice(doc, log=device_log(doc))
    with pytest.raises(InputError):
        ops.export_log(dev, "csv", None, Broken())
    assert "log.ack" not in dev.cmds()


# -- the screen ----------------------------------------------------------------------------


def test_screen_text_of_a_small_framebuffer():
    # 4 x 8: column 0 rows 0-1 lit, column 1 row 0, column 2 row 1, column 3 row 7.
    fb = bytes([0b00000011, 0b00000001, 0b00000010, 0b10000000])
    assert screen.to_text(fb, 4, 8) == "█▀▄ \n    \n    \n   ▄\n"
    assert screen.to_text(fb, 4, 8, border=True).splitlines()[0] == "┌────┐"
    with pytest.raises(ValueError):
        screen.to_text(fb, 4, 16)


def test_screen_text_of_a_full_framebuffer():
    fb = bytearray(1024)
    for x in range(128):  # a frame: top and bottom rows, left and right columns
        fb[x] |= 1
        fb[7 * 128 + x] |= 0x80
    for band in range(8):
        fb[band * 128] = 0xFF
        fb[band * 128 + 127] = 0xFF
    fb[3 * 128 + 64] |= 0b00011000  # rows 27 and 28 at column 64
    lines = screen.to_text(bytes(fb)).splitlines()
    assert len(lines) == 32 and all(len(ln) == 128 for ln in lines)
    assert lines[0] == "█" + "▀" * 126 + "█"
    assert lines[31] == "█" + "▄" * 126 + "█"
    assert lines[13][64] == "▄" and lines[14][64] == "▀"  # rows 27 (bottom of 13), 28
    assert lines[5] == "█" + " " * 126 + "█"


def read_png(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h, depth, color, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = [raw[y * (w + 1) : (y + 1) * (w + 1)] for y in range(h)]
    assert all(r[0] == 0 for r in rows)
    return w, h, depth, color, [r[1:] for r in rows]


def test_screen_png():
    fb = bytearray(1024)
    fb[0] = 0b1  # pixel (0, 0)
    fb[128 + 5] = 0b100  # pixel (5, 10)
    w, h, depth, color, rows = read_png(screen.to_png(bytes(fb)))
    assert (w, h, depth, color) == (512, 256, 8, 0)
    assert rows[0][:4] == b"\xff" * 4 and rows[3][3] == 255 and rows[4][0] == 0
    assert rows[40][20] == 255 and rows[43][23] == 255 and rows[44][20] == 0
    assert sum(v == 255 for r in rows for v in r) == 2 * 16


def test_screen_cli(tmp_path):
    fb = bytearray(1024)
    fb[0] = 0b11
    dev = FakeDevice(example(), fb=bytes(fb))
    r = run(dev, "screen")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert len(lines) == 34 and lines[1].startswith("│█ ")
    assert "screen: clock" in r.stderr
    png = tmp_path / "s.png"
    r = run(dev, "screen", "--png", str(png))
    assert r.stdout == "" and read_png(png.read_bytes())[0] == 512
    j = json.loads(run(dev, "screen", "--json").stdout)
    assert j["screen"] == "clock" and base64.b64decode(j["fb"]) == bytes(fb)
    assert j["text"][0].startswith("█ ")
    bad = FakeDevice(example(), fb=bytes(100))
    r = run_main(bad, "screen")
    assert r.exit_code == 5


# -- the other commands --------------------------------------------------------------------


def test_pair_asks_for_the_button_first():
    dev = FakeDevice(None, pairing=False)
    r = run_main(dev, "pair")
    assert r.exit_code == 1
    assert "press its service button" in r.stderr
    assert "pair" not in dev.cmds()  # nothing the device would log as refused
    dev = FakeDevice(None, pairing=True)
    r = run(dev, "pair")
    assert r.exit_code == 0 and r.stdout == "dsp-0042\n"
    assert dev.closed == 1


def test_info_table_and_json():
    dev = FakeDevice(example(), log={1: record(1, 5, logrec.BOOT)})
    r = run(dev, "info")
    assert r.exit_code == 0
    assert "device       dsp-0042" in r.stdout
    assert f"schedule     {content_hash(example())}" in r.stdout
    assert "log          seq 1..1, acknowledged up to 0" in r.stdout
    assert "uptime       1 d 02:03" in r.stdout
    j = json.loads(run(dev, "info", "--json").stdout)
    assert j["device"] == "dsp-0042" and j["fw"] == "0.9.0" and j["battery_mv"] == 4100


def test_time_sync(monkeypatch):
    dev = FakeDevice(example())
    r = run(dev, "time", "sync")
    assert r.exit_code == 0
    assert r.stdout.endswith("; step +3 s\n")
    (cmd, args) = dev.calls[-1]
    assert cmd == "time.set" and abs(args["utc"] - __import__("time").time()) < 5


def test_time_sync_on_a_device_without_time():
    dev = FakeDevice(example())
    dev._time_set = lambda args: {"utc": 1793520000, "step": None}
    r = run(dev, "time", "sync")
    assert r.stdout == "clock set to 2026-11-01T08:00:00Z; it had no time before\n"


def test_settings_read_and_change():
    dev = FakeDevice(example())
    r = run(dev, "settings", "--json")
    assert json.loads(r.stdout)["volume"] == 2
    assert dev.calls[-1] == ("settings", {})
    r = run(dev, "settings", "--volume", "4", "--mode", "travel")
    assert dev.calls[-1] == ("settings", {"volume": 4, "mode": "travel"})
    assert "volume    4" in r.stdout and "mode      travel" in r.stdout
    r = run_main(dev, "settings", "--volume", "5")
    assert r.exit_code == 1 and r.stderr.startswith("error: ")


def test_monitor_prints_events_and_unsubscribes():
    t = 1793491200 + 7 * 3600  # 2026-11-01 08:00 in Copenhagen
    evs = [
        {"ev": "due", "t": t, "dose": "morgen", "detail": "", "seq": 5},
        {"ev": "taken", "t": t + 60, "dose": "morgen", "detail": "button", "seq": 6},
        {"ev": "rtc_lost", "t": None, "dose": None, "detail": "", "seq": None},
    ]
    dev = FakeDevice(example(), events=evs)
    r = run(dev, "monitor")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("2026-11-01 08:00:00  due")
    assert lines[1].split() == ["2026-11-01", "08:01:00", "taken", "morgen", "button"]
    assert lines[2].startswith("time unknown")
    assert dev.calls[-1] == ("monitor", {"on": False})
    r = run(FakeDevice(example(), events=evs), "monitor", "--json")
    assert json.loads(r.stdout.splitlines()[1])["local"] == "2026-11-01T08:01:00+01:00"
    # Ctrl-C: unsubscribed, exit 0.
    dev = FakeDevice(example(), events=[evs[0], KeyboardInterrupt()])
    r = run(dev, "monitor")
    assert r.exit_code == 0 and "stopped" in r.stderr
    assert dev.calls[-1] == ("monitor", {"on": False})


# -- exit codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, code",
    [
        (LinkError("no dispenser found: is it plugged in?"), 3),
        (AuthError("dispenser dsp-0042 is not paired", code="not_paired"), 4),
        (ProtocolError("device speaks protocol 2"), 5),
        (DeviceError("busy", code="busy"), 1),
        (RuntimeError("boom"), 2),
    ],
)
def test_exit_codes(exc, code):
    dev = FakeDevice(example(), fail={"info": exc})
    r = run_main(dev, "info")
    assert r.exit_code == code
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1


def test_link_error_when_opening():
    def opener(port):
        raise LinkError(f"{port}: no such port")

    r = run_main(None, "info", "--port", "/dev/nothing", opener=opener)
    assert r.exit_code == 3 and r.stderr == "error: /dev/nothing: no such port\n"


def test_port_from_the_environment():
    ports = []

    def opener(port):
        ports.append(port)
        return FakeDevice(example())

    r = CliRunner(env={"DOSIS_PORT": "/dev/ttyUSB7"})
    mp = pytest.MonkeyPatch()
    mp.setattr(cli_device, "_open", opener)
    try:
        res = r.invoke(cli, ["info"], catch_exceptions=False)
        help_text = r.invoke(cli, ["info", "--help"]).stdout
    finally:
        mp.undo()
    assert res.exit_code == 0 and ports == ["/dev/ttyUSB7"]
    assert "DOSIS_PORT" in help_text


@pytest.mark.parametrize(
    "args, words",
    [
        (("log", "pull", "--since", "-3"), "-3 is not in the range x>=1"),
        (("log", "pull", "--format", "xml"), "'xml' is not one of"),
        (("schedule", "loading-map", "--from", "tomorrow"), '"tomorrow" is not a date'),
        (("schedule", "push", "/nonexistent/s.toml", "--yes"), "no such file"),
        (("schedule", "loading-map", "--file", "/nonexistent/s.toml"), "no such file"),
    ],
)
def test_bad_arguments_are_one_line_exit_1(args, words):
    dev = FakeDevice(example())
    r = run_main(dev, *args)
    assert r.exit_code == 1
    assert len(r.stderr.splitlines()) == 1 and words in r.stderr
    assert r.stdout == ""


def test_help_lists_exit_codes():
    r = CliRunner().invoke(cli, ["--help"])
    for line in ("0  done", "3  link", "4  key", "5  incompatible protocol"):
        assert line in r.stdout
    assert civil.WEEKDAYS  # the core is importable next to the CLI
