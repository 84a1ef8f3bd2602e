"""The virtual dispenser: the firmware on the simulated board, speaking the device protocol on
stdin/stdout (a pseudo-terminal set up by `dosis sim`, see host_tools/dosis/simhost.py).

    micropython -m sim.serve STATE_DIR [--speed X] [--schedule FILE.json] [--start UTC]

--speed: virtual seconds per real second (paced warp clock: every timer fires in order, and
`sim.advance` fast-forwards). The virtual RTC is kept in STATE_DIR/sim-rtc.json and keeps
running (in real time) while the dispenser is off, like a DS3231 on its coin cell; --start sets
it (a new board). --schedule provisions a state dir that has no schedule yet.

The app's own flash is STATE_DIR/flash (created here). When an app was deployed there (it
holds `dispenser/` and `dosiscore/`, as .py or .mpy), that app runs: the directory goes first on
the import path, so `hello` reports its dosiscore.VERSION; else the repository's firmware runs.
The simulator's own modules (`sim/`) always come from the repository. After the `service`
command the link's streams serve MicroPython's REPL (sim.rawrepl) with that directory as "/",
until `machine.reset()`.

Diagnostics go to stderr. Exit codes: 0 stopped (end of input or Ctrl-C), 3 reboot requested
(the supervisor starts it again on the same state dir).
"""

import asyncio
import json
import os
import sys
import time

REBOOT = 3
FLASH = "flash"  # STATE_DIR/flash: the device's filesystem root as the service REPL sees it
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


def _has_modules(d):
    try:
        names = os.listdir(d)
    except OSError:
        return False
    for n in names:
        if n.endswith(".py") or n.endswith(".mpy"):
            return True
    return False


def flash_dir(state):
    """STATE_DIR/flash as an absolute path (created if missing)."""
    if not state.startswith("/"):
        state = os.getcwd().rstrip("/") + "/" + state
    d = state.rstrip("/") + "/" + FLASH
    try:
        os.mkdir(d)
    except OSError:
        pass
    return d


def use_flash(flash):
    """Put the deployed app first on the import path if there is one; True if so."""
    if _has_modules(flash + "/dispenser") and _has_modules(flash + "/dosiscore"):
        if flash not in sys.path:
            sys.path.insert(0, flash)
        return True
    return False


def run(argv):
    opts = _args(argv)
    state = opts["state"]
    try:
        os.mkdir(state)
    except OSError:
        pass
    flash = flash_dir(state)
    boot = _boot(flash)  # as the ESP32 runs boot.py first: finish or undo an app update
    if use_flash(flash):
        _log("running the app deployed on the virtual flash", flash)
    # Imported only now: from the deployed app if there is one.
    from dispenser import runtime
    from dispenser.link import Link
    from dispenser.net import Net
    from dispenser.settings import ABStore
    from dispenser.store import Store
    from dosiscore import VERSION
    from sim.board import SimBoard

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
    link.code_root = flash  # where deploy.json lives (the device: its flash root)
    outcome = [0]

    def emit(kind, occ, detail):
        pass  # the link and the dose log hear every event (runtime.start)

    def reboot():
        # A reboot (a new schedule), or the `service` command: the REPL takes the link.
        outcome[0] = _SERVICE if getattr(link, "repl", False) else REBOOT

    link.on_reboot = reboot

    async def keep_rtc():
        while True:
            await asyncio.sleep(_RTC_SAVE_S)
            _rtc_save(state, board)

    async def main():
        app = runtime.start(board, store, emit, link)
        net = Net(board, store, board.device_id(), VERSION, app, link.log, link.sched_hash)
        link.net = net  # pyright: ignore[reportAttributeAccessIssue]
        net.start()  # the uplink on loopback, if `dosis provision mqtt` configured one
        if app is not None:
            clock.register(8)  # the app's tasks: the warp waits for them (app.start)
        else:
            link.watch_service()
        warp = asyncio.create_task(clock.run_warp())
        rtc = asyncio.create_task(keep_rtc())
        asyncio.create_task(_confirm_later(boot, flash, app))
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
    if outcome[0] == _SERVICE:
        return _service_repl(flash, board)
    return outcome[0]


_SERVICE = -1  # run()'s outcome when the `service` command handed the link over
_CONFIRM_S = 3  # real seconds the app must run (no task dead) before an update is kept


def _boot(flash):
    """boot.py's functions, from the virtual flash if an app was deployed there (its own
    boot.py decides), else the repository's; run its update check as the ESP32 does at boot."""
    ns = {"__name__": "boot"}  # type: dict
    try:
        with open(flash + "/boot.py") as f:
            code = f.read()
        exec(code, ns)
    except OSError:
        import boot as mod

        ns = {"trial": mod.trial, "confirm": mod.confirm}
    try:
        done = ns["trial"](flash)
        if done:
            _log("boot: app update", done)
    except Exception as e:  # as on the device: an undo that fails does not stop the boot
        _log("boot: update check failed:", e)
    return ns


async def _confirm_later(boot, flash, app):
    """The new app runs: keep it (boot.py undoes an update that never gets here)."""
    await asyncio.sleep(_CONFIRM_S)
    if app is None or not app.dead:
        try:
            if boot["confirm"](flash):
                _log("boot: app update confirmed")
        except Exception as e:
            _log("boot: confirm failed:", e)


def _service_repl(flash, board):
    """The app has stopped (carousel closed, state saved, log synced): the REPL, as on the
    ESP32 once main.py has returned. Its exit code is the process's."""
    from sim import rawrepl

    try:
        from dispenser.commands import SERVICE_S
    except ImportError:  # a deployed app from before the budget was a constant
        SERVICE_S = 900
    wdt = board.wdt  # None when no app (no schedule) started one
    _log("service: the REPL has the link (flash %s)" % flash)
    repl = rawrepl.Repl(
        sys.stdin.buffer,
        sys.stdout.buffer,
        flash,
        wdt_ms=wdt.timeout_ms if wdt is not None else None,
        budget_s=SERVICE_S if wdt is not None else None,
        log=_log,
    )
    return repl.run()


if __name__ == "__main__":
    try:
        code = run(sys.argv[1:])
    except ValueError as e:
        _log("error:", e)
        code = 2
    sys.exit(code)
