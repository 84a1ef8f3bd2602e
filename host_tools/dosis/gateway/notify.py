"""Delivery of alerts: an outbox of deliveries (webhook, e-mail) that gateways claim and send.

A delivery row is claimed by one gateway with a conditional UPDATE (owner + claim expiry), so
with several gateways each delivery is sent by exactly one of them. A failure is retried with
exponential backoff (1 s .. 5 min) up to MAX_ATTEMPTS; a gateway that dies holding a claim
loses it when the claim expires (then the delivery may be sent a second time: at-least-once
only across such a crash).

Content: alert id, kind, device id, the citizen's pseudonym, the time (Copenhagen and UTC), a
short Danish text and how to acknowledge. No names, no CPR numbers: the pseudonym is all.
"""

from __future__ import annotations

import datetime as _dt
import json
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from .db import DB
from .escalate import TEXT_DA, local_time
from .httpack import ack_token

MAX_ATTEMPTS = 20
CLAIM_S = 60.0
WEBHOOK_TIMEOUT_S = 5.0


def content(alert: dict[str, Any], citizen: str, ack_url: str | None = None) -> dict[str, Any]:
    """The JSON document of an alert (the webhook's body; the e-mail says the same)."""
    created = float(alert["created"])
    doc = {
        "alert": alert["id"],
        "kind": alert["kind"],
        "device": alert["device_id"],
        "citizen": citizen,
        "text": TEXT_DA.get(alert["kind"], alert["kind"]),
        "detail": alert["detail"],
        "time_local": local_time(created) + " (Europe/Copenhagen)",
        "time_utc": _dt.datetime.fromtimestamp(created, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ack": f"dosis fleet ack {alert['id']}",
    }
    if ack_url:
        doc["ack_url"] = ack_url
    return doc


def email_message(doc: dict[str, Any], sender: str, to: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = f"[Dosis] {doc['text']} - {doc['citizen']} (alarm {doc['alert']})"
    m.set_content(
        f"{doc['text']}\n"
        f"\n"
        f"Borger (pseudonym): {doc['citizen']}\n"
        f"Dispenser: {doc['device']}\n"
        f"Detaljer: {doc['detail']}\n"
        f"Tidspunkt: {doc['time_local']} / {doc['time_utc']}\n"
        f"Alarm nr.: {doc['alert']} ({doc['kind']})\n"
        f"\n"
        f"Kvittér for alarmen med: {doc['ack']}\n"
        + (f"eller her: {doc['ack_url']}\n" if doc.get("ack_url") else "")
    )
    return m


class Notifier:
    """Claims due deliveries in `db` as `owner` and sends them."""

    def __init__(
        self,
        db: DB,
        owner: str,
        *,
        smtp: str | None = None,
        mail_from: str = "dosis@localhost",
        log: Callable[[str], None] = lambda s: None,
        ack_base: str | None = None,
    ) -> None:
        self.db = db
        self.ack_base = ack_base  # e.g. "https://gw.example:8081": links to the HTTP ack
        self._secret: bytes | None = None
        self.owner = owner
        self.smtp = smtp
        self.mail_from = mail_from
        self.log = log

    def due(self, now: float) -> list[int]:
        rows = self.db.q(
            "SELECT id FROM deliveries WHERE state = 'pending' AND next_at <= ? "
            "AND (claim_until IS NULL OR claim_until < ?) ORDER BY id LIMIT 50",
            (now, now),
        )
        return [int(r[0]) for r in rows]

    def claim(self, delivery_id: int, now: float) -> bool:
        with self.db.tx() as c:
            n = c.x(
                "UPDATE deliveries SET owner = ?, claim_until = ?, attempts = attempts + 1 "
                "WHERE id = ? AND state = 'pending' AND next_at <= ? "
                "AND (claim_until IS NULL OR claim_until < ?)",
                (self.owner, now + CLAIM_S, delivery_id, now, now),
            )
        return n == 1

    def run_once(self, now: float | None = None) -> int:
        """Send every due delivery this gateway can claim; the number sent."""
        now = time.time() if now is None else now
        sent = 0
        for did in self.due(now):
            if self.claim(did, now):
                sent += self._deliver(did)
        return sent

    def _deliver(self, did: int) -> int:
        with self.db.tx(write=False) as c:
            row = c.one(
                "SELECT d.channel, d.target, d.attempts, a.id, a.device_id, a.kind, a.cause, "
                "a.created, a.detail, v.citizen FROM deliveries d "
                "JOIN alerts a ON a.id = d.alert_id JOIN devices v ON v.device_id = a.device_id "
                "WHERE d.id = ?",
                (did,),
            )
        if row is None:
            return 0
        channel, target, attempts = row[0], row[1], int(row[2])
        cols: tuple[str, ...] = ("id", "device_id", "kind", "cause", "created", "detail")
        alert: dict[str, Any] = dict(zip(cols, row[3:9], strict=True))
        ack_url = None
        if self.ack_base:
            if self._secret is None:
                self._secret = self.db.secret()
            token = ack_token(self._secret, int(alert["id"]))
            ack_url = f"{self.ack_base.rstrip('/')}/alerts/{alert['id']}/ack?t={token}"
        doc = content(alert, row[9], ack_url)
        try:
            if channel == "webhook":
                self._webhook(target, doc)
            else:
                self._email(target, doc)
        except Exception as e:  # every failure is retried; the message says what went wrong
            err = f"{type(e).__name__}: {e}"[:200]
            now = time.time()
            final = attempts >= MAX_ATTEMPTS
            with self.db.tx() as c:
                c.x(
                    "UPDATE deliveries SET state = ?, next_at = ?, claim_until = NULL, "
                    "last_error = ? WHERE id = ? AND owner = ?",
                    (
                        "failed" if final else "pending",
                        now + min(300.0, 2.0 ** (attempts - 1)),
                        err,
                        did,
                        self.owner,
                    ),
                )
            self.log(
                f"alert {alert['id']}: {channel} delivery failed (attempt {attempts}"
                f"{', giving up' if final else ''}): {err}"
            )
            return 0
        with self.db.tx() as c:
            c.x(
                "UPDATE deliveries SET state = 'sent', sent_at = ?, claim_until = NULL, "
                "last_error = NULL WHERE id = ? AND owner = ?",
                (time.time(), did, self.owner),
            )
        self.log(f"alert {alert['id']} ({alert['kind']}, {alert['device_id']}): {channel} sent")
        return 1

    def _webhook(self, url: str, doc: dict[str, Any]) -> None:
        req = urllib.request.Request(
            url,
            data=json.dumps(doc, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "dosis"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=WEBHOOK_TIMEOUT_S) as resp:
            if not 200 <= resp.status < 300:
                raise OSError(f"HTTP {resp.status}")

    def _email(self, to: str, doc: dict[str, Any]) -> None:
        if not self.smtp:
            raise OSError("no SMTP server: start the gateway with --smtp HOST:PORT")
        host, _, port = self.smtp.rpartition(":")
        with smtplib.SMTP(host or "localhost", int(port or 25), timeout=10) as s:
            s.send_message(email_message(doc, self.mail_from, to))
