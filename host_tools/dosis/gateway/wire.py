"""The uplink wire format v2 between a dispenser and the gateway (pure functions).

See docs/gateway.md for the contract. Every message a device sends carries a 16-byte tag:

    tag = HMAC-SHA256(ukey, TOPIC + b"\\n" + SIGNED_BYTES)[:16]

so a message copied onto another device's topic fails ("forged or misrouted"). Nothing here
touches the network, a clock or a database; every failure is a `WireError` with a short reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from typing import Any, NamedTuple

from dosiscore import logrec

VERSION = 2
HEADER = struct.Struct("<BBII")  # version, n, from, next
HEADER_SIZE = HEADER.size  # 10
TAG_SIZE = 16
RECORD_SIZE = logrec.RECORD_SIZE
MAX_RECORDS = 255
MAX_PAYLOAD = HEADER_SIZE + MAX_RECORDS * RECORD_SIZE + TAG_SIZE
MAX_HEALTH = 4096
KINDS = ("events", "health", "ack", "status")
_ID = re.compile(r"[a-z0-9-]{1,32}\Z")
_MAC_SEP = b',"mac":"'
HEALTH_FIELDS = ("v", "t", "tv", "up", "seq", "acked", "bat", "mains", "faults", "sched")
HEALTH_FIELDS_ALL = (*HEALTH_FIELDS, "heap", "fw")


class WireError(ValueError):
    """A message that must be rejected; `reason` is short and holds no payload content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Record(NamedTuple):
    """One dose-log record as `dosiscore.logrec.decode` gives it (dose None = no dose)."""

    seq: int
    utc: int
    kind: int
    occ: int
    dose: int | None
    detail: int
    small: int

    @property
    def kind_name(self) -> str:
        return logrec.NAMES[self.kind] if 0 <= self.kind < len(logrec.NAMES) else str(self.kind)


def valid_device_id(device_id: str) -> bool:
    return isinstance(device_id, str) and bool(_ID.match(device_id))


def parse_topic(topic: str) -> tuple[str, str]:
    """`dosis/<id>/<kind>` -> (id, kind); WireError("topic") for anything else."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 3 or parts[0] != "dosis" or parts[2] not in KINDS:
        raise WireError("topic")
    if not valid_device_id(parts[1]):
        raise WireError("topic: bad device id")
    return parts[1], parts[2]


def topic_for(device_id: str, kind: str) -> str:
    if not valid_device_id(device_id) or kind not in KINDS:
        raise ValueError(f"no such topic: {device_id!r} {kind!r}")
    return f"dosis/{device_id}/{kind}"


def tag(ukey: bytes, topic: str, signed: bytes) -> bytes:
    """The 16-byte authentication tag of `signed` published on `topic`."""
    return hmac.new(ukey, topic.encode() + b"\n" + bytes(signed), hashlib.sha256).digest()[
        :TAG_SIZE
    ]


def _check_topic(topic: str, kind: str) -> str:
    device_id, k = parse_topic(topic)
    if k != kind:
        raise WireError("topic")
    return device_id


# -- events -----------------------------------------------------------------------------------


def encode_events(
    ukey: bytes, device_id: str, frm: int, nxt: int, records: bytes
) -> tuple[str, bytes]:
    """(topic, payload) of a batch covering [frm, nxt) with `records` (n x 24 bytes verbatim)."""
    if len(records) % RECORD_SIZE or len(records) // RECORD_SIZE > MAX_RECORDS:
        raise ValueError("records must be 0..255 whole 24-byte records")
    topic = topic_for(device_id, "events")
    signed = HEADER.pack(VERSION, len(records) // RECORD_SIZE, frm, nxt) + bytes(records)
    return topic, signed + tag(ukey, topic, signed)


def record_bytes(
    seq: int,
    kind: int,
    *,
    utc: int = 0,
    occ: int = 0,
    dose: int | None = None,
    detail: int = 0,
    small: int = 0,
) -> bytes:
    """One 24-byte dose-log record (for tests and the load generator)."""
    buf = bytearray(RECORD_SIZE)
    logrec.encode_into(buf, 0, seq, utc, kind, occ, dose, detail, small)
    return bytes(buf)


def decode_events(topic: str, payload: bytes, ukey: bytes) -> tuple[int, int, list[Record]]:
    """(from, next, records) of an events message, verified; WireError(reason) otherwise.

    Reasons: topic, truncated, version, length, forged or misrouted, range, crc, sequence."""
    _check_topic(topic, "events")
    payload = bytes(payload)
    if len(payload) < HEADER_SIZE + TAG_SIZE:
        raise WireError("truncated")
    if len(payload) > MAX_PAYLOAD:
        raise WireError("length")
    version, n, frm, nxt = HEADER.unpack_from(payload, 0)
    if version != VERSION:
        raise WireError("version")
    end = HEADER_SIZE + n * RECORD_SIZE
    if len(payload) != end + TAG_SIZE:
        raise WireError("length")
    if not hmac.compare_digest(tag(ukey, topic, payload[:end]), payload[end:]):
        raise WireError("forged or misrouted")
    if frm < 1 or nxt <= frm:
        raise WireError("range")
    out: list[Record] = []
    last = frm - 1
    for i in range(n):
        r = logrec.decode(payload, HEADER_SIZE + i * RECORD_SIZE)
        if r is None:
            raise WireError("crc")
        rec = Record(*r)
        if rec.seq <= last or rec.seq >= nxt:
            raise WireError("sequence")
        last = rec.seq
        out.append(rec)
    return frm, nxt, out


# -- health -----------------------------------------------------------------------------------


def _mac_hex(ukey: bytes, topic: str, body: bytes) -> bytes:
    return tag(ukey, topic, body).hex().encode()


def encode_health(ukey: bytes, device_id: str, fields: dict[str, Any]) -> tuple[str, bytes]:
    """(topic, payload) of a heartbeat: `fields` as compact JSON with "mac" appended last."""
    topic = topic_for(device_id, "health")
    body = json.dumps(fields, separators=(",", ":")).encode()[:-1]
    return topic, body + _MAC_SEP + _mac_hex(ukey, topic, body) + b'"}'


def health_fields(**kw: Any) -> dict[str, Any]:
    """A complete heartbeat with plausible defaults (tests, load generator)."""
    d: dict[str, Any] = {
        "v": 1,
        "t": None,
        "tv": True,
        "up": 0,
        "seq": 0,
        "acked": 0,
        "bat": 4100,
        "mains": True,
        "faults": [],
        "sched": None,
        "heap": 50000,
        "fw": "0.0.0",
    }
    d.update(kw)
    return d


def _split_mac(payload: bytes) -> tuple[bytes, bytes]:
    i = payload.rfind(_MAC_SEP)
    if i < 1 or not payload.startswith(b"{"):
        raise WireError("no mac")
    mac = payload[i + len(_MAC_SEP) :]
    if len(mac) != 2 * TAG_SIZE + 2 or not mac.endswith(b'"}'):
        raise WireError("no mac")
    return payload[:i], mac[:-2]


def decode_health(topic: str, payload: bytes, ukey: bytes) -> dict[str, Any]:
    """The heartbeat's fields (without "mac"), verified; WireError(reason) otherwise.

    Reasons: topic, length, no mac, forged or misrouted, utf-8, json, fields."""
    _check_topic(topic, "health")
    payload = bytes(payload)
    if len(payload) > MAX_HEALTH:
        raise WireError("length")
    body, mac = _split_mac(payload)
    if not hmac.compare_digest(_mac_hex(ukey, topic, body), mac):
        raise WireError("forged or misrouted")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("utf-8") from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise WireError("json") from None
    if not isinstance(doc, dict):
        raise WireError("json")
    doc.pop("mac", None)
    if any(k not in doc for k in HEALTH_FIELDS) or doc.get("v") != 1:
        raise WireError("fields")
    ints = ("up", "seq", "acked", "bat")
    if any(not isinstance(doc[k], int) or isinstance(doc[k], bool) for k in ints):
        raise WireError("fields")
    if not isinstance(doc["tv"], bool) or not isinstance(doc["mains"], bool):
        raise WireError("fields")
    if doc["t"] is not None and not isinstance(doc["t"], int | float):
        raise WireError("fields")
    if not isinstance(doc["faults"], list):
        raise WireError("fields")
    return doc


# -- ack --------------------------------------------------------------------------------------


def encode_ack(ukey: bytes, device_id: str, seq: int) -> tuple[str, bytes]:
    """(topic, payload) of the gateway's ack: everything <= seq is stored."""
    topic = topic_for(device_id, "ack")
    body = b'{"seq":%d' % int(seq)
    return topic, body + _MAC_SEP + _mac_hex(ukey, topic, body) + b'"}'


def decode_ack(topic: str, payload: bytes, ukey: bytes) -> int:
    """The seq of a gateway ack, verified (what the device does; for tests)."""
    _check_topic(topic, "ack")
    body, mac = _split_mac(bytes(payload))
    if not hmac.compare_digest(_mac_hex(ukey, topic, body), mac):
        raise WireError("forged or misrouted")
    m = re.fullmatch(rb'\{"seq":(\d{1,10})', body)
    if m is None:
        raise WireError("json")
    return int(m.group(1))
