"""Test helper: a real SMTP server on loopback (aiosmtpd) that keeps what it receives."""

import email
import socket
import threading
import time

from aiosmtpd.controller import Controller


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler:
    def __init__(self, sink):
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        msg = email.message_from_bytes(envelope.content)
        with self.sink.lock:
            self.sink.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"


class SmtpSink:
    """`with SmtpSink() as s:` ... `s.address` is "127.0.0.1:PORT"; `s.messages`."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    def wait(self, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)
