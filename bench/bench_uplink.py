"""What the Wi-Fi uplink costs the firmware, on the MicroPython VM (issue 7).

    .venv/bin/python bench/bench_uplink.py [--hours 12] [--pace 1000] [--quick] [--json FILE]
                                                                          (make bench-uplink)

One run, three configurations of the same firmware on the simulated board (bench/mp_uplink.py,
the warp clock paced as firmware/sim/serve.py paces it), each in `-X heapsize=128K` and in the
unix port's default heap:

- none: the app alone, no network;
- mqtt: the app + `dispenser.net.Net` (Wi-Fi task, uplink) over plain MQTT;
- tls:  the same over TLS, the broker's certificate verified against the CA (EC P-256).

The uplink sends the dose log and heartbeats to a private mosquitto (tests/host/mosq.py), and
the real gateway runs in this process (`dosis.gateway.service.Gateway`, SQLite), enrolled
with each run's device id and uplink key, so every ack the device accepts is the gateway's,
signed. Reported per run: heap after boot and at peak (gc.mem_alloc() after gc.collect(),
sampled every 100 ms of real time), MemoryError, the longest hold of the event loop (a 10 ms
ticker), records durable / acked, heartbeats. Then, since the firmware does not load in 128 KB
on this 64-bit port, the smallest heap each configuration runs a short span in (bisection,
4 KB steps), which is the comparison that says what the uplink adds. Also the .mpy sizes of
the online modules. Method and limits: bench/RESULTS.md.
"""

import argparse
import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "host"))
import bench_firmware as bf  # noqa: E402  (its schedule, clock and Job helpers)

from dosis.gateway.db import open_db  # noqa: E402
from dosis.gateway.service import Gateway  # noqa: E402
from mosq import Broker  # noqa: E402
from tlsca import make_pki  # noqa: E402

OUT = ROOT / "build" / "bench-uplink"
MPY = OUT / "mpy"  # the firmware, compiled as `make mpy` compiles it
HARNESS = OUT / "harness"
MPY_ARCH = "xtensawin"
ONLINE = ("net", "uplink", "mqtt", "tls", "sntp")
CONFIGS = ("none", "mqtt", "tls")
HB_S = 5  # heartbeat period, real seconds (the device's default is 300 s; see RESULTS.md)
RESPONDER = "team-bench"


def compile_all():
    """The firmware into build/bench-uplink/mpy (the Makefile's `mpy` recipe, into a directory
    of this bench's own so that a concurrent `make mpy` does not pull it away mid-run), and
    the harnesses into build/bench-uplink/harness."""
    shutil.rmtree(MPY, ignore_errors=True)
    HARNESS.mkdir(parents=True, exist_ok=True)
    fw = ROOT / "firmware"
    for src in sorted(fw.rglob("*.py")):
        if "__pycache__" in src.parts:
            continue
        rel = src.relative_to(fw).as_posix()
        out = MPY / (rel[:-3] + ".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(bf.MPY_CROSS), "-march=" + MPY_ARCH, "-s", rel, "-o", str(out), str(src)],
            check=True,
        )
    for name in ("mp_common", "mp_uplink"):
        subprocess.run(
            [str(bf.MPY_CROSS), "-o", str(HARNESS / (name + ".mpy")), str(HERE / (name + ".py"))],
            check=True,
        )


class Job(bf.Job):
    """bench_firmware's Job, with this bench's import path and a time limit (a run whose
    firmware task died of a MemoryError can leave the warp clock waiting for it forever)."""

    limit_s = 600.0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.path = "%s:%s" % (MPY, HARNESS)


class World:
    """mosquitto (plain and TLS listeners), the CA, and the gateway with its database."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.pki = make_pki(tmp / "pki")
        self.broker = Broker(tmp, tls=self.pki).start()
        self.db_url = "sqlite:///%s" % (tmp / "fleet.db")
        db = open_db(self.db_url)
        db.add_responder(RESPONDER)
        db.close()
        self.gw_log = []
        self.gw = Gateway(
            "mqtt://127.0.0.1:%d" % self.broker.port,
            self.db_url,
            client_id="bench-uplink-gw",
            log=self.gw_log.append,
        ).start()
        self.n = 0

    def enroll(self):
        """A new device id and uplink key, enrolled at the gateway."""
        self.n += 1
        did = "sim-bench-%04d" % self.n
        ukey = secrets.token_bytes(32)
        db = open_db(self.db_url)
        db.enroll(did, "borger-%04d" % self.n, RESPONDER, ukey)
        db.close()
        return did, ukey

    def stored(self, did):
        with contextlib.closing(sqlite3.connect(str(self.tmp / "fleet.db"))) as c:
            n = c.execute("SELECT COUNT(*) FROM events WHERE device_id = ?", (did,)).fetchone()
            row = c.execute(
                "SELECT acked, health IS NOT NULL FROM devices WHERE device_id = ?", (did,)
            ).fetchone()
        return {"events": n[0], "acked": row[0] if row else None, "health": bool(row and row[1])}

    def close(self):
        with contextlib.suppress(Exception):
            self.gw.stop()
        self.broker.stop()


def net_json(world, config, ukey):
    m = {
        "host": "127.0.0.1",
        "port": world.broker.tls_port if config == "tls" else world.broker.port,
        "tls": config == "tls",
        "ca": world.pki.ca_pem.read_text() if config == "tls" else None,
        "ukey": ukey.hex(),
        "hb": HB_S,
        "backoff": [0.2, 2],
    }
    return {"mqtt": m}


def run_job(world, config, heap, start, end, pace, drain, state_root, sched):
    doc = bf.example_schedule()
    args = ["start=%d" % start, "end=%d" % end, "day0=%d" % bf.local_utc(bf.DAY0, "00:00")]
    args += ["net=%s" % config, "pace=%d" % pace, "drain=%g" % drain, "sched=%s" % sched]
    job = Job(
        "up-%s-%s" % (config, heap or "D"),
        "mp_uplink",
        args,
        heap=heap,
        state_root=state_root,
        doc=doc,
    )
    # Real time the span should take at the pace, 5x over for TLS's slower passes, + drain.
    job.limit_s = 60 + drain + 5 * (end - start) / max(pace, 1)
    did = None
    if config != "none":
        did, ukey = world.enroll()
        (job.state / "sim-id").write_text(did)
        (job.state / "net.json").write_text(json.dumps(net_json(world, config, ukey)))
    bf.run(job)
    job.did = did
    job.gateway = world.stored(did) if did else None
    return job


def ok(job):
    """Ran to the end: no MemoryError anywhere, no task dead, every record acked (online)."""
    r = job.result
    if not r or "memory_error" in r or r.get("crashes") or r.get("memory_traces"):
        return False
    if any("MemoryError" in k for k in r.get("uplink_errors", {})):
        return False
    if r["net"] != "none":
        log = r.get("log") or {}
        return log.get("acked") is not None and log.get("acked") == log.get("durable")
    return True


def memory_error(job):
    """Where the run ran out of memory, in one line, or None."""
    r = job.result
    if r is None:
        text = job.failure()
        if "MemoryError" in text:
            return _where(text)
        if job.timed_out:
            return "no result in %.0f s (killed)" % job.limit_s
        return None
    if "memory_error" in r:
        return _where(r.get("trace", r["memory_error"]))
    if r.get("memory_traces"):
        where, heap, trace = r["memory_traces"][0]
        return "%s: %s, %s in use after collect" % (where, _where(trace), kb(heap))
    errs = [k for k in r.get("uplink_errors", {}) if "MemoryError" in k]
    if errs:
        return "uplink: " + errs[0]
    for c in r.get("crashes", []):
        if "MemoryError" in c:
            return c
    return None


def _where(trace):
    """The innermost `File ..., line N` of a traceback, and the error line."""
    lines = [x.strip() for x in trace.strip().splitlines() if x.strip()]
    files = [x for x in lines if x.startswith("File ")]
    last = lines[-1] if lines else "?"
    return "%s (%s)" % (last, files[-1] if files else "no traceback")


def smallest_heap(world, config, start, end, pace, state_root, sched, lo_kb, hi_kb, say):
    """The smallest -X heapsize (KB, 4 KB steps) at which a short span runs clean."""
    runs = []
    good = None
    lo, hi = lo_kb, hi_kb
    while hi - lo > 4:
        mid = (lo + hi) // 2 // 4 * 4
        j = run_job(world, config, "%dK" % mid, start, end, pace, 5, state_root, sched)
        fine = ok(j)
        runs.append((mid, fine, memory_error(j)))
        say(
            "  smallest heap, %s: %d KB %s"
            % (
                config,
                mid,
                "ok" if fine else "FAILS: %s" % (memory_error(j) or j.failure()[-200:]),
            )
        )
        if fine:
            hi = mid
            good = j
        else:
            lo = mid
    return hi, good, runs


def mpy_sizes():
    return [(n, (MPY / "dispenser" / (n + ".mpy")).stat().st_size) for n in ONLINE]


def kb(b):
    return "-" if b is None else "%.1f KB" % (b / 1024)


def row(config, heap_label, job, span_h):
    r = job.result or {}
    t = r.get("ticker") or {}
    me = memory_error(job)
    log = r.get("log") or {}
    up = r.get("uplink") or {}
    gap = t.get("max_gap_us")
    steps = [(k, v["max_us"]) for k, v in (r.get("app_tasks") or {}).items()]
    steps += [(k, v["max_us"]) for k, v in (r.get("net_tasks") or {}).items()]
    return {
        "longest_step": max(steps, key=lambda kv: kv[1]) if steps else None,
        "config": config,
        "heap": heap_label,
        "span_h": span_h,
        "after_boot": r.get("after_boot"),
        "peak": t.get("peak") or None,
        "memory_error": me,
        "max_gap_us": gap,
        "hold_ms": None if gap is None else max(0, gap - 10000) / 1000,
        "durable": log.get("durable"),
        "acked": log.get("acked"),
        "heartbeats": up.get("heartbeats"),
        "published": up.get("published"),
        "connects": up.get("connects"),
        "uplink_errors": r.get("uplink_errors"),
        "span_wall_s": r.get("span_wall_s"),
        "wall_s": job.wall,
        "gateway": job.gateway,
        "steal_ms": getattr(job, "steal", None),
        "net_tasks": r.get("net_tasks"),
        "app_tasks": {k: v["max_us"] for k, v in (r.get("app_tasks") or {}).items()},
        "by_phase": t.get("by_phase"),
        "hist": t.get("hist"),
        "vm_after_boot": r.get("vm_after_boot"),
        "vm_end": r.get("vm_end"),
        "ok": ok(job),
        "failure": None if job.result else job.failure()[-600:],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=12, help="simulated span, none and mqtt")
    ap.add_argument("--tls-hours", type=float, default=12, help="simulated span under TLS")
    ap.add_argument("--pace", type=int, default=1000, help="virtual seconds per real second")
    ap.add_argument("--quick", action="store_true", help="a short smoke run (not for RESULTS)")
    ap.add_argument("--json", help="also write every raw result to this file")
    opts = ap.parse_args()
    if opts.quick:
        opts.hours = opts.tls_hours = 2
    t_start = time.monotonic()
    lines = []

    def say(line):
        lines.append(line)
        print(line, flush=True)

    compile_all()
    shm = Path("/dev/shm")
    state_root = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    from dosiscore import schedule

    sched = schedule.content_hash(bf.example_schedule())
    start = bf.local_utc(bf.DAY0, "06:00")
    raw = {"rows": [], "smallest": {}}
    tmp = Path(tempfile.mkdtemp(prefix="dosis-bench-uplink-"))
    world = World(tmp)
    try:
        # 1. The span, each configuration in both heaps.
        for heap, label in (("128K", "128 KB"), (None, "default (2 MB)")):
            for config in CONFIGS:
                hours = opts.tls_hours if config == "tls" else opts.hours
                end = start + int(hours * 3600)
                j = run_job(world, config, heap, start, end, opts.pace, 20, state_root, sched)
                r = row(config, label, j, hours)
                raw["rows"].append(r)
                say(
                    "%-4s %-15s %4.1f h: after boot %s, peak %s, MemoryError %s, longest 10 ms "
                    "tick gap %s (hold %s ms), longest task step %s, records durable %s acked %s, "
                    "heartbeats %s, span %s s real, run %.1f s, uplink errors %s"
                    % (
                        config,
                        label,
                        hours,
                        kb(r["after_boot"]),
                        kb(r["peak"]),
                        r["memory_error"] or "no",
                        "-" if r["max_gap_us"] is None else "%.1f ms" % (r["max_gap_us"] / 1000),
                        "-" if r["hold_ms"] is None else "%.1f" % r["hold_ms"],
                        "-"
                        if not r["longest_step"]
                        else "%.1f ms (%s)" % (r["longest_step"][1] / 1000, r["longest_step"][0]),
                        r["durable"],
                        r["acked"],
                        r["heartbeats"],
                        r["span_wall_s"],
                        r["wall_s"],
                        r["uplink_errors"],
                    )
                )
                if r["failure"] and not r["memory_error"]:
                    say("  !! " + r["failure"].replace("\n", " / "))
        # 2. The smallest heap each configuration runs in: 07:50-08:30, a dose with its tone,
        # the button and the log records it makes, sent and acked.
        s_start = bf.local_utc(bf.DAY0, "07:50")
        s_end = bf.local_utc(bf.DAY0, "08:30")
        for config in CONFIGS:
            kb_min, job, runs = smallest_heap(
                world, config, s_start, s_end, opts.pace, state_root, sched, 128, 512, say
            )
            raw["smallest"][config] = {
                "kb": kb_min,
                "runs": runs,
                "row": row(config, "%d KB" % kb_min, job, 40 / 60) if job else None,
            }
            say("smallest heap that runs 07:50-08:30 clean, %s: %d KB" % (config, kb_min))
    finally:
        world.close()
        shutil.rmtree(tmp, ignore_errors=True)

    # 3. Ratios.
    big = {r["config"]: r for r in raw["rows"] if r["heap"].startswith("default")}
    base = big.get("none")
    for config in ("mqtt", "tls"):
        r = big.get(config)
        if not (base and r and base["peak"] and r["peak"]):
            continue
        say(
            "ratio %s / none (default heap): after boot %.2fx (+%s), peak %.2fx (+%s), "
            "longest tick gap %.2fx"
            % (
                config,
                r["after_boot"] / base["after_boot"],
                kb(r["after_boot"] - base["after_boot"]),
                r["peak"] / base["peak"],
                kb(r["peak"] - base["peak"]),
                r["max_gap_us"] / base["max_gap_us"],
            )
        )
    sm = raw["smallest"]
    if all(c in sm for c in CONFIGS):
        say(
            "smallest heap: none %d KB, mqtt %d KB (%.2fx), tls %d KB (%.2fx)"
            % (
                sm["none"]["kb"],
                sm["mqtt"]["kb"],
                sm["mqtt"]["kb"] / sm["none"]["kb"],
                sm["tls"]["kb"],
                sm["tls"]["kb"] / sm["none"]["kb"],
            )
        )
    sizes = mpy_sizes()
    raw["mpy"] = sizes
    say(
        "compiled .mpy (%s): %s; %d bytes in all"
        % (MPY_ARCH, ", ".join("%s %d" % s for s in sizes), sum(s for _, s in sizes))
    )
    say("bench-uplink: %.0f s on %d CPUs" % (time.monotonic() - t_start, os.cpu_count() or 0))
    if opts.json:
        Path(opts.json).write_text(json.dumps({"lines": lines, "raw": raw}, indent=1))


if __name__ == "__main__":
    main()
