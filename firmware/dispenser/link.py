"""The serial link: the device protocol of docs/protocol.md, one asyncio task on a stream.

Framing, limits, authentication (HMAC-SHA256, a counter kept on flash), pairing and the
event stream live here; the commands themselves are in `dispenser.commands`. Nothing a host
sends can stop the dose loop: a line is read in pieces into one preallocated buffer (longer
lines are dropped as they arrive), every request is answered or refused with an error code,
and an exception in a command becomes an `internal` error reply and a logged fault.
"""

import asyncio
import binascii
import gc
import json
import os

from micropython import const

from dosiscore import auth

PROTO = const(1)
MAX_LINE = const(4096)
_PAIR_MS = const(120_000)  # the pairing window after a service-button press
_RESERVE = const(1024)  # counters reserved per flash write (see docs/protocol.md)
_EVQ = const(16)  # events waiting for the writer; older ones are dropped (and counted)
_MAC_TAIL = const(74)  # len(',"mac":"') + 64 hex + len('"}')
_KEYFILE = "link.json"
_PIECE = const(128)
_FAIL_BURST = const(8)
_FAIL_EVERY_MS = const(300_000)


def _nothing():
    pass


def _ready(poller):
    for _ in poller.ipoll(0):
        return True
    return False


class Refused(Exception):
    """A request the device will not carry out: an error code and one sentence."""

    def __init__(self, code, msg, extra=None):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.extra = extra


class Link:
    """The protocol on the byte streams `inp` / `out` for a board, its store and,
    once it runs, the app (None while the device has no schedule)."""

    def __init__(self, board, store, inp, out, device_id, version):
        import select

        self.board = board
        self.store = store
        self.inp = inp  # byte streams: the UART (stdin/stdout) or the simulator's pty
        self.out = out
        self._reader = asyncio.StreamReader(inp)
        self._rpoll = select.poll()
        self._rpoll.register(inp, select.POLLIN)
        self._wpoll = select.poll()
        self._wpoll.register(out, select.POLLOUT)
        self._one = bytearray(1)
        self.device_id = device_id
        self.version = version
        self.app = None
        self.log = None
        self.sched_hash = None  # of the schedule in force (set by runtime)
        self.sched_doc = None
        self.emit_fn = None  # the runtime's emit: refusals and pairing go to the dose log
        self.on_reboot = _nothing  # called once a reply that asks for a reboot is written
        self._buf = bytearray(MAX_LINE)
        self._n = 0
        self._over = False
        self._lock = asyncio.Lock()
        self._evq = []
        self._ev_flag = asyncio.Event()
        self._ev_dropped = 0
        self.monitoring = False
        self.pair_until = None  # clock ticks (ms) until which pairing is allowed
        self.code_root = ""  # the app's filesystem root: deploy.json (see boot.py) lives there
        self.refused = 0
        self.unlogged = 0  # refusals over the logging budget (see refuse())
        self._fail_tokens = _FAIL_BURST
        self._fail_at = board.clock.ticks_ms()
        self.lost_lines = 0
        self.reboot = False
        self.up_ms = board.clock.ticks_ms()
        self.net = None  # dispenser.net.Net, once started (main.py, sim/serve.py)
        saved = store.load(_KEYFILE) or {}
        key = saved.get("key")
        self._key = binascii.unhexlify(key) if isinstance(key, str) and len(key) == 64 else None
        floor = saved.get("floor", 0)
        self._floor = floor if isinstance(floor, int) else 0
        self._last = self._floor  # nothing at or below the last reservation is accepted
        from dispenser import commands  # imported here: it needs this module first

        self.cmds = commands

    # -- pairing ---------------------------------------------------------------------------

    def paired(self):
        return self._key is not None

    def pairing(self):
        t = self.pair_until
        return t is not None and self.board.clock.ticks_ms() - t < 0

    def open_pairing(self):
        self.pair_until = self.board.clock.ticks_ms() + _PAIR_MS

    def pair(self, nonce):
        """A new key from the hardware RNG and the host's nonce; the old key stops working."""
        import hashlib

        h = hashlib.sha256(os.urandom(32))
        h.update(nonce)
        key = h.digest()
        self._floor = 0
        self._last = 0
        self.store.save(_KEYFILE, {"key": binascii.hexlify(key).decode(), "floor": 0})
        self._key = key
        self.pair_until = None
        app = self.app
        if app is not None and app.service:
            # Pairing done: back to the citizen's screen, and the next press of the service
            # button opens a new window (one press, not two).
            app.service = False
            app.emit("service", None, "off")
            app.disp_wake.set()
        self._emit("paired", None, "")
        return binascii.hexlify(key).decode()

    def watch_service(self):
        """No schedule, so no app: the service button still opens the pairing window."""
        from dispenser.buttons import Buttons

        b = self.board
        buttons = Buttons(b.btn_taken, b.btn_service, b.clock, b.flag())

        async def watch():
            while True:
                if await buttons.next_press() == "service":
                    self.open_pairing()

        asyncio.create_task(watch())

    # -- events ----------------------------------------------------------------------------

    def on_event(self, kind, occ, detail, seq=None):
        """Called for every event the firmware emits (from the dose loop: no I/O here)."""
        if kind == "service":
            if detail == "on":
                self.open_pairing()
            else:
                self.pair_until = None
        if not self.monitoring:
            return
        if len(self._evq) >= _EVQ:
            self._evq.pop(0)
            self._ev_dropped += 1
        clock = self.board.clock
        t = clock.now() if clock.valid() else None
        self._evq.append((kind, t, occ, detail, seq))
        self._ev_flag.set()

    def refuse(self, reason):
        """Count a refused request and log it, within a budget: a flood of forged requests
        must not push real dose records out of the log or wear the flash (8 at once, then
        one every 5 minutes; `refused` in info counts them all)."""
        self.refused += 1
        now = self.board.clock.ticks_ms()
        tokens = min(_FAIL_BURST, self._fail_tokens + (now - self._fail_at) / _FAIL_EVERY_MS)
        self._fail_at = now
        if tokens >= 1:
            self._fail_tokens = tokens - 1
            self._emit("auth_fail", None, reason)
        else:
            self._fail_tokens = tokens
            self.unlogged += 1

    def _emit(self, kind, occ, detail):
        if self.emit_fn is not None:
            self.emit_fn(kind, occ, detail)

    async def events_task(self):
        while True:
            await self._ev_flag.wait()
            self._ev_flag.clear()
            while self._evq:
                kind, t, occ, detail, seq = self._evq.pop(0)
                ev = {"ev": kind, "t": t, "dose": occ[1] if occ else None}
                if occ:
                    ev["occ"] = occ[0]
                ev["detail"] = detail if isinstance(detail, str) else str(detail)
                ev["seq"] = seq
                if self._ev_dropped:
                    ev["dropped"] = self._ev_dropped
                    self._ev_dropped = 0
                await self._write_line(json.dumps(ev, separators=(",", ":")).encode())

    # -- reading ---------------------------------------------------------------------------

    async def run(self):
        """Read lines forever (returns at end of input: the host side went away).

        One byte is awaited through asyncio (no polling while the line is quiet); whatever
        else has already arrived is then read at once, byte by byte into the line buffer,
        without blocking: a partial line never stalls the loop (MicroPython's stream read(n)
        and readline() would block until n bytes or a newline)."""
        asyncio.create_task(self.events_task())
        one = self._one
        while True:
            try:
                first = await self._reader.read(1)
            except OSError:  # the pseudo-terminal or the port went away
                return
            if not first:
                return
            c = first[0]
            budget = 512  # bytes handled before yielding to the other tasks
            while True:
                if c == 10:  # end of a line
                    await self._take()
                    if self.reboot:
                        return
                elif self._over:
                    pass  # the rest of an over-long line: dropped as it arrives
                elif self._n >= MAX_LINE:
                    self._over = True
                    self._n = 0
                else:
                    self._buf[self._n] = c
                    self._n += 1
                budget -= 1
                if budget <= 0 or not _ready(self._rpoll):
                    break
                try:
                    if not self.inp.readinto(one):
                        return
                except OSError:
                    return
                c = one[0]
            if self._n == 0:
                gc.collect()  # between lines: an idle point for the link

    async def _take(self):
        over = self._over
        n = self._n
        self._n = 0
        self._over = False
        if over:
            await self._error(None, "too_long", "line over %d bytes discarded" % MAX_LINE)
            return
        if n and self._buf[n - 1] == 13:  # "\r\n"
            n -= 1
        if n == 0:
            return
        line = bytes(memoryview(self._buf)[:n])
        try:
            await self._request(line)
        except MemoryError:
            gc.collect()
            await self._error(None, "no_memory", "out of memory: the device goes on dispensing")

    async def _request(self, line):
        try:
            req = json.loads(line)
        except (ValueError, UnicodeError):
            req = None
        if not isinstance(req, dict):
            await self._error(None, "bad_json", "not a JSON object")
            return
        rid = req.get("id")
        cmd = req.get("cmd")
        if not isinstance(rid, int) or isinstance(rid, bool) or not 0 < rid < 0x80000000:
            await self._error(None, "bad_request", "id must be an integer 1..2147483647")
            return
        if not isinstance(cmd, str):
            await self._error(rid, "bad_request", "cmd must be a string")
            return
        entry = self.cmds.lookup(cmd, self.board)
        if entry is None:
            # The name is not echoed: a reply must stay valid UTF-8 whatever was sent.
            await self._error(rid, "unknown_cmd", "no such command (see docs/protocol.md)")
            return
        fn, needs_auth = entry
        ctr = None
        if needs_auth:
            why = self._check(req, line)
            if why is not None:
                self.refuse(why.code)
                # A replay refusal is signed (the mac was good): a host may trust its "min".
                sign = req.get("ctr") if why.code == "replay" else None
                await self._error(rid, why.code, why.msg, why.extra, sign)
                return
            ctr = req["ctr"]
        args = req.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            await self._error(rid, "bad_args", "args must be an object", ctr=ctr)
            return
        del req
        try:
            data = await fn(self, args)
        except Refused as e:
            await self._error(rid, e.code, e.msg, e.extra, ctr)
            return
        except MemoryError:
            gc.collect()
            await self._error(rid, "no_memory", "out of memory: try again", ctr=ctr)
            return
        except Exception as e:  # a bug in a command: report, log, keep serving
            self._emit("fault", None, "link %s: %s %s" % (cmd[:20], type(e).__name__, e))
            await self._error(rid, "internal", "%s failed: %s" % (cmd[:20], e), ctr=ctr)
            return
        await self._reply(rid, data, ctr)
        if self.reboot:
            self.on_reboot()

    def _check(self, req, line):
        """None if the request is authentic and fresh, else the Refused to send."""
        if self._key is None:
            return Refused("not_paired", "not paired: press the service button, then pair")
        mac = req.get("mac")
        if not isinstance(mac, str) or len(mac) != 64 or len(line) <= _MAC_TAIL:
            return Refused("auth", "missing or malformed mac")
        if line[-_MAC_TAIL:] != b',"mac":"' + mac.encode() + b'"}':
            return Refused("auth", "mac must be the last member")
        if mac != mac.lower():
            return Refused("auth", "mac must be lowercase hex")
        try:
            got = binascii.unhexlify(mac)
        except ValueError:
            return Refused("auth", "mac is not hex")
        h = auth.Hmac(self._key)
        h.update(memoryview(line)[: len(line) - _MAC_TAIL])
        if not auth.equal(h.digest(), got):
            return Refused("auth", "wrong mac: the host's key is not this device's")
        ctr = req.get("ctr")
        if not isinstance(ctr, int) or isinstance(ctr, bool) or not 0 < ctr < (1 << 64):
            return Refused("auth", "ctr must be an integer 1..2**64-1")
        if ctr <= self._last:
            return Refused("replay", "counter not above the last one", {"min": self._last + 1})
        self._last = ctr
        if ctr > self._floor:
            # Reserve ahead so that a reboot never re-accepts a counter already used.
            self._floor = ctr + _RESERVE
            self.store.save(
                _KEYFILE, {"key": binascii.hexlify(self._key).decode(), "floor": self._floor}
            )
        return None

    # -- writing ---------------------------------------------------------------------------

    async def _write_line(self, data, more=None):
        async with self._lock:
            try:
                await self._put(data)
                if more is not None:
                    for part in more:
                        await self._put(part)
                await self._put(b"\n")
            except OSError:  # nobody at the other end (a pseudo-terminal closed): drop it
                self.lost_lines += 1

    async def _put(self, data):
        """Write in pieces, each only once the stream can take more: a long reply on a slow
        line never blocks the loop for more than one piece (128 bytes: 11 ms at 115200)."""
        mv = memoryview(data)
        for i in range(0, len(mv), _PIECE):
            while not _ready(self._wpoll):
                await asyncio.sleep_ms(2)  # pyright: ignore[reportAttributeAccessIssue]
            self.out.write(mv[i : i + _PIECE])
        await asyncio.sleep_ms(0)  # pyright: ignore[reportAttributeAccessIssue]

    async def _error(self, rid, code, msg, extra=None, ctr=None):
        body = {"err": code, "msg": msg}
        if extra:
            for k in extra:
                body[k] = extra[k]
        await self._send(rid, False, body, ctr)

    async def _reply(self, rid, data, ctr):
        blob = None
        if isinstance(data, tuple):  # (data, bytes to send base64-encoded as data["recs"])
            data, blob = data
        await self._send(rid, True, data, ctr, blob)

    async def _send(self, rid, ok, body, ctr, blob=None):
        """One reply line: {"id":..,"ok":true,"data":{..}} or {"id":..,"ok":false,"err":..};
        `blob` goes inside data as "recs":"<base64>", written in pieces (no big string);
        an authenticated request's reply carries its ctr and a mac over everything before."""
        text = json.dumps(body, separators=(",", ":")).encode()
        rid = b"null" if rid is None else b"%d" % rid
        parts = []
        if ok:
            head = b'{"id":' + rid + b',"ok":true,"data":'
            if blob is not None:
                parts.append(text[:-1])  # data without its closing brace
                parts.append(b',"recs":"')
                step = 765  # a multiple of 3: base64 pieces join without padding between
                mv = memoryview(blob)
                for i in range(0, len(blob), step):
                    piece = mv[i : i + step]
                    parts.append(binascii.b2a_base64(piece, newline=False))  # pyright: ignore[reportArgumentType]
                parts.append(b'"}')
            else:
                parts.append(text)
        else:
            head = b'{"id":' + rid + b',"ok":false,' + text[1:-1]
        if ctr is not None:
            parts.append(b',"ctr":%d' % ctr)
            h = auth.Hmac(self._key)
            h.update(head)
            for p in parts:
                h.update(p)
            parts.append(b',"mac":"' + binascii.hexlify(h.digest()) + b'"}')
        else:
            parts.append(b"}")
        await self._write_line(head, parts)
