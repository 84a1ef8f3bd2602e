"""Schedule files on the host: load TOML or JSON, validate with the firmware's own code, plan.

API functions never print; they return values or raise `InputError` / `ScheduleError`.
"""

from __future__ import annotations

import datetime as _dt
import json
import tomllib
from pathlib import Path
from typing import Any

from dosiscore import civil, planner, tz
from dosiscore.schedule import ScheduleError, content_hash, validate

from .errors import InputError

MAX_FILE_BYTES = 256 * 1024

WEEKDAY_NAMES = {
    "da": ("man", "tir", "ons", "tor", "fre", "lør", "søn"),
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
}

__all__ = [
    "ScheduleError",
    "load_document",
    "load_schedule",
    "plan_rows",
    "summary",
    "today_in",
]


def _plain(value: Any) -> Any:
    """TOML's date and time values as the text the schedule format expects."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, _dt.datetime):
        return value.isoformat()  # not a valid date or time: validation says so
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, _dt.time):
        return value.strftime("%H:%M") if value.second == 0 else value.isoformat()
    return value


def load_document(path: str | Path) -> dict[str, Any]:
    """Parse a schedule file (TOML, or JSON if it ends in .json or starts with '{')."""
    p = Path(path)
    try:
        raw = p.read_bytes()[: MAX_FILE_BYTES + 1]
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, not a schedule file") from None
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(f"{p}: larger than {MAX_FILE_BYTES // 1024} KB; is this a schedule?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    text = text.removeprefix("\ufeff")
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            where = f"line {e.lineno}, column {e.colno}"
            raise InputError(f"{p}: not valid JSON: {e.msg} ({where})") from None
        except RecursionError:
            raise InputError(f"{p}: not valid JSON: nested too deeply") from None
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"{p}: not valid TOML: {e}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{p}: a schedule must be a table of settings, not a list or value")
    return _plain(doc)


def load_schedule(path: str | Path) -> dict[str, Any]:
    """The normalised schedule in a file; raises InputError or ScheduleError."""
    return validate(load_document(path))


def today_in(doc: dict[str, Any], now_utc: int) -> str:
    """The local date (YYYY-MM-DD) at `now_utc` in the schedule's time zone."""
    zone = tz.Tz(doc["tz_rule"])
    return civil.format_date(zone.local(now_utc) // civil.DAY)


def plan_rows(doc: dict[str, Any], first_day: str, days: int) -> list[dict[str, Any]]:
    """Occurrences on `days` local days from `first_day`, as rows for display or JSON."""
    z = civil.parse_date(first_day)
    if z is None:
        raise InputError(f'"{first_day}" is not a date (YYYY-MM-DD)')
    plan = planner.Plan(doc)
    # Local midnight to local midnight, through the same policy as doses.
    lo = plan.tz.utc(z * civil.DAY)
    hi = plan.tz.utc((z + days) * civil.DAY)
    by_id = {d["id"]: d for d in doc["dose"]}
    names = WEEKDAY_NAMES[doc["language"]]
    rows = []
    for utc, dose_id in planner.occurrences(plan, lo, hi):
        off = plan.tz.offset(utc)
        wall = utc + off
        dose = by_id[dose_id]
        rows.append(
            {
                "utc": civil.format_iso(utc),
                "local": civil.format_iso(utc, off),
                "dose": dose_id,
                "date": civil.format_date(wall // civil.DAY),
                "weekday": names[civil.weekday(wall // civil.DAY)],
                "time": civil.format_hhmm((wall % civil.DAY) // 60),
                "items": [dict(i) for i in dose["items"]],
                "reminder_only": dose["reminder_only"],
            }
        )
    return rows


def summary(doc: dict[str, Any]) -> str:
    """One line describing a valid schedule."""
    doses = doc["dose"]
    reminders = sum(1 for d in doses if d["reminder_only"])
    parts = [
        f"{len(doses) - reminders} dispensed dose{'s' if len(doses) - reminders != 1 else ''}"
    ]
    if reminders:
        parts.append(f"{reminders} reminder{'s' if reminders != 1 else ''}")
    if doc["prn"]:
        parts.append(f"{len(doc['prn'])} as-needed rule{'s' if len(doc['prn']) != 1 else ''}")
    span = f"from {doc['start']}" + (f" to {doc['end']}" if doc.get("end") else "")
    return f"valid: {', '.join(parts)}; {doc['timezone']}; {span}; hash {content_hash(doc)[:12]}"
