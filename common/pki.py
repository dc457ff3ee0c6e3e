"""Keys and certificates for a deployment, made with ``cryptography`` (``fedmm keys init``).

Layout of the output folder::

    ca.crt  ca.key                 the consortium's certificate authority (EC P-384, 10 years)
    server.crt  server.key         the aggregation server's TLS certificate, signed by the CA,
                                   with the given host names / IP addresses as SANs (2 years)
    hospitals/NAME.key  NAME.pub   one node-authentication key pair per hospital: EC P-384 in
                                   OpenSSH format, the format Flower's SuperNode and
                                   ``flwr supernode register`` read

Private keys are written 0600 (unencrypted: they are read by unattended services; protect the
folder). Existing keys are never overwritten unless ``force`` is given.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVE = ec.SECP384R1
HOSPITALS_DIR = "hospitals"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyFileError(ValueError):
    """Keys cannot be made or read; the message says which file and what to do."""


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def hospital_key(self, name: str) -> Path:
        return self.root / HOSPITALS_DIR / f"{name}.key"

    def hospital_public(self, name: str) -> Path:
        return self.root / HOSPITALS_DIR / f"{name}.pub"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmm consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_ca(*, days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(CURVE())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(_name("fedmm CA")).issuer_name(_name("fedmm CA"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA384()))
    return key, certificate


def make_server_certificate(
    *, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: Sequence[str],
    days: int = 730,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if not hosts:
        raise KeyFileError("the server certificate needs at least one host name or IP address")
    key = ec.generate_private_key(CURVE())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(hosts)),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384()))
    return key, certificate


def make_node_key() -> tuple[bytes, bytes]:
    """(private key, public key) for Flower node authentication, both OpenSSH format."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def hospital_names(*, count: int | None, names: Sequence[str]) -> list[str]:
    chosen = list(names) or [f"hospital-{i}" for i in range(1, (count or 0) + 1)]
    if not chosen:
        raise KeyFileError("name the hospitals: --hospitals N or --hospital NAME (repeatable)")
    for name in chosen:
        if not NAME_PATTERN.match(name):
            raise KeyFileError(f"hospital name '{name}': use letters, digits, '.', '_' or '-'")
    if len(set(chosen)) != len(chosen):
        raise KeyFileError("hospital names repeat; give each hospital its own name")
    return chosen


def init_keys(out: Path, *, server_hosts: Sequence[str], hospitals: Sequence[str],
              force: bool = False) -> Layout:
    """Write the CA, the server certificate and one node key pair per hospital."""
    layout = Layout(Path(out))
    targets = [layout.ca_cert, layout.ca_key, layout.server_cert, layout.server_key]
    targets += [p for name in hospitals
                for p in (layout.hospital_key(name), layout.hospital_public(name))]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise KeyFileError(f"{existing[0]} already exists (and {len(existing) - 1} more); "
                        "pass --force to replace the keys (joined hospitals need new ones)")
    ca_key, ca_cert = make_ca()
    server_key, server_cert = make_server_certificate(ca_key=ca_key, ca_cert=ca_cert,
                                                      hosts=server_hosts)
    layout.root.mkdir(parents=True, exist_ok=True)
    _write_private(layout.ca_key, _pem_key(ca_key))
    layout.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(layout.server_key, _pem_key(server_key))
    layout.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    for name in hospitals:
        private, public = make_node_key()
        _write_private(layout.hospital_key(name), private)
        layout.hospital_public(name).write_bytes(public)
    return layout


def check_public_key(path: Path) -> None:
    """Refuse a file that is not an EC NIST-curve OpenSSH public key (what Flower accepts)."""
    if not path.is_file():
        raise KeyFileError(f"{path}: public key file not found")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KeyFileError(f"{path}: not an OpenSSH public key ({error}); use the .pub file "
                        "`fedmm keys init` wrote for the hospital") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyFileError(f"{path}: not an EC (NIST curve) key; use `fedmm keys init`")


def check_private_key(path: Path) -> None:
    if not path.is_file():
        raise KeyFileError(f"{path}: private key file not found")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KeyFileError(f"{path}: not an OpenSSH private key ({error}); use the hospital's "
                        ".key file from `fedmm keys init`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: not an EC (NIST curve) key; use `fedmm keys init`")
