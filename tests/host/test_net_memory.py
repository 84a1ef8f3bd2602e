"""The uplink stays off, and says why, when it would leave the dose loop too little heap
(dispenser/net.py, UPLINK_RESERVE) or its configuration cannot be used; Net.start() never
raises into the boot. On the real MicroPython VM with a small heap."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
import mprobe  # noqa: E402

SCRIPT = r"""
import asyncio, gc, sys
from dispenser import net

class Pin:
    def value(self, v=None):
        return 1

class Clock:
    def ticks_ms(self):
        return 0
    def valid(self):
        return False

class Board:
    clock = Clock()
    mains = Pin()
    wlan_always = False
    def battery_mv(self):
        return 4000

CA = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"

class Store:
    def load(self, name):
        m = {"host": "127.0.0.1", "port": 1, "tls": False, "ukey": "ab" * 32}
        if sys.argv[2] == "badca":  # a net.json the device cannot use (written by hand)
            m.update(tls=True, ca=CA)
        return {"mqtt": m}

class Log:
    def stats(self):
        return {"durable": 0, "acked": 0}

async def main():
    net.UPLINK_RESERVE = int(sys.argv[1])
    n = net.Net(Board(), Store(), "probe", "0.0", None, Log())
    n.start()
    print("running" if n.uplink is not None else "off", n.stats()["uplink_off"])
    print("modules", "dispenser.uplink" in sys.modules, "dispenser.mqtt" in sys.modules)
    n.stop()

asyncio.run(main())
"""


def run(reserve, config="plain"):
    return mprobe.run(SCRIPT, reserve, config, heap="256K")


def test_the_uplink_starts_when_the_heap_allows():
    out = run(16 * 1024)
    assert out[0] == "running None", out
    assert out[1] == "modules True True", out


def test_the_uplink_stays_off_and_gives_its_heap_back_when_it_would_starve_the_app():
    out = run(1024 * 1024)  # more than the whole 256 KB heap
    assert out[0].startswith("off not enough memory:") and "1024 KB needed" in out[0], out
    assert out[1] == "modules False False", out  # its modules are dropped again


def test_a_configuration_the_device_cannot_use_leaves_the_uplink_off_not_the_boot():
    out = run(16 * 1024, "badca")
    assert out[0].startswith("off cannot start:"), out
