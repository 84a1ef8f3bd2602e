"""A filesystem with littlefs's power-loss semantics, over a host directory (the sim's flash).

What a power cut can do to the firmware's files must be modelled, or a power-cut test passes
on a model that cannot fail. littlefs commits a file's new contents only when it is synced
(flush) or closed, and atomically: after a cut the file reads as it was at its last sync,
never half-written. This layer does the same: a file open for writing keeps every change in
RAM and publishes the whole file with write-to-temp + rename (atomic on POSIX) at flush and
close, so a process killed (SIGKILL) at any instant leaves each file exactly as of its last
sync. rename and remove are atomic as on littlefs. Readers see the last synced contents.

Interface (shared with `dispenser.doselog.OsFS`): open(path, mode), rename(a, b), remove(p),
listdir(d), size(p), exists(p), mkdir(d); files: read, readinto, write, seek, tell, flush,
close, and use as a context manager.
"""

import os


class _File:
    def __init__(self, fs, path, mode):
        self.fs = fs
        self.path = path
        self.real = fs.real(path)
        self.writable = "w" in mode or "a" in mode or "+" in mode
        self.binary = "b" in mode
        if "w" in mode:
            self.data = bytearray()
        else:
            try:
                with open(self.real, "rb") as f:
                    self.data = bytearray(f.read())
            except OSError:
                if "a" in mode:
                    self.data = bytearray()
                else:
                    raise
        self.pos = len(self.data) if "a" in mode else 0
        self.dirty = "w" in mode  # a new, empty file exists once it is synced
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def write(self, b):
        if not self.writable:
            raise OSError(9)  # EBADF
        if isinstance(b, str):
            b = b.encode()
        n = len(b)
        end = self.pos + n
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[self.pos : end] = b
        self.pos = end
        self.dirty = True
        return n

    def read(self, n=-1):
        end = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
        out = bytes(self.data[self.pos : end])
        self.pos = end
        return out if self.binary else out.decode()

    def readinto(self, buf):
        n = min(len(buf), len(self.data) - self.pos)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n

    def seek(self, off, whence=0):
        if whence == 1:
            off += self.pos
        elif whence == 2:
            off += len(self.data)
        self.pos = max(0, off)
        return self.pos

    def tell(self):
        return self.pos

    def flush(self):
        if self.writable and self.dirty:
            tmp = self.real + ".sync"
            with open(tmp, "wb") as f:
                f.write(self.data)
            os.rename(tmp, self.real)  # the sync: all of it, or (if cut here) none of it
            self.dirty = False
            self.fs.syncs += 1

    def close(self):
        if not self.closed:
            self.flush()
            self.closed = True


class SimFS:
    def __init__(self, root):
        self.root = root
        self.syncs = 0

    def real(self, path):
        return self.root + "/" + path if path else self.root

    def open(self, path, mode="r"):
        return _File(self, path, mode)

    def rename(self, a, b):
        os.rename(self.real(a), self.real(b))
        self.syncs += 1

    def remove(self, path):
        os.remove(self.real(path))
        self.syncs += 1

    def listdir(self, d=""):
        return [n for n in os.listdir(self.real(d)) if not n.endswith(".sync")]

    def size(self, path):
        return os.stat(self.real(path))[6]

    def exists(self, path):
        try:
            os.stat(self.real(path))
            return True
        except OSError:
            return False

    def mkdir(self, d):
        try:
            os.mkdir(self.real(d))
        except OSError:
            pass
