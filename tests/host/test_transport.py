"""The host side of the device link, without hardware: framing and HMAC (recomputed here from
docs/protocol.md), reply verification, replay, pipelining, the keystore, port discovery, the
serial link on a real pty, and the virtual dispenser's supervisor with a stand-in firmware."""

import errno
import hashlib
import hmac
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest
import serial
from click.testing import CliRunner

from dosis import ports, transport
from dosis.device import Device, frame_request, open_device
from dosis.errors import AuthError, DeviceError, DosisError, LinkError, ProtocolError
from dosis.keystore import Keystore
from dosis.simhost import VirtualDispenser, parse_start
from dosis.transport import SerialLink

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))
KEY_HEX = KEY.hex()
DEV = "dosis-0a1b2c"


# -- a fake dispenser on a fake link ------------------------------------------------------


def _mac(key, prefix):
    return hmac.new(key, prefix, hashlib.sha256).hexdigest()


class FakeDispenser:
    """Answers requests the way docs/protocol.md says, written independently of device.py:
    checks the request MAC over the bytes before ',"mac":' and signs its replies."""

    def __init__(self, key=KEY, device=DEV, proto=1):
        self.key = key
        self.device = device
        self.proto = proto
        self.last_ctr = 0
        self.requests = []  # parsed requests, as received
        self.lines = []  # raw request lines
        self.tamper = None  # function(raw reply bytes) -> bytes
        self.unsigned = False
        self.wrong_ctr = False
        self.always_replay = False
        self.pairing = True
        self.silent = False

    def handle(self, line):
        self.lines.append(line)
        req = json.loads(line)
        self.requests.append(req)
        cmd = req["cmd"]
        rid = req["id"]
        if self.silent:
            return []
        if cmd == "hello":
            data = {"proto": self.proto, "fw": "0.1.0", "device": self.device, "board": "sim"}
            return [self._reply({"id": rid, "ok": True, "data": data})]
        if cmd == "pair":
            if not self.pairing:
                return [self._reply({"id": rid, "ok": False, "err": "not_pairing", "msg": "x"})]
            key = hashlib.sha256(b"R" * 32 + bytes.fromhex(req["args"]["nonce"])).digest()
            self.key = key
            data = {"device": self.device, "key": key.hex()}
            return [self._reply({"id": rid, "ok": True, "data": data})]
        if cmd.startswith("sim."):
            return [self._reply({"id": rid, "ok": True, "data": {"cmd": cmd}})]
        # authenticated
        assert line.endswith(b'"}')
        i = line.rindex(b',"mac":"')
        if self.key is None:
            return [self._reply({"id": rid, "ok": False, "err": "not_paired", "msg": "pair"})]
        if not hmac.compare_digest(_mac(self.key, line[:i]).encode(), line[i + 8 : -2]):
            return [self._reply({"id": rid, "ok": False, "err": "auth", "msg": "bad mac"})]
        ctr = req["ctr"]
        if ctr <= self.last_ctr or self.always_replay:
            self.last_ctr = max(self.last_ctr, 10**12)
            out = {"id": rid, "ok": False, "err": "replay", "min": self.last_ctr + 1}
            return [self._signed(out, ctr)]
        self.last_ctr = ctr
        data = {"cmd": cmd, "args": req.get("args", {})}
        if cmd == "fail":
            out = {"id": rid, "ok": False, "err": "bad_args", "msg": "volume must be 1..4"}
            return [self._signed(out, ctr)]
        return [self._signed({"id": rid, "ok": True, "data": data}, ctr)]

    def _reply(self, obj):
        return json.dumps(obj, separators=(",", ":")).encode()

    def _signed(self, obj, ctr):
        obj = dict(obj, ctr=ctr + 1 if self.wrong_ctr else ctr)
        text = json.dumps(obj, separators=(",", ":")).encode()
        if self.unsigned:
            return text
        prefix = text[:-1]
        raw = prefix + b',"mac":"' + _mac(self.key, prefix).encode() + b'"}'
        return self.tamper(raw) if self.tamper else raw


class FakeLink:
    """A line link to a FakeDispenser; replies queue up and are read back in order."""

    def __init__(self, dev, noise=()):
        self.dev = dev
        self.incoming = deque(noise)
        self.written = []
        self.outstanding = 0
        self.max_outstanding = 0
        self.closed = False
        self.port = "/dev/fake0"

    def write_line(self, line):
        assert b"\n" not in line
        self.written.append(line)
        replies = self.dev.handle(line)
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        self.incoming.extend(replies)

    def read_line(self, timeout):
        if not self.incoming:
            time.sleep(min(timeout or 0.01, 0.01))
            return None
        line = self.incoming.popleft()
        try:
            if "id" in json.loads(line):
                self.outstanding -= 1
        except ValueError:
            pass
        return line

    def close(self):
        self.closed = True


@pytest.fixture
def ks(tmp_path):
    k = Keystore(tmp_path / "cfg" / "dosis" / "keys.json")
    k.put(DEV, KEY_HEX)
    return k


def _device(ks, fake=None, noise=()):
    fake = fake or FakeDispenser()
    link = FakeLink(fake, noise)
    return Device(link, keystore=ks, timeout=0.5), fake, link


# -- framing and HMAC ---------------------------------------------------------------------


def test_frame_matches_protocol_byte_for_byte():
    line = frame_request(7, "settings", {"language": "da", "note": "blå"}, ctr=1234, key=KEY)
    prefix = b'{"id":7,"cmd":"settings","args":{"language":"da","note":"bl\\u00e5"},"ctr":1234'
    digest = hmac.new(KEY, prefix, hashlib.sha256).hexdigest()
    assert line == prefix + b',"mac":"' + digest.encode() + b'"}'
    assert len(digest) == 64 and digest == digest.lower()
    # unauthenticated: no ctr, no mac, no empty args
    assert frame_request(3, "hello") == b'{"id":3,"cmd":"hello"}'


def test_device_sends_what_the_spec_says(ks):
    dev, fake, link = _device(ks)
    before = time.time_ns() // 1000
    assert dev.call("info") == {"cmd": "info", "args": {}}
    hello, info = link.written
    assert hello == b'{"id":%d,"cmd":"hello"}' % fake.requests[0]["id"]
    req = fake.requests[1]
    assert req["ctr"] >= before  # counters start from the clock in microseconds
    prefix = b'{"id":%d,"cmd":"info","ctr":%d' % (req["id"], req["ctr"])
    assert info == prefix + b',"mac":"' + _mac(KEY, prefix).encode() + b'"}'
    assert dev.device_id == DEV and dev.board == "sim"


def test_sim_hooks_and_pair_are_unauthenticated(ks):
    dev, fake, link = _device(ks)
    dev.call("sim.press", {"button": "taken"})
    assert b'"mac"' not in link.written[-1] and b'"ctr"' not in link.written[-1]


def test_tampered_reply_is_rejected(ks):
    dev, fake, _ = _device(ks)
    fake.tamper = lambda raw: raw.replace(b'"cmd":"info"', b'"cmd":"infx"')
    with pytest.raises(AuthError, match="failed verification") as e:
        dev.call("info")
    assert e.value.exit_code == 4


def test_unsigned_or_misdirected_reply_is_rejected(ks):
    dev, fake, _ = _device(ks)
    fake.unsigned = True
    with pytest.raises(AuthError, match="not signed"):
        dev.call("info")
    fake.unsigned = False
    fake.wrong_ctr = True
    with pytest.raises(AuthError, match="another request"):
        dev.call("info")


def test_replay_moves_the_counter_and_retries_once(ks):
    dev, fake, _ = _device(ks)
    fake.last_ctr = 10**17  # the device has seen counters far ahead of ours
    assert dev.call("info")["cmd"] == "info"
    refused, accepted = fake.requests[-2:]
    assert refused["ctr"] < 10**17 < accepted["ctr"]
    assert accepted["id"] != refused["id"]
    assert Keystore(ks.path).next_ctr(DEV) > accepted["ctr"]  # persisted


def test_an_unsigned_replay_refusal_moves_nothing(ks):
    """A forged "replay" with a huge "min" (anyone on the link can send one) must not push our
    counter out of reach: only the device's signed refusal moves it."""
    dev, fake, _ = _device(ks)
    fake.last_ctr = 10**17
    fake.unsigned = True
    before = Keystore(ks.path).next_ctr(DEV)
    with pytest.raises(AuthError):
        dev.call("info")
    assert sum(1 for r in fake.requests if r["cmd"] == "info") == 1  # no retry
    assert Keystore(ks.path).next_ctr(DEV) < 10**17 > before


def test_replay_twice_is_an_auth_error(ks):
    dev, fake, _ = _device(ks)
    fake.always_replay = True
    with pytest.raises(AuthError, match="counter twice"):
        dev.call("info")
    assert sum(1 for r in fake.requests if r["cmd"] == "info") == 2


def test_error_replies_map_to_domain_errors(ks, tmp_path):
    dev, fake, _ = _device(ks)
    with pytest.raises(DeviceError) as e:
        dev.call("fail")
    assert (e.value.code, e.value.msg, e.value.exit_code) == ("bad_args", "volume must be 1..4", 1)
    assert e.value.data["err"] == "bad_args"
    fake.key = None
    with pytest.raises(AuthError, match="not paired: press its service button"):
        dev.call("info")
    other = Keystore(tmp_path / "other.json")
    dev2, _, _ = _device(other)
    with pytest.raises(
        AuthError, match=f"no key for device {DEV} in .*: pair it with 'dosis pair'"
    ):
        dev2.call("info")


def test_wrong_protocol_version(ks):
    dev, _, _ = _device(ks, FakeDispenser(proto=2))
    with pytest.raises(
        ProtocolError, match="device speaks protocol 2, this dosis speaks 1: update"
    ):
        dev.hello()


def test_noise_ignored_and_events_queued(ks):
    ev = b'{"ev":"taken","t":1764573780,"dose":"morgen","detail":"button","seq":118}'
    noise = [b"ets Jun  8 2016 00:22:57", b"\xff\xfe garbage", b"[1,2]", ev]
    dev, _, _ = _device(ks, noise=noise)
    assert dev.hello()["proto"] == 1
    assert [e["ev"] for e in dev.events(timeout=0.05)] == ["taken"]


def test_pair_stores_the_key(tmp_path):
    store = Keystore(tmp_path / "keys.json")
    dev, fake, _ = _device(store)
    assert dev.pair() == DEV
    assert store.get(DEV) == fake.key
    assert dev.call("info")["cmd"] == "info"
    assert fake.key.hex() not in repr(store) + repr(dev)
    fake.pairing = False
    with pytest.raises(DeviceError, match="press the service button on the dispenser, then run"):
        dev.pair()


def test_call_many_pipelines_in_order(ks):
    dev, _, link = _device(ks)
    reqs = [("log.read", {"from": 1 + 128 * i, "n": 128}) for i in range(10)]
    out = list(dev.call_many(reqs, window=3))
    assert [d["args"]["from"] for d in out] == [1 + 128 * i for i in range(10)]
    assert link.max_outstanding == 3


def test_no_answer_is_a_link_error(ks):
    fake = FakeDispenser()
    fake.silent = True
    dev, _, _ = _device(ks, fake)
    with pytest.raises(LinkError, match="no answer from /dev/fake0 within 0.5 s: is the") as e:
        dev.hello()
    assert e.value.exit_code == 3


# -- keystore -----------------------------------------------------------------------------


def test_keystore_modes_and_counters(tmp_path):
    path = tmp_path / "new" / "dosis" / "keys.json"
    k = Keystore(path)
    k.put(DEV, KEY_HEX)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    seen = [Keystore(path).next_ctr(DEV) for _ in range(20)]
    assert all(a < b for a, b in zip(seen, seen[1:], strict=False))
    assert Keystore(path).next_ctr(DEV, at_least=10**17) == 10**17
    assert Keystore(path).next_ctr(DEV) == 10**17 + 1
    assert Keystore(path).get(DEV) == KEY
    assert KEY_HEX not in repr(k)
    assert k.remove(DEV) and k.get(DEV) is None and not k.remove(DEV)


def test_keystore_refuses_readable_file(tmp_path):
    path = tmp_path / "keys.json"
    Keystore(path).put(DEV, KEY_HEX)
    os.chmod(path, 0o644)
    with pytest.raises(DosisError, match="can be read by other users .*chmod 600"):
        Keystore(path).get(DEV)


def test_keystore_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("DOSIS_KEYSTORE", str(tmp_path / "k.json"))
    assert Keystore().path == tmp_path / "k.json"
    monkeypatch.delenv("DOSIS_KEYSTORE")
    assert Keystore().path == Path.home() / ".config" / "dosis" / "keys.json"


# -- ports --------------------------------------------------------------------------------


def _usb(device, vid, pid, description="USB Serial"):
    return SimpleNamespace(
        device=device, vid=vid, pid=pid, description=description, serial_number="X1"
    )


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    d = tmp_path / "run"
    monkeypatch.setenv("DOSIS_RUN_DIR", str(d))
    return d


def test_resolve_port_zero_one_two(monkeypatch, rundir):
    usb = [_usb("/dev/ttyS0", None, None), _usb("/dev/ttyACM3", 0x2341, 0x0043)]
    monkeypatch.setattr(ports.list_ports, "comports", lambda: list(usb))
    with pytest.raises(LinkError, match="no dispenser found: plug it in, or start one with"):
        ports.resolve_port(None)
    assert ports.resolve_port("/dev/ttyUSB9") == "/dev/ttyUSB9"
    usb.append(_usb("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP2102 USB to UART Bridge"))
    assert ports.resolve_port(None) == "/dev/ttyUSB0"
    usb.append(_usb("/dev/ttyACM0", 0x303A, 0x1001))
    with pytest.raises(LinkError) as e:
        ports.resolve_port(None)
    assert str(e.value) == (
        "several dispensers found (/dev/ttyACM0, /dev/ttyUSB0): choose one with --port"
    )


def test_sim_registry_drops_dead_entries(monkeypatch, rundir, tmp_path):
    monkeypatch.setattr(ports.list_ports, "comports", lambda: [])
    rundir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fake_port = tmp_path / "pts-7"
    fake_port.touch()
    (rundir / "a.json").write_text(json.dumps({"pid": dead.pid, "port": str(fake_port)}))
    live = {"pid": os.getpid(), "port": str(fake_port), "state": "/s", "started": "x"}
    (rundir / "b.json").write_text(json.dumps(live))
    found = ports.find_ports()
    assert [(p.port, p.kind) for p in found] == [(str(fake_port), "sim")]
    assert not (rundir / "a.json").exists()
    assert ports.resolve_port(None) == str(fake_port)


def test_devices_command_json(monkeypatch, rundir):
    from dosis.cli_sim import devices

    usb = [_usb("/dev/ttyUSB0", 0x1A86, 0x7523, "USB Serial")]
    monkeypatch.setattr(ports.list_ports, "comports", lambda: usb)
    r = CliRunner().invoke(devices, ["--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)[0]["kind"] == "esp32"
    r = CliRunner().invoke(devices, [])
    assert r.stdout.split()[:2] == ["/dev/ttyUSB0", "esp32"]


# -- the serial link on a real pty ----------------------------------------------------------


class SpySerial(serial.Serial):
    """Records the order in which the link configures the port."""

    def __init__(self, *a, **kw):
        object.__setattr__(self, "events", [])
        super().__init__(*a, **kw)

    def __setattr__(self, name, value):
        if name in ("dtr", "rts", "port"):
            self.events.append((name, value))
        super().__setattr__(name, value)

    def open(self):
        self.events.append(("open", self.dtr, self.rts, self.exclusive))
        super().open()


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    name = os.ttyname(slave)
    yield master, name
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def test_dtr_rts_deasserted_before_open(pty_pair):
    master, name = pty_pair
    link = SerialLink(name, serial_factory=SpySerial)
    try:
        ev = link.serial.events
        assert ev.index(("dtr", False)) < ev.index(("open", False, False, True))
        assert ev.index(("rts", False)) < ev.index(("open", False, False, True))
        assert link.serial.dtr is False and link.serial.rts is False
        assert link.serial.is_open and link.serial.baudrate == 115200
    finally:
        link.close()


def test_read_line_strips_cr_and_drops_huge_lines(pty_pair):
    master, name = pty_pair
    link = SerialLink(name)
    try:
        huge = b"y" * (transport.MAX_LINE + 10)

        def feed():
            os.write(master, b"first\r\n")
            for i in range(0, len(huge), 4096):
                os.write(master, huge[i : i + 4096])
            os.write(master, b"\nlast\n")

        th = threading.Thread(target=feed)
        th.start()
        assert link.read_line(2) == b"first"
        assert link.read_line(5) == b"last"
        th.join()
        assert link.read_line(0.1) is None
        link.write_line(b'{"id":1}')
        assert os.read(master, 100) == b'{"id":1}\n'
    finally:
        link.close()


def test_open_errors_say_what_to_check(pty_pair, tmp_path):
    with pytest.raises(LinkError, match="does not exist: is the dispenser plugged in"):
        SerialLink(str(tmp_path / "ttyUSB7"))
    _, name = pty_pair
    first = SerialLink(name)
    try:
        with pytest.raises(LinkError, match=f"port {name} is busy: close other serial monitors"):
            SerialLink(name)
    finally:
        first.close()
    e = transport._open_error("/dev/ttyUSB0", serial.SerialException(errno.EACCES, "denied"))
    assert "add yourself to the dialout group" in str(e)


# -- the virtual dispenser with a stand-in firmware -----------------------------------------

STANDIN = textwrap.dedent(
    """
    import os, signal, sys
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    state = sys.argv[1]
    counter = os.path.join(state, "boots")
    n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
    open(counter, "w").write(str(n))
    out = sys.stdout.buffer
    args = " ".join(sys.argv[2:])
    boot = "boot %d %s %s" % (n, args, os.environ["MICROPYPATH"])
    open(os.path.join(state, "boot-%d" % n), "w").write(boot)
    out.write((boot + "\\n").encode())  # a banner: lost if nobody has the port open yet
    out.flush()
    if os.environ.get("STANDIN_CRASH"):
        sys.exit(1)
    buf = b""
    while True:
        try:
            d = os.read(0, 4096)
        except OSError:  # the supervisor hung up the link: a clean stop
            sys.exit(0)
        if not d:
            sys.exit(0)
        buf += d
        while b"\\n" in buf:
            line, buf = buf.split(b"\\n", 1)
            if line.startswith(b"big "):
                out.write(b"x" * int(line[4:]) + b"\\n")
            elif line == b"who":
                out.write(b"i am boot %d\\n" % n)
            elif line == b"reboot":
                sys.exit(3)
            elif line == b"crash":
                sys.exit(7)
            else:
                out.write(b"echo " + line + b"\\n")
            out.flush()
    """
)


@pytest.fixture
def standin(tmp_path):
    p = tmp_path / "standin.py"
    p.write_text(STANDIN)
    return [sys.executable, str(p)]


def _sim(tmp_path, standin, name="state", **kw):
    return VirtualDispenser(tmp_path / name, firmware_cmd=standin, stderr=subprocess.DEVNULL, **kw)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ask(link, line, timeout=5.0):
    """Send `line` until an answer comes (bytes sent while the firmware restarts are lost,
    as an ESP32's are while it reboots); the first non-banner answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        link.write_line(line)
        got = link.read_line(0.3)
        while got is not None and got.startswith(b"boot "):
            got = link.read_line(0.3)
        if got is not None:
            return got
    raise AssertionError(f"no answer to {line!r}")


def test_sim_relays_restarts_and_stops(tmp_path, standin, rundir):
    messages = []
    vd = _sim(tmp_path, standin, start_utc=1774749600, speed=60, on_message=messages.append)
    port = vd.start()
    try:
        assert [p.port for p in ports.find_ports() if p.kind == "sim"] == [port]
        link = SerialLink(port)
        assert _ask(link, b"hello") == b"echo hello"
        state = tmp_path / "state"
        boot = (state / "boot-1").read_text()
        assert boot == f"boot 1 --speed 60 --start 1774749600 .frozen:{ROOT}/firmware"
        link.close()  # a client leaving hangs nothing up
        link = SerialLink(port)
        assert _ask(link, b"who") == b"i am boot 1"
        link.write_line(b"reboot")  # exit code 3: restarted at once, without --start
        t0 = time.monotonic()
        while _ask(link, b"who") != b"i am boot 2":
            pass
        assert time.monotonic() - t0 < 0.9
        assert (state / "boot-2").read_text() == f"boot 2 --speed 60 .frozen:{ROOT}/firmware"
        assert _ask(link, b"again") == b"echo again"
        t0 = time.monotonic()
        link.write_line(b"crash")  # a crash: restarted after 1 s
        while _ask(link, b"who") != b"i am boot 3":
            pass
        assert time.monotonic() - t0 >= 0.9
        assert (vd.reboots, vd.crashes) == (1, 1)
        pid = vd.pid
        link.close()
    finally:
        vd.stop()
    assert pid is not None and not _alive(pid)
    assert not vd.running
    assert list(rundir.glob("*.json")) == []
    assert any("rebooting" in m for m in messages) and any("crashed" in m for m in messages)
    # the lock is released: the state directory can be used again
    again = _sim(tmp_path, standin)
    again.start()
    again.stop()


def test_two_sims_side_by_side_but_not_on_one_state_dir(tmp_path, standin, rundir):
    with _sim(tmp_path, standin, "a") as a, _sim(tmp_path, standin, "b") as b:
        assert a.port != b.port
        assert len(ports.find_ports()) == 2
        with pytest.raises(DosisError, match="is already used by another virtual dispenser"):
            _sim(tmp_path, standin, "a").start()
        for vd in (a, b):
            link = SerialLink(vd.port)
            assert _ask(link, b"who") == b"i am boot 1"
            link.close()


def _time_big(port, n):
    link = SerialLink(port)
    try:
        assert _ask(link, b"who") == b"i am boot 1"
        t0 = time.monotonic()
        link.write_line(b"big %d" % n)
        line = link.read_line(30)
        assert line == b"x" * n
        return time.monotonic() - t0
    finally:
        link.close()


def test_sim_baud_throttles_honestly(tmp_path, standin, rundir):
    with _sim(tmp_path, standin, "fast") as vd:
        fast = _time_big(vd.port, 5000)
    with _sim(tmp_path, standin, "slow", baud=9600) as vd:
        slow = _time_big(vd.port, 5000)
    # 5001 bytes at 960 bytes/s is 5.2 s
    assert slow >= 4.0
    assert slow > 5 * fast


def test_sim_gives_up_after_repeated_crashes(tmp_path, standin, rundir, monkeypatch):
    monkeypatch.setenv("STANDIN_CRASH", "1")
    vd = _sim(tmp_path, standin)
    vd.start()
    try:
        assert vd.wait(15)
        assert vd.failure is not None and "crashed 5 times within a minute" in vd.failure
        assert not vd.running
    finally:
        vd.stop()


def test_sim_provisions_schedule(tmp_path, standin, rundir):
    from dosis.schedules import load_schedule
    from dosiscore.schedule import canonical

    example = ROOT / "examples" / "schedule.toml"
    with _sim(tmp_path, standin, schedule=example) as vd:
        link = SerialLink(vd.port)
        assert _ask(link, b"who") == b"i am boot 1"
        link.close()
    boot = (tmp_path / "state" / "boot-1").read_text()
    provision = tmp_path / "state" / "provision.json"
    assert provision.read_bytes() == canonical(load_schedule(example))
    assert f"--schedule {provision}" in boot
    doc = load_schedule(example)
    assert parse_start("2026-03-29 03:00", doc) == 1774746000  # 01:00 UTC: CEST begins
    assert parse_start("2026-03-29 03:00") == 1774753200


def test_open_device_over_the_sim(tmp_path, rundir, ks):
    """open_device finds the only dispenser, sends a newline then hello, verifies replies."""
    script = tmp_path / "fw.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, json
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from test_transport import FakeDispenser
            fake = FakeDispenser()
            for line in sys.stdin.buffer:
                line = line.rstrip(b"\\r\\n")
                if not line:
                    continue
                for reply in fake.handle(line):
                    sys.stdout.buffer.write(reply + b"\\n")
                sys.stdout.buffer.flush()
            """
        )
    )
    with _sim(tmp_path, [sys.executable, str(script)]):
        with open_device(None, keystore=ks, timeout=3) as dev:
            assert dev.device_id == DEV
            assert dev.call("info", {"x": 1}) == {"cmd": "info", "args": {"x": 1}}
            assert [
                d["args"]["n"] for d in dev.call_many([("log.read", {"n": i}) for i in range(5)])
            ] == list(range(5))


def test_sim_command_prints_port_and_stops_on_sigterm(tmp_path, standin, rundir):
    code = (
        "import functools, dosis.simhost as h, dosis.cli_sim as c;"
        f"h.VirtualDispenser = functools.partial(h.VirtualDispenser, firmware_cmd={standin!r});"
        "c.sim()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--state", str(tmp_path / "st"), "--baud", "115200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        port = proc.stdout.readline().decode().strip()
        assert port.startswith("/dev/")
        link = SerialLink(port)
        assert _ask(link, b"ping") == b"echo ping"
        link.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert err.decode().splitlines()[-1] == "stopped"
    assert list(rundir.glob("*.json")) == []


def test_real_firmware_pairs_answers_and_stops_cleanly(tmp_path, rundir):
    """The supervisor with the real firmware (micropython -m sim.serve): hello, pairing
    through the service button, a signed reply, and a clean stop (exit code 0)."""
    store = Keystore(tmp_path / "keys.json")
    vd = VirtualDispenser(
        tmp_path / "state", schedule=ROOT / "examples" / "schedule.toml", baud=115200
    )
    vd.start()
    try:
        with open_device(None, keystore=store, timeout=10) as dev:
            assert dev.board == "sim"
            dev.call("sim.press", {"button": "service", "hold_s": 3})
            deadline = time.monotonic() + 10
            while True:
                try:
                    device_id = dev.pair()
                    break
                except DeviceError as e:
                    if e.code != "not_pairing" or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert store.get(device_id) is not None
            info = dev.call("info")
            assert info["schedule"] is not None and info["mode"] == "normal"
        proc = vd._proc
    finally:
        vd.stop()
    assert proc is not None and proc.returncode == 0
