"""The uplink wire format v2 (dosis.gateway.wire): round trips and every rejection reason."""

import hashlib
import hmac
import json
import struct

import pytest

from dosis.gateway import wire
from dosis.gateway.wire import WireError
from dosiscore import logrec

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
DEV = "d-3c71bf0a12e4"
TOPIC = f"dosis/{DEV}/events"


def mac16(key, topic, signed):
    return hmac.new(key, topic.encode() + b"\n" + signed, hashlib.sha256).digest()[:16]


def recs(*seqs, kind=logrec.TAKEN):
    return b"".join(
        wire.record_bytes(s, kind, utc=1_700_000_000 + s, occ=1_700_000_000, dose=1, detail=s)
        for s in seqs
    )


def signed_batch(body, key=KEY, topic=TOPIC):
    """A payload with a valid tag over arbitrary (possibly invalid) signed bytes."""
    return body + mac16(key, topic, body)


def header(n, frm, nxt, version=2):
    return struct.pack("<BBII", version, n, frm, nxt)


def reason(fn, *args):
    with pytest.raises(WireError) as e:
        fn(*args)
    return e.value.reason


def test_events_round_trip_matches_an_independent_hmac():
    topic, payload = wire.encode_events(KEY, DEV, 5, 9, recs(5, 6, 8))
    assert topic == TOPIC
    assert len(payload) == 10 + 3 * 24 + 16
    assert payload[:10] == header(3, 5, 9)
    assert payload[-16:] == mac16(KEY, TOPIC, payload[:-16])
    frm, nxt, rs = wire.decode_events(topic, payload, KEY)
    assert (frm, nxt) == (5, 9)
    assert [r.seq for r in rs] == [5, 6, 8]
    assert rs[0] == (5, 1_700_000_005, logrec.TAKEN, 1_700_000_000, 1, 5, 0)
    assert rs[0].kind_name == "taken"


def test_an_empty_batch_covers_a_gap():
    topic, payload = wire.encode_events(KEY, DEV, 3, 7, b"")
    assert wire.decode_events(topic, payload, KEY) == (3, 7, [])


def test_events_rejections():
    topic, good = wire.encode_events(KEY, DEV, 1, 3, recs(1, 2))
    assert reason(wire.decode_events, f"dosis/{DEV}/health", good, KEY) == "topic"
    assert reason(wire.decode_events, "dosis/D-UPPER/events", good, KEY).startswith("topic")
    assert reason(wire.decode_events, "other/d-1/events", good, KEY) == "topic"
    assert reason(wire.decode_events, topic, good[:20], KEY) == "truncated"
    assert reason(wire.decode_events, topic, b"", KEY) == "truncated"
    assert reason(wire.decode_events, topic, b"\x01" + good[1:], KEY) == "version"
    assert reason(wire.decode_events, topic, good + b"\x00", KEY) == "length"
    assert reason(wire.decode_events, topic, good[:-1], KEY) == "length"
    assert reason(wire.decode_events, topic, good, OTHER) == "forged or misrouted"
    flipped = bytearray(good)
    flipped[12] ^= 1
    assert reason(wire.decode_events, topic, bytes(flipped), KEY) == "forged or misrouted"
    # the same bytes on another device's topic (even one with the same key): misrouted
    assert reason(wire.decode_events, "dosis/d-other/events", good, KEY) == "forged or misrouted"
    # validly signed but inconsistent content
    assert reason(wire.decode_events, topic, signed_batch(header(0, 0, 3)), KEY) == "range"
    assert reason(wire.decode_events, topic, signed_batch(header(0, 5, 5)), KEY) == "range"
    bad_crc = bytearray(recs(1, 2))
    bad_crc[30] ^= 0xFF
    body = header(2, 1, 3) + bytes(bad_crc)
    assert reason(wire.decode_events, topic, signed_batch(body), KEY) == "crc"
    assert reason(wire.decode_events, topic, signed_batch(header(1, 1, 3) + recs(3)), KEY) == (
        "sequence"
    )
    assert reason(wire.decode_events, topic, signed_batch(header(2, 1, 9) + recs(2, 2)), KEY) == (
        "sequence"
    )
    assert reason(wire.decode_events, topic, signed_batch(header(2, 1, 9) + recs(4, 3)), KEY) == (
        "sequence"
    )
    huge = signed_batch(header(255, 1, 300) + b"\x00" * 24 * 300)
    assert reason(wire.decode_events, topic, huge, KEY) == "length"


def test_health_round_trip_and_layout():
    fields = wire.health_fields(t=1_700_000_000, seq=12, acked=10, faults=["E1"], fw="1.2.3")
    topic, payload = wire.encode_health(KEY, DEV, fields)
    body, _, tail = payload.rpartition(b',"mac":"')
    assert body.startswith(b"{") and tail.endswith(b'"}') and len(tail) == 34
    assert tail[:-2] == mac16(KEY, topic, body).hex().encode()
    doc = wire.decode_health(topic, payload, KEY)
    assert doc == fields
    assert json.loads(payload)["mac"] == tail[:-2].decode()


def _signed_health(body, key=KEY, topic=f"dosis/{DEV}/health"):
    return body + b',"mac":"' + mac16(key, topic, body).hex().encode() + b'"}'


def test_health_rejections():
    topic, good = wire.encode_health(KEY, DEV, wire.health_fields())
    assert reason(wire.decode_health, TOPIC, good, KEY) == "topic"
    assert reason(wire.decode_health, topic, good, OTHER) == "forged or misrouted"
    assert reason(wire.decode_health, "dosis/d-x/health", good, KEY) == "forged or misrouted"
    assert reason(wire.decode_health, topic, b'{"v":1}', KEY) == "no mac"
    assert reason(wire.decode_health, topic, good[:-3] + b'"}', KEY) == "no mac"
    assert reason(wire.decode_health, topic, _signed_health(b"{\xff\xfe"), KEY) == "utf-8"
    assert reason(wire.decode_health, topic, _signed_health(b'{"v":1,,'), KEY) == "json"
    assert reason(wire.decode_health, topic, _signed_health(b'{"v":1'), KEY) == "fields"
    f = wire.health_fields()
    f["seq"] = "12"
    assert reason(wire.decode_health, *wire.encode_health(KEY, DEV, f), KEY) == "fields"
    assert reason(wire.decode_health, topic, b"{" + b" " * 5000 + good, KEY) == "length"


def test_ack_bytes_are_the_contract():
    topic, payload = wire.encode_ack(KEY, DEV, 42)
    assert topic == f"dosis/{DEV}/ack"
    want_mac = mac16(KEY, topic, b'{"seq":42').hex().encode()
    assert payload == b'{"seq":42,"mac":"' + want_mac + b'"}'
    assert wire.decode_ack(topic, payload, KEY) == 42
    assert reason(wire.decode_ack, topic, payload, OTHER) == "forged or misrouted"


def test_topic_parsing():
    assert wire.parse_topic("dosis/d-1/status") == ("d-1", "status")
    for bad in (
        "dosis/d-1",
        "dosis/d-1/events/x",
        "dosis//events",
        "dosis/" + "a" * 33 + "/ack",
        "dosis/d_1/events",
        "dosis/d-1/other",
    ):
        with pytest.raises(WireError):
            wire.parse_topic(bad)
