"""Putting a dispenser online: Wi-Fi, the MQTT broker and the uplink key, NTP servers.

The device stores this in `net.json` (firmware/dispenser/net.py) and never gives a secret
back: `show()` reports whether a password or key is set, not what it is. The uplink key (32
random bytes that sign everything between the device and the gateway, docs/gateway.md) is
made here, kept in the keystore next to the pairing key, and reused when the broker changes,
so the gateway's enrolment (`dosis fleet enroll`) stays valid.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import InputError
from .keystore import Keystore

DEFAULT_PORTS = {"mqtts": 8883, "mqtt": 1883}
MAX_CA = 4096


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool


def parse_broker(url: str) -> Broker:
    """mqtts://HOST[:PORT] (TLS, 8883) or mqtt://HOST[:PORT] (plain, a lab only)."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise InputError(f"--broker {url}: {e}") from None
    if u.scheme not in DEFAULT_PORTS or not u.hostname:
        raise InputError(f"--broker {url}: give mqtts://HOST[:PORT] (or mqtt://... for a lab)")
    if u.username or u.password or (u.path not in ("", "/")) or u.query:
        raise InputError(f"--broker {url}: only scheme, host and port (credentials: --user)")
    return Broker(u.hostname, port or DEFAULT_PORTS[u.scheme], u.scheme == "mqtts")


def is_ip(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return False


def read_ca(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(MAX_CA + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--ca {path}: cannot be read ({e})") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise InputError(f"--ca {path}: not a PEM certificate (-----BEGIN CERTIFICATE-----)")
    if len(text) > MAX_CA:
        raise InputError(
            f"--ca {path}: over {MAX_CA} bytes: give only the CA that signed the broker"
        )
    return text


def wifi(dev: Any, ssid: str, psk: str) -> dict[str, Any]:
    if not 1 <= len(ssid) <= 32:
        raise InputError("--ssid must be 1..32 characters")
    if psk and not 8 <= len(psk) <= 63:
        raise InputError("the Wi-Fi password must be 8..63 characters (or empty: an open network)")
    return dev.call("net.wifi", {"ssid": ssid, "psk": psk})


def uplink_key(keystore: Keystore, device_id: str) -> str:
    """The device's uplink key (hex): the one already given to it, or a new one, kept first."""
    k = keystore.uplink_key(device_id)
    if k is not None:
        return k.hex()
    new = secrets.token_hex(32)
    keystore.set_uplink_key(device_id, new)
    return new


def mqtt(
    dev: Any,
    broker: Broker,
    *,
    ca_pem: str | None,
    insecure: bool,
    user: str | None = None,
    password: str | None = None,
    heartbeat_s: int | None = None,
    backoff: tuple[float, float] | None = None,
    resend_s: int | None = None,
) -> dict[str, Any]:
    """Give the device its broker, credentials and uplink key; the device's network state."""
    if broker.tls and ca_pem is None:
        raise InputError("mqtts:// needs --ca FILE: the CA certificate that signed the broker")
    if not broker.tls and not insecure:
        raise InputError(
            "mqtt:// is not encrypted: add --insecure-lab for a lab broker, or use mqtts://"
        )
    dev.hello()
    ukey = uplink_key(dev.keystore, dev.device_id)
    args: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "tls": broker.tls,
        "ukey": ukey,
    }
    if broker.tls:
        args["ca"] = ca_pem
    else:
        args["insecure"] = True
    if user is not None:
        args["user"] = user
        args["pass"] = password or ""
    if heartbeat_s is not None:
        args["hb"] = heartbeat_s
    if backoff is not None:
        args["backoff"] = list(backoff)
    if resend_s is not None:
        args["resend"] = resend_s
    return dev.call("net.mqtt", args)


def forget_mqtt(dev: Any) -> dict[str, Any]:
    return dev.call("net.mqtt", {"host": ""})


def ntp(dev: Any, servers: list[str], port: int = 123) -> dict[str, Any]:
    for s in servers:
        if not is_ip(s):
            raise InputError(
                f"{s}: give NTP servers as IPv4 addresses (a name lookup blocks the device)"
            )
    if len(servers) > 4:
        raise InputError("at most 4 NTP servers")
    if not 1 <= port <= 65535:
        raise InputError("--ntp-port must be 1..65535")
    args: dict[str, Any] = {"servers": servers}
    if port != 123:
        args["port"] = port
    return dev.call("net.ntp", args)


def show(dev: Any) -> dict[str, Any]:
    return dev.call("net.get")
