"""A small MQTT 3.1.1 client on asyncio streams, for the uplink: nothing here blocks the loop.

umqtt.simple waits for a QoS 1 PUBACK with no timeout, on a blocking socket; the dose loop
cannot afford that. Here every network wait is an `await` with a deadline:

- `connect(timeout)` opens the TCP stream and waits for CONNACK; a refusal raises `MQTTError`
  with the broker's reason in words.
- `publish(..., qos=1, timeout=t)` returns when the PUBACK for *its* packet id arrives, raises
  `asyncio.TimeoutError` after `t` seconds, or `MQTTError` if the connection is lost meanwhile.
  Any number of QoS 1 publishes may be in flight. Unacknowledged messages are not resent by
  this module after a reconnect: the caller's store-and-forward queue keeps a record until its
  publish returns, and sends it again later (at-least-once, as MQTT QoS 1 itself).
- one reader task parses frames into one preallocated buffer; a frame longer than
  `max_packet` (remaining length) closes the connection instead of allocating it.
- one keepalive task sends PINGREQ after keepalive/2 without traffic either way, and declares
  the connection dead when no PINGRESP comes within the keepalive (a broker that vanished
  without a FIN, a Wi-Fi that went away): the client marks itself disconnected and every
  pending publish fails at once.

Incoming PUBLISH goes to `on_message(topic, payload)` (both bytes), called from the reader task;
it must not block. QoS 1 messages are acknowledged before the callback runs, so a callback that
raises (kept in `fault`) does not make the broker redeliver the same message forever.

Name resolution in `open_connection` is blocking on the ESP32 (getaddrinfo): give an IP address
or resolve it at an idle point. TLS: pass `ssl=` (an SSLContext), handed to open_connection.
"""

import asyncio
from time import ticks_diff, ticks_ms

from micropython import const

MAX_PACKET = const(4096)  # the largest incoming remaining length accepted

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)  # the fixed header's flags must be 0b0010
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

_WAITING = const(-1)
_LOST = const(-2)

# CONNACK return codes 1..5 (MQTT 3.1.1 section 3.2.2.3).
_REFUSED = (
    "",
    "unacceptable protocol version",
    "client id rejected",
    "server unavailable",
    "bad user name or password",
    "not authorised",
)


class MQTTError(Exception):
    """The broker refused, the connection is down or was lost, or a frame was malformed."""


class _Wait:
    # One outstanding acknowledgement: set by the reader (rc >= 0) or by _close (_LOST).
    def __init__(self):
        self.ev = asyncio.Event()
        self.rc = _WAITING


def _b(s):
    return s.encode() if isinstance(s, str) else s


class Client:
    """One MQTT connection at a time to `host`:`port`; call `connect` again after a loss."""

    def __init__(
        self,
        client_id,
        host,
        port=1883,
        *,
        user=None,
        password=None,
        keepalive=60,
        will=None,
        clean=True,
        ssl=None,
        max_packet=MAX_PACKET,
    ):
        self.client_id = _b(client_id)
        self.host = host
        self.port = port
        self.user = None if user is None else _b(user)
        self.password = None if password is None else _b(password)
        self.keepalive = keepalive
        if will is not None:
            topic, payload, qos, retain = will
            will = (_b(topic), _b(payload), qos, retain)
        self.will = will
        self.clean = clean
        self.ssl = ssl
        self.on_message = None
        self.connected = False
        self.session_present = False
        self.error = None  # why the last connection ended, in words
        self.fault = None  # the last exception raised by on_message
        self._r = None  # the asyncio streams (one object on MicroPython, typed as two)
        self._s = None
        self._tasks = []
        self._waits = {}  # packet id -> _Wait
        self._pid = 0
        self._connack = None
        self._lock = asyncio.Lock()  # one drain at a time
        self._wh = bytearray(5)  # fixed header being written (never held across an await)
        self._ack = bytearray(4)  # PUBACK being written
        self._rh = bytearray(1)  # the reader's header byte
        self._buf = bytearray(max_packet)
        self._mv = memoryview(self._buf)
        self._rhv = memoryview(self._rh)
        self._tx = self._rx = ticks_ms()
        self._ping_at = -1  # ticks of the outstanding PINGREQ, -1 if none

    # -- connection --------------------------------------------------------------------------

    async def connect(self, timeout=10):
        """Open the connection and wait for CONNACK; returns the session-present flag."""
        self._close("reconnecting")
        t0 = ticks_ms()
        if self.ssl is None:
            op = asyncio.open_connection(self.host, self.port)
        else:
            op = asyncio.open_connection(self.host, self.port, ssl=self.ssl)  # type: ignore
        r, s = await asyncio.wait_for(op, timeout)
        self._r = r
        self._s = s
        self.error = None
        self._connack = _Wait()
        self._ping_at = -1
        self._tx = self._rx = ticks_ms()
        try:
            self._write_connect(s)
            self._tasks = [asyncio.create_task(self._reader())]
            left = timeout - ticks_diff(ticks_ms(), t0) / 1000
            await asyncio.wait_for(self._flush_and_wait(self._connack), left)
        except BaseException as e:  # timeout, cancel, or the reader saw the socket close
            self._close("connect failed: " + (str(e) or type(e).__name__))
            raise
        rc = self._connack.rc
        if rc != 0:
            self._close("refused")
            if rc == _LOST:
                raise MQTTError("connection closed by the broker before CONNACK")
            why = _REFUSED[rc] if 0 < rc < len(_REFUSED) else "unknown code"
            raise MQTTError("broker refused the connection: %s (code %d)" % (why, rc))
        self.connected = True
        if self.keepalive:
            self._tasks.append(asyncio.create_task(self._pinger()))
        return self.session_present

    def _write_connect(self, s):
        will = self.will
        flags = 0x02 if self.clean else 0
        n = 10 + 2 + len(self.client_id)
        if will is not None:
            flags |= 0x04 | will[2] << 3 | (0x20 if will[3] else 0)
            n += 4 + len(will[0]) + len(will[1])
        if self.user is not None:
            flags |= 0x80
            n += 2 + len(self.user)
            if self.password is not None:
                flags |= 0x40
                n += 2 + len(self.password)
        self._head(s, _CONNECT, n)
        ka = self.keepalive
        s.write(b"\x00\x04MQTT\x04" + bytes((flags, ka >> 8, ka & 0xFF)))
        self._str(s, self.client_id)
        if will is not None:
            self._str(s, will[0])
            self._str(s, will[1])
        if flags & 0x80:
            self._str(s, self.user)
        if flags & 0x40:
            self._str(s, self.password)

    async def disconnect(self, timeout=2):
        """Send DISCONNECT (so the broker drops the will) and close."""
        s = self._s
        if s is not None and self.connected:
            s.write(b"\xe0\x00")
            try:
                await asyncio.wait_for(self._drain(), timeout)
            except Exception:  # noqa: BLE001  (closing anyway; the will may be sent)
                pass
        self._close("disconnected")

    def _close(self, reason):
        # Synchronous and idempotent: after it, nothing waits on this connection any more.
        s = self._s
        if s is None:
            return
        self._s = self._r = None
        self.connected = False
        self.error = reason
        me = asyncio.current_task()
        for t in self._tasks:
            if t is not me:
                t.cancel()
        self._tasks = []
        try:
            s.close()
            # MicroPython's Stream.close() does nothing: only wait_closed() (an await) closes
            # the socket. Close it here, or every reconnect leaks a descriptor (and a TLS
            # session outside the heap) until a garbage collection.
            raw = getattr(s, "s", None)
            if raw is not None:
                raw.close()
        except OSError:
            pass
        waits = self._waits
        self._waits = {}
        for w in waits.values():
            w.rc = _LOST
            w.ev.set()
        c = self._connack
        if c is not None and c.rc == _WAITING:
            c.rc = _LOST
            c.ev.set()

    # -- sending -----------------------------------------------------------------------------

    def _head(self, s, kind, n):
        # Fixed header: type/flags byte and the remaining length, 7 bits a byte, low first.
        h = self._wh
        h[0] = kind
        i = 1
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                h[i] = b | 0x80
                i += 1
            else:
                h[i] = b
                i += 1
                break
        s.write(h if i == 5 else memoryview(h)[:i])
        self._tx = ticks_ms()

    def _u16(self, s, v):
        # Safe to reuse _wh: Stream.write copies whatever the socket does not take at once.
        h = self._wh
        h[0] = v >> 8
        h[1] = v & 0xFF
        s.write(memoryview(h)[:2])

    def _str(self, s, b):
        self._u16(s, len(b))
        s.write(b)

    def _next_pid(self):
        pid = self._pid
        while True:
            pid = pid % 0xFFFF + 1
            if pid not in self._waits:
                self._pid = pid
                return pid

    async def _drain(self):
        async with self._lock:
            s = self._s
            if s is None:
                raise MQTTError("not connected")
            await s.drain()

    async def _flush_and_wait(self, w):
        await self._drain()
        await w.ev.wait()

    def _live(self):
        s = self._s
        if s is None or not self.connected:
            raise MQTTError("not connected" + ("" if self.error is None else ": " + self.error))
        return s

    async def publish(self, topic, payload, qos=0, retain=False, timeout=10):
        """Send one message; with qos=1, return only once the broker has acknowledged it."""
        if qos != 0 and qos != 1:
            raise ValueError("qos must be 0 or 1")
        s = self._live()
        topic = _b(topic)
        payload = _b(payload)
        n = 2 + len(topic) + len(payload)
        if not qos:
            self._head(s, _PUBLISH | (1 if retain else 0), n)
            self._str(s, topic)
            s.write(payload)
            await self._drain_or_drop(timeout)
            return
        pid = self._next_pid()
        w = _Wait()
        self._waits[pid] = w
        try:
            self._head(s, _PUBLISH | 0x02 | (1 if retain else 0), n + 2)
            self._str(s, topic)
            self._u16(s, pid)
            s.write(payload)
            await asyncio.wait_for(self._flush_and_wait(w), timeout)
        finally:
            self._waits.pop(pid, None)
        if w.rc == _LOST:
            raise MQTTError("connection lost before PUBACK: " + str(self.error))

    async def _drain_or_drop(self, timeout):
        # A stream that cannot take a few bytes for `timeout` seconds is dead.
        try:
            await asyncio.wait_for(self._drain(), timeout)
        except asyncio.TimeoutError:
            self._close("write stalled")
            raise

    async def subscribe(self, topic, qos=1, timeout=10):
        """Subscribe to one topic filter; returns the QoS the broker granted."""
        if qos != 0 and qos != 1:
            raise ValueError("qos must be 0 or 1")
        s = self._live()
        topic = _b(topic)
        pid = self._next_pid()
        w = _Wait()
        self._waits[pid] = w
        try:
            self._head(s, _SUBSCRIBE, 2 + 2 + len(topic) + 1)
            self._u16(s, pid)
            self._str(s, topic)
            s.write(b"\x01" if qos else b"\x00")
            await asyncio.wait_for(self._flush_and_wait(w), timeout)
        finally:
            self._waits.pop(pid, None)
        if w.rc == _LOST:
            raise MQTTError("connection lost before SUBACK: " + str(self.error))
        if w.rc == 0x80:
            raise MQTTError("broker refused the subscription to %s" % topic.decode())
        return w.rc

    # -- tasks -------------------------------------------------------------------------------

    async def _pinger(self):
        ka = self.keepalive * 1000
        step = min(ka // 4, 1000)
        while self._s is not None:
            await asyncio.sleep_ms(step)
            s = self._s
            if s is None:
                return
            now = ticks_ms()
            if self._ping_at != -1:
                if ticks_diff(now, self._ping_at) > ka:
                    self._close("no PINGRESP within the keepalive")
                    return
            elif ticks_diff(now, self._tx) >= ka // 2 or ticks_diff(now, self._rx) >= ka // 2:
                self._ping_at = now
                s.write(b"\xc0\x00")
                self._tx = now
                try:
                    await asyncio.wait_for(self._drain(), self.keepalive)
                except Exception as e:  # noqa: BLE001  (the task boundary: record and stop)
                    self._close("keepalive write failed: " + (str(e) or type(e).__name__))
                    return

    async def _readn(self, mv, n):
        r = self._r
        if r is None:
            raise MQTTError("closed")
        got = 0
        while got < n:
            k = await r.readinto(mv[got:n])
            if k is None:  # spurious wake-up of a non-blocking socket
                continue
            if k == 0:
                raise MQTTError("connection closed by the broker")
            got += k

    async def _reader(self):
        try:
            while True:
                await self._frame()
        except Exception as e:  # noqa: BLE001  (the task boundary: OSError, MQTTError, ...)
            self._close(str(e) or type(e).__name__)

    async def _frame(self):
        rh = self._rhv
        await self._readn(rh, 1)
        kind = self._rh[0]
        n = 0
        shift = 0
        while True:
            await self._readn(rh, 1)
            b = self._rh[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("malformed remaining length")
        if n > len(self._buf):
            # Never allocate what a broker (or anyone publishing) chooses to send.
            raise MQTTError(
                "incoming packet of %d bytes exceeds the %d-byte limit" % (n, len(self._buf))
            )
        if n:
            await self._readn(self._mv, n)
        self._rx = ticks_ms()
        await self._handle(kind, n)

    async def _handle(self, kind, n):
        b = self._buf
        t = kind & 0xF0
        if t == _PUBLISH:
            qos = (kind >> 1) & 3
            tl = b[0] << 8 | b[1]
            p = 2 + tl
            pid = 0
            if qos:
                pid = b[p] << 8 | b[p + 1]
                p += 2
            if qos > 1 or p > n:
                raise MQTTError("malformed or QoS 2 PUBLISH")
            topic = bytes(self._mv[2 : 2 + tl])
            payload = bytes(self._mv[p:n])
            if qos:
                s = self._s
                if s is None:
                    return
                a = self._ack
                a[0] = _PUBACK
                a[1] = 2
                a[2] = pid >> 8
                a[3] = pid & 0xFF
                s.write(a)
                self._tx = ticks_ms()
                await self._drain()
            cb = self.on_message
            if cb is not None:
                try:
                    cb(topic, payload)
                except Exception as e:  # noqa: BLE001  (kept for the caller; the link goes on)
                    self.fault = e
        elif t == _PUBACK or t == _SUBACK:
            if n < 2 or (t == _SUBACK and n < 3):
                raise MQTTError("malformed acknowledgement")
            w = self._waits.get(b[0] << 8 | b[1])
            if w is not None:
                w.rc = 0 if t == _PUBACK else b[2]
                w.ev.set()
        elif t == _CONNACK:
            c = self._connack
            if n < 2 or c is None:
                raise MQTTError("malformed CONNACK")
            self.session_present = bool(b[0] & 1)
            c.rc = b[1]
            c.ev.set()
        elif t == _PINGRESP:
            self._ping_at = -1
        # Anything else (UNSUBACK, PUBREC of a QoS 2 we never send) is ignored.
