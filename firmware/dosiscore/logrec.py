"""Dose log record codec: fixed 24-byte little-endian records with a CRC-32 each (pure).

Shared by the device (which writes the log) and the host tool (which reads it over the serial
link), so both decode with this one module. Nothing here touches a file or a clock.

Layout (struct "<IIIIBBHI", 24 bytes, no padding):

    off size field   meaning
      0    4 seq     sequence number: strictly increasing across reboots, never reused
      4    4 utc     Unix seconds when the record was written; 0 = time unknown
      8    4 occ     the occurrence's UTC instant, or a first number (see the type table)
     12    4 detail  a second number: compartment, new time, hash prefix, mV, errno, seq...
     16    1 kind    event type code (the table below; NAMES[kind] is its name)
     17    1 dose    index of the dose in the schedule's dose list (PRN: rule index); 0xFF none
     18    2 small   a small number: reason, level, clock source, fault code, boot cause...
     20    4 crc     CRC-32 (zlib's) of the format byte 0x01 followed by bytes 0..19

Why this shape: four u32 fields carry everything the log must say in one record (a clock step
needs old and new time, a schedule change an old and a new 4-byte hash prefix, an overflow the
first and last seq dropped); a u8 kind holds the ~50 types with room to grow, a u8 dose index
covers MAX_DOSES = 12, and a u16 "small" holds any reason, level, source or code. The sketch in
the issue (u16 kind, u16 flags, 3 spare bytes) came to 28 bytes; 24 bytes fit 170 records in a
4 KB littlefs block (4080 bytes), so a segment file is exactly one flash block.
The format byte is folded into the CRC instead of being stored: a record written by another
layout version fails its CRC (and is quarantined) rather than being misread, at no byte cost.
A record of all 0x00 or all 0xFF bytes (erased or zeroed flash) never passes the CRC.

The type codes are part of the on-flash format: append new ones, never renumber.
"""

import struct

try:
    from micropython import const  # type: ignore  # its stub is positional-only, ours not
except ImportError:  # CPython (the host tool): const() is only a hint to MicroPython's compiler

    def const(x):
        return x


try:
    from binascii import crc32 as _crc32_builtin
except ImportError:  # a MicroPython build without MICROPY_PY_BINASCII_CRC32
    _crc32_builtin = None

RECORD_SIZE = const(24)
FORMAT = "<IIIIBBHI"
_BODY = const(20)  # bytes covered by the CRC
_VERSION_CRC = const(0xA505DF1B)  # crc32(b"\x01"): the format byte, folded in first
NO_DOSE = const(0xFF)

# -- event types (the record's `kind`) --------------------------------------------------------
# Dose state machine (occ = the occurrence's instant, dose = its index in the dose list)
AVAILABLE = const(1)  # early window opened (light only); small: 1 = first shown late
DUE = const(2)  # its instant: tone starts; small: 1 = first shown late
LOUDER = const(3)  # small = volume level (1..4)
NOTIFY = const(4)  # the care team is to be told; small = reason
TAKEN = const(5)  # small = how (button, beam, remote) | mode reason << 8; detail = compartment
MISSED = const(6)  # locked after the late window; small = reason (late, unseen, superseded)
SKIPPED = const(7)  # small = reason (paused, travel, assisted)
OPENING = const(8)  # about to move to compartment `detail` for this occurrence (journal)
OPENED = const(9)  # compartment `detail` is at the opening
CLOSED = const(10)  # the opening is closed again; detail = compartment it left (0 unknown)
PRN = const(11)  # as-needed request: dose = rule index, small 1 allowed / 0 refused,
#                  detail = when it is next allowed (UTC, 0 now)
MODE = const(12)  # small = index in MODES
PRESS = const(13)  # a press that did nothing: small = button (BUTTONS), detail = reason code
ALERT_ACK = const(14)  # the care team acknowledged a missed-dose alert; small = source
# Device health (small = fault code E1..E9 where there is one)
JAM = const(15)  # E1; detail = compartment aimed at
HOME_LOST = const(16)  # E2
BEAM_FAULT = const(17)  # E4
MAINS_LOST = const(18)
MAINS_RESTORED = const(19)
BATTERY_LOW = const(20)  # E5; detail = battery mV
BATTERY_OK = const(21)  # detail = battery mV
RTC_LOST = const(22)  # small: 1 oscillator stopped (time lost), 2 not answering
TIME_MISSING = const(23)  # E3: no trustworthy time, nothing is dispensed
REFILL = const(24)  # small = doses left
EMPTY = const(25)  # E6
FILLED = const(26)  # the carousel was refilled; small = compartments
DISPLAY_FAULT = const(27)  # E8; detail = errno
BUTTON_STUCK = const(28)  # E7
RECOVERED = const(29)  # carousel re-found after a cut mid-move; detail = target compartment
SERVICE = const(30)  # service mode; small 1 on / 0 off / 2 the REPL handed over (a deploy)
FAULT = const(31)  # any other fault: small = fault code, detail = errno or a number
FAULT_CLEARED = const(32)  # small = fault code
# Clock and schedule
CLOCK_SET = const(33)  # occ = old UTC (0 unknown), detail = new UTC, small = source
CLOCK_HELD = const(34)  # a big step waits for a 2nd source: occ = current, detail = offered
SCHEDULE = const(35)  # occ = old hash prefix (0 none), detail = new hash prefix
NO_SCHEDULE = const(36)
SCHEDULE_BAD = const(37)  # a stored or offered schedule was refused; detail = its hash prefix
SETTINGS_FALLBACK = const(38)  # current copy unreadable, previous used; small = which (0 A, 1 B)
NVS_MODE = const(39)  # filesystem unusable: running from the NVS copy; detail = failure count
# Boot
BOOT = const(40)  # small = boot cause (BOOT_CAUSES), detail = firmware version (pack_version)
# The log itself
LOG_TRUNCATED = const(41)  # torn tail cut: detail = segment, occ = bytes dropped,
#                            small = record slots dropped (a partial one counts)
LOG_QUARANTINED = const(42)  # segment renamed .bad: detail = segment, occ = valid records in
#                              it, small = slot of the first bad record
LOG_OVERFLOW = const(43)  # unacked records deleted to make room: occ = first seq, detail =
#                           last seq dropped, small = records dropped (capped at 0xFFFF)
LOG_LOST = const(44)  # the newest segment vanished: detail = its first seq, occ = seqs skipped
LOG_ERROR = const(45)  # small = where (ERR_*), detail = errno (0 if none)
# The serial link (docs/protocol.md)
PAIRED = const(46)  # a host paired (a new key; the old one no longer works). No secret here.
AUTH_FAIL = const(47)  # a request refused: small = reason (AUTH_REASONS)
SETTINGS = const(48)  # settings changed: small = volume | tone << 4 | language << 8

NAMES = (
    "none",
    "available",
    "due",
    "louder",
    "notify",
    "taken",
    "missed",
    "skipped",
    "opening",
    "opened",
    "closed",
    "prn",
    "mode",
    "press",
    "alert_ack",
    "jam",
    "home_lost",
    "beam_fault",
    "mains_lost",
    "mains_restored",
    "battery_low",
    "battery_ok",
    "rtc_lost",
    "time_missing",
    "refill",
    "empty",
    "filled",
    "display_fault",
    "button_stuck",
    "recovered",
    "service",
    "fault",
    "fault_cleared",
    "clock_set",
    "clock_held",
    "schedule",
    "no_schedule",
    "schedule_bad",
    "settings_fallback",
    "nvs_mode",
    "boot",
    "log_truncated",
    "log_quarantined",
    "log_overflow",
    "log_lost",
    "log_error",
    "paired",
    "auth_fail",
    "settings",
)

# Records whose durability can wait a little when the flash-sync budget runs low (they repeat,
# or they only qualify a record that is flushed at once). Everything else is flushed at once
# while any sync is left. See dispenser/doselog.py, "Flash wear".
# AUTH_FAIL: a flood of forged requests must not spend the syncs dose records need.
CHATTER = (
    LOUDER,
    PRESS,
    MAINS_RESTORED,
    BATTERY_OK,
    SERVICE,
    FAULT_CLEARED,
    CLOCK_HELD,
    AUTH_FAIL,
)

# -- codes for `small` ------------------------------------------------------------------------
REASONS = (
    "",
    "button",
    "beam",
    "remote",
    "late",
    "unseen",
    "superseded",
    "paused",
    "travel",
    "assisted",
    "not taken",
)
MODES = ("normal", "assisted", "paused", "travel")  # as dosiscore.doses.MODES
BUTTONS = ("", "taken", "service", "prn")
SOURCES = ("none", "rtc", "ntp", "nurse", "gateway", "test")
# 1..5 are machine.PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET on the ESP32
BOOT_CAUSES = ("unknown", "power-on", "hard", "watchdog", "deepsleep", "soft", "brownout")
AUTH_REASONS = ("", "not_paired", "auth", "replay", "not_pairing")
# Fault code E<n> -> the record kind that reports it
FAULT_KINDS = (
    FAULT,
    JAM,
    HOME_LOST,
    TIME_MISSING,
    BEAM_FAULT,
    BATTERY_LOW,
    EMPTY,
    BUTTON_STUCK,
    DISPLAY_FAULT,
)
# LOG_ERROR's `small`: which operation failed
ERR_STATE = const(1)
ERR_READ = const(2)
ERR_WRITE = const(3)
ERR_RENAME = const(4)
ERR_REMOVE = const(5)
ERR_LIST = const(6)


# -- CRC-32 -----------------------------------------------------------------------------------

# Half-byte table of the reflected polynomial 0xEDB88320 (zlib's CRC-32): 16 entries, 64 bytes
# of data instead of the usual 1 KB, two lookups a byte. Only used where binascii.crc32 is
# missing: stock ESP32_GENERIC firmware has it (MICROPY_PY_BINASCII_CRC32 follows the
# EXTRA_FEATURES ROM level; the ESP32 stubs were generated from such a board), a trimmed
# custom build may not.
_NIBBLE = (
    0x00000000,
    0x1DB71064,
    0x3B6E20C8,
    0x26D930AC,
    0x76DC4190,
    0x6B6B51F4,
    0x4DB26158,
    0x5005713C,
    0xEDB88320,
    0xF00F9344,
    0xD6D6A3E8,
    0xCB61B38C,
    0x9B64C2B0,
    0x86D3D2D4,
    0xA00AE278,
    0xBDBDF21C,
)


def crc32_soft(data, value=0):
    """CRC-32 of `data` continuing from `value`, equal to zlib.crc32 / binascii.crc32."""
    t = _NIBBLE
    c = value ^ 0xFFFFFFFF
    for b in data:
        c ^= b
        c = (c >> 4) ^ t[c & 15]
        c = (c >> 4) ^ t[c & 15]
    return c ^ 0xFFFFFFFF


def crc32(data, value=0):
    """CRC-32 (zlib's): binascii.crc32 where the firmware has it, else crc32_soft."""
    if _crc32_builtin is not None:
        return _crc32_builtin(data, value) & 0xFFFFFFFF
    return crc32_soft(data, value)


def has_builtin_crc32():
    return _crc32_builtin is not None


# -- records ----------------------------------------------------------------------------------


def encode_into(buf, offset, seq, utc, kind, occ, dose, detail, small=0):
    """Write one record into `buf` at `offset` (no allocation but the CRC's memoryview).

    Nothing is raised on odd numbers (a log write must never stop the device): a time (utc,
    occ) that is None or negative is stored as 0 (unknown); None elsewhere is 0; other
    numbers keep their low bits (a negative detail reads back as its two's complement)."""
    struct.pack_into(
        "<IIIIBBH",
        buf,
        offset,
        seq & 0xFFFFFFFF,
        utc & 0xFFFFFFFF if utc and utc > 0 else 0,
        occ & 0xFFFFFFFF if occ and occ > 0 else 0,
        detail & 0xFFFFFFFF if detail else 0,
        kind & 0xFF,
        NO_DOSE if dose is None else dose & 0xFF,
        small & 0xFFFF if small else 0,
    )
    mv = memoryview(buf)
    struct.pack_into("<I", buf, offset + _BODY, crc32(mv[offset : offset + _BODY], _VERSION_CRC))
    return offset + RECORD_SIZE


def check(buf, offset):
    """The record's seq if it is whole and its CRC matches, else -1 (cheaper than decode)."""
    if offset < 0 or len(buf) - offset < RECORD_SIZE:
        return -1
    mv = memoryview(buf)
    seq, want = struct.unpack_from("<I16xI", buf, offset)
    if crc32(mv[offset : offset + _BODY], _VERSION_CRC) != want:
        return -1
    return seq


def decode(buf, offset=0):
    """(seq, utc, kind, occ, dose, detail, small), or None if short or the CRC fails.

    `dose` is None for NO_DOSE."""
    if check(buf, offset) < 0:
        return None
    seq, utc, occ, detail, kind, dose, small = struct.unpack_from("<IIIIBBH", buf, offset)
    return (seq, utc, kind, occ, None if dose == NO_DOSE else dose, detail, small)


# -- helpers for the edge that turns events into records --------------------------------------


def code_of(names, name, default=0):
    """Index of `name` in a code table (REASONS, SOURCES, MODES...), or `default`."""
    for i in range(len(names)):
        if names[i] == name:
            return i
    return default


def reason_code(text):
    """Reason text of dosiscore.doses -> `small`: "button" -> 1, "button,assisted" ->
    1 | 9 << 8 (how, then the mode it happened in). Unknown words give 0."""
    comma = text.find(",")
    if comma < 0:
        return code_of(REASONS, text)
    return code_of(REASONS, text[:comma]) | code_of(REASONS, text[comma + 1 :]) << 8


def hash_prefix(hexdigest):
    """First 4 bytes of a schedule's content hash (hex) as a u32; 0 if there is none."""
    if not hexdigest:
        return 0
    try:
        return int(hexdigest[:8], 16)
    except ValueError:
        return 0


def pack_version(text):
    """Firmware version for BOOT's detail: "1.2.3" -> 0x010203 (parts clipped to 0..255)."""
    v = 0
    parts = text.split(".")
    for i in range(3):
        n = 0
        if i < len(parts):
            try:
                n = int(parts[i])
            except ValueError:
                n = 0
        v = (v << 8) | (n & 0xFF)
    return v
