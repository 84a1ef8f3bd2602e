"""Device entry point: build the ESP32 board, boot the dispenser, run its tasks forever."""

import asyncio
import sys

from dispenser import runtime
from dispenser.clock import Clock
from dispenser.store import Store


def emit(kind, occ, detail):
    # Until the dose log (issue "Persistence") and the serial link take these: the console.
    print("EV", kind, occ[1] if occ else "-", detail)


def main():
    if sys.platform != "esp32":  # the simulator has its own entry point
        print("not an ESP32: run the simulated dispenser with `micropython -m sim.scenario`")
        return
    from dispenser.board_esp32 import Board

    board = Board(clock=Clock())
    runtime.start(board, Store(""), emit)
    asyncio.get_event_loop().run_forever()


if __name__ == "__main__":
    main()
