"""Escalation: care-team notices in the dose log (and the clock) become alerts.

Every alert has a cause key that is a function of what is stored (never of which gateway saw
it), and (device_id, cause) is UNIQUE: two gateways handling the same cause insert one alert,
and only the one whose INSERT took effect schedules its deliveries. The rules and keys:

    missed   NOTIFY or MISSED of an occurrence         dose:<occ>:<dose>
    jam      JAM, HOME_LOST                            jam:<seq>
    refill   REFILL, EMPTY                             refill:<seq of the last FILLED before>
    time     TIME_MISSING, or a heartbeat "tv": false  time:<seq of the last CLOCK_SET>
    mains    MAINS_LOST, no MAINS_RESTORED after it,
             older than mains_after_s (timer)          mains:<seq>
    offline  no authenticated message for
             offline_after_s (timer; never heard
             from: counted from the enrolment)         offline:<last_seen (or enrolled) in ms>

All functions run inside the caller's transaction (`db.Cur`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dosiscore import logrec

from .wire import Record

if TYPE_CHECKING:
    from .db import Cur

# The short Danish text of each alert kind (Danish is the default language).
TEXT_DA = {
    "missed": "Dosis ikke taget",
    "jam": "Dispenseren sidder fast",
    "refill": "Dispenseren skal genopfyldes",
    "time": "Dispenserens ur er ikke sat",
    "mains": "Strømmen har været afbrudt i over en time",
    "offline": "Dispenseren har mistet forbindelsen",
}
TEXT_EN = {
    "missed": "Dose not taken",
    "jam": "The dispenser is jammed",
    "refill": "The dispenser needs a refill",
    "time": "The dispenser's clock is not set",
    "mains": "Mains power lost for over an hour",
    "offline": "The dispenser is offline",
}


def local_time(utc: float) -> str:
    """`utc` as Copenhagen local time, "YYYY-MM-DD HH:MM"."""
    try:
        from zoneinfo import ZoneInfo

        tz: Any = ZoneInfo("Europe/Copenhagen")
    except Exception:  # no tz data: say UTC rather than fail an alert
        return _dt.datetime.fromtimestamp(utc, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _dt.datetime.fromtimestamp(utc, tz).strftime("%Y-%m-%d %H:%M")


def create_alert(c: Cur, device_id: str, kind: str, cause: str, detail: str, now: float) -> int:
    """Insert the alert for (device, cause) unless it exists; schedule its deliveries only if
    this call inserted it. Returns the new alert's id, or 0 if it existed already."""
    n = c.x(
        "INSERT INTO alerts (device_id, kind, cause, created, detail, responder) "
        "SELECT ?, ?, ?, ?, ?, responder FROM devices WHERE device_id = ? "
        "ON CONFLICT DO NOTHING",
        (device_id, kind, cause, now, detail[:200], device_id),
    )
    if n != 1:
        return 0
    row = c.one("SELECT id FROM alerts WHERE device_id = ? AND cause = ?", (device_id, cause))
    assert row is not None
    alert_id = int(row[0])
    resp = c.one(
        "SELECT r.webhook, r.email FROM devices d JOIN responders r ON r.name = d.responder "
        "WHERE d.device_id = ?",
        (device_id,),
    )
    if resp is not None:
        for channel, target in (("webhook", resp[0]), ("email", resp[1])):
            if target:
                c.x(
                    "INSERT INTO deliveries (alert_id, channel, target, next_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (alert_id, channel, target, now),
                )
    return alert_id


def _last_before(c: Cur, device_id: str, kind: int, seq: int) -> int:
    row = c.one(
        "SELECT MAX(seq) FROM events WHERE device_id = ? AND kind = ? AND seq < ?",
        (device_id, kind, seq),
    )
    return int(row[0]) if row is not None and row[0] is not None else 0


def _dose_detail(r: Record) -> str:
    d = "" if r.dose is None else f"dosis nr. {r.dose + 1}, "
    return f"{d}planlagt {local_time(r.occ)}" if r.occ else d.rstrip(", ")


def on_records(c: Cur, device_id: str, records: Sequence[Record], now: float) -> list[int]:
    """Alerts for newly stored records; the ids of the alerts this call created."""
    out: list[int] = []
    for r in records:
        a = 0
        if r.kind in (logrec.NOTIFY, logrec.MISSED) and r.occ:
            dose = 255 if r.dose is None else r.dose
            a = create_alert(c, device_id, "missed", f"dose:{r.occ}:{dose}", _dose_detail(r), now)
        elif r.kind in (logrec.JAM, logrec.HOME_LOST):
            what = "fastklemt" if r.kind == logrec.JAM else "karrusellen mistede sin position"
            a = create_alert(c, device_id, "jam", f"jam:{r.seq}", what, now)
        elif r.kind in (logrec.REFILL, logrec.EMPTY):
            filled = _last_before(c, device_id, logrec.FILLED, r.seq)
            what = "tom" if r.kind == logrec.EMPTY else f"{r.small} doser tilbage"
            a = create_alert(c, device_id, "refill", f"refill:{filled}", what, now)
        elif r.kind == logrec.TIME_MISSING:
            a = _time_alert(c, device_id, r.seq + 1, now)
        if a:
            out.append(a)
    return out


def _time_alert(c: Cur, device_id: str, before_seq: int, now: float) -> int:
    clock = _last_before(c, device_id, logrec.CLOCK_SET, before_seq)
    return create_alert(c, device_id, "time", f"time:{clock}", "ingen gyldig tid", now)


def on_health(c: Cur, device_id: str, doc: dict[str, Any], now: float) -> list[int]:
    if doc.get("tv") is False:
        a = _time_alert(c, device_id, 2**32, now)
        return [a] if a else []
    return []


def on_timer(
    c: Cur, now: float, *, offline_after_s: float, mains_after_s: float, offline: bool = True
) -> list[int]:
    """Offline and mains-lost alerts that are due (run periodically by every gateway)."""
    out: list[int] = []
    # A device enrolled but never heard from counts from its enrolment: a dispenser that
    # never gets online (wrong Wi-Fi, no memory for the uplink) must not stay invisible.
    offline_rows = c.all(
        "SELECT device_id, last_seen, enrolled FROM devices "
        "WHERE COALESCE(last_seen, enrolled) < ? ORDER BY device_id",
        (now - offline_after_s,),
    )
    for device_id, last_seen, enrolled in offline_rows if offline else []:
        seen = float(last_seen if last_seen is not None else enrolled)
        key = f"offline:{int(seen * 1000)}"
        if last_seen is None:
            text = f"aldrig set siden tilmelding {local_time(seen)}"
        else:
            text = f"sidst set {local_time(seen)}"
        a = create_alert(c, device_id, "offline", key, text, now)
        if a:
            out.append(a)
    rows = c.all(
        "SELECT e.device_id, e.seq, e.utc, e.stored FROM events e WHERE e.kind = ? "
        "AND NOT EXISTS (SELECT 1 FROM events r WHERE r.device_id = e.device_id "
        "AND r.kind IN (?, ?) AND r.seq > e.seq) "
        "AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.device_id = e.device_id "
        "AND a.cause = 'mains:' || e.seq) ORDER BY e.device_id, e.seq",
        (logrec.MAINS_LOST, logrec.MAINS_RESTORED, logrec.MAINS_LOST),
    )
    for device_id, seq, utc, stored in rows:
        since = float(utc) if utc else float(stored)
        if since < now - mains_after_s:
            a = create_alert(
                c, device_id, "mains", f"mains:{seq}", f"siden {local_time(since)}", now
            )
            if a:
                out.append(a)
    return out
