"""What the secure local stack (``RAYLANE_SECURE_STACK``) is made with: a certificate authority of
its own, a certificate for 127.0.0.1 signed by it, and generated credentials, all kept under
``<home>/secure`` (readable by this user only) and made once, at its first start.

Kafka listens on SASL_SSL with SCRAM-SHA-512 (its controller on TLS with client certificates),
OpenSearch on HTTPS with basic auth (the ``opensearch-security`` plugin). Clients of the local
stack find everything they need here; nothing secret is written into a config file of raylane's.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from raylane.config import KafkaConnection, OpenSearchConnection, Settings

USER = "raylane"  # the SCRAM user of Kafka and the OpenSearch user; both have every right
_VALID_DAYS = 3650


@dataclass(frozen=True)
class SecureMaterial:
    """Paths of the secure stack's certificates and credentials."""

    folder: Path

    @property
    def ca(self) -> Path:
        """The CA certificate (PEM) that signs the services' certificate: clients trust it."""
        return self.folder / "ca.pem"

    @property
    def cert(self) -> Path:
        """The services' certificate (PEM) for 127.0.0.1 and localhost."""
        return self.folder / "node.pem"

    @property
    def key(self) -> Path:
        """Its key (PKCS#8 PEM, unencrypted: OpenSearch reads it as it starts)."""
        return self.folder / "node-key.pem"

    @property
    def keystore(self) -> Path:
        """Key and certificate as a PKCS#12 keystore, for Kafka (password in the credentials)."""
        return self.folder / "node.p12"

    @property
    def credentials_file(self) -> Path:
        return self.folder / "credentials.json"

    def credentials(self) -> dict[str, str]:
        """``kafka_password``, ``opensearch_password`` and ``keystore_password``."""
        return json.loads(self.credentials_file.read_text())

    def ready(self) -> bool:
        """Whether everything was made already."""
        return all(p.exists() for p in (self.ca, self.cert, self.key, self.keystore, self.credentials_file))

    def ensure(self) -> None:
        """Make the CA, the certificate, the keystore and the credentials, once."""
        if self.ready():
            return
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import pkcs12
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        now = datetime.datetime.now(datetime.UTC)

        def name(cn: str) -> x509.Name:
            return x509.Name(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raylane"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
            )

        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("raylane local CA"))
            .issuer_name(name("raylane local CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # certificate and CRL signing only
            .sign(ca_key, hashes.SHA256())
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name("127.0.0.1"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            # The same certificate serves as server and, between the brokers and controller, as client.
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        creds = {
            "kafka_password": secrets.token_urlsafe(24),
            "opensearch_password": secrets.token_urlsafe(24) + "-Aa1",  # the plugin asks for mixed classes
            "keystore_password": secrets.token_urlsafe(24),
        }
        pem = serialization.Encoding.PEM
        _write(self.ca, ca.public_bytes(pem))
        _write(self.cert, cert.public_bytes(pem))
        _write(
            self.key,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
        _write(
            self.keystore,
            pkcs12.serialize_key_and_certificates(
                b"raylane",
                key,
                cert,
                [ca],
                serialization.BestAvailableEncryption(creds["keystore_password"].encode()),
            ),
        )
        _write(self.credentials_file, json.dumps(creds).encode())


def _write(path: Path, data: bytes) -> None:
    """Write a file only its owner may read, replacing it whole."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def material(settings: Settings) -> SecureMaterial:
    """The secure stack's material of ``settings``' home."""
    return SecureMaterial(settings.home / "secure")


def kafka_connection(settings: Settings, address: str) -> KafkaConnection:
    """How a client reaches the secure local Kafka at ``address``."""
    m = material(settings)
    return KafkaConnection(
        bootstrap=address,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=USER,
        sasl_password=m.credentials()["kafka_password"],
        ssl_cafile=str(m.ca),
    )


def opensearch_connection(settings: Settings, url: str) -> OpenSearchConnection:
    """How a client reaches the secure local OpenSearch at ``url``."""
    m = material(settings)
    return OpenSearchConnection(
        url=url, username=USER, password=m.credentials()["opensearch_password"], ca_certs=str(m.ca)
    )
