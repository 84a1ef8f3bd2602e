"""Small JSON records on flash, each replaced atomically (write a temp file, then rename).

Enough for the dose state, the carousel journal and the stored schedule until the
power-fail-safe log and A/B settings replace it (issue "Persistence"). A record that cannot be
read (missing, torn, not JSON) reads as None, never as an exception: boot must go on.
"""

import json
import os


class Store:
    def __init__(self, root=""):
        self.root = root
        self.writes = 0  # counted: flash wear is a budget (≤ 100 syncs an hour)

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
            with open(self.path(name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def save(self, name, obj):
        p = self.path(name)
        tmp = p + ".tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f)
        os.rename(tmp, p)  # atomic on littlefs and POSIX: the old or the new, never a mix
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
