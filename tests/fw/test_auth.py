"""HMAC-SHA256 of the serial link: runs under pytest (CPython) and mprun (MicroPython)."""

import binascii
import sys

sys.path.append(__file__.replace("\\", "/").rsplit("/", 3)[0] + "/firmware")

from dosiscore import auth

CPYTHON = sys.implementation.name == "cpython"

# (key, message, digest) from CPython's hmac module, so MicroPython is checked against it
# (test_vectors_match_cpython_hmac re-derives them under CPython).
VECTORS = (
    (b"k" * 32, b"hello", "b77dedb81d7deb352f617552af07a682c4267366ef53870025bc48b701c8a76d"),
    (bytes(range(32)), b"", "d38b42096d80f45f826b44a9d5607de72496a415d3f4a1a8c88e3bb9da8dc1cb"),
    (b"x" * 100, b"abc" * 50, "62f64ac5ca19aac68cd30f359c2fba29d5bfa67eaa8472081f432f56f28cae49"),
    (b"", b"msg", "5f576a8d68fe4fb7eb823227246353c0870c3b0e878997341db1226b4bd88d61"),
)


def test_known_digests():
    for key, msg, want in VECTORS:
        assert binascii.hexlify(auth.hmac_sha256(key, msg)).decode() == want


def test_pieces_give_the_same_digest():
    key, msg, want = VECTORS[2]
    h = auth.Hmac(key)
    for i in range(0, len(msg), 7):
        h.update(msg[i : i + 7])
    assert binascii.hexlify(h.digest()).decode() == want


def test_vectors_match_cpython_hmac():
    if not CPYTHON:
        return
    import hashlib
    import hmac

    for key, msg, want in VECTORS:
        assert hmac.new(key, msg, hashlib.sha256).hexdigest() == want


def test_equal_is_exact():
    a = auth.hmac_sha256(b"k", b"m")
    assert auth.equal(a, a)
    assert not auth.equal(a, a[:-1])
    for i in range(len(a)):
        b = bytearray(a)
        b[i] ^= 1
        assert not auth.equal(a, bytes(b))
