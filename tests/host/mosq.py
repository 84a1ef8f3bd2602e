"""Test helpers: a private mosquitto broker and a tiny raw-socket MQTT 3.1.1 client.

`Broker` runs /usr/sbin/mosquitto (or the one on PATH) on a free loopback port with a generated
config and persistence in a temporary directory, and can stop (SIGTERM saves the persistence
file; SIGKILL does not), restart on the same port, or freeze (SIGSTOP) it. `Peer` is the
CPython side of the tests: it publishes and subscribes over a plain socket (paho-mqtt is not a
dependency, and mosquitto_sub may not be installed), with a thread collecting messages.

Options for the uplink's security tests: `Broker(tmp_path, tls=pki)` adds a TLS listener on
`tls_port` (loopback, TLS 1.2 at least; `pki` from tests/host/tlsca.py: `ca_pem`, `cert`,
`key`), `users={"name": "password"}` turns anonymous access off and makes a password file with
mosquitto_passwd, and `acl=[...]` lines ("pattern readwrite dosis/%u/#", "user x",
"topic read y") become the acl_file. `Peer(broker, user=..., password=..., tls=True)` logs in
and/or goes over the TLS listener, trusting the PKI's CA.
"""

import os
import queue
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto process of its own: `host`, `port` (and `tls_port` with `tls`); `start`,
    `stop`, `kill`, `restart`. With `users`, only those may connect; `acl` lines limit them."""

    def __init__(self, tmp_path: Path, tls=None, users=None, acl=None):
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls is not None else None
        self.dir = tmp_path / "mosquitto"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1"]
        if tls is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {tls.ca_pem}",
                f"certfile {tls.cert}",
                f"keyfile {tls.key}",
                "tls_version tlsv1.2",  # the minimum: mosquitto 2 offers 1.3 too
            ]
        if users:
            lines += ["allow_anonymous false", f"password_file {self._passwords(users)}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            acl_file = self.dir / "acl"
            acl_file.write_text("\n".join(acl) + "\n")
            lines.append(f"acl_file {acl_file}")
        lines += [
            "persistence true",
            "set_tcp_nodelay true",  # acks are small: no 40 ms Nagle wait (docs/gateway.md)
            f"persistence_location {self.dir}/",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "log_type all",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to `mosquitto`, who cannot write here
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = None

    def _passwords(self, users):
        if not os.access(MOSQUITTO_PASSWD, os.X_OK):
            raise RuntimeError(
                f"Broker(users=...) needs mosquitto_passwd, not found at {MOSQUITTO_PASSWD} "
                "or on PATH (Debian: it comes with the mosquitto package)"
            )
        path = self.dir / "passwords"
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        for name, password in users.items():
            subprocess.run(
                [MOSQUITTO_PASSWD, "-b", str(path), name, password],
                check=True,
                capture_output=True,
            )
        return path

    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        for port in (self.port, self.tls_port):
            while port is not None:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"mosquitto exited with {self.proc.returncode}: {self.log()}"
                    )
                try:
                    socket.create_connection((self.host, port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"mosquitto did not listen on {port}: {self.log()}"
                        ) from None
                    time.sleep(0.05)
        return self

    def log(self):
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace")[-2000:] if p.exists() else ""

    def _end(self, sig):
        p = self.proc
        if p is None:
            return
        self.proc = None
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)  # in case it was frozen
            p.send_signal(sig)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop(self):
        """SIGTERM: mosquitto saves its persistence file and closes every connection."""
        self._end(signal.SIGTERM)

    def kill(self):
        """SIGKILL: the kernel still resets the connections (a crash, not a vanished host)."""
        self._end(signal.SIGKILL)

    def freeze(self):
        """SIGSTOP: connections stay open and nothing answers (a broker gone silent)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def restart(self):
        self.stop()
        return self.start()


def enc_len(n):
    """MQTT's variable-length remaining length."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(b):
    """An MQTT UTF-8 string field: u16 length, then the bytes."""
    return struct.pack(">H", len(b)) + b


class Peer:
    """A blocking MQTT 3.1.1 client for the test side; received messages land in `messages`."""

    def __init__(self, broker, client_id="pytest-peer", user=None, password=None, tls=False):
        if tls:
            ctx = ssl.create_default_context(cafile=str(broker.tls.ca_pem))
            raw = socket.create_connection((broker.host, broker.tls_port), timeout=5)
            self.sock = ctx.wrap_socket(raw, server_hostname=broker.host)
        else:
            self.sock = socket.create_connection((broker.host, broker.port), timeout=5)
        self.messages = queue.Queue()
        self._acks = queue.Queue()
        self._pid = 0
        self._wlock = threading.Lock()
        flags = 0x02
        tail = mqtt_str(client_id.encode())
        if user is not None:
            flags |= 0x80
            tail += mqtt_str(user.encode())
            if password is not None:
                flags |= 0x40
                tail += mqtt_str(password.encode())
        body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + tail
        self._send(0x10, body)
        kind, data = self._read()
        if kind & 0xF0 != 0x20 or data[1] != 0:
            self.sock.close()
            raise RuntimeError(f"peer CONNACK {kind:#x} {data!r}")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _send(self, kind, body):
        with self._wlock:
            self.sock.sendall(bytes([kind]) + enc_len(len(body)) + body)

    def _recv(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _read(self):
        kind = self._recv(1)[0]
        n = shift = 0
        while True:
            b = self._recv(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return kind, self._recv(n)

    def _loop(self):
        self.sock.settimeout(None)
        try:
            while True:
                kind, data = self._read()
                t = kind & 0xF0
                if t == 0x30:
                    qos = (kind >> 1) & 3
                    tl = struct.unpack(">H", data[:2])[0]
                    p = 2 + tl
                    if qos:
                        self._send(0x40, data[p : p + 2])
                        p += 2
                    self.messages.put((data[2 : 2 + tl].decode(), data[p:]))
                elif t in (0x40, 0x90):
                    self._acks.put(data)
        except (EOFError, OSError):
            return

    def _next(self):
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    def subscribe(self, topic, qos=0):
        pid = self._next()
        self._send(0x82, struct.pack(">H", pid) + mqtt_str(topic.encode()) + bytes([qos]))
        self._acks.get(timeout=5)

    def publish(self, topic, payload, qos=0, retain=False):
        if isinstance(payload, str):
            payload = payload.encode()
        head = 0x30 | (qos << 1) | (1 if retain else 0)
        body = mqtt_str(topic.encode())
        if qos:
            body += struct.pack(">H", self._next())
        self._send(head, body + payload)
        if qos:
            self._acks.get(timeout=5)

    def collect(self, count, timeout=10.0):
        """The next `count` messages (topic, payload), or fewer if `timeout` passes."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return out

    def close(self):
        try:
            self._send(0xE0, b"")
        except OSError:
            pass
        # Wake the reader with EOF and let it end before the descriptor is freed: an SSL
        # socket's reader would otherwise go on reading from whatever reuses the number next.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(timeout=5)
        self.sock.close()
