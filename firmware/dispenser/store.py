"""Small JSON records on flash, each replaced atomically (write a temp file, then rename).

Enough for the dose state, the carousel journal and the stored schedule until the
power-fail-safe log and A/B settings replace it (issue "Persistence"). A record that cannot be
read (missing, torn, not JSON) reads as None, never as an exception: boot must go on.
"""

import json
import os


class Store:
    def __init__(self, root="", fs=None):
        self.root = root
        # `fs` takes paths relative to its own root (the simulator's power-loss flash); the
        # built-in one takes them as they are.
        self.fs = fs
        self.writes = 0  # counted: flash wear is a budget (≤ 100 syncs an hour)

    def _open(self, name, mode):
        if self.fs is not None:
            return self.fs.open(name, mode)
        return open(self.path(name), mode)

    def _rename(self, a, b):
        if self.fs is not None:
            self.fs.rename(a, b)
        else:
            os.rename(self.path(a), self.path(b))

    def usable(self):
        """True if a file can be written, read back and removed here (a boot-time probe)."""
        p = self.path(".probe")
        try:
            with open(p, "w") as f:
                f.write("ok")
            with open(p) as f:
                ok = f.read() == "ok"
            os.remove(p)
            return ok
        except OSError:
            return False

    def path(self, name):
        return (self.root + "/" + name) if self.root else name

    def load(self, name):
        try:
            with self._open(name, "r") as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None

    def save(self, name, obj):
        tmp = name + ".tmp"
        with self._open(tmp, "w") as f:
            f.write(json.dumps(obj))
        self._rename(tmp, name)  # atomic on littlefs and POSIX: the old or the new, never a mix
        self.writes += 1


class Journal:
    """The carousel's journal: one record, rewritten before and after every move."""

    def __init__(self, store, name="journal.json"):
        self.store = store
        self.name = name

    def write(self, rec):
        self.store.save(self.name, rec)

    def read(self):
        return self.store.load(self.name)
