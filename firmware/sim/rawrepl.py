"""The virtual dispenser's service REPL: MicroPython's REPL protocol on the link, for mpremote.

After an authenticated `service` command the ESP32 leaves the app and MicroPython's own REPL
takes the UART (docs/protocol.md, "Service mode"). The unix port cannot hand its REPL to a
pseudo-terminal, so `sim.serve` runs this emulator on the same byte streams, inside the same
process, well enough that real `mpremote` (its SerialTransport, `fs`, `exec`, `soft-reset`,
`reset`) works against it:

- friendly REPL (the banner, `>>> `, a line editor without history), Ctrl-A into the raw REPL;
- raw REPL (shared/runtime/pyexec.c): code up to Ctrl-D, "OK", the output, \\x04, the
  traceback, \\x04, ">"; Ctrl-C clears the buffer, Ctrl-B goes back to the friendly REPL, an
  empty Ctrl-D is a soft reset ("MPY: soft reboot", then the raw REPL again);
- raw-paste mode (\\x05A\\x01): "R\\x01", a 128-byte window (2 bytes, little-endian), one
  \\x01 per window consumed, \\x04 to acknowledge the end, then the output as in the raw REPL;
- output cooked as the ESP32 cooks it ("\\n" becomes "\\r\\n"): `print` in the host's code is
  this module's, tracebacks are rewritten.

The device's flash is the directory `root` (STATE_DIR/flash). MicroPython has no chroot, so the
host's code runs with `os` and `uos` replaced by `FlashOS` (in sys.modules: `import os` gets
it) and `open` by one that maps paths the same way: "/main.py" is root/main.py, ".." never
leaves root (the root is its own parent, as "/" is). It keeps mpremote's file operations on the
virtual flash; it is not a sandbox against code that means harm (the technician holds the key).
`machine` is a shim too: reset() ends the firmware with exit code 3 (the supervisor starts it
again: a hard reset), soft_reset() is the raw REPL's soft reset.

The watchdog, as on the ESP32: it cannot be stopped, and the REPL keeps it fed for the service
budget only (main.py's timer), so the device goes back to the app by itself when the budget is
spent. A soft reset deinitialises MicroPython's timers but not the watchdog: the feeder is gone
and the device resets `wdt_ms` later. The emulator does the same (exit code 3), checked while it
waits for input (a host program that never returns hangs it; the ESP32 would reset).
"""

import errno
import io
import os
import select
import sys
import time

RESET = 3  # exit code: a hard reset, the supervisor starts the firmware again
STOP = 0  # end of input: the supervisor is stopping
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_SOFT = b"MPY: soft reboot\r\n"
_WINDOW = 128  # raw-paste window: half of MicroPython's 256-byte stdin buffer
_ENOTDIR = 20  # littlefs's LFS_ERR_NOTDIR; MicroPython's errno has no name for it
_S_IFDIR = 0x4000
_S_IFREG = 0x8000
_ME = 'rawrepl.py"'  # this file's frames are left out of tracebacks


class Reset(BaseException):
    """machine.reset() in the host's code, or the watchdog: the process ends (exit code 3)."""


def _text(b):
    """Output as the ESP32 sends it: UTF-8, every "\\n" as "\\r\\n"."""
    if not isinstance(b, (bytes, bytearray)):
        b = str(b).encode()
    return bytes(b).replace(b"\n", b"\r\n")


def norm(cwd, path):
    """The absolute, normalised device path of `path` seen from `cwd` (itself normalised):
    "." and empty parts dropped, ".." goes up but never above "/"."""
    if isinstance(path, (bytes, bytearray)):
        path = bytes(path).decode()
    if not isinstance(path, str):
        raise TypeError("a path must be a string")
    full = path if path.startswith("/") else cwd + "/" + path
    parts = []
    for p in full.split("/"):
        if p == "" or p == ".":
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/" + "/".join(parts)


class FlashOS:
    """The parts of the ESP32's `os` that work on the filesystem, on the directory `root`."""

    sep = "/"

    def __init__(self, root):
        self.root = root.rstrip("/")
        self.cwd = "/"

    def real(self, path):
        return self.root + norm(self.cwd, path)

    def _stat(self, path):
        try:
            return os.stat(self.real(path))
        except OSError as e:
            raise OSError(e.errno if e.errno else errno.ENOENT)

    def _isdir(self, st):
        return st[0] & 0o170000 == 0o040000

    # -- the calls mpremote and a deploy make ---------------------------------------------------

    def getcwd(self):
        return self.cwd

    def chdir(self, path):
        new = norm(self.cwd, path)
        if not self._isdir(self._stat(new)):
            raise OSError(_ENOTDIR)
        self.cwd = new
        os.chdir(self.root + new)

    def stat(self, path):
        """As littlefs reports it: (mode, 0, 0, 0, 0, 0, size, mtime, mtime, mtime)."""
        st = self._stat(path)
        d = self._isdir(st)
        mtime = int(st[8])
        return (_S_IFDIR if d else _S_IFREG, 0, 0, 0, 0, 0, 0 if d else st[6], mtime, mtime, mtime)

    def ilistdir(self, path=None):
        """(name, type, inode, size) for each entry, as on the ESP32."""
        where = self.cwd if path is None or path == "" else path
        if not self._isdir(self._stat(where)):
            raise OSError(_ENOTDIR)
        base = self.real(where)
        out = []
        for entry in os.ilistdir(base):
            name = entry[0]
            if name in (".", ".."):
                continue
            try:
                st = os.stat(base.rstrip("/") + "/" + name)
            except OSError:
                continue
            d = self._isdir(st)
            out.append((name, _S_IFDIR if d else _S_IFREG, 0, 0 if d else st[6]))
        return iter(out)

    def listdir(self, path=None):
        return [e[0] for e in self.ilistdir(path)]

    def mkdir(self, path):
        os.mkdir(self.real(path))

    def rmdir(self, path):
        if norm(self.cwd, path) == "/":
            raise OSError(errno.EPERM)
        os.rmdir(self.real(path))

    def remove(self, path):
        if self._isdir(self._stat(path)):
            raise OSError(errno.EISDIR)
        os.remove(self.real(path))

    def rename(self, old, new):
        if norm(self.cwd, old) == "/" or norm(self.cwd, new) == "/":
            raise OSError(errno.EPERM)
        os.rename(self.real(old), self.real(new))

    def statvfs(self, path="/"):
        """Plausible littlefs numbers for a 2 MB data partition of 4 KB blocks."""
        self._stat(path)
        return (4096, 4096, 512, 384, 384, 0, 0, 0, 0, 255)

    def sync(self):
        pass

    def urandom(self, n):
        return os.urandom(n)

    def open(self, path, mode="r", *args, **kw):
        if not isinstance(path, (str, bytes, bytearray)):
            raise OSError(errno.EBADF)  # no file descriptors of the host's process
        return open(self.real(path), mode, *args, **kw)


class Machine:
    """The `machine` the host's code sees: reset() and soft_reset() (the unix port has none)."""

    def reset(self):
        raise Reset("machine.reset()")

    def soft_reset(self):
        raise SystemExit  # what MicroPython's machine.soft_reset() raises


class Repl:
    """The REPL on the byte streams `inp` / `out` with the flash at `root`.

    `wdt_ms`: the watchdog's timeout (None: none was started, nothing resets the device);
    `budget_s`: how long the service session keeps it fed; `log`: diagnostics (stderr)."""

    def __init__(self, inp, out, root, wdt_ms=None, budget_s=None, log=None):
        self.inp = inp
        self.out = out
        self.fs = FlashOS(root)
        self.wdt_ms = wdt_ms
        self.log = log or (lambda *a: None)
        self._one = bytearray(1)
        self._poll = select.poll()
        self._poll.register(inp, select.POLLIN)
        self.budget_at = None
        if wdt_ms is not None and budget_s is not None:
            # the feeder stops at the end of the budget; the watchdog fires wdt_ms later
            self.budget_at = time.ticks_add(time.ticks_ms(), budget_s * 1000 + wdt_ms)
        self.wdt_at = None  # set by a soft reset: nothing feeds the watchdog any more
        self.raw = False
        self.g = {}
        self._fresh()

    # -- plumbing -------------------------------------------------------------------------------

    def _w(self, data):
        self.out.write(data)

    def _print(self, *args, sep=" ", end="\n", file=None):
        if file is not None:
            print(*args, sep=sep, end=end, file=file)
            return
        self._w(_text(sep.join([str(a) for a in args]) + end))

    def _fresh(self):
        """A new __main__ namespace (at start and at each soft reset), with the shims."""
        fs = self.fs
        sys.modules["os"] = fs  # pyright: ignore[reportArgumentType]
        sys.modules["uos"] = fs  # pyright: ignore[reportArgumentType]
        sys.modules["machine"] = Machine()  # pyright: ignore[reportArgumentType]
        self.g = {"__name__": "__main__", "print": self._print, "open": fs.open}

    def _deadline(self):
        d = None
        for t in (self.wdt_at, self.budget_at):
            if t is not None and (d is None or time.ticks_diff(t, d) < 0):
                d = t
        return d

    def _byte(self):
        """The next input byte, or -1 at the end of input. Raises Reset when the watchdog
        would reset the ESP32 while it waits."""
        while True:
            d = self._deadline()
            wait = -1
            if d is not None:
                wait = time.ticks_diff(d, time.ticks_ms())
                if wait <= 0:
                    if d == self.wdt_at:
                        raise Reset("watchdog: nothing fed it since the soft reset")
                    raise Reset("watchdog: the service budget is spent")
            if self._poll.poll(wait):
                try:
                    n = self.inp.readinto(self._one)
                except OSError:  # the pseudo-terminal went away
                    return -1
                return self._one[0] if n else -1

    def _traceback(self, e):
        buf = io.StringIO()
        sys.print_exception(e, buf)  # pyright: ignore[reportArgumentType]
        text = buf.getvalue()  # pyright: ignore[reportAttributeAccessIssue]
        lines = [ln for ln in text.split("\n") if _ME not in ln]
        return _text("\n".join(lines))

    def _soft_reset(self):
        """As MicroPython's soft reset: a fresh interpreter state, boot.py (prints nothing),
        then the REPL it was in. The watchdog's feeder (a machine.Timer) is gone."""
        self._fresh()
        self._w(_SOFT)
        if self.wdt_ms is not None and self.wdt_at is None:
            self.wdt_at = time.ticks_add(time.ticks_ms(), self.wdt_ms)
            self.log("service: soft reset: the watchdog resets the device in %d ms" % self.wdt_ms)

    def _execute(self, src, mode="exec"):
        """Compile and run `src`; returns (exception or None, soft reset asked)."""
        try:
            code = compile(bytes(src).decode(), "<stdin>", mode)
            if mode == "eval":
                v = eval(code, self.g)
                if v is not None:
                    self._w(_text(repr(v) + "\n"))
            else:
                exec(code, self.g)
        except Reset:
            raise
        except SystemExit:
            return None, True
        except BaseException as e:  # the host's code: its traceback goes back to the host
            return e, False
        return None, False

    # -- the REPLs --------------------------------------------------------------------------

    def run(self):
        """Serve until a reset (RESET) or the end of input (STOP)."""
        os.chdir(self.fs.root)
        self._banner()
        try:
            while True:
                c = self._raw_step() if self.raw else self._friendly_step()
                if c is not None:
                    return c
        except Reset as e:
            self.log("service: %s: resetting" % e)
            return RESET

    def _banner(self):
        impl = sys.implementation
        v = ".".join([str(x) for x in impl.version[:3]])  # pyright: ignore[reportIndexIssue]
        self._w(
            b"MicroPython v"
            + v.encode()
            + b"; Dosis virtual dispenser (service REPL) on the unix port\r\n"
            + b'Type "help()" for more information.\r\n>>> '
        )

    def _friendly_step(self):
        """One friendly-REPL line (or control key). Returns an exit code to stop."""
        line = bytearray()
        esc = False
        while True:
            c = self._byte()
            if c < 0:
                return STOP
            if esc:  # an escape sequence (arrow keys): swallowed up to its final byte
                esc = c == 0x5B or not (0x40 <= c <= 0x7E)
                continue
            if c == 0x1B:
                esc = True
            elif c == 0x01:  # Ctrl-A: the raw REPL
                self._w(b"\r\n" + _RAW_BANNER + b">")
                self.raw = True
                return None
            elif c == 0x02:  # Ctrl-B: the banner again
                self._w(b"\r\n")
                self._banner()
                return None
            elif c == 0x03:  # Ctrl-C: drop the line
                self._w(b"\r\n>>> ")
                return None
            elif c == 0x04:
                if not line:
                    # A soft reset from the friendly REPL runs main.py: the app starts again.
                    self._w(b"\r\n" + _SOFT)
                    raise Reset("soft reset in the friendly REPL: main.py starts the app")
            elif c in (0x08, 0x7F):
                if line:
                    line.pop()
                    self._w(b"\x08 \x08")
            elif c == 0x0D:
                self._w(b"\r\n")
                if line.strip():
                    self._friendly_run(line)
                self._w(b">>> ")
                return None
            elif c >= 0x20 or c == 0x09:
                line.append(c)
                self._w(bytes((c,)))

    def _friendly_run(self, line):
        err, soft = self._execute(line, "eval")
        if isinstance(err, SyntaxError):
            err, soft = self._execute(line, "exec")
        if err is not None:
            self._w(self._traceback(err))
        if soft:
            self._w(_SOFT)
            raise Reset("soft reset in the friendly REPL: main.py starts the app")

    def _raw_step(self):
        """One raw-REPL command: code up to Ctrl-D, or a control key. An exit code stops."""
        buf = bytearray()
        while True:
            c = self._byte()
            if c < 0:
                return STOP
            if c == 0x01:  # Ctrl-A: raw-paste request ("\x05A"), else the raw REPL again
                if len(buf) == 2 and buf[0] == 0x05:
                    if buf[1] != 0x41:
                        self._w(b"R\x00>")
                        return None
                    return self._paste()
                self._w(_RAW_BANNER + b">")
                return None
            if c == 0x02:  # Ctrl-B: the friendly REPL
                self._w(b"\r\n")
                self.raw = False
                self._banner()
                return None
            if c == 0x03:  # Ctrl-C: clear the buffer
                buf = bytearray()
            elif c == 0x04:
                break
            else:
                buf.append(c)
        self._w(b"OK")
        if not buf:  # an empty Ctrl-D: soft reset, back in the raw REPL
            self._w(b"\r\n")
            self._soft_reset()
            self._w(_RAW_BANNER + b">")
            return None
        self._finish(*self._execute(buf))
        return None

    def _finish(self, err, soft):
        """The end of a command: \\x04, the traceback (if any), \\x04, then the prompt (after
        a soft reset, the raw REPL's banner first)."""
        self._w(b"\x04")
        if err is not None:
            self._w(self._traceback(err))
        self._w(b"\x04")
        if soft:
            self._soft_reset()
            self._w(_RAW_BANNER)
        self._w(b">")

    def _paste(self):
        """Raw-paste mode, as pyexec.c's stdin reader: flow-controlled, then run."""
        self._w(b"R\x01" + bytes((_WINDOW & 0xFF, _WINDOW >> 8)) + b"\x01")
        buf = bytearray()
        left = _WINDOW
        while True:
            c = self._byte()
            if c < 0:
                return STOP
            if c == 0x04 or c == 0x03:
                self._w(b"\x04")  # the end, acknowledged
                if c == 0x03:
                    self._finish(KeyboardInterrupt(), False)
                    return None
                break
            buf.append(c)
            left -= 1
            if left == 0:
                self._w(b"\x01")  # room for one more window
                left = _WINDOW
        self._finish(*self._execute(buf))
        return None
