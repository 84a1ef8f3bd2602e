"""Device entry point for now: load the stored schedule and say which dose is next.

The dispenser loop (carousel, alerts, buttons, display) replaces this with the issue
"Dispenser firmware"; what is here already uses the same core the loop will: the stored
compact schedule is validated by the firmware's own validator and planned in local time.
"""

import json
import time

from dosiscore import VERSION, civil, planner, tz

SCHEDULE_FILE = "schedule.json"
_EPOCH_2000 = 946684800  # seconds from 1970-01-01 to 2000-01-01


def unix_now():
    """UTC Unix seconds: ports count `time.time()` from 1970 or from 2000."""
    t = int(time.time())
    return t + _EPOCH_2000 if time.gmtime(0)[0] == 2000 else t


def main(now=None):
    print("dosis firmware", VERSION)
    try:
        with open(SCHEDULE_FILE) as f:
            doc = json.load(f)
    except OSError:
        print("no schedule stored: provision one with the dosis tool")
        return 1
    except ValueError:
        print("stored schedule is not JSON: provision it again")
        return 1
    from dosiscore import schedule  # validation is large: import it only when needed

    try:
        doc = schedule.validate(doc)
    except schedule.ScheduleError as e:
        print("stored schedule is invalid:", e)
        return 1
    print("schedule", schedule.content_hash(doc)[:12])
    now = unix_now() if now is None else now
    nxt = planner.next_due(doc, now)
    if nxt is None:
        print("no more doses: the schedule has ended")
        return 0
    off = tz.Tz(doc["tz_rule"]).offset(nxt[0])
    print("next dose", nxt[1], "at", civil.format_iso(nxt[0], off))
    return 0


if __name__ == "__main__":
    main()
