"""net.json: what `net.wifi` / `net.mqtt` / `net.ntp` accept, and that no secret is shown back.
Runs under pytest (CPython) and on MicroPython (tests/fw/mprun.py)."""

from dispenser import net

_CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
_KEY = "ab" * 32


def _refused(fn, arg, words):
    try:
        fn(arg)
    except net.Invalid as e:
        assert words in str(e), str(e)
        return
    raise AssertionError("accepted: %r" % (arg,))


def test_wifi_takes_wpa2_or_open_and_forgets_with_an_empty_ssid():
    assert net.check_wifi({"ssid": "Hjem", "psk": "hemmelig1"}) == {
        "ssid": "Hjem",
        "psk": "hemmelig1",
    }
    assert net.check_wifi({"ssid": "Cafe"}) == {"ssid": "Cafe", "psk": ""}
    assert net.check_wifi({"ssid": ""}) is None


def test_wifi_refuses_bad_input_with_the_rule():
    _refused(net.check_wifi, {"ssid": "x" * 33, "psk": "12345678"}, "ssid must be")
    _refused(net.check_wifi, {"ssid": "Hjem", "psk": "short"}, "8..63")
    _refused(net.check_wifi, {"ssid": "Hjem", "psk": "p" * 64}, "psk must be")
    _refused(net.check_wifi, {"ssid": "a\nb", "psk": "12345678"}, "control characters")
    _refused(net.check_wifi, {"ssid": 5}, "ssid must be")
    _refused(net.check_wifi, {}, "ssid must be")


def test_mqtt_needs_tls_with_a_ca_or_an_explicit_insecure_lab_setting():
    m = net.check_mqtt({"host": "10.0.0.5", "port": 8883, "tls": True, "ca": _CA, "ukey": _KEY})
    assert m["tls"] is True and m["ca"] == _CA and m["ukey"] == _KEY
    _refused(net.check_mqtt, {"host": "10.0.0.5", "port": 8883, "tls": True, "ukey": _KEY}, "ca")
    plain = {"host": "10.0.0.5", "port": 1883, "tls": False, "ukey": _KEY}
    _refused(net.check_mqtt, plain, "insecure: true")
    plain["insecure"] = True
    assert net.check_mqtt(plain)["tls"] is False
    assert net.check_mqtt({"host": ""}) is None


def test_mqtt_refuses_bad_ports_keys_and_hosts():
    base = {"host": "10.0.0.5", "port": 1883, "tls": False, "insecure": True, "ukey": _KEY}
    for k, v, words in (
        ("port", 0, "port"),
        ("port", 70000, "port"),
        ("port", True, "port"),
        ("port", "1883", "port"),
        ("ukey", "ab" * 31, "ukey"),
        ("ukey", "zz" * 32, "ukey"),
        ("ukey", None, "ukey"),
        ("host", "evil/host", "host"),
        ("host", "a b", "host"),
        ("tls", "yes", "tls"),
    ):
        args = dict(base)
        args[k] = v
        _refused(net.check_mqtt, args, words)
    big = dict(base, tls=True, ca=_CA + "x" * 5000)
    _refused(net.check_mqtt, big, "over")


def test_ntp_servers_are_ip_addresses():
    assert net.check_ntp(["192.0.2.1", "10.0.0.1"]) == ["192.0.2.1", "10.0.0.1"]
    assert net.check_ntp([]) == []
    _refused(net.check_ntp, ["pool.ntp.org"], "IPv4")
    _refused(net.check_ntp, ["256.1.1.1"], "IPv4")
    _refused(net.check_ntp, ["1.2.3.4"] * 5, "at most 4")
    _refused(net.check_ntp, "1.2.3.4", "list")


def test_public_view_never_contains_a_secret():
    cfg = {
        "wifi": {"ssid": "Hjem", "psk": "hemmelig-wifi"},
        "mqtt": {
            "host": "10.0.0.5",
            "port": 8883,
            "tls": True,
            "ca": _CA,
            "user": "dev1",
            "pass": "hemmelig-mqtt",
            "ukey": _KEY,
        },
        "ntp": ["192.0.2.1"],
    }
    pub = net.public(cfg)
    text = repr(pub)
    for secret in ("hemmelig-wifi", "hemmelig-mqtt", _KEY, "BEGIN"):
        assert secret not in text, secret
    assert pub["wifi"] == {"ssid": "Hjem", "psk_set": True}
    assert pub["mqtt"]["pass_set"] and pub["mqtt"]["ukey_set"] and pub["mqtt"]["user"] == "dev1"
    assert net.public(None) == {"wifi": None, "mqtt": None, "ntp": [], "ntp_port": 123}
