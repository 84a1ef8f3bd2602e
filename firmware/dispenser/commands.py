"""The commands of the device protocol (docs/protocol.md): argument checks, then the app.

Each command is `async def name(link, args) -> data` (a dict, or (dict, bytes) for a reply
that carries records). A bad argument raises link.Refused("bad_args", sentence) before
anything changes. `lookup()` says which command a name is and whether it needs the key.
"""

import binascii
import gc

from dispenser.link import PROTO, Refused

_MIN_UTC = 1577836800  # 2020-01-01: a clock before this is a wrong clock
_MAX_UTC = 4102444800  # 2100-01-01
_MAX_SCHEDULE = 8192
_LOG_N = 170  # records per log.read: one flash block (4080 bytes)
_LANGS = ("da", "en")
_TONES = ("normal", "low")
_MODES = ("normal", "assisted", "paused", "travel")
# The service session's budget: the REPL keeps the watchdog fed this long, then the device
# resets back into the app (docs/protocol.md, "Service mode"; main.py, sim/rawrepl.py).
SERVICE_S = 900


def _int(args, name, lo, hi):
    v = args.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise Refused("bad_args", "%s must be an integer %d..%d" % (name, lo, hi))
    return v


def _bool(args, name):
    v = args.get(name)
    if not isinstance(v, bool):
        raise Refused("bad_args", "%s must be true or false" % name)
    return v


def _choice(args, name, options):
    v = args.get(name)
    if v not in options:
        raise Refused("bad_args", "%s must be one of %s" % (name, "/".join(options)))
    return v


def _app(link):
    if link.app is None:
        raise Refused("busy", "no schedule on the device yet: push one first")
    return link.app


def _now(link):
    clock = link.board.clock
    if not clock.valid():
        raise Refused("busy", "the device has no valid time: run 'dosis time sync'")
    return clock.now()


# -- open to anyone ----------------------------------------------------------------------------


async def hello(link, args):
    return {
        "proto": PROTO,
        "fw": link.version,
        "device": link.device_id,
        "board": link.board.name,
        "paired": link.paired(),
        "pairing": link.pairing(),
        "update": _update_state(link),
    }


def _update_state(link):
    """The last app update: "trial", "ok", "rolled_back" (see boot.py), or None."""
    import json

    try:
        with open((link.code_root or "") + "/deploy.json") as f:
            st = json.load(f).get("state")
        return st if isinstance(st, str) else None
    except (OSError, ValueError, AttributeError):
        return None


async def pair(link, args):
    nonce = args.get("nonce")
    if not isinstance(nonce, str) or len(nonce) != 64:
        raise Refused("bad_args", "nonce must be 64 hex digits")
    try:
        raw = binascii.unhexlify(nonce)
    except ValueError:
        raise Refused("bad_args", "nonce must be 64 hex digits")
    if not link.pairing():
        link.refuse("not_pairing")
        raise Refused("not_pairing", "press the service button on the device first")
    return {"device": link.device_id, "key": link.pair(raw)}


# -- authenticated -----------------------------------------------------------------------------


async def info(link, args):
    board = link.board
    clock = board.clock
    app = link.app
    utc = clock.now() if clock.valid() else None
    local = None
    nxt = None
    faults = {}
    mode = None
    fill = None
    if app is not None:
        faults = dict(app.faults)
        mode = app.doses.mode
        d = app.doses
        fill = {"at": d.fill, "upto": d.fill_upto}
        if utc is not None:
            fill["left"] = d.doses_left(utc)
        if utc is not None:
            from dosiscore import civil

            local = civil.format_iso(utc, app.zone.offset(utc))
            nd = app.next_dose(utc)
            nxt = nd[0] if nd else None
    log = None
    if link.log is not None:
        st = link.log.stats()
        log = {"first": st["first"], "last": st["durable"], "acked": st["acked"]}
    gc.collect()
    return {
        "device": link.device_id,
        "schedule": link.sched_hash,
        "utc": utc,
        "local": local,
        "time_valid": clock.valid(),
        "time_source": getattr(clock, "source", None),
        "mains": bool(board.mains.value()),
        "battery_mv": board.battery_mv(),
        "heap_free": gc.mem_free(),
        "log": log,
        "faults": faults,
        "mode": mode,
        "fill": fill,
        "next": nxt,
        "uptime_s": (clock.ticks_ms() - link.up_ms) // 1000,
        "refused": link.refused,
        "refused_unlogged": link.unlogged,
    }


async def time_set(link, args):
    utc = _int(args, "utc", _MIN_UTC, _MAX_UTC)
    clock = link.board.clock
    before = clock.now() if clock.valid() else None
    if link.app is not None:
        link.app.offer_time(utc, "nurse", True)
    else:
        from dispenser.ds3231 import DS3231

        old, new = clock.set(utc, "nurse")
        link._emit("clock", None, "%s %s %s" % (old, new, "nurse"))
        try:
            DS3231(link.board.i2c).write(utc)
        except OSError:
            pass
    return {"utc": clock.now(), "step": None if before is None else utc - before}


async def schedule_get(link, args):
    if link.sched_doc is None:
        return {"hash": None, "doc": None}
    return {"hash": link.sched_hash, "doc": link.sched_doc}


async def schedule_put(link, args):
    data = args.get("data")
    at = _int(args, "at", 0, _MAX_SCHEDULE)
    more = _bool(args, "more")
    if not isinstance(data, str):
        raise Refused("bad_args", "data must be a string (a piece of the schedule's JSON text)")
    if at == 0:
        link.sched_buf = bytearray()
    buf = getattr(link, "sched_buf", None)
    if buf is None or at != len(buf):
        raise Refused("bad_args", "chunk out of order: expected at=%d" % (len(buf) if buf else 0))
    if len(buf) + len(data) > _MAX_SCHEDULE:
        link.sched_buf = None
        raise Refused("bad_args", "schedule over %d bytes" % _MAX_SCHEDULE)
    buf.extend(data.encode())
    if more:
        return {"have": len(buf)}
    link.sched_buf = None
    return await _install(link, bytes(buf))


async def _install(link, text):
    import json

    try:
        doc = json.loads(text)
    except ValueError:
        raise Refused("invalid_schedule", "the schedule is not valid JSON")
    del text
    gc.collect()
    from dosiscore import schedule  # the validator: the host's own code

    try:
        doc = schedule.validate(doc)
    except schedule.ScheduleError as e:
        probs = e.lines()
        raise Refused("invalid_schedule", str(e), {"problems": probs})
    digest = schedule.content_hash(doc)
    if digest == link.sched_hash:
        return {"hash": digest, "reboot": False}
    from dispenser.runtime import SCHEDULE
    from dispenser.settings import ABStore

    ABStore(link.store.root, link.store.fs).save(SCHEDULE, doc)  # old or new, never a mix
    link._emit("schedule_update", None, digest[:12])
    if link.log is not None:
        link.log.sync()  # a planned reboot loses nothing
    link.reboot = True
    return {"hash": digest, "reboot": True}


async def log_read(link, args):
    frm = _int(args, "from", 1, 0xFFFFFFFF)
    n = _int(args, "n", 1, _LOG_N)
    log = link.log
    if log is None:
        raise Refused("busy", "the dose log is not available (storage fault E9)")
    buf = getattr(link, "log_buf", None)
    if buf is None:
        buf = link.log_buf = bytearray(_LOG_N * 24)
    mv = memoryview(buf)[: n * 24]
    k, nxt = log.read_into(mv, frm)
    return {"next": nxt, "last": log.stats()["durable"], "n": k}, mv[: k * 24]


async def log_ack(link, args):
    seq = _int(args, "seq", 0, 0xFFFFFFFF)
    if link.log is None:
        raise Refused("busy", "the dose log is not available (storage fault E9)")
    n = getattr(link, "net", None)
    if n is not None and n.uplink is not None:
        # The device is on a gateway: only the gateway's ack (dispenser/uplink.py) may let it
        # forget records, or a log pulled by cable would never reach the care team.
        return {"acked": link.log.stats()["acked"], "owner": "gateway"}
    return {"acked": link.log.ack(seq)}


async def fill(link, args):
    app = _app(link)
    now = _now(link)
    if hasattr(link.board, "fill_all"):
        link.board.fill_all(app.doc["compartments"])  # the simulator: pills in every compartment
    app._events(app.doses.refilled(now))
    app._apply_view()
    return {"doses_left": app.doses.doses_left(now)}


async def settings(link, args):
    app = _app(link)
    cur = link.store.load("settings.json") or {}
    new = dict(cur)
    if "language" in args:
        new["language"] = _choice(args, "language", _LANGS)
    if "volume" in args:
        new["volume"] = _int(args, "volume", 1, 4)
    if "tone" in args:
        new["tone"] = _choice(args, "tone", _TONES)
    mode = _choice(args, "mode", _MODES) if "mode" in args else None
    if mode is not None:
        now = _now(link)
    if new != cur:
        link.store.save("settings.json", new)
        apply_settings(app, new)
        app.emit("settings", None, "%d %s %s" % (app.alerts.volume, app.alerts.tone, app.lang))
    if mode is not None and mode != app.doses.mode:
        app._events(app.doses.set_mode(mode, now))
        app._apply_view()
    return {
        "language": app.lang,
        "volume": app.alerts.volume,
        "tone": app.alerts.tone,
        "mode": app.doses.mode,
    }


# -- the network (dispenser/net.py; `dosis provision`) -----------------------------------------


def _net_update(link, **sections):
    """Set (or, with None, drop) sections of net.json in one write, then restart the net."""
    from dispenser import net

    cfg = link.store.load(net.CONFIG)
    cfg = cfg if isinstance(cfg, dict) else {}
    for section, value in sections.items():
        if value is None:
            cfg.pop(section, None)
        else:
            cfg[section] = value
    link.store.save(net.CONFIG, cfg)
    n = getattr(link, "net", None)
    if n is not None:
        n.reload()
    gc.collect()
    return net.public(cfg)


async def net_wifi(link, args):
    from dispenser import net

    try:
        w = net.check_wifi(args)
    except net.Invalid as e:
        raise Refused("bad_args", str(e))
    return _net_update(link, wifi=w)


async def net_mqtt(link, args):
    from dispenser import net

    try:
        m = net.check_mqtt(args)
    except net.Invalid as e:
        raise Refused("bad_args", str(e))
    if m is not None and m["tls"]:
        try:
            from dispenser.tls import context

            context(m["ca"].encode())  # what mbedtls cannot load is refused now, not at boot
        except (ValueError, OSError) as e:
            raise Refused("bad_args", "ca: not a certificate this device can load (%s)" % e)
        gc.collect()
    if m is not None:
        if "hb" in args:
            m["hb"] = _int(args, "hb", 10, 3600)
        if "resend" in args:
            m["resend"] = _int(args, "resend", 5, 3600)
        if "backoff" in args:
            bo = args["backoff"]
            if (
                not isinstance(bo, list)
                or len(bo) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in bo)
                or not 0.1 <= bo[0] <= bo[1] <= 3600
            ):
                raise Refused(
                    "bad_args", "backoff must be [low, high] seconds, 0.1 <= low <= high"
                )
    out = _net_update(link, mqtt=m)
    n = getattr(link, "net", None)
    return out if n is None else n.stats()


async def net_ntp(link, args):
    from dispenser import net

    try:
        servers = net.check_ntp(args.get("servers"))
    except net.Invalid as e:
        raise Refused("bad_args", str(e))
    port = _int(args, "port", 1, 65535) if "port" in args else 123
    return _net_update(
        link, ntp=servers or None, ntp_port=port if servers and port != 123 else None
    )


async def net_get(link, args):
    from dispenser import net

    n = getattr(link, "net", None)
    if n is not None:
        return n.stats()
    return net.public(link.store.load(net.CONFIG))


def apply_settings(app, s):
    """The stored settings over the schedule's defaults (also called at boot)."""
    if s.get("language") in _LANGS:
        app.lang = s["language"]
    if s.get("volume") in (1, 2, 3, 4):
        app.alerts.volume = s["volume"]
    if s.get("tone") in _TONES:
        app.alerts.tone = s["tone"]
    app.disp_wake.set()


async def selftest(link, args):
    from dispenser.ds3231 import DS3231

    app = link.app
    board = link.board
    out = {}
    if app is None:
        out["carousel"] = "no schedule"
    elif app.want is not None and app.want[0] == "open":
        raise Refused("busy", "a dose is open: run the self-test after it is taken")
    elif app.moving:
        out["carousel"] = "busy"
    else:
        # Homing is also how a technician brings a carousel back after clearing a jam: the
        # device never retries a blocked carousel by itself (no grinding), a person does.
        app.moving = True
        try:
            await app.carousel.calibrate()
            out["carousel"] = "ok"
            for code in ("E1", "E2", "E4"):
                app.clear_fault(code)
            app.ready = True
        except Exception as e:  # Jam, HomeLost: reported, and raised as faults by the app
            out["carousel"] = "%s %s" % (getattr(e, "code", "E1"), e)
            app.fault(getattr(e, "code", "E1"), str(e))
        finally:
            app.moving = False
            app.kick.set()
            app.move_wake.set()
    try:
        out["rtc"] = "ok" if DS3231(board.i2c).read() is not None else "lost"
    except OSError as e:
        out["rtc"] = "E3 %s" % e
    if app is not None:
        await app.alerts.chirp(1)
        out["buzzer"] = "ok"
    disp = board.display
    if disp is None:
        out["display"] = "none"
    else:
        try:
            await disp.test_pattern(board.clock)
            out["display"] = "ok"
        except OSError as e:
            out["display"] = "E8 %s" % e
        if app is not None:
            app.disp_wake.set()
    out["storage"] = "ok" if link.store.usable() else "E9 unusable"
    gc.collect()
    out["heap_free"] = gc.mem_free()
    return out


async def snapshot(link, args):
    disp = link.board.display
    if disp is None:
        raise Refused("busy", "this device has no display")
    name = link.app.last_screen[0] if link.app is not None else "no_schedule"
    fb = binascii.b2a_base64(disp.snapshot(), newline=False).decode()
    return {"screen": name, "w": 128, "h": 64, "fb": fb}


async def monitor(link, args):
    link.monitoring = _bool(args, "on")
    return {"on": link.monitoring}


async def service(link, args):
    """Hand the REPL to a technician: the only way to it on a production device.

    Refused (busy, and nothing changes) while a dose is open or the carousel moves. Else the
    app stops dispensing safely (App.hold_for_service: carousel closed, light and tone off,
    dose state saved), a "service" event is logged and the log synced, and the link stops
    once this reply is written (`link.repl`; main.py or sim.serve then leave the app)."""
    app = link.app
    if app is not None:
        why = await app.hold_for_service()
        if why is not None:
            raise Refused("busy", why)
        app.emit("service", None, "repl")
    else:
        link._emit("service", None, "repl")
    if link.log is not None:
        link.log.sync()  # the REPL may end in a reset or a power cut: nothing is lost
    link.repl = True
    link.reboot = True  # the link returns from run() once the reply is written
    # No app, no watchdog started: nothing will reset the device, no budget.
    return {"repl": True, "budget_s": SERVICE_S if app is not None else None}


# -- the simulated board's hooks (physical actions: no key) --------------------------------------


async def sim_press(link, args):
    button = _choice(args, "button", ("taken", "service"))
    hold = args.get("hold_s", 0.3)
    if not isinstance(hold, (int, float)) or isinstance(hold, bool) or not 0.1 <= hold <= 10:
        raise Refused("bad_args", "hold_s must be a number 0.1..10")
    board = link.board
    await board.press_now(board.btn_taken if button == "taken" else board.btn_service, hold)
    return {}


async def sim_take(link, args):
    link.board.motor.take()
    link.board.save_world()
    return {}


async def sim_jam(link, args):
    if _bool(args, "on"):
        link.board.motor.jam()
    else:
        link.board.motor.unjam()
    return {}


async def sim_mains(link, args):
    link.board.mains.value(1 if _bool(args, "on") else 0)
    return {}


async def sim_net(link, args):
    """The virtual dispenser's Wi-Fi: off (out of range) or on again."""
    link.board.wlan_up = _bool(args, "up")
    return {}


async def sim_battery(link, args):
    link.board.battery_level_mv = _int(args, "mv", 2500, 4500)
    return {}


async def sim_advance(link, args):
    s = _int(args, "s", 1, 604800)
    await link.board.clock.fast_forward(s)
    if link.app is not None:
        for ev in (link.app.kick, link.app.disp_wake, link.app.alert_wake):
            ev.set()
    clock = link.board.clock
    return {"utc": clock.now() if clock.valid() else None}


_TABLE = {
    "hello": (hello, False),
    "pair": (pair, False),
    "info": (info, True),
    "time.set": (time_set, True),
    "schedule.get": (schedule_get, True),
    "schedule.put": (schedule_put, True),
    "log.read": (log_read, True),
    "log.ack": (log_ack, True),
    "fill": (fill, True),
    "settings": (settings, True),
    "selftest": (selftest, True),
    "display.snapshot": (snapshot, True),
    "monitor": (monitor, True),
    "service": (service, True),
    "net.wifi": (net_wifi, True),
    "net.mqtt": (net_mqtt, True),
    "net.ntp": (net_ntp, True),
    "net.get": (net_get, True),
}


async def sim_outputs(link, args):
    """What a person would see and hear (the light, the tone, the opening), for HIL tests."""
    board = link.board
    app = link.app
    return {
        "led": board.led.value(),
        "buzzer_duty": board.buzzer.duty,
        "buzzer_hz": board.buzzer.hz,
        "beeps": app.alerts.beeps if app is not None else 0,
        "moves": app.moves if app is not None else 0,
        "at": board.motor.opening() or None,  # the compartment physically at the opening
        "steps": board.motor.steps,
    }


_SIM = {
    "sim.outputs": sim_outputs,
    "sim.press": sim_press,
    "sim.take": sim_take,
    "sim.jam": sim_jam,
    "sim.mains": sim_mains,
    "sim.battery": sim_battery,
    "sim.net": sim_net,
    "sim.advance": sim_advance,
}


def lookup(cmd, board):
    """(handler, needs the key) for a command name, or None."""
    entry = _TABLE.get(cmd)
    if entry is None and board.name == "sim":
        fn = _SIM.get(cmd)
        if fn is not None:
            entry = (fn, False)
    return entry
