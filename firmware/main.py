"""Device entry point: build the ESP32 board, boot the dispenser, serve the link, run forever."""

import asyncio
import sys

from dispenser import runtime
from dispenser.clock import Clock
from dispenser.store import Store


def _quiet(kind, occ, detail):
    pass  # the dose log and the serial link hear every event (runtime.start)


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
        machine.reset()  # the new schedule is on flash and the log synced (commands._install)

    link.on_reboot = reboot
    app = runtime.start(board, store, _quiet, link)
    if app is None:
        link.watch_service()  # no schedule yet: pairing must still be possible
    asyncio.run(link.run())
    asyncio.get_event_loop().run_forever()  # the host went away: keep dispensing


if __name__ == "__main__":
    main()
