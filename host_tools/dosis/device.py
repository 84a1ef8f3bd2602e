"""Talking to a dispenser: the request/reply protocol of docs/protocol.md, host side.

`Device` works over anything with `write_line(bytes)` and `read_line(timeout)` (a
`SerialLink`, or a fake in tests). It authenticates requests with the key from the keystore,
verifies the device's signed replies, retries once after a `replay` refusal, queues events
and pipelines requests. `open_device` finds the port, opens it and says hello.

Nothing here prints; failures are `LinkError` (the link), `DeviceError` (a refusal),
`AuthError` (keys and signatures) or `ProtocolError` (another protocol version).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import AuthError, DeviceError, DosisError, LinkError, ProtocolError
from .keystore import CTR_MAX, Keystore
from .ports import resolve_port
from .transport import BAUD, SerialLink

PROTO = 1
MAX_REQUEST = 4096  # bytes of a request line without its newline (docs/protocol.md)
UNAUTHENTICATED = ("hello", "pair")
_MAC_TAIL = re.compile(rb',"mac":"([0-9a-f]{64})"\}\Z')
_MAX_EVENTS = 1024

__all__ = [
    "MAX_REQUEST",
    "PROTO",
    "Device",
    "LineLink",
    "frame_request",
    "needs_auth",
    "open_device",
    "sign",
]


class LineLink(Protocol):
    def write_line(self, line: bytes) -> None: ...

    def read_line(self, timeout: float | None) -> bytes | None: ...

    def close(self) -> None: ...


def needs_auth(cmd: str) -> bool:
    """Whether `cmd` carries `ctr` and `mac` (all but hello, pair and the sim.* hooks)."""
    return cmd not in UNAUTHENTICATED and not cmd.startswith("sim.")


def sign(key: bytes, prefix: bytes) -> str:
    """HMAC-SHA256 of `prefix` under `key`, lowercase hex."""
    return hmac.new(key, prefix, hashlib.sha256).hexdigest()


def frame_request(
    req_id: int,
    cmd: str,
    args: dict[str, Any] | None = None,
    *,
    ctr: int | None = None,
    key: bytes | None = None,
) -> bytes:
    """The request line (without newline): compact ASCII JSON; with a key, `ctr` is added,
    the closing brace dropped and `,"mac":"<hex>"}` appended, the MAC covering everything
    before `,"mac":`."""
    obj: dict[str, Any] = {"id": req_id, "cmd": cmd}
    if args:
        obj["args"] = args
    if key is not None:
        if ctr is None:
            raise ValueError("an authenticated request needs a counter")
        obj["ctr"] = ctr
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if key is None:
        return text
    prefix = text[:-1]
    return prefix + b',"mac":"' + sign(key, prefix).encode("ascii") + b'"}'


@dataclass
class _Pending:
    id: int
    cmd: str
    args: dict[str, Any] | None
    ctr: int | None
    key: bytes | None
    retried: bool = False


class _Replay(Exception):
    def __init__(self, minimum: int | None) -> None:
        self.minimum = minimum


def _fmt_s(t: float) -> str:
    return f"{t:g} s"


class Device:
    """A dispenser on a line link. Call `hello()` first, or let `open_device` do it."""

    def __init__(
        self,
        link: LineLink,
        *,
        keystore: Keystore | None = None,
        timeout: float = 3.0,
        port: str | None = None,
    ) -> None:
        self.link = link
        self.timeout = timeout
        self.port = port or getattr(link, "port", None) or "the dispenser's port"
        self.device_id: str | None = None
        self.board: str | None = None
        self.fw: str | None = None
        self.hello_data: dict[str, Any] = {}
        self._keystore = keystore
        self._key: bytes | None = None
        self._next_id = secrets.randbelow(1 << 20) + 1
        self._inflight: set[int] = set()
        self._stash: dict[int, tuple[dict[str, Any], bytes]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=_MAX_EVENTS)
        self._null_errors: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"Device({self.port!r}, device_id={self.device_id!r})"

    @property
    def keystore(self) -> Keystore:
        if self._keystore is None:
            self._keystore = Keystore()
        return self._keystore

    @property
    def name(self) -> str:
        return f"dispenser {self.device_id}" if self.device_id else f"the dispenser on {self.port}"

    # -- lines ---------------------------------------------------------------------------

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id = i + 1 if i < 2**31 - 1 else 1
        return i

    def _pump(self, timeout: float) -> bool:
        """Read one line and route it (reply to the stash, event to the queue, noise away).
        False if no line came within `timeout`."""
        raw = self.link.read_line(max(0.0, timeout))
        if raw is None:
            return False
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return True  # boot banner, noise
        if not isinstance(obj, dict):
            return True
        if "ev" in obj and "id" not in obj:
            self._events.append(obj)
            return True
        rid = obj.get("id")
        if rid is None and obj.get("ok") is False:
            self._null_errors.append(obj)  # a line the device could not read
            del self._null_errors[:-4]
        elif isinstance(rid, int) and not isinstance(rid, bool) and rid in self._inflight:
            self._stash[rid] = (obj, raw)
        return True

    def _send(
        self,
        cmd: str,
        args: dict[str, Any] | None,
        *,
        at_least: int = 0,
        retried: bool = False,
    ) -> _Pending:
        key = ctr = None
        if needs_auth(cmd):
            if self.device_id is None:
                self.hello()
            assert self.device_id is not None
            if self._key is None:
                self._key = self.keystore.require(self.device_id)
            key = self._key
            ctr = self.keystore.next_ctr(self.device_id, at_least)
        rid = self._new_id()
        line = frame_request(rid, cmd, args, ctr=ctr, key=key)
        if len(line) > MAX_REQUEST:
            raise DosisError(
                f"the '{cmd}' request is {len(line)} bytes, over the device's "
                f"{MAX_REQUEST}-byte line limit: send it in smaller pieces"
            )
        self._inflight.add(rid)
        self.link.write_line(line)
        return _Pending(rid, cmd, args, ctr, key, retried)

    def _await(self, ids: Iterable[int], timeout: float) -> tuple[dict[str, Any], bytes] | None:
        """The reply to one of `ids` (object and raw line), or None after `timeout` s."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            for i in wanted:
                if i in self._stash:
                    self._inflight.discard(i)
                    return self._stash.pop(i)
            left = deadline - time.monotonic()
            if left <= 0 or not self._pump(left):
                return None

    def _no_answer(self, cmd: str, timeout: float) -> DosisError:
        if self._null_errors:
            e = self._null_errors[-1]
            code = str(e.get("err"))
            msg = str(e.get("msg") or "")
            return DeviceError(
                f"{self.name} could not read the '{cmd}' request ({code}"
                f"{': ' + msg if msg else ''}): this is a bug in dosis or the firmware; "
                "please report it",
                code=code,
                msg=msg,
                data=e,
            )
        return LinkError(
            f"no answer from {self.port} within {_fmt_s(timeout)}: "
            "is the dispenser powered and is this its port?"
        )

    # -- replies -------------------------------------------------------------------------

    def _verify(self, p: _Pending, obj: dict[str, Any], raw: bytes) -> None:
        """A signed reply must verify under our key and carry our counter. An unsigned
        refusal is accepted (a device without our key cannot sign it); it changes nothing.
        A `replay` refusal must be signed: its "min" moves our counter, and a forged one
        could otherwise push it out of reach."""
        if p.key is None:
            return
        m = _MAC_TAIL.search(raw)
        if m is None:
            if obj.get("ok") is False and obj.get("err") != "replay":
                return
            raise AuthError(
                f"the reply of {self.name} to '{p.cmd}' is not signed: is another device "
                "on this port? Check the port, then pair again with 'dosis pair'",
                code="reply_mac",
            )
        want = sign(p.key, raw[: m.start()])
        if not hmac.compare_digest(want.encode("ascii"), m.group(1)):
            raise AuthError(
                f"the reply of {self.name} to '{p.cmd}' failed verification: it was re-paired "
                "elsewhere or another device is on this port; pair it again with 'dosis pair'",
                code="reply_mac",
            )
        ctr = obj.get("ctr")
        if ctr != p.ctr or isinstance(ctr, bool):
            raise AuthError(
                f"the reply of {self.name} to '{p.cmd}' belongs to another request "
                "(counter mismatch): try again, and report it if it persists",
                code="reply_ctr",
            )

    def _result(self, p: _Pending, obj: dict[str, Any], raw: bytes) -> dict[str, Any]:
        self._verify(p, obj, raw)
        if obj.get("ok") is True:
            data = obj.get("data")
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise ProtocolError(
                    f"{self.name} answered '{p.cmd}' with data that is not an object: "
                    "update dosis or the firmware so they match"
                )
            return data
        err = str(obj.get("err") or "unknown")
        if err == "replay" and p.key is not None:
            m = obj.get("min")
            if m is None and isinstance(obj.get("data"), dict):
                m = obj["data"].get("min")
            ok = isinstance(m, int) and not isinstance(m, bool) and 0 <= m <= CTR_MAX
            raise _Replay(m if ok else None)
        raise self._error(p.cmd, err, obj)

    def _error(self, cmd: str, err: str, obj: dict[str, Any]) -> DeviceError:
        msg = str(obj.get("msg") or "")
        why = f": {msg}" if msg else ""
        kw: dict[str, Any] = {"code": err, "msg": msg, "data": obj}
        if err == "not_paired":
            return AuthError(
                f"{self.name} is not paired: press its service button, then run 'dosis pair'",
                **kw,
            )
        if err == "auth":
            return AuthError(
                f"{self.name} refused our key (it was re-paired, perhaps from another "
                "computer): press its service button, then run 'dosis pair' again",
                **kw,
            )
        if err == "replay":
            return AuthError(
                f"{self.name} refused the request counter twice: is another computer using "
                "this dispenser at the same time? Try again when it is done",
                **kw,
            )
        if err == "not_pairing":
            return DeviceError(
                "press the service button on the dispenser, then run 'dosis pair' within "
                "2 minutes",
                **kw,
            )
        if err == "busy":
            return DeviceError(f"{self.name} is busy{why}; try again in a moment", **kw)
        if err == "unknown_cmd" and cmd.startswith("sim."):
            return DeviceError(
                f"{self.name} is not a virtual dispenser: '{cmd}' works only on one started "
                "with 'dosis sim'",
                **kw,
            )
        if err == "unknown_cmd":
            return DeviceError(f"{self.name} does not know '{cmd}': update its firmware", **kw)
        if err == "invalid_schedule":
            n = len(obj.get("problems") or [])
            return DeviceError(
                f"{self.name} refused the schedule ({n} problem{'s' if n != 1 else ''}"
                f"{why}); nothing was changed: check it with 'dosis schedule validate'",
                **kw,
            )
        if err == "no_memory":
            return DeviceError(
                f"{self.name} ran out of memory for '{cmd}' (it goes on dispensing): "
                "try again with a smaller request",
                **kw,
            )
        if err == "internal":
            return DeviceError(
                f"{self.name} hit a bug running '{cmd}'{why} (it logged it and goes on "
                "dispensing): please report it",
                **kw,
            )
        return DeviceError(f"{self.name} refused '{cmd}' ({err}){why}", **kw)

    # -- requests ------------------------------------------------------------------------

    def call(
        self, cmd: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request and return the `data` of its reply."""
        gen = self.call_many([(cmd, args or {})], window=1, timeout=timeout)
        try:
            return next(gen)
        finally:
            gen.close()

    def call_many(
        self,
        reqs: Iterable[tuple[str, dict[str, Any]]],
        window: int = 2,
        *,
        timeout: float | None = None,
    ) -> Generator[dict[str, Any], None, None]:
        """Send requests with up to `window` awaiting replies and yield each reply's `data`
        in request order. The first request goes alone, so a counter the device refuses
        (`replay`) is corrected before others follow. `timeout` bounds the wait for each
        reply."""
        if window < 1:
            raise ValueError("window must be at least 1")
        t = self.timeout if timeout is None else timeout
        source = iter(reqs)
        queue: deque[_Pending] = deque()
        synced = False
        exhausted = False
        try:
            while True:
                limit = window if synced else 1
                while not exhausted and len(queue) < limit:
                    try:
                        cmd, args = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    queue.append(self._send(cmd, args))
                if not queue:
                    return
                p = queue[0]
                self._null_errors.clear()
                got = self._await([p.id], t)
                if got is None:
                    raise self._no_answer(p.cmd, t)
                queue.popleft()
                obj, raw = got
                try:
                    data = self._result(p, obj, raw)
                except _Replay as r:
                    if p.retried:
                        raise self._error(p.cmd, "replay", obj) from None
                    queue.appendleft(
                        self._send(p.cmd, p.args, at_least=r.minimum or 0, retried=True)
                    )
                    continue
                synced = True
                yield data
        finally:
            for p in queue:
                self._inflight.discard(p.id)
                self._stash.pop(p.id, None)

    def hello(
        self, timeout: float | None = None, *, retry_every: float | None = None
    ) -> dict[str, Any]:
        """Say hello; checks the protocol version and learns the device id and board.
        With `retry_every`, hello is sent again at that interval until `timeout` (an answer
        to any of them counts)."""
        t = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        sent: list[int] = []
        self._null_errors.clear()
        try:
            while True:
                sent.append(self._send("hello", None).id)
                step = deadline - time.monotonic()
                if retry_every is not None:
                    step = min(step, retry_every)
                got = self._await(sent, max(step, 0.0))
                if got is not None:
                    break
                if time.monotonic() >= deadline - 0.01:
                    raise self._no_answer("hello", t)
        finally:
            for i in sent:
                self._inflight.discard(i)
                self._stash.pop(i, None)
        obj, raw = got
        data = self._result(_Pending(0, "hello", None, None, None), obj, raw)
        proto = data.get("proto")
        if not isinstance(proto, int) or isinstance(proto, bool):
            raise ProtocolError(
                f"the device on {self.port} does not speak the Dosis protocol: "
                "is this the dispenser's port?"
            )
        if proto != PROTO:
            fix = "update dosis" if proto > PROTO else "update the dispenser's firmware"
            raise ProtocolError(
                f"device speaks protocol {proto}, this dosis speaks {PROTO}: {fix}"
            )
        dev = data.get("device")
        if not isinstance(dev, str) or not dev:
            raise ProtocolError(
                f"the device on {self.port} sent no device id: update its firmware"
            )
        if dev != self.device_id:
            self._key = None
        self.device_id = dev
        self.board = data.get("board") if isinstance(data.get("board"), str) else None
        self.fw = data.get("fw") if isinstance(data.get("fw"), str) else None
        self.hello_data = data
        return data

    def pair(self) -> str:
        """Pair with the device (its pairing window must be open: the service button) and
        store the new key in the keystore; returns the device id."""
        data = self.call("pair", {"nonce": secrets.token_hex(32)})
        dev = data.get("device")
        key = data.get("key")
        if (
            not isinstance(dev, str)
            or not dev
            or not isinstance(key, str)
            or not re.fullmatch(r"[0-9a-f]{64}", key)
        ):
            raise ProtocolError(
                f"{self.name} sent an unusable pairing reply: update dosis or its firmware "
                "so they match, then pair again"
            )
        self.keystore.put(dev, key)
        self.device_id = dev
        self._key = bytes.fromhex(key)
        return dev

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Events (`{"ev": ...}`) as they arrive, queued ones first; the iteration ends when
        none arrives within `timeout` seconds (None: never). Subscribe first with
        `call("monitor", {"on": True})`."""
        while True:
            if self._events:
                yield self._events.popleft()
                continue
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._events:
                if deadline is None:
                    self._pump(3600.0)
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or not self._pump(left):
                    return

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_device(
    port: str | None,
    *,
    keystore: Keystore | None = None,
    timeout: float = 3.0,
    baud: int = BAUD,
) -> Device:
    """Open the dispenser on `port` (None: the one found by `ports.resolve_port`) and say
    hello. LinkError if it cannot be opened or does not answer within `timeout` seconds."""
    name = resolve_port(port)
    link = SerialLink(name, baudrate=baud)
    dev = Device(link, keystore=keystore, timeout=timeout, port=name)
    try:
        link.write_line(b"")  # ends any partial line (noise) the device may hold
        dev.hello(timeout, retry_every=max(0.5, min(1.0, timeout / 3)))
    except BaseException:
        dev.close()
        raise
    return dev
