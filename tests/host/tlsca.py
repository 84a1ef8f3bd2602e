"""Test helper: a throw-away PKI for TLS tests, made at test time with `cryptography`.

`make_pki(directory)` writes, all EC P-256 (which MicroPython's mbedtls accepts):

- a CA (`ca_pem`, `ca_der`) and a broker certificate signed by it (`cert`, `key`) for
  IP:127.0.0.1 and DNS:localhost, valid from an hour ago for a day;
- a second CA that signed nothing the broker uses (`wrong_ca_pem`, `wrong_ca_der`): a client
  that trusts only it must refuse the broker;
- a certificate from the right CA for another name only (`misnamed_cert`, `misnamed_key`,
  DNS:elsewhere.invalid): a client that checks the server's name must refuse it.

`pki.misnamed()` is the same PKI with the misnamed certificate as the broker's, for
`Broker(tmp_path, tls=pki.misnamed())`. Nothing here is secret or kept after the test.
"""

import datetime
import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class PKI:
    dir: Path
    ca_pem: Path
    ca_der: Path
    cert: Path  # the broker's certificate (PEM), signed by the CA
    key: Path  # its private key (PEM, unencrypted)
    wrong_ca_pem: Path
    wrong_ca_der: Path
    misnamed_cert: Path
    misnamed_key: Path

    def misnamed(self):
        """This PKI with the certificate for the wrong name as the broker's."""
        return replace(self, cert=self.misnamed_cert, key=self.misnamed_key)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn, now):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key, ca_cert, cn, sans, now):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write_cert(path, cert, der=None):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if der is not None:
        der.write_bytes(cert.public_bytes(serialization.Encoding.DER))


def _write_key(path, key):
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_pki(directory):
    """Generate the CAs and certificates into `directory` (created); returns a `PKI`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = _ca("Dosis test CA", now)
    wrong_key, wrong_cert = _ca("Dosis unrelated CA", now)
    key, cert = _leaf(
        ca_key,
        ca_cert,
        "localhost",
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        now,
    )
    mkey, mcert = _leaf(
        ca_key, ca_cert, "elsewhere.invalid", [x509.DNSName("elsewhere.invalid")], now
    )
    pki = PKI(
        dir=d,
        ca_pem=d / "ca.pem",
        ca_der=d / "ca.der",
        cert=d / "broker.pem",
        key=d / "broker.key",
        wrong_ca_pem=d / "wrong-ca.pem",
        wrong_ca_der=d / "wrong-ca.der",
        misnamed_cert=d / "misnamed.pem",
        misnamed_key=d / "misnamed.key",
    )
    _write_cert(pki.ca_pem, ca_cert, pki.ca_der)
    _write_cert(pki.wrong_ca_pem, wrong_cert, pki.wrong_ca_der)
    _write_cert(pki.cert, cert)
    _write_key(pki.key, key)
    _write_cert(pki.misnamed_cert, mcert)
    _write_key(pki.misnamed_key, mkey)
    del wrong_key
    return pki
