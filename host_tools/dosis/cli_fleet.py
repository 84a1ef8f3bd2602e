"""`dosis gateway` and `dosis fleet ...`: thin Click commands over dosis.gateway."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click

from .errors import InputError
from .gateway import fleet as fleet_api
from .gateway.db import DB, default_url, open_db

FORMATS = click.Choice(["table", "csv", "json"])


def _db_option(f: Any) -> Any:
    return click.option(
        "--db",
        "db_url",
        metavar="URL",
        help="sqlite:///PATH or postgresql://... [default: $DOSIS_DB, else "
        "sqlite:///~/.local/share/dosis/fleet.db].",
    )(f)


def _format_option(f: Any) -> Any:
    return click.option(
        "--format", "fmt", type=FORMATS, default="table", show_default=True, help="Output format."
    )(f)


def _open(db_url: str | None, create: bool = False) -> DB:
    return open_db(db_url or default_url(), must_exist=not create)


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.command()
@click.option(
    "--broker", required=True, metavar="URL", help="mqtts://HOST:8883 (or mqtt:// in a lab)."
)
@_db_option
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA file for mqtts.")
@click.option("--username", help="MQTT user name.")
@click.option(
    "--password", envvar="DOSIS_MQTT_PASSWORD", help="MQTT password [env DOSIS_MQTT_PASSWORD]."
)
@click.option("--group", default="dosis", show_default=True, help="Shared-subscription group.")
@click.option("--client-id", help="Stable MQTT client id [default: from host, group and db].")
@click.option("--smtp", metavar="HOST:PORT", help="SMTP server for e-mail alerts.")
@click.option("--mail-from", default="dosis@localhost", show_default=True)
@click.option("--offline-after", default="30m", show_default=True, help="Offline alert after.")
@click.option("--mains-after", default="1h", show_default=True, help="Mains-lost alert after.")
@click.option("--check-every", default="30s", show_default=True, help="Timer check period.")
@click.option(
    "--http",
    metavar="HOST:PORT",
    help="Serve alert acknowledgement links here (POST /alerts/ID/ack?t=TOKEN).",
)
@click.option(
    "--http-url", metavar="URL", help="The links' public base URL [default: http://HOST:PORT]."
)
def gateway(
    broker: str,
    db_url: str | None,
    ca: str | None,
    username: str | None,
    password: str | None,
    group: str,
    client_id: str | None,
    smtp: str | None,
    mail_from: str,
    offline_after: str,
    mains_after: str,
    check_every: str,
    http: str | None,
    http_url: str | None,
) -> None:
    """Receive dispensers' events over MQTT, store them, acknowledge, and raise alerts."""
    from .gateway.service import Gateway

    Gateway(
        broker,
        db_url or default_url(),
        group=group,
        ca=ca,
        username=username,
        password=password,
        client_id=client_id,
        offline_after_s=fleet_api.parse_duration(offline_after),
        mains_after_s=fleet_api.parse_duration(mains_after),
        check_every_s=max(0.05, fleet_api.parse_duration(check_every)),
        smtp=smtp,
        mail_from=mail_from,
        http=http,
        http_url=http_url,
    ).run_forever()


@click.group()
def fleet() -> None:
    """The care team's side: enrol dispensers, responders, status, alerts, reports."""


def uplink_key_from_keystore(device_id: str) -> bytes | None:
    """The device's uplink key from the local keystore (`dosis provision mqtt` put it there),
    or None."""
    from .keystore import Keystore

    return Keystore().uplink_key(device_id)


def _key_from_file(path: str) -> bytes:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror})") from None
    if len(raw) == 32:
        return raw
    text = raw.decode("ascii", "replace").strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    raise InputError(f"{path}: not a key (32 raw bytes or 64 hex digits)")


@fleet.command("enroll")
@click.argument("device_id")
@click.option("--citizen", required=True, help="The citizen's pseudonym (never a CPR number).")
@click.option("--responder", required=True, help="Who gets this citizen's alerts.")
@click.option("--key-hex", help="The device's uplink key, 64 hex digits.")
@click.option("--key-file", type=click.Path(dir_okay=False), help="A file holding the key.")
@_db_option
def enroll(
    device_id: str,
    citizen: str,
    responder: str,
    key_hex: str | None,
    key_file: str | None,
    db_url: str | None,
) -> None:
    """Enrol DEVICE_ID for a citizen and a responder (the key: --key-hex, --key-file or the
    local keystore, where 'dosis provision mqtt' put it)."""
    if key_hex and key_file:
        raise InputError("give --key-hex or --key-file, not both")
    if key_hex is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", key_hex.strip()):
            raise InputError("--key-hex must be 64 hex digits (32 bytes)")
        key = bytes.fromhex(key_hex.strip())
    elif key_file is not None:
        key = _key_from_file(key_file)
    else:
        found = uplink_key_from_keystore(device_id)
        if found is None:
            raise InputError(
                f"no uplink key for {device_id} in the keystore: run 'dosis provision mqtt' "
                "for it on this computer, or give --key-hex or --key-file"
            )
        key = found
    db = _open(db_url, create=True)
    new = db.enroll(device_id, citizen, responder, key)
    what = "enrolled" if new else "re-enrolled"
    _say(f"{device_id}: {what} for {citizen}, alerts to {responder}")


@fleet.group("responder")
def responder() -> None:
    """Who is told about alerts: a webhook and/or an e-mail address, and a target time."""


@responder.command("add")
@click.argument("name")
@click.option("--webhook", metavar="URL", help="POST alerts as JSON here.")
@click.option("--email", metavar="ADDR", help="E-mail alerts here.")
@click.option("--target", default="15m", show_default=True, help="Target response time.")
@_db_option
def responder_add(
    name: str, webhook: str | None, email: str | None, target: str, db_url: str | None
) -> None:
    """Add (or update) responder NAME."""
    if webhook is None and email is None:
        raise InputError("give --webhook URL and/or --email ADDR: alerts must go somewhere")
    minutes = fleet_api.parse_duration(target, "m") / 60
    new = _open(db_url, create=True).add_responder(
        name, webhook=webhook, email=email, target_min=minutes
    )
    _say(f"responder {name} {'added' if new else 'updated'} (target {minutes:g} min)")


@responder.command("list")
@_format_option
@_db_option
def responder_list(fmt: str, db_url: str | None) -> None:
    """The responders."""
    rows = _open(db_url).responders()
    click.echo(fleet_api.render(rows, ("name", "webhook", "email", "target_min"), fmt))


@fleet.command("status")
@_format_option
@_db_option
def status(fmt: str, db_url: str | None) -> None:
    """Per dispenser: pseudonym, last seen, today's doses taken/missed, open alerts."""
    rows = fleet_api.status(_open(db_url))
    click.echo(fleet_api.render(rows, fleet_api.STATUS_COLS, fmt))


@fleet.command("alerts")
@click.option("--open", "open_only", is_flag=True, help="Only alerts not yet acknowledged.")
@_format_option
@_db_option
def alerts(open_only: bool, fmt: str, db_url: str | None) -> None:
    """The alerts, oldest first."""
    rows = fleet_api.alerts(_open(db_url), open_only)
    click.echo(fleet_api.render(rows, fleet_api.ALERT_COLS, fmt))


@fleet.command("ack")
@click.argument("alert_id", type=click.IntRange(min=1))
@click.option("--by", help="Who answered (a staff initial or id; no citizen data).")
@_db_option
def ack(alert_id: int, by: str | None, db_url: str | None) -> None:
    """Acknowledge alert ALERT_ID; its response time is stored."""
    a = _open(db_url).ack_alert(alert_id, by or os.environ.get("USER"))
    _say(f"alert {alert_id} acknowledged after {fleet_api.fmt_seconds(a['response_s'])}")


@fleet.command("report")
@click.option("--from", "first", required=True, metavar="YYYY-MM-DD")
@click.option("--to", "last", required=True, metavar="YYYY-MM-DD")
@click.option(
    "--late-after", default="30m", show_default=True, help="Taken later than this is late."
)
@_format_option
@_db_option
def report(first: str, last: str, late_after: str, fmt: str, db_url: str | None) -> None:
    """Per citizen: doses on time, late, missed; alert response median and p90 vs target."""
    rows = fleet_api.report(
        _open(db_url), first, last, late_after_s=fleet_api.parse_duration(late_after)
    )
    click.echo(fleet_api.render(rows, fleet_api.REPORT_COLS, fmt))


@fleet.command("rejects")
@_format_option
@_db_option
def rejects(fmt: str, db_url: str | None) -> None:
    """Messages the gateway rejected (time, topic, reason)."""
    rows = _open(db_url).rejects()
    for r in rows:
        r["at"] = fleet_api.local_time(r["at"])
    click.echo(fleet_api.render(rows, ("at", "topic", "reason"), fmt))
