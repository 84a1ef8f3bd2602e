"""Device entry point: build the ESP32 board, boot the dispenser, serve the link, run forever.

The one way out is the authenticated `service` command (docs/protocol.md, "Service mode"): the
app stops dispensing safely, the link ends once the reply is written, and main() returns after
`_hand_over()`, so MicroPython starts its REPL on the UART for the technician's tool (mpremote).
"""

import asyncio
import sys

from dispenser import runtime
from dispenser.clock import Clock
from dispenser.store import Store

_FEED_MS = 2000  # the service feeder's period: well inside the watchdog's 8 s


def _quiet(kind, occ, detail):
    pass  # the dose log and the serial link hear every event (runtime.start)


def _hand_over(app):
    """The `service` command's last step: the REPL gets the UART back.

    The dose loop has stopped (App.hold_for_service: carousel closed, light and tone off, dose
    state saved; the log is synced). The hardware watchdog cannot be stopped or reconfigured
    once started, and nothing of the app feeds it any more: a machine.Timer does, for the
    service budget (commands.SERVICE_S) only. Its callback is scheduled, so it runs in the
    MicroPython task both while the REPL waits for input and between the bytecodes of what
    the host runs. When the budget is spent, or at a soft reset (which deinitialises every
    machine.Timer, not the watchdog), the feeding stops and the watchdog resets the device
    into the app within 8 s: an abandoned REPL never leaves the citizen without reminders.
    A deploy therefore enters the raw REPL without a soft reset and ends with machine.reset()."""
    import time

    import micropython
    from machine import Timer

    from dispenser.commands import SERVICE_S

    asyncio.new_event_loop()  # drop the app's tasks: their heap goes to the technician
    wdt = getattr(app, "wdt", None)
    if wdt is not None:
        until = time.ticks_add(time.ticks_ms(), SERVICE_S * 1000)

        def feed(_timer):
            if time.ticks_diff(until, time.ticks_ms()) > 0:
                wdt.feed()

        Timer(0).init(period=_FEED_MS, callback=feed)
    micropython.kbd_intr(3)  # Ctrl-C interrupts again: the UART is the REPL's


async def _confirm_update(app):
    """A new app that has run for a while with every task alive is kept (boot.py undoes an
    update whose app never gets here: see docs/deploy.md)."""
    await asyncio.sleep(30)
    if app is None or not app.dead:
        try:
            import boot

            boot.confirm("")
        except Exception as e:  # noqa: BLE001  (the update stays on trial: boot.py decides)
            print("dosis: confirm failed:", e)


def main():
    if sys.platform != "esp32":  # the simulator has its own entry point
        print("not an ESP32: run the virtual dispenser with `dosis sim`")
        return
    import machine
    import micropython

    from dispenser.board_esp32 import Board
    from dispenser.link import Link
    from dosiscore import VERSION

    # The UART is the device protocol's line from now on: a 0x03 byte is data, not Ctrl-C.
    # The REPL is reached only through the authenticated service path (docs/protocol.md).
    micropython.kbd_intr(-1)
    board = Board(clock=Clock())
    store = Store("")
    link = Link(board, store, sys.stdin.buffer, sys.stdout.buffer, board.device_id(), VERSION)

    def reboot():
        if not getattr(link, "repl", False):
            machine.reset()  # the new schedule is on flash and the log synced (commands._install)
        # else the `service` command: link.run() returns and main() hands the UART over

    link.on_reboot = reboot
    app = runtime.start(board, store, _quiet, link)
    from dispenser.net import Net

    net = Net(board, store, board.device_id(), VERSION, app, link.log, link.sched_hash)
    link.net = net  # pyright: ignore[reportAttributeAccessIssue]
    net.start()  # Wi-Fi, the uplink, NTP: only what `dosis provision` configured
    if app is None:
        link.watch_service()  # no schedule yet: pairing must still be possible
    asyncio.create_task(_confirm_update(app))
    asyncio.run(link.run())
    if getattr(link, "repl", False):
        _hand_over(app)
        return  # main.py ends: MicroPython's REPL takes the UART
    asyncio.get_event_loop().run_forever()  # the host went away: keep dispensing


if __name__ == "__main__":
    main()
