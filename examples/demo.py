"""`make demo`: a day in the life of a virtual dispenser, through the same API the commands use.

Starts the real firmware on the MicroPython unix port (`dosis sim`) as a new, empty device,
pairs with it (an injected press of its service button), pushes examples/schedule.toml, fills
the carousel, then runs its clock fast through a day: the citizen takes every dose a few minutes
after the tone except the evening one (missed: the care-team notice and the lock follow). The
event stream is printed as it comes, the screen drawn at the interesting moments, and at the end
the dose log is pulled to build/demo-log.csv and acknowledged.

    .venv/bin/python examples/demo.py [--state build/demo-state]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from dosis import ops, schedules  # noqa: E402
from dosis.device import Device, open_device  # noqa: E402
from dosis.keystore import Keystore  # noqa: E402
from dosis.screen import to_text  # noqa: E402
from dosis.simhost import VirtualDispenser  # noqa: E402
from dosiscore import civil, tz  # noqa: E402

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
        say("== dosis log pull -o build/demo-log.csv")
        out = state.parent / "demo-log.csv"
        got, acked = ops.export_log(dev, "csv", str(out), sys.stdout)
        say(f"{len(got.rows)} records written to {out}; acknowledged up to {acked}")
        kinds: dict[str, int] = {}
        for r in got.rows:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        say("  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        dev.close()
    log_file.close()
    say("== stopped (firmware diagnostics in build/demo-firmware.log)")


if __name__ == "__main__":
    os.environ.setdefault("DOSIS_KEYSTORE", str(ROOT / "build" / "demo-keys.json"))
    main()
