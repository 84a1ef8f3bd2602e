"""MQTT over TLS on the real MicroPython VM: dispenser.mqtt with dispenser.tls.context against
the TLS listener of a private mosquitto (tests/host/mosq.py), with a PKI made at test time
(tests/host/tlsca.py).

tests/mp/mqtt_tls_probe.py does the device side; next to it a 10 ms "dose loop" measures the
longest the client held the event loop, during the handshake ("hsgap") and overall ("gap").
"""

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pytest's importlib mode: no path
import mprobe  # noqa: E402
from mosq import MOSQUITTO, Broker, Peer  # noqa: E402
from tlsca import make_pki  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "mp" / "mqtt_tls_probe.py"
MAX_GAP_MS = 100  # as for plain MQTT (tests/host/test_mqtt_client.py); measured ~17 ms
CONNECT_TIMEOUT_MS = 3000  # the probe's connect timeout

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto") or os.path.exists(MOSQUITTO)),
    reason="mosquitto is not installed (.ci/run installs it)",
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path, pki):
    b = Broker(tmp_path, tls=pki).start()
    yield b
    b.kill()


def probe(host, port, cafile, scenario, *creds):
    """Run the probe to its end; its output as {first word: [the other words]}, checked."""
    bad = ("error", "Traceback", "unexpected")
    lines = mprobe.run(PROBE, host, port, cafile, scenario, *creds, bad=bad)
    got = {line.split()[0]: line.split()[1:] for line in lines}
    assert int(got["gap"][0]) < MAX_GAP_MS, lines
    assert int(got["hsgap"][0]) < MAX_GAP_MS, lines
    return got, lines


def refused(got, lines):
    kind, ms, connected = got["failed"][:3]
    assert int(ms) <= CONNECT_TIMEOUT_MS + 200, lines  # an answer, not a hang
    assert connected == "False", lines
    assert "alive" in got, lines
    return kind, " ".join(got["failed"][3:])


def test_tls_connect_subscribe_publish_receive(broker, pki):
    peer = Peer(broker, "tls-peer", tls=True)
    peer.subscribe("dosis/tls/up", qos=1)
    got, lines = probe("127.0.0.1", broker.tls_port, pki.ca_pem, "ok")
    assert got["connected"][0] == "False", lines
    assert got["subscribed"] == ["1"], lines
    assert got["msg"] == ["dosis/tls/down", "echo"], lines
    assert peer.collect(1, timeout=5) == [("dosis/tls/up", b"over tls")]
    peer.close()
    ms, hsgap, gap = got["connected"][1], got["hsgap"][0], got["gap"][0]
    ctx, conn = got["heap"]
    print(
        f"TLS connect {ms} ms, loop gap during the handshake {hsgap} ms (overall {gap} ms), "
        f"MicroPython heap: context {ctx} B, connection {conn} B"
    )


def test_tls_by_host_name_with_a_der_ca(broker, pki):
    first = socket.getaddrinfo("localhost", broker.tls_port, 0, socket.SOCK_STREAM)[0]
    if first[0] != socket.AF_INET:  # the probe dials the first address; the broker is IPv4
        pytest.skip("localhost resolves to IPv6 first here")
    got, lines = probe("localhost", broker.tls_port, pki.ca_der, "ok")
    assert got["msg"] == ["dosis/tls/down", "echo"], lines


def test_wrong_ca_fails_cleanly(broker, pki):
    got, lines = probe("127.0.0.1", broker.tls_port, pki.wrong_ca_pem, "refused")
    kind, why = refused(got, lines)
    assert kind in ("OSError", "ValueError"), lines
    assert "VERIFY_FAILED" in why or "not correctly signed" in why, lines


def test_certificate_for_another_name_is_refused(tmp_path, pki):
    b = Broker(tmp_path, tls=pki.misnamed()).start()  # signed by the right CA
    try:
        for host in ("127.0.0.1", "localhost"):
            got, lines = probe(host, b.tls_port, pki.ca_pem, "refused")
            kind, why = refused(got, lines)
            assert kind in ("OSError", "ValueError"), lines
            assert "VERIFY_FAILED" in why or "does not match" in why, lines
    finally:
        b.kill()


def test_plain_client_cannot_talk_to_the_tls_port(broker):
    got, lines = probe("127.0.0.1", broker.tls_port, "-", "refused")
    kind, _ = refused(got, lines)
    assert kind in ("MQTTError", "OSError"), lines


def test_tls_client_on_the_plain_port_fails(broker, pki):
    got, lines = probe("127.0.0.1", broker.port, pki.ca_pem, "refused")
    kind, _ = refused(got, lines)
    assert kind in ("MQTTError", "OSError"), lines


def test_credentials_and_acl_over_tls(tmp_path, pki):
    b = Broker(
        tmp_path,
        tls=pki,
        users={"dispenser-1": "s3cret", "gateway": "g4te"},
        acl=["pattern readwrite dosis/%u/#", "user gateway", "topic read dosis/#"],
    ).start()
    try:
        with pytest.raises(RuntimeError, match="CONNACK"):
            Peer(b, "anonymous")
        with pytest.raises(RuntimeError, match="CONNACK"):
            Peer(b, "bad", user="dispenser-1", password="wrong", tls=True)
        gw = Peer(b, "gw", user="gateway", password="g4te", tls=True)
        gw.subscribe("dosis/#", qos=1)
        dev = Peer(b, "dev", user="dispenser-1", password="s3cret", tls=True)
        dev.publish("dosis/elsewhere/x", "denied", qos=1)  # acknowledged, then dropped
        dev.publish("dosis/dispenser-1/x", "allowed", qos=1)
        assert gw.collect(2, timeout=2) == [("dosis/dispenser-1/x", b"allowed")]
        dev.close()
        gw.close()
        got, lines = probe("127.0.0.1", b.tls_port, pki.ca_pem, "refused", "dispenser-1", "no")
        kind, why = refused(got, lines)
        # mosquitto 2 answers a wrong password with code 5 (not authorised), not 4
        assert kind == "MQTTError" and ("not authorised" in why or "password" in why), lines
    finally:
        b.kill()


def test_a_server_that_never_answers_the_handshake_times_out(pki):
    with socket.socket() as srv:  # accepts (the kernel does), then says nothing
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        got, lines = probe("127.0.0.1", srv.getsockname()[1], pki.ca_pem, "refused")
    kind, _ = refused(got, lines)
    assert kind == "TimeoutError", lines
    assert int(got["failed"][1]) >= CONNECT_TIMEOUT_MS - 50, lines
