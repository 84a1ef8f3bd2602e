"""What the `dosis` device commands do, as importable functions over a connected device.

Nothing here prints or asks: every function returns values (or text for the caller to print)
and raises domain errors (`DosisError` and its kinds from `dosis.errors`). The device is any
object with the methods of `dosis.device.Device` (`DeviceLike` below), so tests use a fake.

The schedule rules, the planner and the log record codec are the firmware's own
(`dosiscore`): the host computes dates, compartments and hashes with the code the device runs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from dosiscore import civil, doses, logrec, planner, tz
from dosiscore.schedule import ALERT_LIMITS, ScheduleError, canonical, content_hash, validate

from .errors import DeviceError, DosisError, InputError, LinkError, ProtocolError

__all__ = [
    "Change",
    "Compartment",
    "DeviceLike",
    "LoadingMap",
    "LogPull",
    "LogRead",
    "LogRow",
    "NotPairingError",
    "PushPlan",
    "RefillNotice",
    "VerifyError",
    "ack_log",
    "chunk_text",
    "decode_records",
    "decode_rows",
    "device_info",
    "device_now",
    "device_schedule",
    "diff_schedules",
    "event_line",
    "export_log",
    "fill_instant",
    "format_count",
    "format_event",
    "format_info",
    "format_loading_map",
    "format_rows",
    "info_rows",
    "loading_map",
    "monitoring",
    "pair",
    "plan_push",
    "pull_log",
    "push_schedule",
    "read_log",
    "refill_notice",
    "send_schedule",
    "settings",
    "snapshot",
    "sync_time",
    "wait_for_schedule",
    "write_rows",
]

MAX_SCHEDULE_BYTES = 8192  # the device takes at most this much schedule JSON in all
MAX_CHUNK_BYTES = 2048  # UTF-8 bytes of schedule text per schedule.put request
# The request line is at most 4096 bytes: a chunk's JSON string (quotes escaped, and non-ASCII
# as \uXXXX if the link escapes it) must leave room for the rest of the request.
MAX_CHUNK_ESCAPED = 3600
LOG_READ_MAX = 170  # records per log.read: one 4 KB flash block (the firmware's limit)
LOG_BATCH = 16  # log.read requests issued per pipelined round
REBOOT_WAIT_S = 15.0  # how long a device may take to come back after schedule.put
SETTINGS_KEYS = ("language", "volume", "tone", "mode")
_sleep = time.sleep
_clock = time.monotonic


class DeviceLike(Protocol):
    """What the operations need of a connected device (`dosis.device.Device` has it)."""

    device_id: str | None
    board: str | None

    def hello(self) -> dict[str, Any]: ...

    def call(
        self, cmd: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]: ...

    def call_many(
        self, reqs: Iterable[tuple[str, dict[str, Any]]], window: int = 2
    ) -> Iterator[dict[str, Any]]: ...

    def pair(self) -> str: ...

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class NotPairingError(DosisError):
    """The device's pairing window is closed: the nurse must press its service button."""

    def __init__(self) -> None:
        super().__init__(
            "the dispenser is not ready to pair: press its service button (the screen shows "
            '"Parring" and the device id), then run this again within 2 minutes'
        )


class VerifyError(DosisError):
    """The device does not hold what was sent to it (exit code 1: refused)."""


# -- small formatting helpers ----------------------------------------------------------------


def format_count(c: float) -> str:
    """Tablets as a nurse writes them: 1, ½, 1½."""
    if c == int(c):
        return str(int(c))
    return "½" if c == 0.5 else f"{int(c)}½"


def format_items(items: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"{format_count(i['count'])} × {i['name']}" for i in items)


def format_days(days: Any) -> str:
    if days == "daily":
        return "daily"
    if isinstance(days, dict):
        return f"every {days['every']} days"
    return ", ".join(days)


def _iso(t: int | None) -> str | None:
    return civil.format_iso(t) if t else None


def _local_iso(t: int, zone: tz.Tz | None) -> str:
    """Local ISO time of UTC `t`: in the schedule's zone, or the host's when there is none."""
    if zone is not None:
        return civil.format_iso(t, zone.offset(t))
    off = time.localtime(t).tm_gmtoff
    return civil.format_iso(t, off)


# -- pairing, info, clock, settings ----------------------------------------------------------


def pair(dev: DeviceLike) -> str:
    """Pair with the device (its service button must have been pressed): the device id."""
    if not dev.hello().get("pairing"):
        raise NotPairingError()
    try:
        return dev.pair()
    except DeviceError as e:
        if e.code == "not_pairing":  # the window closed in between
            raise NotPairingError() from None
        raise


def pair_virtual(dev: DeviceLike, wait: float = 5.0) -> str:
    """Pair with a virtual dispenser: its service button pressed through the `sim.press` hook
    (a hand on the device), then `pair` once the window is open. The device id."""
    dev.call("sim.press", {"button": "service"})
    until = time.monotonic() + wait
    while not dev.hello().get("pairing"):
        if time.monotonic() > until:
            raise NotPairingError("the virtual dispenser did not open its pairing window")
        time.sleep(0.05)
    return dev.pair()


def device_info(dev: DeviceLike) -> dict[str, Any]:
    """hello and info in one dict: proto, fw, device, board, paired, then info's fields."""
    hello = dev.hello()
    info = dev.call("info")
    out = {k: hello.get(k) for k in ("device", "board", "fw", "proto", "paired")}
    out.update(info)
    return out


def _when(t: Any) -> str:
    return (_iso(t) or "-") if isinstance(t, int) else "-"


def info_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of `device_info` for a human."""

    def v(x: Any) -> str:
        if x is None:
            return "-"
        if x is True:
            return "yes"
        if x is False:
            return "no"
        return str(x)

    rows = [
        ("device", v(info.get("device"))),
        ("board", v(info.get("board"))),
        ("firmware", v(info.get("fw"))),
        ("protocol", v(info.get("proto"))),
        ("schedule", v(info.get("schedule"))),
        ("local time", v(info.get("local"))),
        ("utc", _when(info.get("utc"))),
        ("time source", v(info.get("time_source"))),
        ("time valid", v(info.get("time_valid"))),
        ("mode", v(info.get("mode"))),
        ("next dose", _when(info.get("next"))),
        ("mains", v(info.get("mains"))),
        ("battery", f"{info['battery_mv']} mV" if info.get("battery_mv") is not None else "-"),
        ("heap free", f"{info['heap_free']} bytes" if info.get("heap_free") is not None else "-"),
    ]
    log = info.get("log") or {}
    rows.append(
        (
            "log",
            f"seq {v(log.get('first'))}..{v(log.get('last'))}, acknowledged up to "
            f"{v(log.get('acked'))}",
        )
    )
    faults = info.get("faults") or {}
    rows.append(("faults", "; ".join(f"{k} {d}" for k, d in faults.items()) or "none"))
    up = info.get("uptime_s")
    if isinstance(up, int):
        rows.append(("uptime", f"{up // 86400} d {up % 86400 // 3600:02d}:{up % 3600 // 60:02d}"))
    return rows


def format_info(info: dict[str, Any]) -> str:
    rows = info_rows(info)
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {val}" for k, val in rows)


def device_now(dev: DeviceLike) -> int | None:
    """The device's UTC clock, or None if it has no trustworthy time."""
    info = dev.call("info")
    utc = info.get("utc")
    return utc if info.get("time_valid") and isinstance(utc, int) else None


def sync_time(dev: DeviceLike, now: Callable[[], float] = time.time) -> dict[str, Any]:
    """Set the device's clock to the host's UTC: {"utc": set, "step": seconds}."""
    return dev.call("time.set", {"utc": int(round(now()))})


def settings(dev: DeviceLike, **changes: Any) -> dict[str, Any]:
    """Change the given settings (None = leave as is); the device's current settings."""
    args = {k: v for k, v in changes.items() if v is not None}
    unknown = set(args) - set(SETTINGS_KEYS)
    if unknown:
        raise InputError(f"unknown setting: {', '.join(sorted(unknown))}")
    return dev.call("settings", args)


def record_fill(dev: DeviceLike) -> int | None:
    """Tell the device the carousel was just filled (every compartment, per the loading map);
    how many doses it now holds."""
    return dev.call("fill").get("doses_left")


SELFTEST_PARTS = ("carousel", "rtc", "buzzer", "display", "storage")


def selftest(dev: DeviceLike) -> dict[str, Any]:
    """Run the device's self-test (homes the carousel: up to a full turn), its report."""
    return dev.call("selftest", timeout=60.0)


def selftest_faults(report: dict[str, Any]) -> list[str]:
    """The parts of a self-test report that are not "ok" ("none": the part is not fitted)."""
    return [
        f"{k}: {report[k]}" for k in SELFTEST_PARTS if report.get(k) not in ("ok", "none", None)
    ]


def snapshot(dev: DeviceLike) -> dict[str, Any]:
    """The device's screen: {"screen": name, "w", "h", "fb": bytes (MONO_VLSB)}."""
    r = dev.call("display.snapshot")
    try:
        w, h = int(r["w"]), int(r["h"])
        fb = base64.b64decode(r["fb"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise ProtocolError(f"display.snapshot: unexpected reply ({e})") from None
    if w <= 0 or h <= 0 or h % 8 or len(fb) != w * h // 8:
        raise ProtocolError(f"display.snapshot: {len(fb)} bytes do not make a {w}x{h} screen")
    return {"screen": r.get("screen"), "w": w, "h": h, "fb": fb}


# -- schedules on the device -----------------------------------------------------------------


def device_schedule(dev: DeviceLike) -> tuple[str | None, dict[str, Any] | None]:
    """(hash, normalised schedule) on the device, or (None, None) if it has none."""
    r = dev.call("schedule.get")
    h, doc = r.get("hash"), r.get("doc")
    if h is None or doc is None:
        return None, None
    try:
        norm = validate(doc)
    except ScheduleError as e:
        raise ProtocolError(f"the device's schedule does not validate here: {e}") from None
    if content_hash(norm) != h:
        raise ProtocolError(
            f"the device reports schedule hash {h[:12]} but its schedule hashes to "
            f"{content_hash(norm)[:12]} here: host and firmware versions differ"
        )
    return h, norm


@dataclass(frozen=True)
class Change:
    """One difference between the device's schedule and the new one."""

    kind: str  # new, added, removed, moved, medicines, reminder, alerts, zone, language,
    #            setting, prn; refill (not a difference itself: see PushPlan.refill)
    what: str  # the dose or as-needed id, or the setting's key
    text: str  # one line for a human

    def __str__(self) -> str:
        return self.text


def _dose_line(d: dict[str, Any]) -> str:
    ro = " (reminder only)" if d["reminder_only"] else ""
    return f"{d['time']} {format_days(d['days'])}: {format_items(d['items'])}{ro}"


def _prn_line(p: dict[str, Any]) -> str:
    return (
        f"{p['name']}, at least {p['min_interval_h']} h apart, at most {p['max_per_24h']} in 24 h"
    )


def _item_changes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    names_old = [i["name"] for i in old]
    names_new = [i["name"] for i in new]
    if len(set(names_old)) != len(names_old) or len(set(names_new)) != len(names_new):
        return f"{format_items(old)} → {format_items(new)}"
    a = {i["name"]: i["count"] for i in old}
    b = {i["name"]: i["count"] for i in new}
    parts = [f"+ {format_count(b[n])} × {n}" for n in names_new if n not in a]
    parts += [f"- {format_count(a[n])} × {n}" for n in names_old if n not in b]
    parts += [
        f"{n} {format_count(a[n])} → {format_count(b[n])}"
        for n in names_new
        if n in a and a[n] != b[n]
    ]
    if not parts:  # same medicines, another order
        return f"order {', '.join(names_old)} → {', '.join(names_new)}"
    return "; ".join(parts)


def diff_schedules(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Change]:
    """What changes on the device if `new` replaces `old` (both normalised; old may be None)."""
    out: list[Change] = []
    if old is None:
        out.append(Change("new", "", "the device has no schedule yet: this will be its first"))
        for d in new["dose"]:
            out.append(Change("added", d["id"], f"+ dose {d['id']} {_dose_line(d)}"))
        for p in new["prn"]:
            out.append(Change("prn", p["id"], f"+ as-needed {p['id']}: {_prn_line(p)}"))
        return out
    labels = {
        "timezone": ("zone", "time zone"),
        "language": ("language", "language"),
        "citizen": ("setting", "citizen"),
        "start": ("setting", "start"),
        "end": ("setting", "end"),
        "compartments": ("setting", "compartments"),
    }
    for key, (kind, label) in labels.items():
        a, b = old.get(key), new.get(key)
        if a != b:
            out.append(Change(kind, key, f"~ {label}: {a or '-'} → {b or '-'}"))
    for k in ALERT_LIMITS:
        a, b = old["alerts"].get(k), new["alerts"].get(k)
        if a != b:
            out.append(Change("alerts", k, f"~ alerts.{k}: {a} → {b} min"))
    before = {d["id"]: d for d in old["dose"]}
    after = {d["id"]: d for d in new["dose"]}
    for d in old["dose"]:
        if d["id"] not in after:
            out.append(Change("removed", d["id"], f"- dose {d['id']} {_dose_line(d)}"))
    for d in new["dose"]:
        i = d["id"]
        if i not in before:
            out.append(Change("added", i, f"+ dose {i} {_dose_line(d)}"))
            continue
        o = before[i]
        if (o["time"], o["days"]) != (d["time"], d["days"]):
            out.append(
                Change(
                    "moved",
                    i,
                    f"~ dose {i} moved: {o['time']} {format_days(o['days'])} → "
                    f"{d['time']} {format_days(d['days'])}",
                )
            )
        if o["items"] != d["items"]:
            what = _item_changes(o["items"], d["items"])
            out.append(Change("medicines", i, f"~ dose {i} medicines: {what}"))
        if o["reminder_only"] != d["reminder_only"]:
            what = (
                "now a reminder only (nothing dispensed)"
                if d["reminder_only"]
                else "now dispensed from the carousel"
            )
            out.append(Change("reminder", i, f"~ dose {i}: {what}"))
        windows = [
            f"{k} {o[k]} → {d[k]} min"
            for k in ("early_min", "late_lock_min", "notify_min")
            if o.get(k) != d.get(k)
        ]
        if windows:
            out.append(Change("alerts", i, f"~ dose {i} alerts: {', '.join(windows)}"))
    pb = {p["id"]: p for p in old["prn"]}
    pa = {p["id"]: p for p in new["prn"]}
    for p in old["prn"]:
        if p["id"] not in pa:
            out.append(Change("prn", p["id"], f"- as-needed {p['id']}: {_prn_line(p)}"))
    for p in new["prn"]:
        if p["id"] not in pb:
            out.append(Change("prn", p["id"], f"+ as-needed {p['id']}: {_prn_line(p)}"))
        elif pb[p["id"]] != p:
            out.append(
                Change(
                    "prn",
                    p["id"],
                    f"~ as-needed {p['id']}: {_prn_line(pb[p['id']])} → {_prn_line(p)}",
                )
            )
    return out


@dataclass(frozen=True)
class RefillNotice:
    """The carousel must be refilled after the change: some compartment the device would still
    open was loaded for the old schedule with another dose (the firmware's own rule,
    `dosiscore.doses.first_mismatch`). The device opens none from `first` on until refilled."""

    fill: int  # the fill instant compared: the device's, or the start of today if unknown
    fill_known: bool  # the device reported its fill instant
    first: int  # first compartment (of a fill at `fill`) loaded for the old schedule
    last: int  # last compartment the new schedule would open
    utc: int  # when the new schedule wants compartment `first`
    dose: str  # the new schedule's dose there
    was: str | None  # the old schedule's dose there (None: the fill left it empty)
    text: str

    def __str__(self) -> str:
        return self.text


def _sequence(doc: dict[str, Any], fill: int) -> list[tuple[int, int, str]]:
    by_id = {d["id"]: d for d in doc["dose"]}
    return list(doses.loaded(planner.Plan(doc), by_id, fill, doc["compartments"]))


def refill_notice(
    old: dict[str, Any], new: dict[str, Any], now: int, fill: int | None = None
) -> RefillNotice | None:
    """Does replacing `old` by `new` (both normalised) void the carousel's fill, by the rule
    the device applies at its next boot? None if not.

    `fill` is the device's fill instant if known. Without it, a fill at the start of today
    (in the old schedule's zone) stands for "filled some time ago": the device compares what
    each compartment still to be opened holds, and for a fill before today that depends only
    on the order and contents of the doses, not on when the nurse came. (A fill "now" would
    call every time moved across the present a refill: the device keeps its fill then.) The
    compartments compared start at the first dose not yet past its lock (the device starts at
    the first it has not ended, which it alone knows)."""
    known = fill is not None
    if fill is None:
        zone = tz.Tz(old["tz_rule"])
        fill = zone.utc(zone.local(now) // civil.DAY * civil.DAY)
    seq = _sequence(new, fill)
    by_id = {d["id"]: d for d in new["dose"]}
    start = next((k for k, t, i in seq if t + by_id[i]["late_lock_min"] * 60 > now), None)
    if start is None:
        return None
    first = doses.first_mismatch(
        doses.fill_signature(old, fill), doses.fill_signature(new, fill), start
    )
    if first is None:
        return None
    _, t, dose = seq[first - 1]
    before = _sequence(old, fill)
    was = before[first - 1][2] if first <= len(before) else None
    last = seq[-1][0]
    off = tz.Tz(new["tz_rule"]).offset(t)
    when = civil.format_iso(t, off)[:16].replace("T", " ")
    if known:
        text = (
            f"! the carousel must be refilled after this change: compartments {first}..{last} "
            f"were loaded for the old schedule (compartment {first} holds "
            f"{was + ' pills' if was else 'nothing'}, the new schedule would open it for {dose} "
            f"at {when}); the dispenser opens none of them until it is refilled"
        )
    else:
        text = (
            "! if the carousel is filled, it must be refilled after this change: it was loaded "
            f"for the old schedule's doses, and from {dose} at {when} on the new schedule "
            "needs other pills in the compartments; the dispenser opens none of them until it "
            "is refilled with the new loading map (dosis schedule loading-map)"
        )
    return RefillNotice(fill, known, first, last, t, dose, was, text)


@dataclass
class PushPlan:
    """What `push_schedule` would do: the new schedule and how it differs from the device's."""

    doc: dict[str, Any]
    hash: str
    data: bytes  # the canonical JSON sent
    old_hash: str | None
    old_doc: dict[str, Any] | None
    changes: list[Change] = field(default_factory=list)
    # Set when the change voids the carousel's fill; also the last of `changes` (kind "refill").
    refill: RefillNotice | None = None

    @property
    def same(self) -> bool:
        return self.old_hash == self.hash


def _device_fill(dev: DeviceLike) -> tuple[int, int | None]:
    """(the device's clock, or this computer's if it has none; its fill instant, from `info`'s
    "fill": {"at": UTC or null, ...}, or None when the carousel was never filled)."""
    now = int(time.time())
    try:
        info = dev.call("info")
    except DosisError:
        return now, None
    utc, fill = info.get("utc"), info.get("fill")
    if info.get("time_valid") and isinstance(utc, int) and not isinstance(utc, bool):
        now = utc
    if isinstance(fill, dict):
        fill = fill.get("at")
    if not isinstance(fill, int) or isinstance(fill, bool):
        fill = None
    return now, fill


def plan_push(dev: DeviceLike, doc: dict[str, Any], *, now: int | None = None) -> PushPlan:
    """Compare a normalised schedule with the device's; nothing is sent. `now` (UTC) stands
    for the device's clock (tests); by default `info` is asked for it."""
    data = canonical(doc)
    if len(data) > MAX_SCHEDULE_BYTES:
        raise InputError(
            f"the schedule is {len(data)} bytes as canonical JSON; a device takes at most "
            f"{MAX_SCHEDULE_BYTES}: shorten names or remove doses"
        )
    old_hash, old_doc = device_schedule(dev)
    new_hash = content_hash(doc)
    changes = [] if old_hash == new_hash else diff_schedules(old_doc, doc)
    refill = None
    if old_doc is not None and old_hash != new_hash:
        clock, fill = _device_fill(dev)
        refill = refill_notice(old_doc, doc, clock if now is None else now, fill)
        if refill is not None:
            changes.append(Change("refill", refill.dose, refill.text))
    return PushPlan(doc, new_hash, data, old_hash, old_doc, changes, refill)


def chunk_text(
    text: str, limit: int = MAX_CHUNK_BYTES, escaped_limit: int = MAX_CHUNK_ESCAPED
) -> list[str]:
    """`text` cut on character boundaries into pieces of at most `limit` UTF-8 bytes whose
    JSON string form (with non-ASCII escaped) is at most `escaped_limit` bytes."""
    out: list[str] = []
    cur: list[str] = []
    size = esc = 0
    for ch in text:
        b = len(ch.encode("utf-8"))
        e = len(json.dumps(ch)) - 2
        if cur and (size + b > limit or esc + e > escaped_limit):
            out.append("".join(cur))
            cur, size, esc = [], 0, 0
        cur.append(ch)
        size += b
        esc += e
    if cur or not out:
        out.append("".join(cur))
    return out


def _problem(p: Any) -> tuple[str, str]:
    """A problem of an invalid_schedule reply, "path: sentence" or [path, sentence]."""
    if isinstance(p, (list, tuple)) and len(p) == 2:
        return str(p[0]), str(p[1])
    path, sep, sentence = str(p).partition(": ")
    return (path, sentence) if sep else ("(document)", path)


def send_schedule(
    dev: DeviceLike, data: bytes, on_chunk: Callable[[int, int], None] | None = None
) -> str:
    """Send canonical schedule JSON with schedule.put (each chunk with `at`, its byte offset:
    0 starts a new upload); the hash the device computed."""
    chunks = chunk_text(data.decode("utf-8"))
    sent = 0
    reply: dict[str, Any] = {}
    for k, chunk in enumerate(chunks):
        more = k < len(chunks) - 1
        try:
            reply = dev.call("schedule.put", {"data": chunk, "at": sent, "more": more})
        except DeviceError as e:
            problems = e.data.get("problems") if isinstance(e.data, dict) else None
            if e.code == "invalid_schedule" and problems:
                raise ScheduleError([_problem(p) for p in problems]) from None
            raise
        sent += len(chunk.encode("utf-8"))
        if on_chunk is not None:
            on_chunk(sent, len(data))
        if more and isinstance(reply.get("have"), int) and reply["have"] != sent:
            raise ProtocolError(
                f"schedule.put: the device has {reply['have']} bytes, {sent} were sent"
            )
    h = reply.get("hash")
    if not isinstance(h, str):
        raise ProtocolError("schedule.put: the last reply carries no hash")
    return h


def wait_for_schedule(
    reconnect: Callable[[], DeviceLike],
    want: str,
    *,
    timeout: float | None = None,
    settle: float = 1.0,
    poll: float = 0.5,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> str:
    """Wait for the rebooting device to answer again and hold the schedule hashed `want`.

    A device that answers with another hash is asked again until `timeout` (it may have
    answered just before rebooting); then VerifyError. No answer at all: LinkError.
    Defaults: REBOOT_WAIT_S, and the module's _sleep and _clock (tests replace them)."""
    timeout = REBOOT_WAIT_S if timeout is None else timeout
    sleep = sleep or _sleep
    clock = clock or _clock
    deadline = clock() + timeout
    sleep(settle)
    seen: str | None = None
    answered = False
    problem = ""
    while True:
        try:
            dev = reconnect()
            try:
                dev.hello()
                got = dev.call("schedule.get")
            finally:
                dev.close()
            answered = True
            seen = got.get("hash")
            if seen == want:
                return want
        except LinkError as e:
            problem = str(e)
        except DeviceError as e:
            if e.code not in ("busy", "no_memory"):
                raise
            problem = str(e)
        if clock() >= deadline:
            break
        sleep(poll)
    if answered:
        raise VerifyError(
            f"the device came back with schedule {seen[:12] if seen else 'none'}, not "
            f"{want[:12]}: it did not take the new schedule (see 'dosis log pull')"
        )
    raise LinkError(
        f"the device did not answer within {timeout:.0f} s after rebooting"
        + (f" ({problem})" if problem else "")
    )


def push_schedule(
    dev: DeviceLike,
    plan: PushPlan,
    reconnect: Callable[[], DeviceLike],
    *,
    on_chunk: Callable[[int, int], None] | None = None,
    **wait: Any,
) -> str:
    """Send `plan`'s schedule, let the device reboot into it, and check it holds it.

    `dev` is closed (the device reboots); `reconnect` opens it again. Returns the hash."""
    try:
        got = send_schedule(dev, plan.data, on_chunk)
    finally:
        dev.close()
    if got != plan.hash:
        raise VerifyError(
            f"the device stored schedule {got[:12]}, not {plan.hash[:12]}: host and firmware "
            "disagree on the schedule's form"
        )
    return wait_for_schedule(reconnect, plan.hash, **wait)


# -- the loading map -------------------------------------------------------------------------


@dataclass(frozen=True)
class Compartment:
    n: int
    utc: int | None  # the dose's instant; None for an empty compartment
    local: str | None  # ISO with offset
    date: str | None
    time: str | None
    dose: str | None
    items: tuple[dict[str, Any], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "compartment": self.n,
            "utc": _iso(self.utc),
            "local": self.local,
            "date": self.date,
            "time": self.time,
            "dose": self.dose,
            "items": [dict(i) for i in self.items],
        }


@dataclass(frozen=True)
class LoadingMap:
    hash: str
    citizen: str
    timezone: str
    fill_utc: int  # the map holds if the carousel is filled after fill_after, by first dose
    fill_after: int | None  # the last dispensed dose before (None: no earlier dose)
    tz_rule: str
    compartments: tuple[Compartment, ...]

    def local(self, t: int | None) -> str | None:
        """Local ISO time (with offset) of UTC `t` in the schedule's zone."""
        if t is None:
            return None
        return civil.format_iso(t, tz.Tz(self.tz_rule).offset(t))

    @property
    def used(self) -> list[Compartment]:
        return [c for c in self.compartments if c.dose is not None]

    def as_json(self) -> dict[str, Any]:
        used = self.used
        return {
            "hash": self.hash,
            "citizen": self.citizen,
            "timezone": self.timezone,
            "from": self.local(self.fill_utc),
            "fill_after": self.local(self.fill_after),
            "fill_by": used[0].local if used else None,
            "first": used[0].date if used else None,
            "last": used[-1].date if used else None,
            "compartments": [c.as_json() for c in self.compartments],
        }


def fill_instant(doc: dict[str, Any], date: str, hhmm: str | None = None) -> int:
    """UTC of local `date` (YYYY-MM-DD) at `hhmm` (default midnight) in the schedule's zone."""
    z = civil.parse_date(date)
    if z is None:
        raise InputError(f'"{date}" is not a date (YYYY-MM-DD)')
    m = 0 if hhmm is None else civil.parse_hhmm(hhmm)
    if m is None:
        raise InputError(f'"{hhmm}" is not a time of day (HH:MM)')
    return tz.Tz(doc["tz_rule"]).utc(z * civil.DAY + m * 60)


_SEARCH_DAYS = 92
_SEARCH_LIMIT_DAYS = 50 * 366  # every 90 days on one weekday: 630 days a dose; 28 of them


def loading_map(doc: dict[str, Any], fill_utc: int) -> LoadingMap:
    """Which dose goes in which compartment if the carousel is filled at `fill_utc`.

    The device's rule (dosiscore.doses.Doses.compartment): after a fill at F, compartment n
    holds the n-th dispensed occurrence at or after F; reminder-only doses and as-needed rules
    use no compartment. The same map results for any fill after `fill_after` up to the first
    dose's instant."""
    plan = planner.Plan(doc)
    by_id = {d["id"]: d for d in doc["dose"]}
    n = doc["compartments"]
    found: list[tuple[int, str]] = []
    lo = fill_utc
    end = plan.tz.utc((plan.end + 2) * civil.DAY) if plan.end is not None else None
    while len(found) < n and lo < fill_utc + _SEARCH_LIMIT_DAYS * civil.DAY:
        if end is not None and lo > end:
            break
        hi = lo + _SEARCH_DAYS * civil.DAY
        for u, i in planner.occurrences(plan, lo, hi):
            if not by_id[i]["reminder_only"] and len(found) < n:
                found.append((u, i))
        lo = hi
    before = None
    hi = fill_utc
    while before is None and hi > fill_utc - 8 * _SEARCH_DAYS * civil.DAY:
        lo = hi - _SEARCH_DAYS * civil.DAY
        for u, i in planner.occurrences(plan, lo, hi):
            if not by_id[i]["reminder_only"]:
                before = u
        hi = lo
    comps = []
    for k in range(n):
        if k < len(found):
            u, i = found[k]
            off = plan.tz.offset(u)
            wall = u + off
            comps.append(
                Compartment(
                    k + 1,
                    u,
                    civil.format_iso(u, off),
                    civil.format_date(wall // civil.DAY),
                    civil.format_hhmm(wall % civil.DAY // 60),
                    i,
                    tuple(dict(it) for it in by_id[i]["items"]),
                )
            )
        else:
            comps.append(Compartment(k + 1, None, None, None, None, None))
    return LoadingMap(
        content_hash(doc),
        doc["citizen"],
        doc["timezone"],
        fill_utc,
        before,
        doc["tz_rule"],
        tuple(comps),
    )


def format_loading_map(m: LoadingMap) -> str:
    """The map as a printable plain-text table with a title line."""
    used = m.used
    lines = []
    if used:
        title = f"Loading map {used[0].date} to {used[-1].date}"
    else:
        title = "Loading map: no dispensed doses in this period"
    lines.append(f"{title} · {m.citizen} · {m.timezone} · schedule {m.hash[:12]}")
    if used:
        prev = m.local(m.fill_after)
        after = f"after {prev[:16].replace('T', ' ')} and " if prev else ""
        first = (used[0].local or "")[:16].replace("T", " ")
        lines.append(f"Fill the carousel {after}before {first} (the first dose's time).")
    lines.append("")
    lines.append(f"{'No.':>3}  {'Date':<10}  {'Day':<3}  {'Time':<5}  {'Dose':<16}  Medicines")
    lines.append("-" * 78)
    for c in m.compartments:
        if c.dose is None or c.date is None:
            lines.append(f"{c.n:>3}  {'':<10}  {'':<3}  {'':<5}  {'(empty)':<16}")
            continue
        z = civil.parse_date(c.date)
        day = civil.WEEKDAYS[civil.weekday(z)].capitalize() if z is not None else ""
        meds = format_items(c.items)
        lines.append(f"{c.n:>3}  {c.date:<10}  {day:<3}  {c.time:<5}  {c.dose:<16}  {meds}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


# -- the dose log ----------------------------------------------------------------------------

_DOSE_KINDS = frozenset(
    (
        logrec.AVAILABLE,
        logrec.DUE,
        logrec.LOUDER,
        logrec.NOTIFY,
        logrec.TAKEN,
        logrec.MISSED,
        logrec.SKIPPED,
        logrec.OPENING,
        logrec.OPENED,
        logrec.CLOSED,
    )
)
Record = tuple[int, int, int, int, int | None, int, int]  # logrec.decode's tuple


@dataclass(frozen=True)
class LogRow:
    """One dose-log record, decoded for people and spreadsheets."""

    seq: int
    utc: int | None  # when it was written; None when the device did not know the time
    kind: str
    dose: str | None  # the dose (or as-needed rule) id, when the schedule is known
    dose_index: int | None  # the raw index in the schedule's list
    occ: int  # the record's first number: the occurrence's instant for dose records
    detail: int
    small: int
    note: str  # small and detail in words

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "utc": _iso(self.utc),
            "kind": self.kind,
            "dose": self.dose,
            "dose_index": self.dose_index,
            "due": _iso(self.occ) if self.kind in _DOSE_KIND_NAMES else None,
            "occ": self.occ,
            "detail": self.detail,
            "small": self.small,
            "note": self.note,
        }


_DOSE_KIND_NAMES = frozenset(logrec.NAMES[k] for k in _DOSE_KINDS)
LOG_FIELDS = ("seq", "utc", "kind", "dose", "dose_index", "due", "occ", "detail", "small", "note")


def _name(table: Sequence[str], i: int) -> str:
    return table[i] if 0 <= i < len(table) else str(i)


def _note(kind: int, occ: int, detail: int, small: int) -> str:
    R = logrec
    if kind in (R.TAKEN, R.MISSED, R.SKIPPED, R.NOTIFY):
        how, mode = small & 0xFF, small >> 8
        text = _name(R.REASONS, how)
        return f"{text}, {_name(R.REASONS, mode)}" if mode else text
    if kind in (R.AVAILABLE, R.DUE):
        return "late" if small == 1 else ""
    if kind == R.LOUDER:
        return f"level {small}"
    if kind in (R.OPENING, R.OPENED, R.CLOSED, R.RECOVERED, R.JAM):
        return f"compartment {detail}" if detail else ""
    if kind == R.PRN:
        return "allowed" if small else f"refused until {_iso(detail) or 'now'}"
    if kind == R.MODE:
        return _name(R.MODES, small)
    if kind == R.PRESS:
        return _name(R.BUTTONS, small)
    if kind == R.CLOCK_SET:
        old, new = _iso(occ) or "unknown", _iso(detail) or "unknown"
        return f"{old} -> {new} ({_name(R.SOURCES, small)})"
    if kind == R.CLOCK_HELD:
        return f"offered {_iso(detail) or 'unknown'}"
    if kind in (R.SCHEDULE, R.SCHEDULE_BAD):
        return f"schedule {detail:08x}" if detail else ""
    if kind == R.BOOT:
        cause = _name(R.BOOT_CAUSES, small)
        return cause + (
            f", firmware {detail >> 16}.{detail >> 8 & 255}.{detail & 255}" if detail else ""
        )
    if kind in (R.BATTERY_LOW, R.BATTERY_OK):
        return f"{detail} mV"
    if kind == R.SERVICE:
        return ("off", "on", "REPL handed over")[small] if small < 3 else ""
    if kind == R.AUTH_FAIL:
        return _name(R.AUTH_REASONS, small)
    if kind == R.REFILL:
        return f"{small} doses left"
    if kind == R.FILLED:
        return f"{small} compartments"
    if kind == R.LOG_OVERFLOW:
        return f"seq {occ}..{detail} dropped"
    if kind in (R.FAULT, R.FAULT_CLEARED) or kind in R.FAULT_KINDS:
        return f"E{small}" if small else ""
    if kind == R.AUTH_FAIL:
        return _name(R.AUTH_REASONS, small)
    if kind == R.SETTINGS:
        tone = _name(("normal", "low"), small >> 4 & 15)
        return f"volume {small & 15}, tone {tone}, language {_name(('da', 'en'), small >> 8)}"
    return ""


def decode_records(blob: bytes) -> list[Record]:
    """Whole 24-byte records from a log.read reply (after base64); ProtocolError if any is
    cut short or fails its CRC."""
    if len(blob) % logrec.RECORD_SIZE:
        raise ProtocolError(f"log.read: {len(blob)} bytes are not whole records")
    out: list[Record] = []
    for off in range(0, len(blob), logrec.RECORD_SIZE):
        r = logrec.decode(blob, off)
        if r is None:
            raise ProtocolError(f"log.read: record {off // logrec.RECORD_SIZE} fails its CRC")
        out.append(r)
    return out


def decode_rows(
    records: Iterable[Record], doc: dict[str, Any] | None, doc_hash: str | None = None
) -> list[LogRow]:
    """Records as rows, dose indexes resolved to ids where the record's schedule is `doc`.

    A record's dose index belongs to the schedule in force when it was written. Every boot
    logs the schedule it loaded (a SCHEDULE record with its hash prefix), and a schedule only
    changes by a reboot, so: records after a SCHEDULE record carrying `doc`'s hash prefix are
    `doc`'s; records before the first BOOT of a run that reaches the device's newest record
    are `doc`'s if there is no BOOT among them at all; anything else keeps only its index."""
    recs = list(records)
    if doc is not None and doc_hash is None:
        doc_hash = content_hash(doc)
    mine = logrec.hash_prefix(doc_hash) if doc is not None else None
    ours = doc is not None and not any(r[2] == logrec.BOOT for r in recs)
    ids = [d["id"] for d in doc["dose"]] if doc else []
    prns = [p["id"] for p in doc["prn"]] if doc else []
    rows = []
    for seq, utc, kind, occ, dose, detail, small in recs:
        if kind == logrec.BOOT or kind in (logrec.NO_SCHEDULE, logrec.NVS_MODE):
            ours = False
        elif kind == logrec.SCHEDULE and detail:
            ours = detail == mine
        name = None
        if ours and dose is not None:
            table = prns if kind == logrec.PRN else ids
            name = table[dose] if dose < len(table) else None
        rows.append(
            LogRow(
                seq,
                utc or None,
                _name(logrec.NAMES, kind),
                name,
                dose,
                occ,
                detail,
                small,
                _note(kind, occ, detail, small),
            )
        )
    return rows


def format_rows(rows: Sequence[LogRow], fmt: str) -> str:
    """Rows as csv (with a header), a JSON array, or JSON lines."""
    if fmt == "json":
        return json.dumps([r.as_json() for r in rows], ensure_ascii=False, indent=1) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r.as_json(), ensure_ascii=False) + "\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(LOG_FIELDS)
        for r in rows:
            d = r.as_json()
            w.writerow(["" if d[k] is None else d[k] for k in LOG_FIELDS])
        return buf.getvalue()
    raise InputError(f'"{fmt}" is not a log format (csv, json, jsonl)')


def write_rows(rows: Sequence[LogRow], fmt: str, path: str | None, stream: IO[str]) -> None:
    """Write the rows to `path` (or `stream` if None), flushed and synced to disk: once this
    returns, the data survives a power cut (or the write raised)."""
    text = format_rows(rows, fmt)
    if path is None:
        try:
            stream.write(text)
            stream.flush()
        except OSError as e:
            raise InputError(
                f"the log could not be written to stdout ({e.strerror or e}); "
                "nothing was acknowledged"
            ) from None
        with contextlib.suppress(OSError, AttributeError, ValueError, io.UnsupportedOperation):
            os.fsync(stream.fileno())  # a pipe or a terminal cannot be synced: nothing to do
        return
    try:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise InputError(
            f"{path}: cannot be written ({e.strerror or e}); nothing was acknowledged"
        ) from None


@dataclass
class LogRead:
    records: list[Record]  # ascending seq, no duplicates
    start: int
    covered: int  # every seq in [start, covered) was read or does not exist on the device
    last: int  # the device's last durable seq


def read_log(
    dev: DeviceLike,
    start: int,
    last: int,
    *,
    n: int = LOG_READ_MAX,
    window: int = 2,
    on_progress: Callable[[int], None] | None = None,
) -> LogRead:
    """Records start..last with pipelined log.read requests.

    Requests are issued ahead with the next `from` predicted as from + n; each reply says
    which span it covers ([from, next): the records in it, or none exist). Records are
    deduplicated by seq; where a prediction missed (a gap in the log), the next round asks
    again from the first seq not yet covered."""
    recs: dict[int, Record] = {}
    spans: list[tuple[int, int]] = []
    cursor = start
    while cursor <= last:
        count = min(LOG_BATCH, -(-(last - cursor + 1) // n))
        reqs = [("log.read", {"from": cursor + k * n, "n": n}) for k in range(count)]
        before = cursor
        for (_, args), rep in zip(reqs, dev.call_many(reqs, window=window), strict=False):
            try:
                nxt = int(rep["next"])
                blob = base64.b64decode(rep.get("recs") or "", validate=True)
            except (KeyError, TypeError, ValueError, binascii.Error) as e:
                raise ProtocolError(f"log.read: unexpected reply ({e})") from None
            new = 0
            for r in decode_records(blob):
                if r[0] >= start and r[0] not in recs:
                    recs[r[0]] = r
                    new += 1
            if nxt > args["from"]:
                spans.append((args["from"], nxt))
            moved = True
            while moved:
                moved = False
                for s, e in spans:
                    if s <= cursor < e:
                        cursor = e
                        moved = True
            if on_progress is not None and new:
                on_progress(new)
        if cursor == before:
            raise ProtocolError(f"log.read: the device made no progress at seq {cursor}")
    out = [recs[s] for s in sorted(recs)]
    return LogRead(out, start, cursor, last)


@dataclass
class LogPull:
    rows: list[LogRow]
    start: int
    last: int
    acked: int  # what the device had acknowledged before
    ack_to: int | None  # the seq to acknowledge once the rows are safely written, or None
    schedule: str | None  # hash of the schedule used to name doses


def pull_log(
    dev: DeviceLike,
    since: int | None = None,
    *,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LogPull:
    """Read the device's log from `since` (default: the first record not acknowledged)."""
    if since is not None and since < 1:
        raise InputError(f"--since {since}: sequence numbers start at 1")
    info = dev.call("info")
    log = info.get("log")
    if not isinstance(log, dict):
        raise DosisError("the dispenser's dose log is not available (storage fault E9)")
    acked = int(log.get("acked") or 0)
    last = int(log.get("last") or 0)
    start = since if since is not None else acked + 1
    h, doc = device_schedule(dev)
    if on_total is not None:
        on_total(max(0, last - start + 1))
    got = read_log(dev, start, last, on_progress=on_progress)
    rows = decode_rows(got.records, doc, h)
    # Acknowledge only what continues from the device's acknowledged point: acking past
    # records never read (--since beyond it) would let the device delete them.
    ack_to = None
    if start <= acked + 1:
        done = [r.seq for r in rows if r.seq < got.covered]
        if done and max(done) > acked:
            ack_to = max(done)
    return LogPull(rows, start, last, acked, ack_to, h)


def ack_log(dev: DeviceLike, seq: int) -> int:
    """Tell the device records up to `seq` are safely stored; what it now has acknowledged."""
    r = dev.call("log.ack", {"seq": seq})
    return int(r.get("acked", seq))


def export_log(
    dev: DeviceLike,
    fmt: str,
    path: str | None,
    stream: IO[str],
    *,
    since: int | None = None,
    ack: bool = True,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[LogPull, int | None]:
    """Pull, write (flushed and synced), and only then acknowledge. (pull, acked seq or None)."""
    if fmt not in ("csv", "json", "jsonl"):
        raise InputError(f'"{fmt}" is not a log format (csv, json, jsonl)')
    got = pull_log(dev, since, on_total=on_total, on_progress=on_progress)
    write_rows(got.rows, fmt, path, stream)
    if not ack or got.ack_to is None:
        return got, None
    return got, ack_log(dev, got.ack_to)


# -- live events -----------------------------------------------------------------------------


@contextlib.contextmanager
def monitoring(dev: DeviceLike) -> Iterator[Iterator[dict[str, Any]]]:
    """Subscribe to the device's events for the `with` block; unsubscribed on the way out
    (Ctrl-C included), as far as the link still allows."""
    dev.call("monitor", {"on": True})
    try:
        yield dev.events()
    finally:
        with contextlib.suppress(DosisError):
            dev.call("monitor", {"on": False}, timeout=2.0)


def format_event(ev: dict[str, Any], zone: tz.Tz | None = None) -> dict[str, Any]:
    """An event with its local time added ("local": ISO with offset, or None)."""
    t = ev.get("t")
    out = dict(ev)
    out["local"] = _local_iso(t, zone) if isinstance(t, int) and t > 0 else None
    return out


def event_line(ev: dict[str, Any]) -> str:
    """One line for a human: local time, kind, dose, detail."""
    when = (ev.get("local") or "time unknown")[:19].replace("T", " ")
    parts = [when, f"{ev.get('ev', '?'):<14}", f"{ev.get('dose') or '-':<16}"]
    detail = ev.get("detail")
    if detail not in (None, ""):
        parts.append(str(detail))
    return "  ".join(parts).rstrip()
