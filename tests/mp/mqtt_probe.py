"""dispenser.mqtt against a real broker, on the MicroPython unix port (run by
tests/host/test_mqtt_client.py): `micropython mqtt_probe.py PORT SCENARIO [FLAGDIR]`.

Each scenario prints result lines ("connected", "puback", "failed ...", ...) that the test
reads as they come; the test answers through flag files in FLAGDIR. Next to every scenario runs
a stand-in for the dose loop, a 10 ms sleep loop; the last line is "gap N", the longest time in
ms it waited between two wake-ups, i.e. the longest the MQTT client held the event loop.
"""

# MicroPython: asyncio.TimeoutError is not the builtin, and `%` is its formatting.
# ruff: noqa: UP031, UP041

import asyncio
import os
import sys
from time import ticks_diff, ticks_ms

from looptick import Ticker

from dispenser.mqtt import Client, MQTTError

PORT = int(sys.argv[1])
SCENARIO = sys.argv[2]
FLAGS = sys.argv[3] if len(sys.argv) > 3 else "."
HOST = "127.0.0.1"

TICK = Ticker()  # the 10 ms stand-in for the dose loop


def say(*args):
    print(*args)


def name(e):
    return type(e).__name__


async def flag(fname, timeout=20):
    path = FLAGS + "/" + fname
    t0 = ticks_ms()
    while ticks_diff(ticks_ms(), t0) < timeout * 1000:
        try:
            os.stat(path)
            return
        except OSError:
            await asyncio.sleep_ms(50)
    raise MQTTError("no flag " + fname)


async def until(cond, timeout):
    t0 = ticks_ms()
    while not cond():
        if ticks_diff(ticks_ms(), t0) > timeout * 1000:
            return False
        await asyncio.sleep_ms(20)
    return True


async def basic():
    c = Client("probe-basic", HOST, PORT)
    say("connected", await c.connect(5))
    await c.publish("dosis/basic/q0", "hello0")
    await c.publish(b"dosis/basic/q1", b"hello1", qos=1, timeout=5)
    say("puback")
    await c.disconnect()
    say("done", c.connected)


async def inflight():
    c = Client("probe-inflight", HOST, PORT)
    await c.connect(5)
    ok = [0]

    async def one(i):
        try:
            await c.publish("dosis/inflight", "m%d" % i, qos=1, timeout=10)
            ok[0] += 1
        except Exception as e:
            say("failed", i, name(e), e)

    t0 = ticks_ms()
    await asyncio.gather(*[one(i) for i in range(100)])
    say("acked", ok[0], "pending", len(c._waits), "ms", ticks_diff(ticks_ms(), t0))
    await c.disconnect()


async def subscribe():
    got = []
    c = Client("probe-sub", HOST, PORT)
    c.on_message = lambda t, p: got.append((t, p))
    await c.connect(5)
    say("subscribed", await c.subscribe("dosis/sub/#", 1, timeout=5))
    await until(lambda: len(got) >= 2, 10)
    for t, p in got:
        say("msg", t.decode(), p.decode())
    await c.disconnect()


async def kill():
    c = Client("probe-kill", HOST, PORT, keepalive=4)
    await c.connect(5)
    say("connected")
    n = 0
    while True:
        t0 = ticks_ms()
        try:
            await c.publish("dosis/kill", "n%d" % n, qos=1, timeout=1)
        except (MQTTError, asyncio.TimeoutError) as e:
            say("failed", name(e), ticks_diff(ticks_ms(), t0), c.connected, repr(c.error))
            break
        n += 1
        if n == 5:
            say("streaming")
        await asyncio.sleep_ms(50)
    t0 = ticks_ms()
    try:
        await c.publish("dosis/kill", "again", qos=1, timeout=1)
        say("unexpected success")
    except MQTTError as e:
        say("again", name(e), ticks_diff(ticks_ms(), t0))
    await asyncio.sleep_ms(300)


async def stall():
    c = Client("probe-stall", HOST, PORT, keepalive=2)
    await c.connect(5)
    await c.publish("dosis/stall", "before", qos=1, timeout=2)
    say("connected")
    await flag("frozen")
    t0 = ticks_ms()
    try:
        await c.publish("dosis/stall", "frozen", qos=1, timeout=1)
        say("unexpected success")
    except asyncio.TimeoutError as e:
        say("timeout", name(e), ticks_diff(ticks_ms(), t0))
    dead = await until(lambda: not c.connected, 8)
    say("dead", dead, ticks_diff(ticks_ms(), t0), repr(c.error))


async def reconnect():
    got = []
    c = Client("probe-rc", HOST, PORT, clean=False, keepalive=10)
    c.on_message = lambda t, p: got.append((t, p))
    say("connected", await c.connect(5))
    await c.subscribe("dosis/rc/cmd", 1, timeout=5)
    say("subscribed")
    await until(lambda: not c.connected, 15)
    say("lost", repr(c.error))
    try:
        await c.connect(2)
        say("unexpected success")
    except (OSError, MQTTError, asyncio.TimeoutError) as e:
        say("refused", name(e))
    await flag("go")
    attempts = 0
    while True:
        attempts += 1
        try:
            sp = await c.connect(2)
            break
        except (OSError, MQTTError, asyncio.TimeoutError):
            if attempts > 30:
                raise
            await asyncio.sleep_ms(300)
    say("reconnected", sp, attempts)
    await until(lambda: got, 5)
    for t, p in got:
        say("msg", t.decode(), p.decode())
    await c.publish("dosis/rc/up", "back", qos=1, timeout=5)
    say("puback")
    await c.disconnect()


async def will():
    c = Client("probe-will", HOST, PORT, will=("dosis/will/status", "offline", 1, False))
    await c.connect(5)
    say("connected")
    await asyncio.sleep(30)  # killed by the test before this ends


async def will_clean():
    c = Client("probe-will2", HOST, PORT, will=("dosis/will/status", "offline2", 1, False))
    await c.connect(5)
    await c.disconnect()
    say("done")


async def oversized():
    import gc

    got = []
    c = Client("probe-big", HOST, PORT)
    c.on_message = lambda t, p: got.append(len(p))
    await c.connect(5)
    await c.subscribe("dosis/big", 0, timeout=5)
    say("subscribed")
    await until(lambda: not c.connected, 10)
    say("dropped", got, repr(c.error))
    gc.collect()
    free = gc.mem_free()
    await asyncio.sleep_ms(200)
    await c.connect(5)
    await c.publish("dosis/big/after", "still here", qos=1, timeout=5)
    say("puback", free)
    await c.disconnect()


async def main():
    task = asyncio.create_task(TICK.run())
    try:
        await globals()[SCENARIO]()
    except Exception as e:  # noqa: BLE001  (reported to the test, which fails on it)
        say("error", name(e), e)
    TICK.running = False
    await task
    say("gap", TICK.gap)


asyncio.run(main())
