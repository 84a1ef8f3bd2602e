"""A short power-cut campaign: about 100 SIGKILLs of the firmware on the simulated board, with
every invariant of tests/campaign.py checked on the flash after each one. The full campaign
(1,000 cuts and more) is `make campaign`; its figures are in bench/RESULTS.md.
"""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _campaign():
    spec = importlib.util.spec_from_file_location("campaign", ROOT / "tests" / "campaign.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["campaign"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_hundred_power_cuts(tmp_path):
    campaign = _campaign()
    # A fixed seed fixes the schedule, the citizen, the gaps and the kill delays; where each
    # kill lands in virtual time still depends on the machine's speed (see tests/campaign.py).
    c = campaign.Campaign(tmp_path / "campaign", seed=20261123, max_delay=1.2)
    s = c.run(100)
    text = campaign.report(s, s["real_s"])
    assert s["cuts"] >= 100, text
    assert s["violations"] == dict.fromkeys(campaign.INVARIANTS, 0), text
    # It did what a campaign must do: doses taken, late and missed, compartments opened, refills,
    # acknowledgements, kills after the events that start flash work.
    n = s["counts"]
    for key in ("taken", "taken_late", "missed", "opened", "fills", "kill_event", "kill_uniform"):
        assert n.get(key, 0) > 0, (key, text)
    assert s["acked"] > 0, text


def test_pills_taken_at_the_dose_instant_log_no_stale_due(tmp_path):
    """Found by the campaign: the doses task sounds the tone, yields, then logs what update()
    said; the beam clearing in that yield ended the dose first, and a stale DUE followed its
    TAKEN in the log (a gateway would see the dose due again after it was taken)."""
    import json
    import os
    import subprocess

    from dosis import schedules
    from dosiscore import schedule

    doc = schedules.load_document(ROOT / "examples" / "schedule.toml")
    sched = tmp_path / "schedule.json"
    sched.write_bytes(schedule.canonical(schedule.validate(doc)))
    script = tmp_path / "run.txt"
    script.write_text(
        f"schedule {sched}\nstart 2026-11-23 06:00\nend 2026-11-23 09:00\nfill\n08:00 take\n"
    )
    state = tmp_path / "state"
    state.mkdir()
    out = subprocess.run(
        [_campaign().micropython_binary(), "-m", "sim.scenario", str(script), str(state)],
        env=dict(os.environ, MICROPYPATH=f".frozen:{ROOT / 'firmware'}"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    kinds = [ln.split()[2] for ln in out.splitlines() if ln.startswith("EV ") and " morgen " in ln]
    assert kinds.count("taken") == 1, out
    assert not {"available", "due", "louder"} & set(kinds[kinds.index("taken") :]), out
    assert json.loads((state / "journal.json").read_text())["at"] % 2 == 0  # closed again
