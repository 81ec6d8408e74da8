"""Test certificates made at test time with ``cryptography`` (never committed): CAs, server and client certificates.

One :class:`Pki` per test directory holds a CA; :meth:`Pki.server` issues a server certificate for ``127.0.0.1`` and
``localhost``, :meth:`Pki.client` a client certificate with a given subject CN. A second, unrelated :class:`Pki` is
the "wrong CA" of refusal tests. Every file is PEM (keys unencrypted, mode 0600); :meth:`Issued.pkcs12` writes a
PKCS#12 bundle for Java peers::

    pki = Pki(tmp_path / "pki")
    server = pki.server()                      # Issued(cert, key) paths
    client = pki.client("MODALITY1")
    rogue = Pki(tmp_path / "rogue", name="Rogue CA").client("MODALITY1")

EC P-256 keys: quick to make (a few ms), and the ECDHE-ECDSA suites are BCP 195's first choice.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Password of the PKCS#12 bundles (Java's key and trust stores need one).
PKCS12_PASSWORD = "changeit"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files, with ``ca`` the certificate of the CA that issued it."""

    cert: Path
    key: Path
    ca: Path

    def pkcs12(self, path: Path | None = None, password: str = PKCS12_PASSWORD) -> Path:
        """The key and certificate (with the CA in the chain) as a PKCS#12 key store; returns its path."""
        out = path or self.cert.with_suffix(".p12")
        key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
        out.write_bytes(pkcs12.serialize_key_and_certificates(
            b"pacsflow", key, cert, [ca], serialization.BestAvailableEncryption(password.encode())))
        return out


class Pki:
    """A throw-away certificate authority in ``directory`` (created); ``ca_file`` is its PEM certificate."""

    def __init__(self, directory: Path, name: str = "pacsflow test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = self.directory / "ca.crt"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._stem = name.lower().replace(" ", "-")

    def truststore(self, password: str = PKCS12_PASSWORD) -> Path:
        """The CA certificate as a PKCS#12 trust store (for Java's ``javax.net.ssl.trustStore``)."""
        out = self.directory / "ca-trust.p12"
        out.write_bytes(pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(self._cert, b"pacsflow-ca")],
            serialization.BestAvailableEncryption(password.encode())))
        return out

    def _issue(self, stem: str, cn: str, *, server: bool, days: int = 1) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return Issued(cert_path, key_path, self.ca_file)

    def server(self, stem: str = "server", cn: str = "localhost") -> Issued:
        """A server certificate for ``localhost``, ``127.0.0.1`` and ``::1`` (new key each call)."""
        return self._issue(stem, cn, server=True)

    def client(self, cn: str, stem: str | None = None) -> Issued:
        """A client certificate whose subject CN is ``cn`` (e.g. the AE title it may use)."""
        return self._issue(stem or f"client-{cn.lower()}", cn, server=False)
