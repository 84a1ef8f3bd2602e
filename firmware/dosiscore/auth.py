"""HMAC-SHA256 for the serial link (pure: hashlib only), incremental, and a constant-time
comparison. MicroPython has no `hmac` module; CPython's gives the same digests (tested)."""

import hashlib

_BLOCK = 64


class Hmac:
    """HMAC-SHA256 over data given in pieces (so a long reply is never joined in RAM)."""

    def __init__(self, key):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        k = bytearray(_BLOCK)
        k[: len(key)] = key
        pad = bytearray(_BLOCK)
        for i in range(_BLOCK):
            pad[i] = k[i] ^ 0x5C
        self._outer_pad = bytes(pad)
        for i in range(_BLOCK):
            pad[i] = k[i] ^ 0x36
        self._inner = hashlib.sha256(bytes(pad))

    def update(self, data):
        self._inner.update(data)

    def digest(self):
        outer = hashlib.sha256(self._outer_pad)
        outer.update(self._inner.digest())
        return outer.digest()


def hmac_sha256(key, data):
    h = Hmac(key)
    h.update(data)
    return h.digest()


def equal(a, b):
    """Compare two digests in time that does not depend on where they differ."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
