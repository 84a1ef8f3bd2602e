"""The dispenser online: Wi-Fi, the uplink to the care team's gateway, the heartbeat and NTP.

Everything here is optional and secondary: the dose loop never waits for the network, and a
device that was never provisioned, or whose Wi-Fi is down for days, reminds exactly as before
and keeps its log until the gateway has acknowledged it (dispenser/uplink.py).

Configuration: `net.json` on flash, written only by the authenticated `net.wifi` and
`net.mqtt` commands (`dosis provision wifi|mqtt`), never readable back with its secrets
(`public()` is what `net.get` and `info` show):

    {"wifi": {"ssid": "...", "psk": "..."},
     "mqtt": {"host": "192.0.2.10", "port": 8883, "tls": true, "ca": "-----BEGIN ...",
              "user": "...", "pass": "...", "ukey": "<64 hex>", "hb": 300, "resend": 60},
     "ntp": ["192.0.2.1", "192.0.2.2"]}

MQTT runs over TLS (the broker's CA in "ca", verified) unless "tls" is false, which the
command accepts only with an explicit `insecure: true` (a lab broker on 1883). `host` should
be an IP address: a name lookup blocks the whole event loop on the ESP32 (a few seconds at
worst), so a name is resolved only at connect and documented as such.
"""

import asyncio
import binascii
import gc

CONFIG = "net.json"
HB_S = 300  # heartbeat period (the issue: "every few minutes")
# Everything sent was PUBACKed but the gateway's ack has not moved for this long: send again
# from the last ack. It bounds how late records arrive after a broker lost them (mosquitto
# drops what arrives between its restart and the gateway's new subscription: docs/gateway.md).
RESEND_S = 60
# Free heap the uplink must leave after its modules are in and its TLS context is built (its
# MQTT buffer, in-flight publishes, and a margin the dose loop keeps). Below it, the uplink
# stays off and says why (net.get): reminding matters more than reporting, and the gateway
# reports a device it never hears from as offline. What the uplink itself takes: `make
# bench-uplink` (bench/RESULTS.md).
UPLINK_RESERVE = 40 * 1024
NTP_EVERY_S = 6 * 3600
_WIFI_WAIT_S = 20  # for an association before trying again
_MAX_CA = 4096


class Invalid(ValueError):
    pass


def _text(args, name, lo, hi, default=None):
    v = args.get(name, default)
    if not isinstance(v, str) or not lo <= len(v) <= hi:
        raise Invalid("%s must be a text of %d..%d characters" % (name, lo, hi))
    for ch in v:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise Invalid("%s must not contain control characters" % name)
    return v


def _ipv4(s):
    parts = s.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p or len(p) > 3 or not p.isdigit() or int(p) > 255:
            return False
    return True


def check_wifi(args):
    """The `net.wifi` arguments as a config section, or Invalid. An empty ssid forgets Wi-Fi."""
    ssid = _text(args, "ssid", 0, 32)
    if not ssid:
        return None
    psk = _text(args, "psk", 0, 63, "")
    if psk and len(psk) < 8:
        raise Invalid("psk must be empty (an open network) or 8..63 characters (WPA2)")
    return {"ssid": ssid, "psk": psk}


def check_mqtt(args):
    """The `net.mqtt` arguments as a config section, or Invalid. An empty host forgets it."""
    host = _text(args, "host", 0, 64)
    if not host:
        return None
    for ch in host:
        if not (ch.isalpha() or ch.isdigit() or ch in ".-"):
            raise Invalid("host must be an IPv4 address or a host name")
    port = args.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise Invalid("port must be an integer 1..65535")
    tls = args.get("tls")
    if not isinstance(tls, bool):
        raise Invalid("tls must be true or false")
    ca = None
    if tls:
        ca = args.get("ca")
        if not isinstance(ca, str) or "-----BEGIN CERTIFICATE-----" not in ca:
            raise Invalid("tls needs ca: the broker's CA certificate in PEM")
        if len(ca) > _MAX_CA:
            raise Invalid("ca over %d bytes: give the one CA that signed the broker" % _MAX_CA)
    elif args.get("insecure") is not True:
        raise Invalid("plain MQTT (no TLS) needs insecure: true, for a lab broker only")
    ukey = args.get("ukey")
    if not isinstance(ukey, str) or len(ukey) != 64:
        raise Invalid("ukey must be 64 hex digits (the uplink key)")
    try:
        binascii.unhexlify(ukey)
    except ValueError:
        raise Invalid("ukey must be 64 hex digits (the uplink key)")
    out = {"host": host, "port": port, "tls": tls, "ca": ca, "ukey": ukey.lower()}
    if args.get("user") is not None:
        out["user"] = _text(args, "user", 1, 64)
        out["pass"] = _text(args, "pass", 0, 128, "")
    return out


def check_ntp(v):
    if not isinstance(v, list) or len(v) > 4:
        raise Invalid("ntp must be a list of at most 4 IPv4 addresses")
    for s in v:
        if not isinstance(s, str) or not _ipv4(s):
            raise Invalid("ntp must be a list of at most 4 IPv4 addresses")
    return v


def public(cfg):
    """What may be shown of the configuration: no password, no key, no CA text."""
    cfg = cfg or {}
    w = cfg.get("wifi")
    m = cfg.get("mqtt")
    return {
        "wifi": None if not w else {"ssid": w["ssid"], "psk_set": bool(w.get("psk"))},
        "mqtt": None
        if not m
        else {
            "host": m["host"],
            "port": m["port"],
            "tls": m["tls"],
            "user": m.get("user"),
            "pass_set": bool(m.get("pass")),
            "ukey_set": bool(m.get("ukey")),
            "hb": m.get("hb", HB_S),
            "resend": m.get("resend", RESEND_S),
        },
        "ntp": cfg.get("ntp") or [],
        "ntp_port": cfg.get("ntp_port", 123),
    }


class Net:
    """The online tasks, (re)built from net.json by `start()`; `reload()` after a change."""

    def __init__(self, board, store, device_id, version, app=None, log=None, sched_hash=None):
        self.board = board
        self.store = store
        self.device_id = device_id
        self.version = version
        self.app = app
        self.log = log
        self.sched_hash = sched_hash
        self.uplink = None
        self.wlan = None
        self._tasks = []
        self.cfg = {}
        self.ntp_ok = 0
        self.ntp_at = None
        self.wifi_state = "off"
        self.uplink_off = None  # why the uplink is not running although configured
        self.t0 = board.clock.ticks_ms()

    # -- configuration ---------------------------------------------------------------------

    def load(self):
        cfg = self.store.load(CONFIG)
        return cfg if isinstance(cfg, dict) else {}

    def save(self, cfg):
        self.store.save(CONFIG, cfg)

    def stats(self):
        out = public(self.cfg)
        out["wifi_state"] = self.wifi_state
        out["uplink"] = self.uplink.stats() if self.uplink is not None else None
        out["uplink_off"] = self.uplink_off
        out["ntp_ok"] = self.ntp_ok
        return out

    # -- tasks -----------------------------------------------------------------------------

    def start(self):
        """Never raises: a configuration the device cannot use leaves that part off (and
        `net.get` says why), never the dose loop without its boot."""
        self.uplink_off = None
        try:
            self.cfg = self.load()
            w = self.cfg.get("wifi")
            m = self.cfg.get("mqtt")
            if w or getattr(self.board, "wlan_always", False):
                self._tasks.append(asyncio.create_task(self._wifi(w)))
            if m and self.log is not None:
                try:
                    self._start_uplink(m)
                except Exception as e:  # noqa: BLE001  (a CA mbedtls refuses, a bad value)
                    self.uplink = None
                    self.uplink_off = "cannot start: %s: %s" % (type(e).__name__, e)
            if self.cfg.get("ntp") and self.app is not None:
                port = self.cfg.get("ntp_port", 123)
                self._tasks.append(asyncio.create_task(self._ntp(self.cfg["ntp"], port)))
        except Exception as e:  # noqa: BLE001
            self.uplink_off = "network configuration unusable: %s" % e

    def stop(self):
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        up = self.uplink
        self.uplink = None
        if up is not None and up.client is not None:
            try:
                up.client._close("reconfigured")
            except Exception:  # noqa: BLE001
                pass
        gc.collect()

    def reload(self):
        self.stop()
        self.start()

    def online(self):
        wl = self.wlan
        if wl is None:
            return False
        try:
            return bool(wl.isconnected())
        except OSError:
            return False

    def kick(self):
        if self.uplink is not None:
            self.uplink.kick()

    def _start_uplink(self, m):
        gc.collect()
        try:
            from dispenser.uplink import Uplink, client_factory

            ctx = None
            if m.get("tls"):
                from dispenser.tls import context

                ctx = context(m["ca"].encode())
            gc.collect()
            free = gc.mem_free()
        except MemoryError:
            free = 0
        if free < UPLINK_RESERVE:
            self.uplink_off = "not enough memory: %d KB free with the uplink, %d KB needed" % (
                free // 1024,
                UPLINK_RESERVE // 1024,
            )
            import sys

            for name in ("dispenser.uplink", "dispenser.mqtt", "dispenser.tls"):
                sys.modules.pop(name, None)
            gc.collect()
            return
        kw = {"ssl": ctx, "keepalive": 60}
        if m.get("user"):
            kw["user"] = m["user"]
            kw["password"] = m.get("pass", "")
        factory = client_factory(m["host"], m["port"], self.device_id, **kw)
        bo = m.get("backoff")
        self.uplink = Uplink(
            factory,
            self.log,
            self.device_id,
            ukey=binascii.unhexlify(m["ukey"]),
            health=self.health,
            hb_s=m.get("hb", HB_S),
            resend_after=m.get("resend", RESEND_S),
            online=self.online,
            backoff=tuple(bo) if isinstance(bo, list) and len(bo) == 2 else (1, 60),
        )
        self._tasks.append(asyncio.create_task(self.uplink.run()))

    async def _wifi(self, w):
        """Keep the station associated; never blocks (connect() returns at once)."""
        wl = self.wlan = self.board.wlan()
        fails = 0
        while True:
            if self.online():
                self.wifi_state = "up"
                fails = 0
                await asyncio.sleep_ms(5000)
                continue
            self.wifi_state = "connecting"
            try:
                wl.active(True)
                wl.connect(w["ssid"] if w else "", w.get("psk", "") if w else "")
            except OSError:
                pass
            for _ in range(_WIFI_WAIT_S * 2):
                await asyncio.sleep_ms(500)
                if self.online():
                    break
            if not self.online():
                self.wifi_state = "down"
                fails += 1
                try:
                    wl.disconnect()
                except OSError:
                    pass
                await asyncio.sleep_ms(min(300, 5 << min(fails, 6)) * 1000)

    async def _ntp(self, servers, port=123):
        from dispenser import sntp

        app = self.app
        while True:
            if self.online():
                try:
                    n = await sntp.sync(app.offer_time, servers, port=port)  # pyright: ignore
                    if n:
                        self.ntp_ok += n
                        self.ntp_at = self.board.clock.ticks_ms()
                except Exception:  # noqa: BLE001  (NTP is a nicety: never the loop's end)
                    pass
                await asyncio.sleep(NTP_EVERY_S)
            else:
                await asyncio.sleep(30)

    # -- the heartbeat ---------------------------------------------------------------------

    def health(self):
        b = self.board
        clock = b.clock
        app = self.app
        st = self.log.stats() if self.log is not None else {"durable": 0, "acked": 0}
        # No gc.collect() here: on the ESP32 it can hold the loop for tens of ms; free heap
        # without one is a lower bound, which is what a health report wants.
        return {
            "v": 1,
            "t": clock.now() if clock.valid() else None,
            "tv": clock.valid(),
            "up": (clock.ticks_ms() - self.t0) // 1000,
            "seq": st["durable"],
            "acked": st["acked"],
            "bat": b.battery_mv(),
            "mains": bool(b.mains.value()),
            "faults": sorted(app.faults) if app is not None else [],
            "sched": self.sched_hash[:12] if self.sched_hash else None,
            "heap": gc.mem_free(),
            "fw": self.version,
        }
