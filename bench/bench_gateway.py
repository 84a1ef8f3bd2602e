"""Gateway ingest: 1,000 simulated dispensers over MQTT into SQLite and PostgreSQL.

    .venv/bin/python bench/bench_gateway.py [--devices 1000] [--batches 10] [--db both]
        [--paced-batches 3] [--paced-rate R] [--gateways 1] [--record]

For each database (`--db sqlite|postgres|both`; PostgreSQL is a throw-away cluster from
bench/pg.py, installed from Debian packages if missing) and each phase, from scratch: a private
mosquitto on loopback (plain MQTT, persistence on), a fresh database with a responder and
`--devices` devices enrolled through the gateway's own API (`open_db(url).enroll`, each with
its own 32-byte uplink key), the gateway as a subprocess (`dosis gateway --broker mqtt://...
--db URL`, its own process and GIL; `--gateways 2` runs two in one shared-subscription group),
then the load generator (bench/loadgen.py: one MQTT connection per device, as the firmware's
uplink publishes: QoS 1 batches of 8 signed records, window 4, acks checked).

Phases:
- backlog: every device sends `--batches` batches at once, as fast as its window of 4
  PUBACKs allows (all devices coming back with a backlog at the same moment): the gateway's
  throughput. Latencies here are mostly queueing behind the other devices.
- paced: `--paced-batches` more batches a device at a steady aggregate rate (`--paced-rate`
  batches/s; default half the slower database's backlog rate in this run, the same rate for
  both databases): latency at a load the gateway keeps up with.

Figures per run: events (records) stored per second, from the first PUBLISH to the last ack
received (every ack is published only after its COMMIT); latency per batch from time.time()
just before the PUBLISH to (a) the device receiving the gateway's signed ack covering it
("publish -> ack at the device": commit included, plus the broker hop back) and (b) the
row's `stored` column (the gateway's clock when it took the message, before the INSERTs and
the COMMIT: publish -> gateway only). Then the check: rows in `events` = records sent, no
(device, seq) missing, every device's `acked` = its last seq, no rejects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host_tools"))
sys.path.insert(0, str(ROOT / "firmware"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "host"))

import loadgen  # noqa: E402

from dosis.gateway.db import open_db  # noqa: E402
from mosq import Broker  # noqa: E402

WORK = ROOT / "build" / "bench-gateway"
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN = "<!-- bench-gateway: begin (written by bench/bench_gateway.py --record) -->"
END = "<!-- bench-gateway: end -->"


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def start_broker(tmp: Path, queue: int, nodelay: bool) -> Broker:
    """tests/host/mosq.py's broker, without its per-message debug log (it would cost the
    broker more than the benchmark's traffic) and with the gateway's queue limit set."""
    b = Broker(tmp)
    lines = [ln for ln in b.conf.read_text().splitlines() if not ln.startswith("log_type")]
    lines += ["log_type error", "log_type warning", "log_type notice"]
    lines.append(f"max_queued_messages {queue}")
    if nodelay:
        lines.append("set_tcp_nodelay true")
    b.conf.write_text("\n".join(lines) + "\n")
    return b.start()


def gateway_cmd(broker: Broker, url: str, i: int) -> list[str]:
    dosis = Path(sys.executable).with_name("dosis")
    args = [
        "gateway", "--broker", f"mqtt://{broker.host}:{broker.port}", "--db", url,
        "--group", "bench", "--client-id", f"bench-gw-{i}",
    ]  # fmt: skip
    if dosis.exists():
        return [str(dosis), *args]
    return [sys.executable, "-m", "dosis.cli", *args]


def start_gateways(broker: Broker, url: str, n: int, logdir: Path) -> list:
    procs = []
    for i in range(n):
        log = logdir / f"gateway-{i}.log"
        f = log.open("w")
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'host_tools'}:{ROOT / 'firmware'}"}
        p = subprocess.Popen(
            gateway_cmd(broker, url, i), stdout=f, stderr=subprocess.STDOUT, env=env
        )
        procs.append((p, log))
    deadline = time.monotonic() + 30
    for p, log in procs:
        while "subscribed as" not in log.read_text(errors="replace"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
    return procs


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (its threads included)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def stop_gateways(procs: list) -> None:
    for p, _ in procs:
        if p.poll() is None:
            p.terminate()
    for p, _ in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def prepare_db(kind: str, pg) -> str:
    if kind == "sqlite":
        path = WORK / "fleet.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"
    pg.recreate_db()
    return pg.url


SETTINGS: dict[str, str] = {}


def enroll(url: str, keys: list[bytes]) -> float:
    t = time.monotonic()
    db = open_db(url)
    # What the gateway's connection runs with (it opens the database the same way).
    if db.kind == "sqlite":
        mode = db.q("PRAGMA journal_mode")[0][0]
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
            int(db.q("PRAGMA synchronous")[0][0]), "?"
        )
        SETTINGS["sqlite"] = f"journal_mode={mode}, synchronous={sync}"
    else:
        show = [db.q(f"SHOW {k}")[0][0] for k in ("fsync", "synchronous_commit")]
        SETTINGS["postgres"] = f"fsync={show[0]}, synchronous_commit={show[1]}"
    db.add_responder("bench-team", webhook="http://127.0.0.1:9/hook", target_min=15)
    for i, k in enumerate(keys):
        db.enroll(loadgen.device_id(i), f"c-{i:05d}", "bench-team", k)
    db.close()
    return time.monotonic() - t


def wait_status(url: str, n: int, timeout: float = 120) -> None:
    """Until the gateway has stored every device's "online" (so that phase starts quiet)."""
    db = open_db(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            k = db.q("SELECT COUNT(*) FROM devices WHERE status = 'online'")[0][0]
            if k >= n or time.monotonic() > deadline:
                return
            time.sleep(0.1)
    finally:
        db.close()


def run_one(
    kind: str, phase: str, args, pg, rate: float | None, nodelay: bool, gateways: int
) -> dict:
    """One database, one phase, everything fresh. Returns the figures."""
    tag = f"{kind}-{phase}{'-nodelay' if nodelay else ''}-{gateways}gw"
    tmp = WORK / tag
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    keys = loadgen.new_keys(args.devices)
    url = prepare_db(kind, pg)
    t_enroll = enroll(url, keys)
    broker = start_broker(tmp, args.broker_queue, nodelay)
    procs = []
    try:
        procs = start_gateways(broker, url, gateways, tmp)
        nb = args.batches if phase == "backlog" else args.paced_batches
        utc0 = int(time.time()) - 86400
        work = {
            loadgen.device_id(i): loadgen.make_batches(k, loadgen.device_id(i), 1, nb, utc0)
            for i, k in enumerate(keys)
        }
        cpu0 = sum(cpu_s(p.pid) for p, _ in procs)
        res = asyncio.run(_drive(broker, url, keys, work, phase, rate, args))
        res["gw_cpu_s"] = sum(cpu_s(p.pid) for p, _ in procs) - cpu0
    finally:
        stop_gateways(procs)
        broker.stop()
    res.update(
        db=kind, phase=phase, batches=nb, enroll_s=t_enroll, nodelay=nodelay, gateways=gateways
    )
    res.update(check(url, keys, work, res))
    logs = "".join(log.read_text(errors="replace") for _, log in procs)
    res["gateway_errors"] = len(re.findall(r"error handling|rejected", logs))
    return res


async def _drive(broker, url, keys, work, phase, rate, args) -> dict:
    devices = [loadgen.Device(i, k) for i, k in enumerate(keys)]
    t = time.monotonic()
    await loadgen.connect_all(devices, broker.host, broker.port)
    t_conn = time.monotonic() - t
    await asyncio.to_thread(wait_status, url, len(devices))
    t0 = time.time()
    if phase == "backlog":
        await loadgen.run_burst(devices, work)
    else:
        await loadgen.run_paced(devices, work, rate)
    t_sent = time.time()
    complete = await loadgen.wait_acked(devices, stall_s=args.stall)
    batches = [b for d in devices for b in d.done]
    sent = [b for d in devices for b in d.done + list(d.pending)]
    first = min((b.t_pub for b in sent), default=t0)
    last_ack = max((b.t_ack for b in batches), default=time.time())
    for d in devices:
        await d.close()
    return {
        "devices": len(devices),
        "connect_s": t_conn,
        "complete": complete,
        "unacked": sum(len(d.pending) for d in devices),
        "bad_acks": sum(d.bad_acks for d in devices),
        "acks": sum(d.acks for d in devices),
        "t0": t0,
        "send_s": t_sent - t0,
        "first_pub": first,
        "last_ack": last_ack,
        "ack_lat": [b.t_ack - b.t_pub for b in batches],
        "t_pub": {(d.id, b.frm): b.t_pub for d in devices for b in d.done + list(d.pending)},
    }


def check(url: str, keys: list[bytes], work: dict, res: dict) -> dict:
    db = open_db(url)
    try:
        sent = sum(len(w) for w in work.values()) * loadgen.BATCH
        rows = db.q("SELECT device_id, seq, stored FROM events")
        keyset = {(d, int(s)) for d, s, _ in rows}
        want = {(d, s) for d, w in work.items() for b in w for s in range(b.frm, b.nxt)}
        stored_lat = [
            float(st) - res["t_pub"][(d, int(s))]
            for d, s, st in rows
            if (d, int(s)) in res["t_pub"] and (int(s) - 1) % loadgen.BATCH == 0
        ]
        last_stored = max(float(st) for _, _, st in rows) if rows else float("nan")
        acked = dict(db.q("SELECT device_id, acked FROM devices"))
        acked_ok = sum(1 for d, w in work.items() if int(acked.get(d, 0)) == w[-1].nxt - 1)
        rejects = db.q("SELECT COUNT(*) FROM rejects")[0][0]
        alerts = db.q("SELECT COUNT(*) FROM alerts")[0][0]
    finally:
        db.close()
    span = res["last_ack"] - res["first_pub"]
    return {
        "sent": sent,
        "rows": len(rows),
        "missing": len(want - keyset),
        "extra": len(keyset - want),
        "acked_ok": acked_ok,
        "rejects": int(rejects),
        "alerts": int(alerts),
        "span_s": span,
        "eps": sent / span if span > 0 else float("nan"),
        "span_stored_s": last_stored - res["first_pub"],
        "stored_lat": stored_lat,
    }


def fmt_ms(x: float) -> str:
    return f"{x * 1000:,.0f} ms" if x >= 0.1 else f"{x * 1000:.1f} ms"


def exactly_once(r: dict) -> bool:
    return (
        r["complete"] and r["rows"] == r["sent"] and not r["missing"] and not r["extra"]
        and r["acked_ok"] == r["devices"]
    )  # fmt: skip


def phase_label(r: dict) -> str:
    s = r["phase"]
    if r.get("rate"):
        s += f" at {r['rate']:,.0f} batches/s"
    if r.get("nodelay"):
        s += ", broker `set_tcp_nodelay true`"
    if r.get("gateways", 1) > 1:
        s += f", {r['gateways']} gateways"
    return s


def table(results: list[dict]) -> str:
    head = (
        "| database | phase | devices × batches | events sent / stored | time | **events/s** "
        "| publish → ack at the device p50 / p99 | publish → `stored` p50 / p99 "
        "| gateway CPU | exactly once |"
    )
    out = [head, "|" + "---|" * 10]
    for r in results:
        ok = exactly_once(r)
        once = (
            "yes"
            if ok
            else f"**no**: {r['missing']:,} missing, {r['unacked']:,} batches unacked, "
            f"{r['devices'] - r['acked_ok']:,} devices behind"
        )
        al, sl = r["ack_lat"], r["stored_lat"]
        eps = f"**{r['eps']:,.0f}**" if ok else "–"
        if ok and r.get("rate"):
            eps = f"{r['eps']:,.0f} (offered)"
        cpu = r.get("gw_cpu_s", float("nan"))
        out.append(
            f"| {'PostgreSQL' if r['db'] == 'postgres' else 'SQLite'} | {phase_label(r)} "
            f"| {r['devices']:,} × {r['batches']} | {r['sent']:,} / {r['rows']:,} "
            f"| {r['span_s']:.1f} s | {eps} "
            f"| {fmt_ms(pct(al, 50))} / {fmt_ms(pct(al, 99))} "
            f"| {fmt_ms(pct(sl, 50))} / {fmt_ms(pct(sl, 99))} "
            f"| {cpu:.1f} s ({100 * cpu / r['span_s']:.0f} %) | {once} |"
        )
    return "\n".join(out)


def ratios(results: list[dict]) -> list[str]:
    by = {(r["db"], phase_label(r)): r for r in results}
    out = []
    for label in dict.fromkeys(phase_label(r) for r in results):
        s, p = by.get(("sqlite", label)), by.get(("postgres", label))
        if s and p:
            out.append(
                f"{label}: PostgreSQL/SQLite events/s "
                f"{p['eps'] / s['eps']:.2f}×, ack latency p50 "
                f"{pct(p['ack_lat'], 50) / pct(s['ack_lat'], 50):.2f}×, p99 "
                f"{pct(p['ack_lat'], 99) / pct(s['ack_lat'], 99):.2f}×"
            )
    return out


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    py = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{os.cpu_count()} CPUs ({cpu or platform.machine()}), {py}"


def record(text: str) -> None:
    body = RESULTS.read_text()
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    if BEGIN in body and END in body:
        a, b = body.index(BEGIN), body.index(END) + len(END)
        body = body[:a] + block + body[b:]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=20, help="backlog batches per device")
    ap.add_argument("--paced-batches", type=int, default=5, help="paced batches per device")
    ap.add_argument(
        "--paced-rate", type=float, default=0, help="batches/s (0: half the slower backlog rate)"
    )
    ap.add_argument("--phases", default="backlog,backlog-2gw,paced,paced-nodelay",
                    help="comma-separated: backlog, backlog-2gw (two gateways in one shared "
                    "subscription group), paced, paced-nodelay")  # fmt: skip
    ap.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--gateways", type=int, default=1)
    ap.add_argument(
        "--broker-queue", type=int, default=0,
        help="mosquitto max_queued_messages (0: no limit; mosquitto's default 1000 drops "
        "messages for the gateway in the backlog phase)",
    )  # fmt: skip
    ap.add_argument("--tcp-nodelay", action="store_true",
                    help="set_tcp_nodelay true on the broker in every phase")  # fmt: skip
    ap.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a PostgreSQL setting (-c), e.g. synchronous_commit=off")  # fmt: skip
    ap.add_argument("--stall", type=float, default=60, help="give up after this long with no ack")
    ap.add_argument("--record", action="store_true", help="write the section in bench/RESULTS.md")
    args = ap.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not set(phases) <= {"backlog", "backlog-2gw", "paced", "paced-nodelay"}:
        ap.error(f"--phases {args.phases}: use backlog, backlog-2gw, paced, paced-nodelay")

    nofile = loadgen.raise_nofile(4 * args.devices + 1024)
    if nofile < args.devices + 100:
        sys.exit(f"ulimit -n is {nofile}: too low for {args.devices} connections")
    WORK.mkdir(parents=True, exist_ok=True)
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    pg = None
    pg_version = ""
    if "postgres" in kinds:
        import pg as pgmod

        pg = pgmod.Cluster(settings=args.pg_setting)
        print("== PostgreSQL:", pg.start(), file=sys.stderr, flush=True)
        pg_version = pg.version()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = []
    rate = args.paced_rate
    try:
        for phase in phases:
            base = "paced" if phase.startswith("paced") else "backlog"
            ngw = max(2, args.gateways) if phase == "backlog-2gw" else args.gateways
            nodelay = args.tcp_nodelay or phase == "paced-nodelay"
            if base == "paced" and not rate:
                done = [
                    r["eps"]
                    for r in results
                    if r["phase"] == "backlog"
                    and r["gateways"] == args.gateways
                    and exactly_once(r)
                ]
                if not done:
                    sys.exit("paced needs --paced-rate, or a backlog phase first")
                rate = 0.5 * min(done) / loadgen.BATCH
            for kind in kinds:
                print(f"== {kind}: {phase}", file=sys.stderr, flush=True)
                r = run_one(kind, base, args, pg, rate if base == "paced" else None, nodelay, ngw)
                if base == "paced":
                    r["rate"] = rate
                results.append(r)
                print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
    finally:
        if pg is not None:
            pg.stop()

    cmd = "python bench/bench_gateway.py " + " ".join(sys.argv[1:])
    lines = [table(results), ""]
    for r in results:
        lines.append(
            f"- {r['db']}, {phase_label(r)}: enrol {r['enroll_s']:.1f} s, connect "
            f"{r['connect_s']:.1f} s, publish {r['send_s']:.1f} s; {r['acks']:,} acks "
            f"({r['bad_acks']} bad); first publish to the last `stored` "
            f"{r['span_stored_s']:.1f} s; rejects {r['rejects']}, alerts {r['alerts']}, "
            f"error/reject lines in the gateway log {r['gateway_errors']}"
        )
    lines += [f"- {x}" for x in ratios(results)]
    text = "\n".join(lines)
    print(text)
    if args.record:
        pgs = f" with {', '.join(args.pg_setting)}" if args.pg_setting else ""
        sec = [
            "## Gateway ingest: 1,000 simulated devices over MQTT into SQLite and PostgreSQL",
            "",
            f"- **Date:** {date}. **Command:** `{cmd}` (`make bench-gateway`).",
            f"- **Machine:** {machine()}; mosquitto {_mosquitto_version()} on loopback, plain "
            "MQTT (no TLS), persistence on, `max_queued_messages "
            f"{args.broker_queue}`; {pg_version or 'no PostgreSQL in this run'} (a throw-away "
            f"cluster from `bench/pg.py`{pgs}, otherwise default settings: "
            f"{SETTINGS.get('postgres', '-')}); SQLite with the gateway's settings: "
            f"{SETTINGS.get('sqlite', '-')}. {args.gateways} `dosis gateway` subprocess"
            + ("es in one shared-subscription group" if args.gateways > 1 else "")
            + " unless the row says otherwise; broker, gateways, PostgreSQL and the load "
            "generator share the CPUs.",
            "",
            text,
        ]
        record("\n".join(sec))
        print(f"recorded in {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0 if all(exactly_once(r) for r in results) else 1


def _mosquitto_version() -> str:
    from mosq import MOSQUITTO

    out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True)
    m = re.search(r"version (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
