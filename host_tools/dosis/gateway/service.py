"""The gateway: MQTT in, database rows and signed acks out, alerts delivered.

    gw = Gateway("mqtts://broker:8883", "sqlite:///fleet.db", ca="ca.pem")
    gw.start()   # returns once subscribed; the work runs on background threads
    ...
    gw.stop()

It subscribes with shared subscriptions ($share/<group>/dosis/+/events, .../health), so the
gateways of one group split the messages between them, and with a persistent session (a
stable client id, clean_session=False), so QoS 1 messages that arrive while it is down wait at
the broker. For each events message: the device must be enrolled, the tag must verify, the batch
must decode; then records, coverage, last_seen and alerts are written in ONE transaction, and
only after the COMMIT is the signed ack (the highest contiguous covered seq) published.
Anything else is rejected: one line to the log and a row in `rejects`. No payload can stop it.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..errors import DosisError, InputError
from . import wire
from .db import DB, open_db
from .httpack import AckServer, parse_bind
from .notify import Notifier

KEY_TTL_S = 10.0
OFFLINE_GRACE_S = 300.0  # connected this long (or offline_after_s) before judging "offline"
REJECTS_PER_MINUTE = 120  # logged and recorded; a flood beyond it is counted, not stored


def parse_broker(url: str) -> tuple[str, int, bool]:
    """`mqtt://host[:1883]` or `mqtts://host[:8883]` -> (host, port, tls)."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        u, port = None, None
    if u is None or u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise InputError(
            f'--broker "{url}": write mqtts://HOST:8883 (TLS) or mqtt://HOST:1883 (a lab only)'
        )
    tls = u.scheme == "mqtts"
    return u.hostname, port or (8883 if tls else 1883), tls


def _stderr_log(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} gateway: {line}", file=sys.stderr, flush=True)


class Gateway:
    def __init__(
        self,
        broker: str,
        db: str | None = None,
        *,
        group: str = "dosis",
        ca: str | None = None,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        offline_after_s: float = 1800,
        mains_after_s: float = 3600,
        check_every_s: float = 30,
        smtp: str | None = None,
        mail_from: str = "dosis@localhost",
        log: Callable[[str], None] | None = None,
        http: str | None = None,
        http_url: str | None = None,
    ) -> None:
        self.host, self.port, self.tls = parse_broker(broker)
        if not group or any(ch in group for ch in "/+#"):
            raise InputError(f'--group "{group}": a name without "/", "+" or "#"')
        if smtp is not None and not smtp.rpartition(":")[2].isdigit():
            raise InputError(f'--smtp "{smtp}": write HOST:PORT, e.g. localhost:25')
        self.broker_url = broker
        self.db_url = db
        self.group = group
        self.ca = ca
        self.username = username
        self.password = password
        self.offline_after_s = offline_after_s
        self.mains_after_s = mains_after_s
        self.check_every_s = check_every_s
        self.smtp = smtp
        self.mail_from = mail_from
        self.log = log or _stderr_log
        if http is not None:
            parse_bind(http)
        self.http = http
        self.http_url = http_url
        self.ack_server: AckServer | None = None
        if client_id is None:
            h = hashlib.sha256(f"{group}\n{db}".encode()).hexdigest()[:8]
            client_id = f"dosis-gw-{socket.gethostname()[:24]}-{h}"
        self.client_id = client_id
        self.db: DB = open_db(db)
        self._keys: dict[str, tuple[float, bytes]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._subscribed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client: Any = None
        self._reject_window = (0.0, 0, 0)  # (window start, recorded, suppressed)
        self._connected_since: float | None = None  # time.monotonic() of the last CONNACK
        self.stats = {"stored": 0, "acks": 0, "rejects": 0, "messages": 0}
        self.notifier = Notifier(
            self.db, self.client_id, smtp=smtp, mail_from=mail_from, log=self.log
        )

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> Gateway:
        """Connect, subscribe and start the background threads; returns when subscribed."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if not self.tls:
            self.log(
                f"WARNING: plain MQTT to {self.host}:{self.port} is for a lab only; "
                "use mqtts:// in service"
            )
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if self.tls:
            c.tls_set(ca_certs=self.ca)
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        c.reconnect_delay_set(1, 5)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        self._client = c
        try:
            c.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise DosisError(
                f"cannot connect to the broker {self.host}:{self.port} ({e}): "
                "check --broker, --ca and that the broker runs"
            ) from None
        c.loop_start()
        if not self._subscribed.wait(timeout):
            c.loop_stop()
            with contextlib.suppress(Exception):
                c.disconnect()
            raise DosisError(
                f"the broker {self.host}:{self.port} did not accept the subscriptions in "
                f"{timeout:g} s: check --username/--password and the broker's ACL"
            )
        if self.http is not None:
            try:
                self.ack_server = AckServer(self.db_url, self.http, self.log).start()
            except OSError as e:
                self.stop()
                raise DosisError(f"--http {self.http}: cannot listen ({e.strerror})") from None
            host = parse_bind(self.http)[0]
            self.notifier.ack_base = self.http_url or f"http://{host}:{self.ack_server.port}"
            self.log(f"HTTP ack links on {self.notifier.ack_base}")
        for target, name in ((self._timer_loop, "timers"), (self._notify_loop, "notify")):
            t = threading.Thread(target=target, name=f"dosis-gw-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.log(
            f"subscribed as {self.client_id} (group {self.group}) on {self.host}:{self.port}, "
            f"database {self.db.describe()}"
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        c = self._client
        if c is not None:
            with contextlib.suppress(Exception):
                c.disconnect()
            with contextlib.suppress(Exception):
                c.loop_stop()
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()
        if self.ack_server is not None:
            self.ack_server.stop()
            self.ack_server = None
        self.db.close()

    def kill(self) -> None:
        """Stop without a clean DISCONNECT (for tests: a crash as the broker sees it)."""
        self._stop.set()
        self._wake.set()
        c = self._client
        if c is not None:
            with contextlib.suppress(Exception):
                c.loop_stop()
            with contextlib.suppress(Exception):
                sock = c.socket()
                if sock is not None:
                    sock.close()
        for t in self._threads:
            t.join(timeout=10)
        self.db.close()

    def run_forever(self) -> None:
        """start(), then serve until SIGINT or SIGTERM."""

        def _term(signum: int, frame: Any) -> None:  # noqa: ARG001
            self._stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _term)
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.log("stopping")
            self.stop()

    # -- MQTT callbacks -------------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):
            self.log(f"broker refused the connection: {rc}")
            return
        self._connected_since = time.monotonic()
        with contextlib.suppress(AttributeError, OSError):
            # Acks are small: without this each waits ~40 ms for the broker's delayed TCP ACK
            # (Nagle). The broker's side needs `set_tcp_nodelay true` (docs/gateway.md).
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(
            [
                (f"$share/{self.group}/dosis/+/events", 1),
                (f"$share/{self.group}/dosis/+/health", 1),
                ("dosis/+/status", 1),
            ]
        )

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, rcs: Any, props: Any) -> None:
        bad = [r for r in rcs if getattr(r, "is_failure", False)]
        if bad:
            self.log(f"broker refused a subscription: {bad[0]}")
            return
        self._subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected_since = None
        if not self._stop.is_set():
            self.log(f"disconnected from the broker ({rc}); reconnecting")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        # Paho's network thread must never die: everything is caught here, per message.
        try:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = "<not utf-8>"
            self.handle(topic, bytes(msg.payload))
        except Exception as e:  # a bug or the database: logged, the gateway goes on
            self.log(f"error handling a message: {type(e).__name__}: {e}")

    # -- the work -------------------------------------------------------------------------

    def _ukey(self, device_id: str) -> bytes | None:
        """The device's uplink key, cached for KEY_TTL_S (a re-enrolment shows after that)."""
        t = time.monotonic()
        hit = self._keys.get(device_id)
        if hit is not None and t - hit[0] < KEY_TTL_S:
            return hit[1]
        key = self.db.ukey(device_id)
        if key is not None:
            self._keys[device_id] = (t, key)
        return key

    def _reject(self, topic: str, reason: str, now: float) -> None:
        self.stats["rejects"] += 1
        start, recorded, suppressed = self._reject_window
        if now - start >= 60:
            if suppressed:
                self.log(f"{suppressed} more messages rejected in the last minute (not logged)")
            start, recorded, suppressed = now, 0, 0
        if recorded >= REJECTS_PER_MINUTE:
            self._reject_window = (start, recorded, suppressed + 1)
            return
        self._reject_window = (start, recorded + 1, suppressed)
        self.log(f"rejected a message on {topic[:80]!r}: {reason}")
        try:
            self.db.reject(topic, reason, now)
        except Exception as e:
            self.log(f"could not record a reject: {type(e).__name__}: {e}")

    def handle(self, topic: str, payload: bytes, now: float | None = None) -> int | None:
        """Process one message; the ack seq published, or None. Never raises on bad input."""
        now = time.time() if now is None else now
        self.stats["messages"] += 1
        try:
            device_id, kind = wire.parse_topic(topic)
        except wire.WireError as e:
            self._reject(topic, e.reason, now)
            return None
        if kind == "status":
            if self._ukey(device_id) is not None:
                self.db.set_status(device_id, payload[:16].decode("utf-8", "replace"), now)
            return None
        if kind not in ("events", "health"):
            self._reject(topic, "topic", now)
            return None
        ukey = self._ukey(device_id)
        if ukey is None:
            self._reject(topic, "unknown device", now)
            return None
        try:
            if kind == "events":
                return self._events(topic, device_id, payload, ukey, now)
            return self._health(topic, device_id, payload, ukey, now)
        except wire.WireError as e:
            self._reject(topic, e.reason, now)
            return None

    def _health(
        self, topic: str, device_id: str, payload: bytes, ukey: bytes, now: float
    ) -> int | None:
        doc = wire.decode_health(topic, payload, ukey)
        alerts = self.db.ingest_health(device_id, doc, now)
        if alerts:
            self._wake.set()
            self.log(f"{device_id}: alerts {', '.join(str(a) for a in alerts)} created")
        acked = self.db.acked(device_id)
        if doc["acked"] < acked <= doc["seq"]:
            self._publish_ack(ukey, device_id, acked)  # an ack the device missed
            return acked
        return None

    def _events(
        self, topic: str, device_id: str, payload: bytes, ukey: bytes, now: float
    ) -> int | None:
        frm, nxt, records = wire.decode_events(topic, payload, ukey)
        acked, new, alerts = self.db.ingest_events(device_id, frm, nxt, records, now)
        self.stats["stored"] += new
        if alerts:
            self._wake.set()
            self.log(f"{device_id}: alerts {', '.join(str(a) for a in alerts)} created")
        if acked < nxt - 1:
            self.log(
                f"{device_id}: stored [{frm}, {nxt}) but seq {acked + 1} is not yet covered "
                f"(a gap or an earlier batch still to come): ack stays at {acked}"
            )
        if acked > 0:
            self._publish_ack(ukey, device_id, acked)
        return acked

    def _publish_ack(self, ukey: bytes, device_id: str, seq: int) -> None:
        topic, payload = wire.encode_ack(ukey, device_id, seq)
        c = self._client
        if c is not None:
            c.publish(topic, payload, qos=1)
            self.stats["acks"] += 1

    def offline_checks_enabled(self) -> bool:
        """Only a gateway connected for a while judges devices offline: after its own outage
        (or the broker's) the heartbeats queued meanwhile must land first, and while it is
        disconnected the silence is its own."""
        since = self._connected_since
        grace = min(self.offline_after_s, OFFLINE_GRACE_S)
        return since is not None and time.monotonic() - since >= grace

    def _timer_loop(self) -> None:
        while not self._stop.wait(self.check_every_s):
            try:
                alerts = self.db.check_timers(
                    time.time(),
                    offline_after_s=self.offline_after_s,
                    mains_after_s=self.mains_after_s,
                    offline=self.offline_checks_enabled(),
                )
                if alerts:
                    self.log(f"alerts {', '.join(str(a) for a in alerts)} created (timers)")
                    self._wake.set()
            except Exception as e:
                self.log(f"timer check failed: {type(e).__name__}: {e}")

    def _notify_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.notifier.run_once()
            except Exception as e:
                self.log(f"delivery failed: {type(e).__name__}: {e}")
