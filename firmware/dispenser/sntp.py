"""SNTP client (RFC 4330) for when the dispenser is online; never stalls the event loop.

`query(addr)` sends one client request from a non-blocking UDP socket and polls it (select.poll
with a zero timeout, then a short asyncio sleep) until a reply or the timeout: the dose loop
keeps running meanwhile. It returns UTC seconds, or None on a timeout, a network error or a
reply that fails the checks below; it raises nothing else (a cancelled task still gets its
CancelledError), and the socket is always closed.

A reply is believed only if it is 48 bytes, mode 4 (server), version 3 or 4, stratum 1..15
(0 is a kiss-o'-death), leap indicator not 3 (unsynchronised), its originate timestamp is the
random transmit timestamp this request carried (an answer to *this* request, not a late or
forged one), and its transmit timestamp is not zero. A datagram from another address, or
with the wrong originate timestamp, is ignored and the wait goes on; any other bad reply from
the server ends the query with None.

`addr` should be an IP address: name lookup (getaddrinfo) blocks the whole VM on the ESP32
until the resolver answers, and is done once per query when a name is given anyway.

`sync(offer, servers)` asks each server in turn and hands every good answer to
`offer(utc, "ntp", origin=server)` (App.offer_time): the step filter (dosiscore.timesrc)
decides, and counts two different servers as independent witnesses for a large step.
"""

import asyncio
import errno
import select
import socket
import struct
from os import urandom
from time import ticks_diff, ticks_ms

from micropython import const

NTP_PORT = const(123)
NTP_DELTA = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
_POLL_MS = const(20)


def request():
    """A client request (LI 0, version 4, mode 3) and its random transmit timestamp."""
    pkt = bytearray(48)
    pkt[0] = 0x23
    nonce = urandom(8)
    pkt[40:48] = nonce
    return pkt, nonce


def parse(reply, nonce):
    """UTC seconds from a server `reply` to the request that carried `nonce`; None if the
    reply is not a believable answer to it, False if it answers another request."""
    if len(reply) != 48:
        return None
    b0 = reply[0]
    if b0 >> 6 == 3 or (b0 >> 3) & 7 not in (3, 4) or b0 & 7 != 4:
        return None
    if not 1 <= reply[1] <= 15:
        return None
    if bytes(reply[24:32]) != bytes(nonce):
        return False
    secs, frac = struct.unpack("!II", reply[40:48])
    if not secs and not frac:
        return None
    if secs < 0x80000000:  # RFC 4330 3: 1968..2036 is era 0; below that, era 1 (from 2036)
        secs += 0x100000000
    return secs - NTP_DELTA + (1 if frac >= 0x80000000 else 0)


async def query(addr, port=NTP_PORT, timeout_ms=2000):
    """One NTP exchange with `addr`:`port`: UTC seconds (int), or None."""
    try:
        to = socket.getaddrinfo(addr, port)[0][-1]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        s.setblocking(False)
        p = select.poll()
        p.register(s, select.POLLIN)
        pkt, nonce = request()
        s.sendto(pkt, to)
        t0 = ticks_ms()
        while ticks_diff(ticks_ms(), t0) < timeout_ms:
            if not p.poll(0):
                await asyncio.sleep_ms(_POLL_MS)
                continue
            try:
                data, frm = s.recvfrom(64)
            except OSError as e:
                if e.errno == errno.EAGAIN:  # a spurious wake-up
                    continue
                raise
            if frm != to:
                continue  # not from the server we asked
            utc = parse(data, nonce)
            if utc is False:
                continue  # a late or forged answer: wait for ours
            return utc
        return None
    except OSError:  # unreachable, no buffers, no route: no answer
        return None
    finally:
        s.close()


async def sync(offer, servers, timeout_ms=2000, port=NTP_PORT):
    """Query each of `servers` (IP addresses) in turn and offer every good answer as
    `offer(utc, "ntp", origin=server)`; returns how many answers `offer` accepted (truthy)."""
    n = 0
    for addr in servers:
        utc = await query(addr, port, timeout_ms)
        if utc is not None and offer(utc, "ntp", origin=addr):
            n += 1
    return n
