"""Runs first, after MicroPython's own _boot.py: check the filesystem, never hang, never loop.

If the filesystem cannot be written and read back, count it in NVS (so the technician can see
how often it happens) and go on: main.py then runs the dispenser from the schedule copy in NVS,
shows fault E9 and tells the care team. Nothing here may raise: every step is guarded.
"""


def _fs_ok():
    try:
        with open("/.probe", "w") as f:
            f.write("ok")
        with open("/.probe") as f:
            ok = f.read() == "ok"
        import os

        os.remove("/.probe")
        return ok
    except Exception:  # any failure at all means "not usable"; boot goes on regardless
        return False


def _count_failure():
    try:
        import esp32

        nvs = esp32.NVS("dosis")
        try:
            n = nvs.get_i32("fsfail")
        except OSError:
            n = 0
        nvs.set_i32("fsfail", n + 1)
        nvs.commit()
    except Exception:  # no NVS either (or not an ESP32): nothing more to record
        pass


if not _fs_ok():
    _count_failure()
    print("dosis: filesystem unusable: starting from the NVS copy")
