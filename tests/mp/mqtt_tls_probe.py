"""dispenser.mqtt over TLS (dispenser.tls) on the MicroPython unix port, run by
tests/host/test_mqtt_tls.py: `micropython mqtt_tls_probe.py HOST PORT CAFILE SCENARIO [USER PASS]`.

Scenarios: "ok" (connect, subscribe, publish QoS 1 and receive it back, heap figures), and
"refused" (the connect must fail: wrong CA, wrong name, TLS against the plain port, or plain
MQTT against the TLS port when CAFILE is "-"). A 10 ms "dose loop" runs alongside; "hsgap N"
is its longest wait during the connect (the TLS handshake), "gap N" over the whole run.
"""

# MicroPython: asyncio.TimeoutError is not the builtin, and `%` is its formatting.
# ruff: noqa: UP031, UP041

import asyncio
import gc
import sys
from time import ticks_diff, ticks_ms

from looptick import Ticker

from dispenser import tls
from dispenser.mqtt import Client

HOST = sys.argv[1]
PORT = int(sys.argv[2])
CAFILE = sys.argv[3]
SCENARIO = sys.argv[4]
USER = sys.argv[5] if len(sys.argv) > 6 else None
PASSWORD = sys.argv[6] if len(sys.argv) > 6 else None
TIMEOUT = 3

TICK = Ticker()  # the 10 ms stand-in for the dose loop


def say(*args):
    print(*args)


def ca():
    with open(CAFILE, "rb") as f:
        return f.read()


async def until(cond, timeout):
    t0 = ticks_ms()
    while not cond():
        if ticks_diff(ticks_ms(), t0) > timeout * 1000:
            return False
        await asyncio.sleep_ms(20)
    return True


async def connect(c):
    TICK.window()
    t0 = ticks_ms()
    try:
        return await c.connect(TIMEOUT), ticks_diff(ticks_ms(), t0)
    finally:
        TICK.in_window = False
        say("hsgap", TICK.window_gap)


async def ok():
    got = []
    data = ca()
    gc.collect()
    free0 = gc.mem_free()
    ctx = tls.context(data)
    gc.collect()
    free1 = gc.mem_free()
    c = Client("probe-tls", HOST, PORT, ssl=ctx, keepalive=10, user=USER, password=PASSWORD)
    c.on_message = lambda t, p: got.append((t, p))
    gc.collect()
    free2 = gc.mem_free()
    sp, ms = await connect(c)
    say("connected", sp, ms)
    gc.collect()
    free3 = gc.mem_free()
    # MicroPython heap bytes: the context, the connection (streams, SSL socket object)
    say("heap", free0 - free1, free2 - free3)
    say("subscribed", await c.subscribe("dosis/tls/down", 1, timeout=5))
    await c.publish("dosis/tls/up", "over tls", qos=1, timeout=5)
    say("puback")
    await c.publish("dosis/tls/down", "echo", qos=1, timeout=5)
    await until(lambda: got, 5)
    for t, p in got:
        say("msg", t.decode(), p.decode())
    await c.disconnect()


async def refused():
    ctx = None if CAFILE == "-" else tls.context(ca())
    c = Client("probe-tls-no", HOST, PORT, ssl=ctx, user=USER, password=PASSWORD)
    t0 = ticks_ms()
    try:
        await connect(c)
        say("unexpected success")
    except Exception as e:  # noqa: BLE001  (reported to the test, which checks the type)
        say("failed", type(e).__name__, ticks_diff(ticks_ms(), t0), c.connected, repr(e))
    await asyncio.sleep_ms(100)  # the loop still runs
    say("alive")


async def main():
    task = asyncio.create_task(TICK.run())
    try:
        await globals()[SCENARIO]()
    except Exception as e:  # noqa: BLE001  (reported to the test, which fails on it)
        say("error", type(e).__name__, e)
    TICK.running = False
    await task
    say("gap", TICK.gap)


asyncio.run(main())
