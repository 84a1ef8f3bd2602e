"""Dose log record codec: runs under pytest (CPython) and mprun (MicroPython)."""

import random
import struct
import sys

# pytest puts tests/fw on CPython's path but not firmware/ (MICROPYPATH has it): append it, a
# no-op wherever `dosiscore` is already importable.
sys.path.append(__file__.replace("\\", "/").rsplit("/", 3)[0] + "/firmware")

from dosiscore import logrec

CPYTHON = sys.implementation.name == "cpython"

# CRC-32 (zlib's) of fixed inputs, so MicroPython is checked against the same values CPython's
# zlib gives (test_crc32_known_values re-derives them from zlib under CPython).
VECTORS = (
    (b"", 0x00000000),
    (b"a", 0xE8B7BE43),
    (b"abc", 0x352441C2),
    (b"123456789", 0xCBF43926),
    (b"The quick brown fox jumps over the lazy dog", 0x414FA339),
    (bytes(range(256)), 0x29058C73),
    (b"\xff" * 24, 0xDCDD16C2),
    (bytes(24), 0xA3C1CA20),
    (b"\x01", 0xA505DF1B),
)


def _fields(kind):
    """Distinct values in every field for one kind (so a swapped field shows)."""
    seq = 0x01020304 + kind
    utc = 1767225600 + kind * 61
    occ = 1767229200 + kind
    dose = kind % 12
    detail = 0xA0B0C0D0 ^ kind
    small = 0x1234 + kind
    return seq, utc, kind, occ, dose, detail, small


def _record(seq=7, utc=1767225600, kind=logrec.TAKEN, occ=1767229200, dose=2, detail=5, small=1):
    buf = bytearray(logrec.RECORD_SIZE)
    logrec.encode_into(buf, 0, seq, utc, kind, occ, dose, detail, small)
    return buf


def test_record_is_24_bytes():
    assert logrec.RECORD_SIZE == 24
    assert struct.calcsize(logrec.FORMAT) == 24


def test_type_table_names_match_constants():
    names = logrec.NAMES
    assert names[0] == "none"
    assert len(names) == logrec.SETTINGS + 1  # the last kind
    for code in range(1, len(names)):
        assert getattr(logrec, names[code].upper()) == code, names[code]
    seen = {}
    for n in names:
        assert n not in seen, n
        seen[n] = 1
    assert len(names) <= 256  # the kind is a u8
    for kind in logrec.CHATTER:
        assert 0 < kind < len(names)
    for kind in logrec.FAULT_KINDS:
        assert 0 < kind < len(names)
    assert logrec.FAULT_KINDS[1] == logrec.JAM  # E1
    assert logrec.FAULT_KINDS[3] == logrec.TIME_MISSING  # E3
    assert logrec.FAULT_KINDS[8] == logrec.DISPLAY_FAULT  # E8


def test_round_trip_every_type():
    buf = bytearray(logrec.RECORD_SIZE)
    for kind in range(1, len(logrec.NAMES)):
        f = _fields(kind)
        seq, utc, k, occ, dose, detail, small = f
        end = logrec.encode_into(buf, 0, seq, utc, k, occ, dose, detail, small)
        assert end == logrec.RECORD_SIZE
        assert logrec.decode(buf, 0) == f, logrec.NAMES[kind]
        assert logrec.check(buf, 0) == seq


def test_round_trip_limits_and_defaults():
    buf = bytearray(logrec.RECORD_SIZE)
    top = 0xFFFFFFFF
    logrec.encode_into(buf, 0, top, top, 255, top, 254, top, 0xFFFF)
    assert logrec.decode(buf) == (top, top, 255, top, 254, top, 0xFFFF)
    # No dose, unknown time, no detail: stored as 0xFF / 0 / 0, read back as None / 0 / 0.
    logrec.encode_into(buf, 0, 1, None, logrec.BOOT, None, None, None)
    assert logrec.decode(buf) == (1, 0, logrec.BOOT, 0, None, 0, 0)
    assert buf[17] == logrec.NO_DOSE
    # A negative time is "unknown"; a negative detail keeps its bits (two's complement).
    logrec.encode_into(buf, 0, 2, -5, logrec.FAULT, -1, 0, -2, 3)
    assert logrec.decode(buf) == (2, 0, logrec.FAULT, 0, 0, 0xFFFFFFFE, 3)


def test_layout_is_little_endian_at_documented_offsets():
    buf = _record(seq=0x11223344, utc=0x55667788, kind=0x09, occ=0x99AABBCC, dose=3)
    assert bytes(buf[0:4]) == b"\x44\x33\x22\x11"
    assert bytes(buf[4:8]) == b"\x88\x77\x66\x55"
    assert bytes(buf[8:12]) == b"\xcc\xbb\xaa\x99"
    assert buf[16] == 0x09 and buf[17] == 3
    crc = struct.unpack_from("<I", buf, 20)[0]
    # The CRC covers the format byte 0x01, then bytes 0..19.
    assert crc == logrec.crc32_soft(b"\x01" + bytes(buf[:20]))
    if CPYTHON:
        import zlib

        assert crc == zlib.crc32(b"\x01" + bytes(buf[:20]))


def test_encode_at_offset_leaves_neighbours_alone():
    buf = bytearray(b"\xaa" * 80)
    logrec.encode_into(buf, 30, 9, 100, logrec.DUE, 200, 1, 3)
    assert bytes(buf[:30]) == b"\xaa" * 30
    assert bytes(buf[54:]) == b"\xaa" * 26
    assert logrec.decode(buf, 30) == (9, 100, logrec.DUE, 200, 1, 3, 0)
    assert logrec.decode(buf, 0) is None


def test_crc_detects_every_single_bit_flip():
    rec = _record()
    assert logrec.decode(rec) is not None
    for bit in range(logrec.RECORD_SIZE * 8):
        bad = bytearray(rec)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert logrec.decode(bad) is None, bit
        assert logrec.check(bad, 0) == -1, bit


def test_garbage_decodes_to_none():
    assert logrec.decode(bytes(24)) is None  # zeroed flash
    assert logrec.decode(b"\xff" * 24) is None  # erased flash
    assert logrec.decode(b"") is None
    assert logrec.decode(bytes(_record())[:23]) is None  # short
    assert logrec.decode(_record(), 1) is None  # misaligned
    assert logrec.decode(_record(), 24) is None  # past the end
    assert logrec.check(_record(), -1) == -1
    random.seed(4)
    for _ in range(2000):
        junk = bytes(random.getrandbits(8) for _ in range(24))
        assert logrec.decode(junk) is None


def test_other_format_version_is_rejected():
    rec = _record()
    body = bytes(rec[:20])
    other = bytearray(rec)
    struct.pack_into("<I", other, 20, logrec.crc32_soft(b"\x02" + body))
    assert logrec.decode(other) is None
    plain = bytearray(rec)  # a CRC without the format byte is not ours either
    struct.pack_into("<I", plain, 20, logrec.crc32_soft(body))
    assert logrec.decode(plain) is None


def test_crc32_known_values():
    for data, want in VECTORS:
        assert logrec.crc32(data) == want, data
        assert logrec.crc32_soft(data) == want, data
        assert logrec.crc32(memoryview(bytearray(data))) == want
    if CPYTHON:
        import zlib

        for data, want in VECTORS:
            assert zlib.crc32(data) == want, data


def test_crc32_matches_zlib_on_random_data():
    # Under CPython against zlib; under MicroPython the soft CRC against binascii.crc32 (and
    # both were pinned to zlib's values above).
    ref = None
    if CPYTHON:
        import zlib

        ref = zlib.crc32
    elif logrec.has_builtin_crc32():
        import binascii

        ref = binascii.crc32
    assert ref is not None or not logrec.has_builtin_crc32()
    random.seed(11)
    for n in (1, 3, 20, 24, 100, 1000):
        data = bytes(random.getrandbits(8) for _ in range(n))
        want = logrec.crc32_soft(data)
        if ref is not None:
            assert ref(data) & 0xFFFFFFFF == want
        assert logrec.crc32(data) == want


def test_crc32_continues_from_a_value():
    a, b = b"dose log ", b"record"
    assert logrec.crc32(b, logrec.crc32(a)) == logrec.crc32(a + b)
    assert logrec.crc32_soft(b, logrec.crc32_soft(a)) == logrec.crc32_soft(a + b)


def test_builtin_crc32_present_where_expected():
    # The unix port and stock ESP32 firmware both enable binascii.crc32; CPython has it too.
    assert logrec.has_builtin_crc32()


def test_helpers_for_the_edge():
    assert logrec.reason_code("") == 0
    assert logrec.reason_code("button") == 1
    assert logrec.reason_code("beam") == 2
    assert logrec.reason_code("unseen") == logrec.code_of(logrec.REASONS, "unseen")
    assert logrec.reason_code("button,assisted") == 1 | 9 << 8
    assert logrec.reason_code("no such reason") == 0
    assert logrec.code_of(logrec.SOURCES, "ntp") == 2
    assert logrec.code_of(logrec.SOURCES, "sundial", 0xFF) == 0xFF
    assert logrec.code_of(logrec.MODES, "travel") == 3
    assert logrec.BOOT_CAUSES[3] == "watchdog"  # machine.WDT_RESET == 3
    assert logrec.hash_prefix("9f86d081884c7d65") == 0x9F86D081
    assert logrec.hash_prefix("") == 0
    assert logrec.hash_prefix(None) == 0
    assert logrec.hash_prefix("zz") == 0
    assert logrec.pack_version("0.1.0") == 0x000100
    assert logrec.pack_version("1.2.3") == 0x010203
    assert logrec.pack_version("2") == 0x020000
    assert logrec.pack_version("x.y") == 0
