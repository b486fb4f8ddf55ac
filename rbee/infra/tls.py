"""The fleet's own certificate authority, in RBEE_HOME/tls: it signs a certificate for each hive (and for the
queen when it listens off loopback), and every rbee daemon pins it. No public CA is involved and none is needed:
only rbee's own components talk to each other over these links.

Keys are EC P-256, made here and written private; a hive's key reaches its machine over SSH, with the install.
A leaf is issued again when the names it must carry change or when it has less than 30 days left.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rbee.infra.secrets import write_private

CA_YEARS = 10
LEAF_DAYS = 397
RENEW_DAYS = 30


@dataclass(frozen=True, slots=True)
class Leaf:
    """A certificate and its key, both PEM; `names` are what it answers to."""

    cert: str
    key: str
    names: tuple[str, ...]


class Authority:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def _ca_key_file(self) -> Path:
        return self.folder / "ca.key"

    def ensure(self) -> None:
        """The CA exists (made once, on the first apply that needs TLS)."""
        if self.ca_file.exists() and self._ca_key_file.exists():
            return
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rbee fleet CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .sign(key, hashes.SHA256())
        )
        write_private(self._ca_key_file, _key_pem(key))
        write_private(self.ca_file, cert.public_bytes(serialization.Encoding.PEM).decode())

    def ca_pem(self) -> str:
        self.ensure()
        return self.ca_file.read_text()

    def leaf(self, role: str, names: tuple[str, ...]) -> Leaf:
        """The certificate of `role` (`hive-NAME`, `queen`) for `names`: the one on disk while it still fits."""
        self.ensure()
        names = tuple(dict.fromkeys(names))
        cert_file, key_file = self.folder / f"{role}.pem", self.folder / f"{role}.key"
        if cert_file.exists() and key_file.exists():
            held = Leaf(cert_file.read_text(), key_file.read_text(), names)
            if self._still_fits(held.cert, names):
                return held
        key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        ca_key = serialization.load_pem_private_key(self._ca_key_file.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rbee {role}")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([_general_name(name) for name in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        leaf = Leaf(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key), names)
        write_private(key_file, leaf.key)
        write_private(cert_file, leaf.cert)
        return leaf

    def _still_fits(self, pem: str, names: tuple[str, ...]) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
            ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            held = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound):
            return False
        return (
            cert.issuer == ca_cert.subject
            and set(held) == {_general_name(name) for name in names}
            and cert.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_DAYS)
        )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
