"""The care team's views of the fleet: status, alerts, report (queries over the gateway's DB).

Days are local days in Europe/Copenhagen. A dose counts by its scheduled instant (the record's
`occ`): taken on time (the first TAKEN at most `late_after_s` after it), taken late, or missed
(MISSED and never TAKEN). Response times are alert acknowledgement minus creation; the p90 is
the nearest-rank percentile (the smallest value with at least 90 % of values at or below it).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import re
import statistics
import time
from collections.abc import Sequence
from typing import Any

from dosiscore import logrec

from ..errors import InputError
from .db import DB
from .escalate import TEXT_DA, local_time

TZ_NAME = "Europe/Copenhagen"


def _tz() -> _dt.tzinfo:
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(TZ_NAME)
    except Exception:
        raise InputError(
            f"no time zone data for {TZ_NAME}: install tzdata (pip install tzdata)"
        ) from None


def day_bounds(first: str, last: str | None = None) -> tuple[float, float]:
    """UTC [start, end) of local days `first`..`last` (inclusive) in Copenhagen."""
    tz = _tz()
    try:
        d0 = _dt.date.fromisoformat(first)
        d1 = _dt.date.fromisoformat(last or first)
    except ValueError:
        raise InputError(f'"{first}" / "{last}": write dates as YYYY-MM-DD') from None
    if d1 < d0:
        raise InputError(f"--to {d1} is before --from {d0}")
    start = _dt.datetime.combine(d0, _dt.time(), tz).timestamp()
    end = _dt.datetime.combine(d1 + _dt.timedelta(days=1), _dt.time(), tz).timestamp()
    return start, end


def today(now: float | None = None) -> str:
    now = time.time() if now is None else now
    return _dt.datetime.fromtimestamp(now, _tz()).date().isoformat()


_DUR = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*\Z")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, default_unit: str = "s") -> float:
    """ "30m" -> 1800.0; "90" -> 90 default_units; InputError for anything else."""
    m = _DUR.match(str(text))
    if m is None:
        raise InputError(f'"{text}" is not a duration: write e.g. 45s, 30m, 1h or 2d')
    return float(m.group(1)) * _UNIT[m.group(2) or default_unit]


def nearest_rank(values: Sequence[float], pct: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(pct / 100 * len(s)) - 1)]


def fmt_seconds(s: float | None) -> str:
    """90.0 -> "1 min 30 s"."""
    if s is None:
        return "-"
    s = round(float(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _iso_local(t: Any) -> str:
    return "" if t is None else local_time(float(t))


# -- doses ------------------------------------------------------------------------------------


def dose_outcomes(
    db: DB, start: float, end: float, late_after_s: float = 1800
) -> dict[tuple[str, int, int], str]:
    """{(device, occ, dose): "on_time" | "late" | "missed"} for occurrences in [start, end)."""
    rows = db.q(
        "SELECT device_id, occ, COALESCE(dose, 255), kind, utc FROM events "
        "WHERE kind IN (?, ?) AND occ >= ? AND occ < ? ORDER BY seq",
        (logrec.TAKEN, logrec.MISSED, int(math.ceil(start)), int(math.ceil(end))),
    )
    taken: dict[tuple[str, int, int], int] = {}
    missed: set[tuple[str, int, int]] = set()
    for device_id, occ, dose, kind, utc in rows:
        k = (device_id, int(occ), int(dose))
        if kind == logrec.TAKEN:
            if k not in taken or (utc and utc < taken[k]):
                taken[k] = int(utc)
        else:
            missed.add(k)
    out: dict[tuple[str, int, int], str] = {}
    for k, utc in taken.items():
        out[k] = "late" if utc and utc - k[1] > late_after_s else "on_time"
    for k in missed:
        out.setdefault(k, "missed")
    return out


# -- views ------------------------------------------------------------------------------------

STATUS_COLS = (
    "device_id",
    "citizen",
    "responder",
    "last_seen",
    "status",
    "taken_today",
    "missed_today",
    "open_alerts",
)


def status(db: DB, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    start, end = day_bounds(today(now))
    outcomes = dose_outcomes(db, start, end)
    open_alerts: dict[str, int] = {}
    for device_id, n in db.q(
        "SELECT device_id, COUNT(*) FROM alerts WHERE acked_at IS NULL GROUP BY device_id"
    ):
        open_alerts[device_id] = int(n)
    out = []
    for d in db.devices():
        mine = [v for k, v in outcomes.items() if k[0] == d["device_id"]]
        out.append(
            {
                "device_id": d["device_id"],
                "citizen": d["citizen"],
                "responder": d["responder"],
                "last_seen": _iso_local(d["last_seen"]),
                "status": d["status"] or "",
                "taken_today": sum(1 for v in mine if v != "missed"),
                "missed_today": sum(1 for v in mine if v == "missed"),
                "open_alerts": open_alerts.get(d["device_id"], 0),
            }
        )
    return out


ALERT_COLS = (
    "id",
    "created",
    "kind",
    "text",
    "device_id",
    "citizen",
    "detail",
    "responder",
    "acked_at",
    "acked_by",
    "response_s",
    "deliveries",
)


def alerts(db: DB, open_only: bool = False) -> list[dict[str, Any]]:
    citizens = {d["device_id"]: d["citizen"] for d in db.devices()}
    sent: dict[int, list[str]] = {}
    for d in db.deliveries():
        sent.setdefault(int(d["alert_id"]), []).append(f"{d['channel']}:{d['state']}")
    out = []
    for a in db.alerts(open_only=open_only):
        out.append(
            {
                "id": a["id"],
                "created": _iso_local(a["created"]),
                "kind": a["kind"],
                "text": TEXT_DA.get(a["kind"], a["kind"]),
                "device_id": a["device_id"],
                "citizen": citizens.get(a["device_id"], ""),
                "detail": a["detail"],
                "responder": a["responder"] or "",
                "acked_at": _iso_local(a["acked_at"]),
                "acked_by": a["acked_by"] or "",
                "response_s": None if a["response_s"] is None else round(a["response_s"], 1),
                "deliveries": " ".join(sent.get(int(a["id"]), [])),
            }
        )
    return out


REPORT_COLS = (
    "citizen",
    "doses_on_time",
    "doses_late",
    "doses_missed",
    "alerts",
    "alerts_acked",
    "median_response_s",
    "p90_response_s",
    "target_s",
    "within_target",
)


def report(db: DB, first: str, last: str, *, late_after_s: float = 1800) -> list[dict[str, Any]]:
    """Per citizen over local days first..last: doses on time/late/missed and the alert
    response times (median, p90) against the responder's target."""
    start, end = day_bounds(first, last)
    devices = db.devices()
    citizen_of = {d["device_id"]: d["citizen"] for d in devices}
    targets = {r["name"]: float(r["target_min"]) * 60 for r in db.responders()}
    rows: dict[str, dict[str, Any]] = {}

    def row(citizen: str) -> dict[str, Any]:
        if citizen not in rows:
            rows[citizen] = {c: 0 for c in REPORT_COLS} | {
                "citizen": citizen,
                "_resp": [],
                "target_s": None,
            }
        return rows[citizen]

    for d in devices:
        r = row(d["citizen"])
        r["target_s"] = targets.get(d["responder"])
    for (device_id, _occ, _dose), outcome in dose_outcomes(db, start, end, late_after_s).items():
        row(citizen_of.get(device_id, "?"))[f"doses_{outcome}"] += 1
    for a in db.alerts():
        if not start <= float(a["created"]) < end:
            continue
        r = row(citizen_of.get(a["device_id"], "?"))
        r["alerts"] += 1
        if a["response_s"] is not None:
            r["alerts_acked"] += 1
            resp = float(a["response_s"])
            r["_resp"].append(resp)
            target = targets.get(a["responder"] or "", r["target_s"])
            if target is not None and resp <= target:
                r["within_target"] += 1
    out = []
    for citizen in sorted(rows):
        r = rows[citizen]
        resp = r.pop("_resp")
        r["median_response_s"] = round(statistics.median(resp), 1) if resp else None
        p90 = nearest_rank(resp, 90)
        r["p90_response_s"] = None if p90 is None else round(p90, 1)
        out.append(r)
    return out


# -- output -----------------------------------------------------------------------------------


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """rows as an aligned table, CSV (header first) or a JSON array."""
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in columns} for r in rows], ensure_ascii=False)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        return buf.getvalue().rstrip("\n")
    cells = [[str(c) for c in columns]] + [
        ["-" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )
