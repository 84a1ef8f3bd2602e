"""Boot of the dispenser on any board: time from the RTC, the stored schedule, then the tasks.

The ESP32's main.py and the simulator call the same `start()`, so the simulator runs the
firmware's own boot path, not a re-implementation of it.
"""

import gc

from dispenser.app import App
from dispenser.ds3231 import DS3231

SCHEDULE = "schedule.json"


def read_rtc(board, emit):
    """UTC from the DS3231, or None: then the device shows "time missing", dispenses nothing."""
    try:
        utc = DS3231(board.i2c).read()
    except OSError:
        emit("fault", None, "E3 rtc not answering")
        return None
    if utc is None:
        emit("rtc_lost", None, "oscillator stopped")
    return utc


def load_schedule(store, emit):
    doc = store.load(SCHEDULE)
    if doc is None:
        emit("no_schedule", None, "")
        return None
    from dosiscore import schedule  # large: imported only here, then released

    try:
        doc = schedule.validate(doc)
    except schedule.ScheduleError as e:
        emit("fault", None, "stored schedule invalid: %s" % e)
        return None
    emit("schedule", None, schedule.content_hash(doc)[:12])
    return doc


def start(board, store, emit):
    """Set the clock, load the schedule, create the app's tasks. Returns the App or None."""
    emit("boot", None, board.name)
    utc = read_rtc(board, emit)
    if utc is not None:
        board.clock.set(utc, "rtc")
        board.clock.changed.clear()
    doc = load_schedule(store, emit)
    gc.collect()
    if doc is None:
        return None
    app = App(board, doc, store, emit)
    app.start()
    return app
