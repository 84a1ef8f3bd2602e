"""The virtual dispenser: the firmware on the simulated board, speaking the device protocol on
stdin/stdout (a pseudo-terminal set up by `dosis sim`, see host_tools/dosis/simhost.py).

    micropython -m sim.serve STATE_DIR [--speed X] [--schedule FILE.json] [--start UTC]

--speed: virtual seconds per real second (paced warp clock: every timer fires in order, and
`sim.advance` fast-forwards). The virtual RTC is kept in STATE_DIR/sim-rtc.json and keeps
running (in real time) while the dispenser is off, like a DS3231 on its coin cell; --start sets
it (a new board). --schedule provisions a state dir that has no schedule yet.
Diagnostics go to stderr. Exit codes: 0 stopped (end of input or Ctrl-C), 3 reboot requested
(the supervisor starts it again on the same state dir).
"""

import asyncio
import json
import os
import sys
import time

from dispenser import runtime
from dispenser.link import Link
from dispenser.settings import ABStore
from dispenser.store import Store
from dosiscore import VERSION
from sim.board import SimBoard

REBOOT = 3
_RTC_FILE = "/sim-rtc.json"
_RTC_SAVE_S = 5  # real seconds between saves of the virtual RTC


def _log(*parts):
    sys.stderr.write(" ".join(str(p) for p in parts) + "\n")


def _rtc_start(state_dir, start):
    """UTC the virtual RTC shows at power-up."""
    if start is not None:
        return start
    try:
        with open(state_dir + _RTC_FILE) as f:
            saved = json.load(f)
        return int(saved["utc"]) + max(0, int(time.time()) - int(saved["real"]))
    except (OSError, ValueError, KeyError, TypeError):
        return int(time.time())


def _rtc_save(state_dir, board):
    rtc = board.rtc
    utc = rtc.now_fn() + rtc.offset
    path = state_dir + _RTC_FILE
    with open(path + ".tmp", "w") as f:
        json.dump({"utc": utc, "real": int(time.time())}, f)
    os.rename(path + ".tmp", path)


def _args(argv):
    if not argv or argv[0].startswith("-"):
        raise ValueError(
            "usage: micropython -m sim.serve STATE_DIR [--speed X] [--schedule FILE] [--start UTC]"
        )
    out = {"state": argv[0], "speed": 1.0, "schedule": None, "start": None}
    i = 1
    while i < len(argv):
        k = argv[i]
        if i + 1 >= len(argv) or k not in ("--speed", "--schedule", "--start"):
            raise ValueError("unknown or incomplete option: %s" % k)
        v = argv[i + 1]
        if k == "--speed":
            out["speed"] = float(v)
        elif k == "--start":
            out["start"] = int(v)
        else:
            out["schedule"] = v
        i += 2
    if not 0 < out["speed"] <= 100000:
        raise ValueError("--speed must be in 0..100000")
    return out


def run(argv):
    opts = _args(argv)
    state = opts["state"]
    try:
        os.mkdir(state)
    except OSError:
        pass
    ab = ABStore(state)
    if opts["schedule"]:
        try:
            os.stat(ab.path(runtime.SCHEDULE, "a"))
        except OSError:  # a new board: provision it
            with open(opts["schedule"]) as f:
                ab.save(runtime.SCHEDULE, json.load(f))
    start = _rtc_start(state, opts["start"])
    board = SimBoard(state, start, heartbeat_s=60)
    clock = board.clock
    clock.pace = opts["speed"]
    store = Store(state)
    link = Link(board, store, sys.stdin.buffer, sys.stdout.buffer, board.device_id(), VERSION)
    outcome = [0]

    def emit(kind, occ, detail):
        pass  # the link and the dose log hear every event (runtime.start)

    def reboot():
        outcome[0] = REBOOT

    link.on_reboot = reboot

    async def keep_rtc():
        while True:
            await asyncio.sleep(_RTC_SAVE_S)
            _rtc_save(state, board)

    async def main():
        app = runtime.start(board, store, emit, link)
        if app is not None:
            clock.register(8)  # the app's tasks: the warp waits for them (app.start)
        else:
            link.watch_service()
        warp = asyncio.create_task(clock.run_warp())
        rtc = asyncio.create_task(keep_rtc())
        try:
            await link.run()
        finally:
            warp.cancel()
            rtc.cancel()
            if link.log is not None:
                link.log.sync()  # a clean stop or a planned reboot loses nothing
            board.save_world()
            _rtc_save(state, board)

    try:
        import micropython

        micropython.kbd_intr(-1)  # a 0x03 byte on the link is data, not Ctrl-C
    except (ImportError, AttributeError):
        pass
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return outcome[0]


if __name__ == "__main__":
    try:
        code = run(sys.argv[1:])
    except ValueError as e:
        _log("error:", e)
        code = 2
    sys.exit(code)
