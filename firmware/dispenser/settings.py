"""Settings and the schedule on flash: two copies (A and B), each with a generation and a CRC.

A save overwrites the older copy (temp file + rename, atomic on littlefs) and leaves the newer
one alone, so a power cut during a save, or a copy that flash corruption damaged later, still
leaves the previous good version to fall back on. A load takes the valid copy with the highest
generation; if the newest copy is damaged it says so (`fallbacks`), so the device can log it.
The result is always the old version or the new one, never a mix.

File layout (text): the JSON payload on one line, then "generation crc32-hex" on the last.
"""

import json
import os

from dosiscore.logrec import crc32


class ABStore:
    def __init__(self, root="", fs=None):
        self.root = root
        self.fs = fs  # the simulator's power-loss flash (paths relative to it), or None
        self.writes = 0
        self.fallbacks = []  # names whose newest copy was damaged and the older one was used

    def path(self, name, slot):
        p = "%s.%s" % (name, slot)
        return (self.root + "/" + p) if self.root else p

    def _open(self, name, slot, suffix, mode):
        if self.fs is not None:
            return self.fs.open("%s.%s%s" % (name, slot, suffix), mode)
        return open(self.path(name, slot) + suffix, mode)

    def _read(self, name, slot):
        """(generation, object) of one copy; None if absent; False if present but damaged."""
        try:
            with self._open(name, slot, "", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        try:
            cut = raw.rindex(b"\n")
            body, tail = raw[:cut], raw[cut + 1 :].split()
            gen, crc = int(tail[0]), int(tail[1], 16)
            if crc32(body) != crc:
                return False
            return gen, json.loads(body)
        except (ValueError, IndexError):
            return False

    def load(self, name):
        a = self._read(name, "a")
        b = self._read(name, "b")
        good = [c for c in (a, b) if c]
        if not good:
            return None
        best = good[0] if len(good) == 1 or good[0][0] > good[1][0] else good[1]
        # A damaged copy that is not older than the good one: the newest save was lost.
        for c in (a, b):
            if c is False and len(good) == 1:
                self.fallbacks.append(name)
        return best[1]

    def save(self, name, obj):
        a = self._read(name, "a")
        b = self._read(name, "b")
        ga = a[0] if a else -1
        gb = b[0] if b else -1
        slot = "b" if ga > gb else "a"  # overwrite the older (or damaged) copy
        body = json.dumps(obj).encode()
        data = body + b"\n%d %08x" % (max(ga, gb) + 1, crc32(body))
        with self._open(name, slot, ".tmp", "wb") as f:
            f.write(data)
        if self.fs is not None:
            self.fs.rename("%s.%s.tmp" % (name, slot), "%s.%s" % (name, slot))
        else:
            p = self.path(name, slot)
            os.rename(p + ".tmp", p)
        self.writes += 1

    def usable(self):
        return True
