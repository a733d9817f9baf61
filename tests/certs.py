"""A throwaway certificate authority and one server certificate from it, made at test time
(``cryptography``), for the hubs that serve HTTPS (CHP ends TLS: ``c.JupyterHub.ssl_cert``).

Chromium trusts it by its public key (``--ignore-certificate-errors-spki-list``, see
conftest.py): the pages are secure contexts, as on a real site, so ``Secure`` and ``__Host-``
cookies behave as they would there; httpx trusts it by the CA file (``verify``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: the hub's domain and a port domain apart from it, and every host below either
NAMES = ("hub.test", "*.hub.test", "ports-content.test", "*.ports-content.test")


@dataclass(frozen=True)
class Certificate:
    cert: Path  # the server's certificate, then the CA's (the chain CHP sends)
    key: Path
    ca: Path
    spki_sha256: str  # base64 SHA-256 of the server key's SubjectPublicKeyInfo, as Chromium wants it

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts the CA (for httpx's ``verify``)."""
        return ssl.create_default_context(cafile=str(self.ca))


def make_certificate(directory: Path) -> Certificate:
    """A CA and a certificate for ``NAMES`` and 127.0.0.1, valid for two days, in ``directory``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(hours=1), "not_valid_after": now + datetime.timedelta(days=2)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jhproxy-routes test CA")])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(), **valid)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [*(x509.DNSName(name) for name in NAMES), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder(
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])]),
            issuer_name=ca_name,
            public_key=key.public_key(),
            **valid,
        )
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "cert.pem").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    (directory / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    spki_sha256 = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return Certificate(directory / "cert.pem", directory / "key.pem", directory / "ca.pem", spki_sha256)
