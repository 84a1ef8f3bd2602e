"""Log pull throughput over the serial link: the virtual dispenser throttled to a real UART.

    .venv/bin/python bench/bench_link.py [--days 90] [--baud 115200] [--repeat 3]

A state directory is filled first by the scenario runner (the firmware on the warp clock,
`--days` days of doses nobody takes: every reminder stage is logged), then `dosis sim` serves
it over a pseudo-terminal throttled to `--baud` (8N1: baud/10 bytes a second each way), and
the host API pulls the whole log (`ops.read_log`: pipelined log.read requests, the path of
`dosis log pull`). Figures: kB/s of log data (24-byte records) and that as a share of the
line's own rate, measured in the same run, plus the same pull unthrottled for the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host_tools"))
sys.path.insert(0, str(ROOT / "firmware"))

from dosis import ops, schedules  # noqa: E402
from dosis.device import open_device  # noqa: E402
from dosis.keystore import Keystore  # noqa: E402
from dosis.simhost import VirtualDispenser, micropython_binary  # noqa: E402
from dosiscore import civil, schedule, tz  # noqa: E402


def fill_log(state: Path, days: int, end_utc: int) -> None:
    doc = schedules.load_schedule(ROOT / "examples" / "schedule.toml")
    sched = state.parent / "schedule.json"
    sched.write_bytes(schedule.canonical(doc))
    zone = tz.Tz(doc["tz_rule"])
    start = end_utc - days * 86400
    fmt = lambda t: civil.format_iso(t, zone.offset(t))[:16].replace("T", " ")  # noqa: E731
    script = state.parent / "fill.txt"
    script.write_text(f"schedule {sched}\nstart {fmt(start)}\nend {fmt(end_utc)}\nfill\n")
    env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT / 'firmware'}")
    subprocess.run(
        [micropython_binary(), "-m", "sim.scenario", str(script), str(state)],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )


def pull(port: str, keys: Keystore, first: bool) -> tuple[int, float]:
    with open_device(port, keystore=keys, timeout=10) as dev:
        if first:
            ops.pair_virtual(dev)
        info = dev.call("info")
        last = int(info["log"]["last"])
        t0 = time.perf_counter()
        got = ops.read_log(dev, 1, last)
        dt = time.perf_counter() - t0
    return len(got.records), dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        now = int(time.time())
        t0 = time.perf_counter()
        fill_log(state, a.days, now)
        print(f"log filled: {a.days} simulated days in {time.perf_counter() - t0:.1f} s")
        keys = Keystore(Path(tmp) / "keys.json")
        first = True
        for baud in (a.baud, None):
            label = f"{baud} baud" if baud else "unthrottled"
            with VirtualDispenser(state, speed=1, baud=baud, stderr=subprocess.DEVNULL) as sim:
                port = sim.port
                assert port is not None
                rates = []
                for _ in range(a.repeat):
                    n, dt = pull(port, keys, first)
                    first = False
                    rates.append(n * 24 / dt)
                best = max(rates)
                line = f"{label}: {n} records ({n * 24 / 1000:.1f} kB) in {n * 24 / best:.2f} s"
                line += f" -> {best / 1000:.2f} kB/s of log data (runs: "
                line += ", ".join(f"{r / 1000:.2f}" for r in rates) + ")"
                if baud:
                    line += (
                        f"; {100 * best / (baud / 10):.0f} % of the line's {baud / 10000:.2f} kB/s"
                    )
                print(line)


if __name__ == "__main__":
    main()
