"""Junk on the serial link of the virtual dispenser (the real firmware on a raw pty).

Hypothesis sends random bytes (0x00, 0x03, 0xff, lone \\r and \\n...), truncated requests,
over-long lines, wrong types for id, cmd, args, ctr, mac and every argument of every command,
unknown commands and bursts of all of these, while the dispenser approaches a dose. Every line
must get exactly one reply (none for an empty line) that is a JSON object with a documented
error code; afterwards the device still answers, the dose came on time, the dose log lost
nothing and every refusal of a forged request was counted and, within the budget the protocol
gives (8 at once, then one every 5 minutes), logged (docs/protocol.md: "every request is
answered or refused with an error code", "nothing the device refuses changes its state").

One device process for the whole module: the dose falls while the fuzz tests run, and the last
test checks it. Each hypothesis example ends with a `hello` sentinel, so the replies to the
example are exactly those before the sentinel's.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dosiscore import logrec

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
from linkharness import (  # noqa: E402
    ERRORS,
    MAC_TAIL,
    Device,
    auth_fails,
    compile_example,
    local_to_utc,
    mac_of,
    sign,
)

SPEED = 2.0  # virtual seconds per real second
LEAD_S = 5.0  # real seconds from the end of setup to the dose instant: the fuzz runs across it
DAY = "2026-11-23"
DOSE_ID = "middag"  # 12:00 local
AUTH_ERRS = ("not_paired", "auth", "replay", "not_pairing")  # refusals that are logged
NOT_EVER = ("internal", "no_memory")  # documented, but a sign of a bug under this fuzz
SENTINEL0 = 2_100_000_000  # sentinel ids; junk ids stay below JUNK_ID_MAX
JUNK_ID_MAX = 2_000_000_000

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Fuzz:
    dev: Device
    dose: int  # UTC of the dose the fuzz runs across
    expect_at: float  # time.monotonic() when its "due" event should arrive
    before: list[bytes]  # raw log records before the fuzz
    replies_at_start: int  # len(dev.raw_replies) when the fuzz started
    sentinel: int = SENTINEL0
    lines: int = 0  # non-empty lines sent by the fuzz
    answered: int = 0  # replies to them
    rendered_last: int = 0  # the last counter of a rendered line that passes authentication
    counts: tuple[int, int] = (0, 0)  # info's refused and refused_unlogged before the fuzz
    last_id: int = 1000  # ids of junk requests


@pytest.fixture(scope="module")
def fz(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    sched, doc = compile_example(d / "schedule.json")
    dose = local_to_utc(doc, DAY, "12:00")
    dev = Device(d / "state", sched, d / "stderr.txt", start=dose - 1200, speed=SPEED)
    dev.start()
    try:
        dev.pair()
        assert dev.ok("monitor", {"on": True}) == {"on": True}
        dev.advance(int(1200 - LEAD_S * SPEED))
        r0 = time.monotonic()
        info = dev.ok("info")
        r1 = time.monotonic()
        utc = info["utc"]
        # info's utc is whole virtual seconds: the clock read was on average 0.5 s past it
        expect = (r0 + r1) / 2 + (dose - utc - 0.5) / SPEED
        before = dev.log_raw()
        assert before, "the log holds the boot records at least"
        f = Fuzz(dev, dose, expect, before, len(dev.raw_replies))
        f.counts = (info["refused"], info["refused_unlogged"])
        yield f
    finally:
        dev.kill()
    err = (d / "stderr.txt").read_text(errors="replace")
    assert "Traceback" not in err, err


# -- expectations ------------------------------------------------------------------------------

ANY = object()


@dataclass
class Exp:
    """What one reply must be: a refusal with `err` (a set: any of them), for `rid`."""

    err: frozenset[str]
    rid: Any = ANY
    ctr: int | None = None  # the request's counter: the reply must carry it and a valid mac
    min: int | None = None  # replay: the smallest counter the device would accept
    utf8: bool = True  # the reply must be UTF-8 (not when the request was not: it may echo)


def exp(err: str | frozenset[str], rid: Any = ANY, **kw: Any) -> Exp:
    return Exp(frozenset([err]) if isinstance(err, str) else err, rid, **kw)


def check_reply(f: Fuzz, reply: dict[str, Any], e: Exp) -> None:
    raw: bytes = reply["_raw"]
    if e.utf8:
        raw.decode("utf-8")  # the link is UTF-8
    assert b"\n" not in raw and b"\r" not in raw
    assert reply.get("ok") is False, raw
    assert reply.get("err") in e.err, (raw, e)
    assert isinstance(reply.get("msg"), str), raw
    if e.rid is not ANY:
        assert reply.get("id") == e.rid, (raw, e)
    if e.ctr is not None:
        assert "mac" in reply, raw
        f.dev.verify(reply, e.ctr)
    elif reply.get("err") == "replay":
        # the mac was good, so the refusal is signed: the host may trust its "min"
        assert "mac" in reply, raw
        f.dev.verify(reply, reply["ctr"])
    else:
        assert "mac" not in reply and "ctr" not in reply, raw
    if e.min is not None:
        assert reply.get("min") == e.min, raw


def exchange(f: Fuzz, data: bytes, exps: list[Exp]) -> list[dict[str, Any]]:
    """Send `data` (whole lines), then a sentinel; the replies before the sentinel's must be
    exactly one per expectation, in order."""
    assert data.endswith(b"\n")
    f.sentinel += 1
    f.dev.send_raw(data + b'{"id":%d,"cmd":"hello"}\n' % f.sentinel)
    got = f.dev.through(f.sentinel)
    assert len(got) == len(exps), (data[:300], got, exps)
    for reply, e in zip(got, exps, strict=True):
        check_reply(f, reply, e)
    f.lines += len(exps)
    f.answered += len(got)
    return got


def parse(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8", "surrogateescape"))


def model_lines(data: bytes) -> list[Exp]:
    """Expected replies to arbitrary bytes ending in \\n, by the framing rules alone."""
    out = []
    for seg in data.split(b"\n")[:-1]:
        if len(seg) > 4096:
            out.append(exp("too_long", None))
            continue
        if seg.endswith(b"\r"):
            seg = seg[:-1]
        if not seg:
            continue  # an empty line: no reply
        try:
            obj = json.loads(seg)
        except ValueError:
            obj = None
        if isinstance(obj, dict):  # random bytes that happen to be an object: any refusal
            out.append(Exp(ERRORS - set(NOT_EVER)))
        else:  # MicroPython's parser is a little laxer than CPython's ({"a":1,} passes)
            out.append(exp(frozenset({"bad_json", "bad_request"}), None))
    return out


# -- strategies --------------------------------------------------------------------------------

SPECIAL = [b"\x00", b"\x03", b"\xff", b"\r", b"\n", b"\r\n", b"\n\n", b"{", b"}", b'"', b"\\"]
SPECIAL += [b" ", b"\x04", b"\x1a", b"\x11", b"\x13", b"\x7f", b"\xc3", b"\xed\xa0\x80", b"[]"]
junk_bytes = st.lists(
    st.one_of(st.sampled_from(SPECIAL), st.binary(max_size=40)), max_size=40
).map(b"".join)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**70, -(2**70), 2**64, 2**63, 2**32, 2**31, -1, 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["1", "true", "null", "", " 1", "0x10", "da", "on"]),
)
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=6,
)
non_objects = json_values.filter(lambda v: not isinstance(v, dict) and v is not None)


def _is_int_in(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def bad_int(lo: int, hi: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        json_values.filter(lambda v: not _is_int_in(v, lo, hi)),
        st.integers(max_value=lo - 1),
        st.integers(min_value=hi + 1),
        st.sampled_from([lo - 1, hi + 1, float(lo), True, str(lo)]),
    )


bad_bool = json_values.filter(lambda v: not isinstance(v, bool))


def bad_choice(options: tuple[str, ...]) -> st.SearchStrategy[Any]:
    upper = [o.upper() for o in options] + [o + " " for o in options]
    return st.one_of(st.sampled_from(upper), json_values.filter(lambda v: v not in options))


def _is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdefABCDEF" for c in v)


bad_nonce = st.one_of(
    json_values.filter(lambda v: not _is_hex64(v)),
    st.text(alphabet="0123456789abcdef", max_size=70).filter(lambda v: len(v) != 64),
    st.tuples(st.integers(0, 63), st.characters()).map(
        lambda t: ("0" * 63)[: t[0]] + t[1] + ("0" * 63)[t[0] :]
    ),
).filter(lambda v: not _is_hex64(v))

# cmd -> needs the key, {arg: (bad values, valid args to send beside it)}. Only refusals:
# nothing here may carry out a command that changes anything (fill, selftest and sim.take take
# no arguments and are only sent with args that are not an object).
ARGS: dict[str, tuple[bool, dict[str, tuple[st.SearchStrategy[Any], dict[str, Any]]]]] = {
    "hello": (False, {}),
    "pair": (False, {"nonce": (bad_nonce, {})}),
    "info": (True, {}),
    "time.set": (True, {"utc": (bad_int(1577836800, 4102444800), {})}),
    "schedule.get": (True, {}),
    "schedule.put": (
        True,
        {
            "at": (bad_int(0, 8192), {"data": "{}", "more": True}),
            "more": (bad_bool, {"at": 0, "data": "{}"}),
            "data": (
                json_values.filter(lambda v: not isinstance(v, str)),
                {"at": 0, "more": True},
            ),
        },
    ),
    "log.read": (
        True,
        {"from": (bad_int(1, 0xFFFFFFFF), {"n": 1}), "n": (bad_int(1, 170), {"from": 1})},
    ),
    "log.ack": (True, {"seq": (bad_int(0, 0xFFFFFFFF), {})}),
    "fill": (True, {}),
    "settings": (
        True,
        {
            "language": (bad_choice(("da", "en")), {}),
            "volume": (bad_int(1, 4), {}),
            "tone": (bad_choice(("normal", "low")), {}),
            "mode": (bad_choice(("normal", "assisted", "paused", "travel")), {}),
        },
    ),
    "selftest": (True, {}),
    "display.snapshot": (True, {}),
    "monitor": (True, {"on": (bad_bool, {})}),
    "sim.press": (
        False,
        {
            "button": (bad_choice(("taken", "service")), {}),
            "hold_s": (
                json_values.filter(
                    lambda v: (
                        not (
                            isinstance(v, int | float)
                            and not isinstance(v, bool)
                            and 0.1 <= v <= 10
                        )
                    )
                ),
                {"button": "taken"},
            ),
        },
    ),
    "sim.take": (False, {}),
    "sim.jam": (False, {"on": (bad_bool, {})}),
    "sim.mains": (False, {"on": (bad_bool, {})}),
    "sim.battery": (False, {"mv": (bad_int(2500, 4500), {})}),
    "sim.advance": (False, {"s": (bad_int(1, 604800), {})}),
}
KNOWN = frozenset(ARGS)

junk_id = st.integers(1, JUNK_ID_MAX)
bad_id = st.one_of(
    json_values.filter(lambda v: not _is_int_in(v, 1, 2**31 - 1)),
    st.sampled_from([0, -1, 2**31, 2**70, True, False, 1.0, "1", None, [1], {"id": 1}]),
)

# Specs (plain data, drawn by hypothesis) are turned into bytes by render(): signing needs the
# device's key and its counter at the time of sending.
arg_specs = st.sampled_from(
    [(cmd, arg) for cmd, (_, args) in ARGS.items() for arg in args]
).flatmap(
    lambda ca: st.tuples(
        st.just("badarg"), st.just(ca[0]), st.just(ca[1]), ARGS[ca[0]][1][ca[1]][0]
    )
)
specs = st.one_of(
    st.tuples(st.just("raw"), junk_bytes),
    st.tuples(st.just("trunc"), st.sampled_from(sorted(KNOWN)), st.floats(0, 1)),
    st.tuples(st.just("long"), st.integers(4097, 9000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("badid"), bad_id),
    st.tuples(st.just("badcmd"), junk_id, json_values.filter(lambda v: not isinstance(v, str))),
    st.tuples(st.just("unknown"), junk_id, st.text(max_size=30).filter(lambda c: c not in KNOWN)),
    st.tuples(st.just("argsobj"), st.sampled_from(sorted(KNOWN)), non_objects),
    arg_specs,
    st.tuples(st.just("badctr"), bad_int(1, 2**64 - 1)),
    st.tuples(st.just("badmac"), json_values),
    st.tuples(st.just("nomac"), st.sampled_from(sorted(c for c in KNOWN if ARGS[c][0]))),
    st.tuples(st.just("oldctr"), st.integers(0, 10**6)),
)


def _line(obj: dict[str, Any], ascii_only: bool = True) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii_only).encode()


def request_line(f: Fuzz, cmd: str, args: Any, rid: int) -> tuple[bytes, int | None]:
    """A well-formed request for `cmd` (signed when the command needs the key); its ctr."""
    if ARGS[cmd][0]:
        _, ctr, line = f.dev.signed(cmd, args, rid=rid)
        return line, ctr
    obj: dict[str, Any] = {"id": rid, "cmd": cmd}
    if args is not None:
        obj["args"] = args
    return _line(obj), None


def render(f: Fuzz, spec: tuple[Any, ...]) -> tuple[bytes, list[Exp]]:
    """Bytes (whole lines) for a spec, and the replies they must get."""
    kind = spec[0]
    dev = f.dev
    if kind == "raw":
        data = spec[1] + b"\n"
        return data, model_lines(data)
    if kind == "trunc":
        cmd = spec[1]
        args = {"on": True} if cmd == "monitor" else None
        if ARGS[cmd][0]:  # signed with the next counter, which it does not use up
            line = sign(dev.key, {"id": 7, "cmd": cmd, "args": args, "ctr": dev.ctr + 1})
        else:
            line = _line({"id": 7, "cmd": cmd, "args": args})
        cut = 1 + int(spec[2] * (len(line) - 2))  # 1..len-1 bytes: never the whole line
        return line[:cut] + b"\n", [exp("bad_json", None)]
    if kind == "long":
        n, fill = spec[1], spec[2].replace(b"\n", b" ")
        body = (b'{"id":1,"cmd":"hello","pad":"' + fill * n)[:n]
        return body + b"\n", [exp("too_long", None)]
    if kind == "badid":
        return _line({"id": spec[1], "cmd": "hello"}) + b"\n", [exp("bad_request", None)]
    if kind == "badcmd":
        return _line({"id": spec[1], "cmd": spec[2]}) + b"\n", [exp("bad_request", spec[1])]
    if kind == "unknown":
        # raw UTF-8, not \\u escapes: see test_unknown_cmd_reply_is_utf8 for why
        line = _line({"id": spec[1], "cmd": spec[2]}, ascii_only=False)
        return line + b"\n", [exp("unknown_cmd", spec[1])]
    if kind == "argsobj":
        rid = next_junk_id(f)
        line, ctr = request_line(f, spec[1], spec[2], rid)
        f.rendered_last = ctr or f.rendered_last
        return line + b"\n", [exp("bad_args", rid, ctr=ctr)]
    if kind == "badarg":
        cmd, arg, value = spec[1], spec[2], spec[3]
        args = dict(ARGS[cmd][1][arg][1])
        args[arg] = value
        rid = next_junk_id(f)
        line, ctr = request_line(f, cmd, args, rid)
        f.rendered_last = ctr or f.rendered_last
        return line + b"\n", [exp("bad_args", rid, ctr=ctr)]
    if kind == "badctr":
        rid = next_junk_id(f)
        line = sign(dev.key, {"id": rid, "cmd": "info", "ctr": spec[1]})
        return line + b"\n", [exp("auth", rid)]
    if kind == "badmac":
        rid = next_junk_id(f)
        line = _line({"id": rid, "cmd": "info", "ctr": dev.ctr + 1, "mac": spec[1]})
        return line + b"\n", [exp("auth", rid)]
    if kind == "nomac":
        rid = next_junk_id(f)
        line = _line({"id": rid, "cmd": spec[1], "ctr": dev.ctr + 1})
        return line + b"\n", [exp("auth", rid)]
    if kind == "oldctr":
        rid = next_junk_id(f)
        last = max(dev.accepted, f.rendered_last)  # by the time this line is read
        ctr = spec[1] % (last + 1)  # 0 (not a valid counter: auth) .. the last accepted
        line = sign(dev.key, {"id": rid, "cmd": "info", "ctr": ctr})
        if ctr == 0:
            return line + b"\n", [exp("auth", rid)]
        return line + b"\n", [exp("replay", rid, min=last + 1)]
    raise AssertionError(spec)


def next_junk_id(f: Fuzz) -> int:
    f.last_id = f.last_id % JUNK_ID_MAX + 1
    return f.last_id


# -- framing, by hand --------------------------------------------------------------------------


def test_line_limit_exactly(fz):
    """4096 bytes (without the newline) are a request; 4097 are too_long; so are many more,
    and a \\r before the newline counts as a byte of the line."""
    dev = fz.dev
    rid, ctr, line = dev.signed("info")
    base = line[:-MAC_TAIL]  # '{"id":..,"cmd":"info","ctr":N': pad it with JSON whitespace
    prefix = b"{" + b" " * (4096 - len(base) - MAC_TAIL) + base[1:]
    padded = prefix + b',"mac":"' + mac_of(dev.key, prefix).encode() + b'"}'
    assert len(padded) == 4096
    dev.send_raw(padded + b"\n")
    r = dev.take(rid)
    dev.verify(r, ctr)
    assert r["ok"] is True, r
    # 4097 bytes, 4096 + \r, and 20000 bytes: one too_long each, with no id
    hello = b'{"id":9,"cmd":"hello"}'
    over = [
        hello + b" " * (4097 - len(hello)),
        hello + b" " * (4096 - len(hello)) + b"\r",
        hello + b" " * (20000 - len(hello)),
    ]
    exchange(fz, b"".join(o + b"\n" for o in over), [exp("too_long", None)] * 3)
    # 4096 bytes then \r\n is one byte too many; 4095 + \r\n fits
    ok = hello + b" " * (4095 - len(hello)) + b"\r\n"
    fz.dev.send_raw(ok)
    assert fz.dev.take(9)["ok"] is True


def test_empty_lines_get_no_reply(fz):
    exchange(fz, b"\n\r\n\n\r\n", [])


def test_junk_merges_with_the_next_line(fz):
    """Bytes without a newline are the start of the next line: that line is refused (one
    reply) and the line after it is served. An authenticated request refused this way did
    not use up its counter: the same bytes, sent again cleanly, are accepted."""
    dev = fz.dev
    hello = b'{"id":11,"cmd":"hello"}'
    for junk in (b"xyz", b"\x00", b"\xff\xfe", b'{"id":1,"cmd":"hel', b"abc\r", b"}", b"[1]"):
        exchange(fz, junk + hello + b"\n", [exp("bad_json", None)])
        dev.send_raw(hello + b"\n")  # the clean line after it works
        assert dev.take(11)["ok"] is True
    # Only JSON whitespace merges harmlessly into an unauthenticated line...
    fz.dev.send_raw(b" \r\t" + hello + b"\n")
    assert fz.dev.take(11)["ok"] is True
    # ...but never into an authenticated one: the mac covers every byte before it
    for junk, err in (
        (b" ", "auth"),
        (b"\r", "auth"),
        (b"xyz", "bad_json"),
        (b"\x03", "bad_json"),
    ):
        rid, ctr, line = dev.signed("info")
        exchange(fz, junk + line + b"\n", [exp(err, rid if err == "auth" else None)])
        dev.send_raw(line + b"\n")  # the very same bytes, clean: accepted
        r = dev.take(rid)
        dev.verify(r, ctr)
        assert r["ok"] is True, r
    # an over-long fragment swallows the line it merges with
    rid, ctr, line = dev.signed("info")
    exchange(fz, b"x" * 5000 + line + b"\n", [exp("too_long", None)])
    dev.send_raw(line + b"\n")
    assert dev.take(rid)["ok"] is True


def test_unknown_cmd_reply_is_utf8(fz):
    line = json.dumps({"id": 12, "cmd": "\U0001f48a"}).encode()  # ensure_ascii: \\ud83d\\udc8a
    exchange(fz, line + b"\n", [exp("unknown_cmd", 12)])


# -- hypothesis --------------------------------------------------------------------------------


@FUZZ
@given(data=junk_bytes)
def test_random_bytes(fz, data):
    data += b"\n"
    exchange(fz, data, model_lines(data))


@FUZZ
@given(spec=st.tuples(st.just("trunc"), st.sampled_from(sorted(KNOWN)), st.floats(0, 1)))
def test_truncated_requests(fz, spec):
    exchange(fz, *render(fz, spec))


@settings(FUZZ, max_examples=30)
@given(
    spec=st.tuples(st.just("long"), st.integers(4097, 12000), st.binary(min_size=1, max_size=8))
)
def test_over_long_lines(fz, spec):
    exchange(fz, *render(fz, spec))


@settings(FUZZ, max_examples=500)
@given(
    spec=st.one_of(
        arg_specs, st.tuples(st.just("argsobj"), st.sampled_from(sorted(KNOWN)), non_objects)
    )
)
def test_wrong_argument_types(fz, spec):
    exchange(fz, *render(fz, spec))


@settings(FUZZ, max_examples=250)
@given(
    spec=st.one_of(
        st.tuples(st.just("badid"), bad_id),
        st.tuples(
            st.just("badcmd"), junk_id, json_values.filter(lambda v: not isinstance(v, str))
        ),
        st.tuples(st.just("badctr"), bad_int(1, 2**64 - 1)),
        st.tuples(st.just("badmac"), json_values),
        st.tuples(st.just("nomac"), st.sampled_from(sorted(c for c in KNOWN if ARGS[c][0]))),
        st.tuples(st.just("oldctr"), st.integers(0, 10**6)),
    )
)
def test_wrong_envelope(fz, spec):
    exchange(fz, *render(fz, spec))


@FUZZ
@given(
    spec=st.tuples(
        st.just("unknown"), junk_id, st.text(max_size=40).filter(lambda c: c not in KNOWN)
    )
)
def test_unknown_commands(fz, spec):
    exchange(fz, *render(fz, spec))


STRING_SLOTS = {  # a request with bytes in one of its strings: the refusal if they are text
    b'"%s"': "bad_json",
    b'{"%s":1}': "bad_request",
    b'{"id":21,"cmd":"%s"}': "unknown_cmd",
    b'{"id":22,"cmd":"sim.jam","args":{"on":"%s"}}': "bad_args",
    b'{"id":23,"cmd":"sim.battery","args":{"%s":3000}}': "bad_args",
}


@FUZZ
@given(
    slot=st.sampled_from(sorted(STRING_SLOTS)),
    raw=st.lists(
        st.one_of(st.binary(max_size=6), st.sampled_from(SPECIAL[2:] + [b"\xf4\x90\x80\x80"])),
        max_size=6,
    ).map(lambda parts: b"".join(parts).translate(None, b'"\\\n')),
)
def test_bytes_inside_strings(fz, slot, raw):
    """Any bytes inside a JSON string (invalid UTF-8, overlong forms, surrogates, control
    characters): a refusal, one per line, never a crash (MicroPython raises UnicodeError)."""
    line = slot.replace(b"%s", raw)
    want = STRING_SLOTS[slot]
    try:
        text = raw.decode("utf-8")
        clean = all(c >= " " for c in text) and text not in KNOWN
    except UnicodeDecodeError:
        clean = False
    err = frozenset({want}) if clean else frozenset({want, "bad_json"})
    exchange(fz, line + b"\n", [Exp(err, utf8=clean)])


@settings(FUZZ, max_examples=50)
@given(batch=st.lists(specs, min_size=20, max_size=120))
def test_bursts(fz, batch):
    data = b""
    exps: list[Exp] = []
    for spec in batch:
        d, e = render(fz, spec)
        data += d
        exps += e
    exchange(fz, data, exps)


@settings(FUZZ, max_examples=80)
@given(junk=junk_bytes.filter(lambda b: b"\n" not in b and b.strip(b" \t\r") != b""))
def test_junk_then_request(fz, junk):
    """Junk without a newline, then a valid request: one refusal; the clean retry works."""
    dev = fz.dev
    rid, ctr, line = dev.signed("info")
    data = junk + line + b"\n"
    want = frozenset({"bad_json", "bad_request", "auth", "too_long", "unknown_cmd"})
    got = exchange(fz, data, [exp(want)])
    assert got[0]["id"] in (None, rid)
    dev.send_raw(line + b"\n")
    r = dev.take(rid)
    dev.verify(r, ctr)
    assert r["ok"] is True, r


# -- afterwards --------------------------------------------------------------------------------


def test_after_the_fuzz(fz):
    """Still answering, the dose on time, nothing lost from the log, every refusal logged,
    every reply a documented one."""
    dev = fz.dev
    # Keep the junk coming until the dose is due (if the fuzz above was quicker than LEAD_S).
    while time.monotonic() < fz.expect_at + 3 and not [
        e for e, _ in dev.event_log() if e["ev"] == "due"
    ]:
        exchange(
            fz,
            b"\x00\xff{junk\n" + b'{"id":5,"cmd":"info"}\n',
            [exp("bad_json", None), exp("auth", 5)],
        )
        dev.poll(0.05)
    # (1) still answering
    assert dev.request("hello")["data"]["paired"] is True
    info = dev.ok("info")
    assert info["faults"] == {}, info
    # (2) the dose came at its instant, on time in real time too
    events = dev.event_log()
    assert not [e for e, _ in events if "dropped" in e], "events were dropped"
    dues = [(e, t) for e, t in events if e["ev"] == "due"]
    assert len(dues) == 1, dev.event_log()
    ev, arrived = dues[0]
    assert ev["dose"] == DOSE_ID and ev["occ"] == fz.dose, ev
    assert abs(ev["t"] - fz.dose) <= 3, ev
    late = (arrived - fz.expect_at) * SPEED  # virtual seconds
    assert abs(late) <= 3, f"due arrived {late:+.1f} virtual s off its instant"
    # (3) the log: let the sync budget refill (it flushes deferred records), then read it all
    fuzz_s = dev.ok("info")["utc"] - (fz.dose - LEAD_S * SPEED)  # virtual time fuzzed
    dev.advance(1800)
    recs = dev.log_raw()
    seqs = [logrec.decode(r)[0] for r in recs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "sequence numbers not contiguous"
    first = seqs[0]
    for raw in fz.before:
        seq = logrec.decode(raw)[0]
        assert recs[seq - first] == raw, f"record {seq} changed"
    before_last = logrec.decode(fz.before[-1])[0]
    new = [logrec.decode(r) for r in recs if logrec.decode(r)[0] > before_last]
    due_recs = [r for r in new if r[2] == logrec.DUE and r[3] == fz.dose]
    assert len(due_recs) == 1 and due_recs[0][1] == fz.dose, due_recs
    assert due_recs[0][0] == ev["seq"]
    # every refusal of a request that needed the key is counted, and logged within the
    # budget of docs/protocol.md (8 at once, then one per 5 virtual minutes): the logged ones
    # are some of the refusals, in order, and the others are counted as unlogged
    replies = [parse(r) for r in dev.raw_replies[fz.replies_at_start :]]
    refused = [r["err"] for r in replies if r.get("err") in AUTH_ERRS]
    assert len(refused) > 100, "the fuzz should have sent many forged requests"
    logged = auth_fails(new)
    assert 8 <= len(logged) <= 9 + fuzz_s // 300, (len(logged), fuzz_s)
    it = iter(refused)
    assert all(reason in it for reason in logged), "logged reasons are not the refusals'"
    info_end = dev.ok("info")
    assert info_end["refused"] - fz.counts[0] == len(refused)
    assert info_end["refused_unlogged"] - fz.counts[1] == len(refused) - len(logged)
    # every reply is a documented one; nothing else came out
    assert dev.noise == []
    for raw in dev.raw_replies:
        r = parse(raw)
        assert isinstance(r, dict) and "id" in r and isinstance(r.get("ok"), bool), raw
        if r["ok"] is False:
            assert r["err"] in ERRORS and r["err"] not in NOT_EVER, raw
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:  # only echoes of names that were not UTF-8 themselves
            assert r["err"] == "unknown_cmd", raw
    assert fz.answered == fz.lines
    # snapshot still decodes (the display was not disturbed)
    snap = dev.ok("display.snapshot")
    assert len(base64.b64decode(snap["fb"])) == 1024
