"""Acknowledging an alert over HTTP: the link in a webhook or an e-mail.

    GET  /alerts/<id>/ack?t=<token>   a small page with the alert and a button (never acks:
                                      mail scanners and link previews fetch GET links)
    POST /alerts/<id>/ack?t=<token>   acknowledges; "by" from a form field or a JSON body
                                      -> 200 JSON {"alert", "acked_at", "response_s"}

The token is HMAC-SHA256(fleet secret, "ack:<id>")[:16] in hex: a capability for that one
alert, so the link needs no login and cannot be guessed for another alert. 403 on a bad token,
404 for no such alert, 409 if it was acknowledged already.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import InputError
from .db import open_db
from .escalate import TEXT_DA, local_time


def ack_token(secret: bytes, alert_id: int) -> str:
    return hmac.new(secret, b"ack:%d" % int(alert_id), hashlib.sha256).hexdigest()[:32]


def parse_bind(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise InputError(f'--http "{text}": write HOST:PORT, e.g. 127.0.0.1:8081')
    return host or "127.0.0.1", int(port)


class AckServer:
    """The ack endpoint on `bind` ("host:port"; port 0 picks one), over its own DB connection."""

    def __init__(self, db_url: str | None, bind: str, log: Callable[[str], None]) -> None:
        self.db = open_db(db_url)
        self.secret = self.db.secret()
        self.log = log
        host, port = parse_bind(bind)
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="dosis-gw-http", daemon=True
        )

    def start(self) -> AckServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.db.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "dosis"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, doc: dict[str, Any]) -> None:
                self._reply(code, json.dumps(doc).encode(), "application/json")

            def _target(self) -> int | None:
                u = urllib.parse.urlsplit(self.path)
                parts = u.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "alerts" or parts[2] != "ack":
                    return None
                if not parts[1].isdigit() or len(parts[1]) > 12:
                    return None
                alert_id = int(parts[1])
                token = urllib.parse.parse_qs(u.query).get("t", [""])[0]
                if not hmac.compare_digest(
                    token.encode(), ack_token(srv.secret, alert_id).encode()
                ):
                    return -1
                return alert_id

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                alert_id = self._target()
                if alert_id is None or alert_id < 0:
                    self._json(404 if alert_id is None else 403, {"error": "not found"})
                    return
                try:
                    a = srv.db.alerts_by_id(alert_id)
                except InputError:
                    self._json(404, {"error": "no such alert"})
                    return
                text = html.escape(TEXT_DA.get(a["kind"]) or str(a["kind"]))
                state = (
                    f"Kvitteret {html.escape(local_time(a['acked_at']))}"
                    if a["acked_at"] is not None
                    else '<form method="post"><input name="by" placeholder="Initialer">'
                    ' <button type="submit">Kvittér</button></form>'
                )
                page = (
                    f'<!doctype html><meta charset="utf-8"><title>Alarm {alert_id}</title>'
                    f"<h1>{text}</h1><p>Alarm {alert_id} · {html.escape(a['device_id'])} · "
                    f"{html.escape(local_time(a['created']))}</p>{state}"
                )
                self._reply(200, page.encode(), "text/html; charset=utf-8")

            def do_POST(self) -> None:  # noqa: N802
                alert_id = self._target()
                if alert_id is None or alert_id < 0:
                    self._json(404 if alert_id is None else 403, {"error": "not found"})
                    return
                n = min(int(self.headers.get("Content-Length") or 0), 4096)
                raw = self.rfile.read(n)
                by = None
                try:
                    if "json" in (self.headers.get("Content-Type") or ""):
                        doc = json.loads(raw or b"{}")
                        by = doc.get("by") if isinstance(doc, dict) else None
                    else:
                        by = urllib.parse.parse_qs(raw.decode()).get("by", [None])[0]
                except (ValueError, UnicodeDecodeError):
                    self._json(400, {"error": "bad body"})
                    return
                by = str(by)[:64] if by else "http"
                try:
                    a = srv.db.ack_alert(alert_id, by)
                except InputError as e:
                    code = 409 if "already" in str(e) else 404
                    self._json(code, {"error": str(e)})
                    return
                except Exception as e:  # the database: say so, keep serving
                    srv.log(f"http ack of alert {alert_id} failed: {type(e).__name__}: {e}")
                    self._json(500, {"error": "internal"})
                    return
                srv.log(f"alert {alert_id} acknowledged over HTTP by {by}")
                self._json(
                    200,
                    {"alert": alert_id, "acked_at": a["acked_at"], "response_s": a["response_s"]},
                )

        return Handler
