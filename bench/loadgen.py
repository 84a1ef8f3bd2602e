"""A load generator for the gateway: many simulated dispensers, each publishing as a device does.

Every simulated device has an MQTT 3.1.1 connection of its own (asyncio, raw sockets, one
process for all of them), with what the firmware's uplink (firmware/dispenser/uplink.py) does:

- client id "dosis-<id>", clean session, keepalive 60 s, last will b"offline" (retained, QoS 1)
  on dosis/<id>/status, then SUBSCRIBE dosis/<id>/ack (QoS 1) and PUBLISH b"online" (retained,
  QoS 1) on dosis/<id>/status;
- dose-log records (24 bytes each, built with dosiscore.logrec.encode_into through
  `wire.record_bytes`) in batches of 8, v2 envelope signed with the device's own uplink key
  (`wire.encode_events`), QoS 1 on dosis/<id>/events, seqs increasing from 1 and contiguous
  ([from, next) = exactly the batch's records), at most `window` (4, the firmware's default)
  publishes waiting for their PUBACK at once;
- the gateway's acks on dosis/<id>/ack are checked as the device checks them (the mac, and
  never above the last seq sent); an ack with seq N completes every batch with next - 1 <= N.

For each batch it keeps `t_pub`, time.time() just before the PUBLISH is written to the socket,
and `t_ack`, time.time() when the first ack covering it was read. Heartbeats are not sent.
"""

from __future__ import annotations

import asyncio
import collections
import os
import resource
import struct
import time
from dataclasses import dataclass, field

from dosis.gateway import wire
from dosiscore import logrec
from mosq import enc_len, mqtt_str  # tests/host (on the path: bench_gateway.py)

BATCH = 8
# A day's worth of ordinary records (none of them makes an alert): the dose cycle and the
# carousel. MISSED, NOTIFY, JAM and the like are left out so that escalation does not dominate.
KINDS = (
    logrec.AVAILABLE, logrec.DUE, logrec.OPENING, logrec.OPENED, logrec.TAKEN, logrec.CLOSED,
    logrec.LOUDER, logrec.DUE,
)  # fmt: skip


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def device_id(i: int) -> str:
    return f"d-bench{i:05d}"


def make_batches(ukey: bytes, dev: str, first_seq: int, count: int, utc0: int) -> list:
    """`count` signed events messages for seqs first_seq, first_seq+1, ... (8 per message)."""
    out = []
    seq = first_seq
    for _ in range(count):
        recs = b"".join(
            wire.record_bytes(
                seq + j, KINDS[(seq + j) % len(KINDS)], utc=utc0 + 60 * (seq + j),
                occ=utc0 + 3600 * ((seq + j) // 8), dose=(seq + j) // 8 % 6, detail=(seq + j) % 28,
            )
            for j in range(BATCH)
        )  # fmt: skip
        topic, payload = wire.encode_events(ukey, dev, seq, seq + BATCH, recs)
        out.append(Batch(seq, seq + BATCH, payload))
        seq += BATCH
    return out


@dataclass
class Batch:
    frm: int
    nxt: int
    payload: bytes
    t_pub: float = 0.0
    t_ack: float = 0.0


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + enc_len(len(body)) + body


@dataclass
class Device:
    index: int
    ukey: bytes
    window: int = 4
    id: str = ""
    pending: collections.deque = field(default_factory=collections.deque)
    done: list = field(default_factory=list)
    acked: int = 0
    sent_hi: int = 0
    bad_acks: int = 0
    acks: int = 0

    def __post_init__(self) -> None:
        self.id = device_id(self.index)
        self.t_events = f"dosis/{self.id}/events".encode()
        self.t_ack = f"dosis/{self.id}/ack"
        self.t_status = f"dosis/{self.id}/status".encode()
        self._pid = 0
        self._waits: dict[int, asyncio.Future] = {}
        self._slots = asyncio.Semaphore(self.window)
        self._slot_pids: set[int] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def _next_pid(self) -> int:
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    async def connect(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        cid = f"dosis-{self.id}".encode()
        flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
        body = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack(">H", 60)
        body += mqtt_str(cid) + mqtt_str(self.t_status) + mqtt_str(b"offline")
        self.writer.write(_packet(0x10, body))
        hdr = await self.reader.readexactly(4)
        if hdr[0] != 0x20 or hdr[3] != 0:
            raise RuntimeError(f"{self.id}: CONNACK {hdr!r}")
        self._task = asyncio.create_task(self._read_loop())
        pid = self._next_pid()
        fut = self._waits[pid] = asyncio.get_running_loop().create_future()
        self.writer.write(
            _packet(0x82, struct.pack(">H", pid) + mqtt_str(self.t_ack.encode()) + b"\x01")
        )
        await asyncio.wait_for(fut, 30)
        pid = self._next_pid()
        fut = self._waits[pid] = asyncio.get_running_loop().create_future()
        self.writer.write(
            _packet(0x33, mqtt_str(self.t_status) + struct.pack(">H", pid) + b"online")
        )
        await asyncio.wait_for(fut, 30)

    async def _read_loop(self) -> None:
        r = self.reader
        try:
            while True:
                h = await r.readexactly(2)
                kind, b = h[0], h[1]
                n, shift = b & 0x7F, 7
                while b & 0x80:
                    b = (await r.readexactly(1))[0]
                    n |= (b & 0x7F) << shift
                    shift += 7
                data = await r.readexactly(n) if n else b""
                t = kind & 0xF0
                if t == 0x30:
                    now = time.time()
                    qos = (kind >> 1) & 3
                    tl = struct.unpack_from(">H", data)[0]
                    topic = data[2 : 2 + tl].decode()
                    p = 2 + tl
                    if qos:
                        self.writer.write(_packet(0x40, data[p : p + 2]))
                        p += 2
                    self._on_ack(topic, data[p:], now)
                elif t in (0x40, 0x90):  # PUBACK, SUBACK
                    pid = struct.unpack_from(">H", data)[0]
                    fut = self._waits.pop(pid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                    if pid in self._slot_pids:
                        self._slot_pids.discard(pid)
                        self._slots.release()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return

    def _on_ack(self, topic: str, payload: bytes, now: float) -> None:
        try:
            seq = wire.decode_ack(topic, payload, self.ukey)
        except wire.WireError:
            self.bad_acks += 1
            return
        if seq > self.sent_hi:  # the device ignores an ack above what it sent
            self.bad_acks += 1
            return
        self.acks += 1
        if seq > self.acked:
            self.acked = seq
        while self.pending and self.pending[0].nxt - 1 <= seq:
            b = self.pending.popleft()
            b.t_ack = now
            self.done.append(b)
        if not self.pending:
            self.idle.set()

    async def publish(self, b: Batch) -> None:
        await self._slots.acquire()
        pid = self._next_pid()
        self._slot_pids.add(pid)
        self.idle.clear()
        self.pending.append(b)
        if b.nxt - 1 > self.sent_hi:
            self.sent_hi = b.nxt - 1
        pkt = _packet(0x32, mqtt_str(self.t_events) + struct.pack(">H", pid) + b.payload)
        b.t_pub = time.time()
        self.writer.write(pkt)
        if self.writer.transport.get_write_buffer_size() > 65536:
            await self.writer.drain()

    async def close(self) -> None:
        try:
            self.writer.write(b"\xe0\x00")
            await self.writer.drain()
            self.writer.close()
        except (ConnectionError, OSError):
            pass
        self._task.cancel()


async def connect_all(devices: list[Device], host: str, port: int, parallel: int = 100) -> None:
    sem = asyncio.Semaphore(parallel)

    async def one(d: Device) -> None:
        async with sem:
            await d.connect(host, port)

    await asyncio.gather(*(one(d) for d in devices))


async def run_burst(devices: list[Device], work: dict[str, list[Batch]]) -> None:
    """Every device sends all its batches as fast as its window of 4 PUBACKs allows (a device
    coming back with a backlog), all devices at once."""

    async def one(d: Device) -> None:
        for b in work[d.id]:
            await d.publish(b)

    await asyncio.gather(*(one(d) for d in devices))


async def run_paced(devices: list[Device], work: dict[str, list[Batch]], rate: float) -> None:
    """`rate` batches a second in all, spread evenly: batch k of device i goes out at
    start + (k * len(devices) + i) / rate (so each device sends every len(devices)/rate s)."""
    t0 = time.monotonic() + 0.2
    nd = len(devices)

    async def one(i: int, d: Device) -> None:
        for k, b in enumerate(work[d.id]):
            delay = t0 + (k * nd + i) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await d.publish(b)

    await asyncio.gather(*(one(i, d) for i, d in enumerate(devices)))


async def wait_acked(devices: list[Device], stall_s: float = 60.0) -> bool:
    """Wait until every device has its acks for everything it sent; False if no ack arrived
    for `stall_s` seconds while some were still missing."""
    last = time.monotonic()
    seen = sum(len(d.done) for d in devices)
    while any(d.pending for d in devices):
        await asyncio.sleep(0.05)
        now_done = sum(len(d.done) for d in devices)
        if now_done != seen:
            seen, last = now_done, time.monotonic()
        elif time.monotonic() - last > stall_s:
            return False
    return True


def new_keys(n: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(n)]
