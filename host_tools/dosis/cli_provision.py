"""`dosis provision wifi|mqtt|ntp|show`: put a paired dispenser online (dosis.provision)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from . import provision as prov
from .cli_device import _device, _say, json_option, port_option
from .errors import InputError
from .gateway.fleet import parse_duration


def _duration_s(text: str) -> int:
    return round(parse_duration(text))


def _read_secret(path: str) -> str:
    """The first line of `path`: a password kept in a file, never on the command line."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--password-file {path}: cannot be read ({e})") from None


def _show(state: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(state, ensure_ascii=False))
        return
    w = state.get("wifi")
    m = state.get("mqtt")
    click.echo(
        "wifi     "
        + (w["ssid"] + (" (password set)" if w.get("psk_set") else " (open)") if w else "-")
    )
    if state.get("wifi_state"):
        click.echo(f"         {state['wifi_state']}")
    if m:
        scheme = "mqtts" if m["tls"] else "mqtt (insecure, lab)"
        user = f", user {m['user']}" if m.get("user") else ""
        click.echo(f"broker   {scheme} {m['host']}:{m['port']}{user}, heartbeat {m.get('hb')} s")
    else:
        click.echo("broker   -")
    up = state.get("uplink")
    if state.get("uplink_off"):
        click.echo(f"uplink   off: {state['uplink_off']}")
    if up:
        conn = (
            "connected" if up.get("connected") else f"not connected ({up.get('error') or '...'})"
        )
        click.echo(
            f"uplink   {conn}; {up.get('published', 0)} batches, "
            f"{up.get('heartbeats', 0)} heartbeats"
        )
    click.echo(f"ntp      {', '.join(state.get('ntp') or []) or '-'}")


@click.group()
def provision() -> None:
    """Put a paired dispenser online: Wi-Fi, the care team's broker, NTP.

    \b
    Passwords and keys go to the device and are never shown again; 'dosis provision show'
    says only whether they are set."""


@provision.command("wifi")
@click.option("--ssid", required=True, help="The Wi-Fi network's name.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    help="Read the Wi-Fi password from this file [default: ask, or DOSIS_WIFI_PASSWORD].",
)
@click.option("--open-network", is_flag=True, help="The network has no password.")
@port_option
@json_option
def wifi(
    ssid: str, password_file: str | None, open_network: bool, port: str | None, as_json: bool
) -> None:
    """Set the Wi-Fi network (the password is never readable back)."""
    if open_network:
        psk = ""
    elif password_file:
        psk = _read_secret(password_file)
    elif os.environ.get("DOSIS_WIFI_PASSWORD") is not None:
        psk = os.environ["DOSIS_WIFI_PASSWORD"]
    else:
        psk = click.prompt("Wi-Fi password", hide_input=True, err=True)
    with _device(port) as dev:
        state = prov.wifi(dev, ssid, psk)
    _say(f"Wi-Fi set: {ssid}")
    _show(state, as_json)


@provision.command("mqtt")
@click.option(
    "--broker",
    required=True,
    metavar="URL",
    help="mqtts://HOST[:8883] (or mqtt://HOST for a lab).",
)
@click.option(
    "--ca",
    type=click.Path(dir_okay=False),
    help="The CA certificate (PEM) that signed the broker.",
)
@click.option("--user", help="The device's MQTT user name at the broker.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    help="The device's MQTT password, from a file.",
)
@click.option(
    "--insecure-lab", is_flag=True, help="Allow plain mqtt:// (no TLS): a lab broker only."
)
@click.option(
    "--heartbeat", default="5m", show_default=True, help="How often the device reports its health."
)
@click.option(
    "--backoff",
    nargs=2,
    type=float,
    metavar="LOW HIGH",
    help="Reconnect backoff in seconds [default: 1 60].",
)
@click.option(
    "--resend-after",
    default="1m",
    show_default=True,
    help="Send again from the gateway's last ack when it has not moved for this long.",
)
@click.option("--forget", is_flag=True, help="Take the device off the broker.")
@port_option
@json_option
def mqtt(
    broker: str,
    ca: str | None,
    user: str | None,
    password_file: str | None,
    insecure_lab: bool,
    heartbeat: str,
    backoff: tuple[float, float] | None,
    resend_after: str,
    forget: bool,
    port: str | None,
    as_json: bool,
) -> None:
    """Connect the device to the care team's broker and give it its uplink key.

    \b
    The uplink key signs every message between the device and the gateway; it is kept in
    this computer's keystore, for 'dosis fleet enroll DEVICE'. Give the broker as an IP
    address: a name lookup holds up the device's loop while it waits for DNS."""
    b = prov.parse_broker(broker)
    hb = _duration_s(heartbeat)
    if not 10 <= hb <= 3600:
        raise InputError("--heartbeat must be between 10s and 1h")
    resend = _duration_s(resend_after)
    if not 5 <= resend <= 3600:
        raise InputError("--resend-after must be between 5s and 1h")
    ca_pem = prov.read_ca(ca) if ca else None
    password = None
    if password_file:
        password = _read_secret(password_file)
    if not prov.is_ip(b.host):
        _say(
            f"note: {b.host} is a name: the device resolves it at every connect (blocking); "
            "prefer an IP address"
        )
    with _device(port) as dev:
        if forget:
            state = prov.forget_mqtt(dev)
            _say("broker removed: the device keeps its log until it is online again")
        else:
            state = prov.mqtt(
                dev,
                b,
                ca_pem=ca_pem,
                insecure=insecure_lab,
                user=user,
                password=password,
                heartbeat_s=hb,
                backoff=backoff,
                resend_s=resend,
            )
            _say(
                f"broker set for {dev.device_id}; enrol it at the gateway: "
                f"dosis fleet enroll {dev.device_id} ..."
            )
    _show(state, as_json)


@provision.command("ntp")
@click.argument("servers", nargs=-1)
@click.option("--ntp-port", default=123, show_default=True, help="The servers' UDP port.")
@port_option
@json_option
def ntp(servers: tuple[str, ...], ntp_port: int, port: str | None, as_json: bool) -> None:
    """Set up to 4 NTP servers (IPv4); none turns NTP off.

    
    A step of the clock over 2 minutes needs two servers that agree: give at least two."""
    with _device(port) as dev:
        state = prov.ntp(dev, list(servers), ntp_port)
    _show(state, as_json)


@provision.command("show")
@port_option
@json_option
def show(port: str | None, as_json: bool) -> None:
    """The device's network settings and uplink state (never a password or key)."""
    with _device(port) as dev:
        state = prov.show(dev)
    _show(state, as_json)
