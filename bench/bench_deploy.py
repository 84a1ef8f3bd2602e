"""Technician tooling over a link throttled to a real UART (115200 baud 8N1 by default).

    .venv/bin/python bench/bench_deploy.py [--days 30] [--baud 115200]

One virtual dispenser (`dosis sim --baud`), one run, so the figures compare:
1. `dosis firmware deploy` of the whole app onto an empty flash, then of a one-file change
   (the version string), both through the `service` command and mpremote's raw REPL;
2. the same dose log read two ways: `dosis log pull`'s path (pipelined `log.read`, base64 in
   JSON lines) versus mpremote's own file copy (`fs_readfile`, what `mpremote fs cp` does:
   repr() of 256-byte chunks evaluated in the raw REPL) of a file holding the same bytes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_link import fill_log  # noqa: E402

from dosis import bundle, deploy, ops  # noqa: E402
from dosis.device import open_device  # noqa: E402
from dosis.keystore import Keystore  # noqa: E402
from dosis.simhost import VirtualDispenser  # noqa: E402
from dosiscore import VERSION  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--baud", type=int, default=115200)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        state = tmp / "state"
        state.mkdir()
        fill_log(state, a.days, int(time.time()))
        keys = Keystore(tmp / "keys.json")
        bundle.build_bundle(tmp / "b1")
        src = tmp / "fw2"
        shutil.copytree(ROOT / "firmware", src, ignore=shutil.ignore_patterns("__pycache__"))
        init = src / "dosiscore" / "__init__.py"
        init.write_text(init.read_text().replace(f'"{VERSION}"', '"0.1.1-bench"'))
        bundle.build_bundle(tmp / "b2", firmware_dir=src)
        line = a.baud / 10
        print(f"link: {a.baud} baud = {line / 1000:.2f} kB/s each way")
        with VirtualDispenser(state, speed=1, baud=a.baud, stderr=subprocess.DEVNULL) as sim:
            port = sim.port
            assert port is not None
            with open_device(port, keystore=keys, timeout=10) as dev:
                ops.pair_virtual(dev)
                last = int(dev.call("info")["log"]["last"])
                t0 = time.perf_counter()
                got = ops.read_log(dev, 1, last)
                t_proto = time.perf_counter() - t0
            n = len(got.records)
            blob = b"".join(bytes(_raw(r)) for r in got.records)
            r1 = deploy.deploy_bundle(port, tmp / "b1", keystore=keys)
            print(
                f"deploy, whole app: {len(r1.written)} files, {r1.bytes_written / 1000:.1f} kB "
                f"in {r1.seconds:.1f} s (service, hashes, copy, check, swap, reboot, hello)"
            )
            r2 = deploy.deploy_bundle(port, tmp / "b2", keystore=keys)
            print(
                f"deploy, one-file change: {r2.written} ({r2.bytes_written} bytes) "
                f"in {r2.seconds:.1f} s"
            )
            # The same log bytes as a file on the device's flash, read with mpremote's copy.
            (state / "flash" / "log.bin").write_bytes(blob)
            deploy._service(port, keys, 10)
            t = deploy._enter_repl(port)
            try:
                t0 = time.perf_counter()
                data = t.fs_readfile("/log.bin")
                t_cp = time.perf_counter() - t0
            finally:
                deploy._reset(t)
            assert bytes(data) == blob
            p_rate = n * 24 / t_proto
            c_rate = len(blob) / t_cp
            print(
                f"log, {n} records ({n * 24 / 1000:.1f} kB): dosis log pull path "
                f"{p_rate / 1000:.2f} kB/s ({100 * p_rate / line:.0f} % of the line) vs "
                f"mpremote fs cp {c_rate / 1000:.2f} kB/s ({100 * c_rate / line:.0f} %): "
                f"{p_rate / c_rate:.1f}x"
            )


def _raw(r: tuple) -> bytes:
    from dosiscore import logrec

    buf = bytearray(logrec.RECORD_SIZE)
    seq, utc, kind, occ, dose, detail, small = r[:7]
    logrec.encode_into(buf, 0, seq, utc, kind, occ, 0xFF if dose is None else dose, detail, small)
    return bytes(buf)


if __name__ == "__main__":
    main()
