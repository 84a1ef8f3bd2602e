"""The TLS context for the MQTT uplink: the broker must prove itself with our CA, by name.

`context(cadata)` is what `dispenser.mqtt.Client(..., ssl=...)` takes. Plain MQTT is chosen by
passing no context at all; there is deliberately no "encrypt but trust anyone" helper.

What MicroPython's ssl does here (checked on the unix port, Mbed TLS 3.6):

- `ssl.SSLContext(PROTOCOL_TLS_CLIENT)` starts with verify_mode CERT_NONE, unlike CPython:
  CERT_REQUIRED is set explicitly, or any certificate would do.
- `load_verify_locations(cadata=...)` hands the bytes to mbedtls_x509_crt_parse. Builds without
  PEM parsing (the unix port's) reject PEM with ValueError("invalid cert"), so PEM is decoded to
  DER here; every certificate of a PEM bundle is loaded. DER is passed as it is.
- `asyncio.open_connection(host, port, ssl=ctx)` wraps the socket with
  server_hostname=host, and mbedtls then checks the certificate's names against it: a DNS name
  against the SAN DNS entries (or the CN), an IP address against the SAN IP entries. So the
  broker's certificate must name exactly what the dispenser dials (IP:192.168.x.y if it dials
  the address).
- The handshake runs inside the stream's first write/read on the non-blocking socket, so it
  costs the event loop only its computing time (ECDHE, the signature check); a certificate
  that fails verification raises ValueError with mbedtls's reason ("...not correctly signed
  by the trusted CA", "...Common Name (CN) does not match..."), a reset raises OSError.
"""

import ssl
from binascii import a2b_base64

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


def ders(cadata):
    """The DER certificates in `cadata`: PEM (one or more certificates) or one DER blob."""
    if isinstance(cadata, str):
        cadata = cadata.encode()
    if _BEGIN not in cadata:
        return [bytes(cadata)]
    out = []
    i = 0
    while True:
        a = cadata.find(_BEGIN, i)
        if a < 0:
            break
        b = cadata.find(_END, a)
        if b < 0:
            raise ValueError("PEM certificate without an END line")
        body = b"".join(cadata[a + len(_BEGIN) : b].split())
        out.append(a2b_base64(body))
        i = b + len(_END)
    return out


def context(cadata):
    """A client SSLContext that requires the broker's certificate to chain to `cadata` (bytes,
    PEM or DER) and to name the host the client connects to."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    for der in ders(cadata):
        ctx.load_verify_locations(cadata=der)
    return ctx
