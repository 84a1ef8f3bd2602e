"""Store-and-forward uplink: every dose-log record to the gateway over MQTT, acked end to end.

Topics (`<id>` is the pseudonymous device id; nothing else about the person is sent):
- `dosis/<id>/events`  device -> gateway, QoS 1: batches of log records (envelope below);
- `dosis/<id>/ack`     gateway -> device: the highest seq such that the gateway has stored every
  record up to it ("highest contiguous"), as ASCII decimal (`b"137"`) or JSON (`{"seq": 137}`);
- `dosis/<id>/status`  "online" (retained) after each connect; the last will "offline"
  (retained, QoS 1) when the connection drops without a DISCONNECT.

Envelope (binary, little-endian), one message per batch of at most `batch` records:

    offset 0  u8   version: 2 (signed, what a provisioned device sends), 1 (unsigned: tests)
    offset 1  u8   count n (0..255)
    offset 2  u32  from: the seq this batch was read from
    offset 6  u32  next: the seq the next batch starts at (every record of the batch is < next)
    offset 10 n x 24 bytes: the records, verbatim (dosiscore.logrec: seq, CRC and all)
    (v2 only) 16 bytes: tag = HMAC-SHA256(ukey, topic + b"\n" + bytes 0..10+24n)[:16]

Every seq in [from, next) that is not among the records does not exist and never will (a gap
the log explains with a LOG_* record, or a record that failed its CRC on flash): the gateway
may count [from, next) as covered when computing its highest contiguous seq. n = 0 is possible
(a batch made only of such a gap). With batch = 8 a v2 message is 218 bytes.

With an uplink key (`ukey`, 32 bytes set by `dosis provision mqtt` and enrolled at the gateway)
everything is authenticated, topic included, so a message copied onto another device's topic
fails too (docs/gateway.md): the events (above), the heartbeat on `dosis/<id>/health` (JSON
whose last member is `"mac"`, over the bytes before `,"mac":`), and the gateway's acks, which
must then be `{"seq":N,"mac":"<32 hex>"}` with the mac over `{"seq":N`; an unsigned or badly
signed ack is rejected. The heartbeat goes out every `hb_s` seconds while connected: battery,
mains, faults, schedule hash, free heap, the log's pointers (the `health` callable's dict).

Delivery: after every (re)connect the uplink sends from `acked + 1` (the log's acknowledgement
pointer), with at most `window` QoS 1 publishes in flight (each costs the MQTT client ~1.5 KB of
heap while it waits). The pointer moves only on the gateway's ack, never on a PUBACK, so a
broker restart, a broker that lost its queue, or days offline lose nothing; records are sent
again instead (duplicates are fine: the gateway stores by (device, seq)). If everything sent
was PUBACKed but no ack advanced the pointer for `resend_after` seconds (a gateway that missed
messages), sending starts again from acked + 1 on the same connection. An ack is accepted only
if it is a well-formed number no higher than the last seq sent (hence never above the last
durable record); anything else is counted in `rejected` and ignored.

Failures (a publish timing out, the connection lost, a connect or subscribe failing) close the
connection and retry after an exponential backoff with jitter: attempt k waits a random time in
[d/2, d] with d = min(backoff[1], backoff[0] * 2**(k-1)) seconds; a connection that got as far
as "online" resets k. run() never raises (except CancelledError, to stop it) and never blocks:
every network wait is an await with a timeout. New records go out within a second (the loop
polls the log) or at once after `kick()`. Reads from the log are synchronous (a few ms at most).
"""

import asyncio
import binascii
import struct
from random import getrandbits
from time import ticks_diff, ticks_ms

from micropython import const

from dispenser.mqtt import Client, MQTTError
from dosiscore.auth import equal, hmac_sha256

try:
    import json
except ImportError:  # a build without json: decimal acks only
    json = None


VERSION = const(2)
HEADER = const(10)
TAG = const(16)
_REC = const(24)  # logrec.RECORD_SIZE
_MAX_ACK = const(32)  # longest ack payload considered


def topics(device_id):
    """(events, ack, status) topics of a device, as bytes."""
    base = "dosis/%s/" % device_id
    return (base + "events").encode(), (base + "ack").encode(), (base + "status").encode()


def tag(ukey, topic, data):
    """The 16-byte authentication tag of `data` published on `topic`."""
    h = bytearray(topic)
    h.extend(b"\n")
    h.extend(data)
    return hmac_sha256(ukey, h)[:TAG]


def _unhex(s):
    try:
        return binascii.unhexlify(s)
    except ValueError:
        return None


def parse_signed_ack(ukey, topic, payload):
    """The seq of a signed ack `{"seq":N,"mac":"<32 hex>"}`, or -1 if malformed or forged."""
    if not payload or len(payload) > 64:
        return -1
    p = bytes(payload)
    i = p.find(b',"mac":"')
    if i < 8 or not p.startswith(b'{"seq":') or p[-2:] != b'"}' or len(p) != i + 8 + 32 + 2:
        return -1
    digits = p[7:i]
    if not digits or len(digits) > 10:
        return -1
    for b in digits:
        if b < 0x30 or b > 0x39:
            return -1
    mac = _unhex(p[i + 8 : i + 40])
    if mac is None or not equal(mac, tag(ukey, topic, p[:i])):
        return -1
    return int(digits)


def signed_json(ukey, topic, obj):
    """`obj` as JSON with a last member "mac" over the bytes before `,"mac":`."""
    body = json.dumps(obj).encode()  # pyright: ignore[reportOptionalMemberAccess]
    head = body[:-1]
    mac = binascii.hexlify(tag(ukey, topic, head))
    return head + b',"mac":"' + mac + b'"}'


def will_of(device_id):
    """The last will for dispenser.mqtt.Client(will=...): "offline", QoS 1, retained."""
    return (topics(device_id)[2], b"offline", 1, True)


def client_factory(host, port, device_id, **kw):
    """A factory for Uplink: a Client with the uplink's client id and last will."""

    def make():
        return Client("dosis-" + device_id, host, port, will=will_of(device_id), **kw)

    return make


def parse_ack(payload):
    """The seq in an ack payload (ASCII decimal or JSON {"seq": n}), or -1 if malformed."""
    if not payload or len(payload) > _MAX_ACK:
        return -1
    if payload[0] == 0x7B:  # "{"
        if json is None:
            return -1
        try:
            obj = json.loads(bytes(payload).decode())
        except Exception:  # noqa: BLE001  (ValueError, UnicodeError...: all mean garbage)
            return -1
        if not isinstance(obj, dict):
            return -1
        v = obj.get("seq")
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return -1
        return v
    if len(payload) > 10:
        return -1
    for b in payload:
        if b < 0x30 or b > 0x39:
            return -1
    return int(bytes(payload).decode())


def envelope(records, n, from_seq, next_seq, ukey=None, topic=None):
    """One message: header + n records from `records` (a buffer of whole 24-byte records),
    signed (v2) if `ukey` is given (then `topic` is the events topic), else v1."""
    size = HEADER + n * _REC
    out = bytearray(size + (TAG if ukey else 0))
    struct.pack_into("<BBII", out, 0, VERSION if ukey else 1, n, from_seq, next_seq)
    out[HEADER:size] = memoryview(records)[: n * _REC]
    if ukey:
        out[size:] = tag(ukey, topic, memoryview(out)[:size])
    return out


class Uplink:
    """The uplink task: `asyncio.create_task(Uplink(...).run())`; `kick()` after an append."""

    def __init__(
        self,
        client_factory,
        log,
        device_id,
        clock_ticks_ms=None,
        *,
        window=4,
        batch=8,
        backoff=(1, 60),
        timeout=10,
        resend_after=300,
        ukey=None,
        health=None,
        hb_s=300,
        online=None,
    ):
        self._factory = client_factory
        self.log = log
        self.device_id = device_id
        self._ticks = clock_ticks_ms or ticks_ms
        self.window = max(1, window)
        self.batch = max(1, min(255, batch))
        self.backoff = backoff
        self.timeout = timeout  # connect, subscribe and each publish, in seconds
        self.resend_after = resend_after
        self.t_events, self.t_ack, self.t_status = topics(device_id)
        self.t_health = ("dosis/%s/health" % device_id).encode()
        self.ukey = ukey  # None: unsigned v1 messages and plain acks (tests, a lab)
        self.health = health  # () -> dict for the heartbeat, or None for no heartbeat
        self.hb_s = hb_s
        self.online = online  # () -> bool: is the network up (Wi-Fi)? None: always
        self._t_hb = None
        self.heartbeats = 0
        self.client = None
        self._buf = bytearray(self.batch * _REC)
        self._wake = asyncio.Event()
        self._gen = 0  # connection generation: publishes of an older one are ignored
        self._inflight = 0
        self._broken = None  # why the current connection must be dropped
        self._ack = 0  # highest valid ack received, not yet given to the log
        self._sent_hi = 0  # highest seq covered by a message handed to publish (this boot)
        self._next = 1
        self._t_progress = 0
        self.fails = 0  # consecutive failed attempts (drives the backoff)
        # counters for stats and tests
        self.connects = 0
        self.published = 0  # messages PUBACKed
        self.rejected = 0  # ack payloads ignored
        self.resends = 0  # rewinds to acked + 1 on a live connection (no ack progress)
        self.error = None  # why the last connection ended, in words

    def kick(self):
        """New records are durable: send them now instead of at the next poll."""
        self._wake.set()

    def stats(self):
        return {
            "connected": self.client is not None and self.client.connected,
            "connects": self.connects,
            "published": self.published,
            "rejected": self.rejected,
            "resends": self.resends,
            "inflight": self._inflight,
            "next": self._next,
            "sent": self._sent_hi,
            "heartbeats": self.heartbeats,
            "error": self.error,
        }

    # -- the task ------------------------------------------------------------------------------

    async def run(self):
        while True:
            while self.online is not None and not self.online():
                self.error = "network down"
                await asyncio.sleep_ms(1000)
            try:
                await self._session()
            except Exception as e:  # noqa: BLE001  (the task boundary: record, back off, retry)
                self.error = "%s: %s" % (type(e).__name__, e)
            self._gen += 1
            c = self.client
            if c is not None:
                try:
                    c._close(self.error or "uplink")  # no DISCONNECT: the will stays armed
                except Exception:  # noqa: BLE001
                    pass
            await self._pause()

    async def _pause(self):
        self.fails += 1
        lo, hi = self.backoff
        d = min(hi, lo * (1 << min(self.fails - 1, 16))) * 1000
        d = int(d / 2 + (d / 2) * getrandbits(16) / 65536)
        await asyncio.sleep_ms(d)

    def _on_message(self, topic, payload):
        # Called from the client's reader task: only checks and records, never blocks.
        if topic != self.t_ack:
            return
        seq = parse_signed_ack(self.ukey, topic, payload) if self.ukey else parse_ack(payload)
        if seq < 0 or seq > self._sent_hi:
            self.rejected += 1
            return
        if seq > self._ack:
            self._ack = seq
            self._wake.set()

    def _apply_ack(self, now):
        a = self._ack
        if a <= 0:
            return
        self._ack = 0
        if a > self.log.stats()["acked"]:
            self.log.ack(a)
            self._t_progress = now
        if a >= self._next:
            self._next = a + 1

    async def _session(self):
        c = self.client
        if c is None:
            c = self.client = self._factory()
        c.on_message = self._on_message
        self._broken = None
        self._inflight = 0
        gen = self._gen
        t = self.timeout
        await c.connect(t)
        await c.subscribe(self.t_ack, 1, timeout=t)
        await c.publish(self.t_status, b"online", qos=1, retain=True, timeout=t)
        self.connects += 1
        self.fails = 0
        self.error = None
        acked = self.log.stats()["acked"]
        self._next = acked + 1
        self._t_progress = self._ticks()
        self._t_hb = None
        while True:
            self._wake.clear()
            now = self._ticks()
            self._apply_ack(now)
            if self._broken is not None:
                raise MQTTError(self._broken)
            if not c.connected:
                raise MQTTError("connection lost: " + str(c.error))
            if self.online is not None and not self.online():
                raise MQTTError("network down")
            if self.health is not None and (
                self._t_hb is None or ticks_diff(now, self._t_hb) >= self.hb_s * 1000
            ):
                self._t_hb = now
                self._heartbeat(c, gen)
            acked = self.log.stats()["acked"]
            if (
                self._inflight == 0
                and self._next > acked + 1
                and ticks_diff(now, self._t_progress) > self.resend_after * 1000
            ):
                self._next = acked + 1
                self._t_progress = now
                self.resends += 1
            while self._inflight < self.window:
                frm = self._next
                n, nxt = self.log.read_into(self._buf, frm)
                if nxt <= frm:
                    break
                if frm == acked + 1:
                    self._t_progress = now  # the clock for resend_after starts with this batch
                msg = envelope(self._buf, n, frm, nxt, self.ukey, self.t_events)
                self._next = nxt
                if nxt - 1 > self._sent_hi:
                    self._sent_hi = nxt - 1
                self._inflight += 1
                asyncio.create_task(self._publish(c, self.t_events, msg, gen))
            try:
                await asyncio.wait_for_ms(self._wake.wait(), 1000)
            except asyncio.TimeoutError:
                pass

    def _heartbeat(self, c, gen):
        try:
            h = self.health()  # pyright: ignore[reportOptionalCall]
            if self.ukey:
                msg = signed_json(self.ukey, self.t_health, h)
            else:
                msg = json.dumps(h).encode()  # pyright: ignore[reportOptionalMemberAccess]
        except Exception as e:  # noqa: BLE001  (a health probe that fails skips one beat)
            self.error = "health: %s" % e
            return
        self._inflight += 1
        asyncio.create_task(self._publish(c, self.t_health, msg, gen, True))

    async def _publish(self, c, topic, msg, gen, beat=False):
        try:
            await c.publish(topic, msg, qos=1, timeout=self.timeout)
            if gen == self._gen:
                if beat:
                    self.heartbeats += 1
                else:
                    self.published += 1
        except Exception as e:  # noqa: BLE001  (TimeoutError, MQTTError: the link is broken)
            if gen == self._gen and self._broken is None:
                self._broken = "publish failed: %s %s" % (type(e).__name__, e)
        finally:
            if gen == self._gen:
                self._inflight -= 1
                self._wake.set()
