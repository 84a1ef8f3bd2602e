"""The hardware-in-the-loop suite: a dispenser's acceptance steps, as pytest tests shipped in
the package, run on a board or on the virtual dispenser.

    dosis hil run --sim [--junit FILE] [-k EXPR]
    dosis hil run --port /dev/ttyUSB0 [--rig hardware/rig.example.json] [--junit FILE]
    pytest -p dosis.hil.runner --pyargs dosis.hil --dosis-sim     (straight from pytest)

The steps, in order (test_steps.py): boot and hello; pairing; schedule push and read-back by
hash; a dose from light to tone to press to a "taken" record; a missed dose (locked, the care
team told); a power cut during a carousel move; a jam; log pull and acknowledgement; deploy and
rollback; a DST day. `runner` is the suite's pytest plugin (the options, the markers
`sim_only` and `needs_rig`, which steps run where, the summary) and runs it; `conftest`
registers it and holds the `bench` fixture.

On a board the suite replaces the schedule and the pairing key and records fills: run it on
a test board, never on a citizen's dispenser.
"""
