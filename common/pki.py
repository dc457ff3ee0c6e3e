"""Keys and certificates for a deployment, made with ``cryptography``.

``fedmm keys init`` (the consortium) writes::

    ca.crt  ca.key                 the consortium's certificate authority (EC P-384, 10 years)
    server.crt  server.key         the aggregation server's TLS certificate, signed by the CA,
                                   with the given host names / IP addresses as SANs (2 years)
    hospitals/NAME.key  NAME.pub   demo only: node key pairs made by the consortium

``fedmm keys hospital OUT --name NAME`` (each hospital, on its own machine) writes
``OUT/NAME.key`` and ``OUT/NAME.pub`` into a folder of its own (0700, refused when another account
could change it): an EC P-384 node-authentication key pair in OpenSSH
format, the format Flower's SuperNode and ``flwr supernode register`` read. Only the ``.pub``
leaves the hospital, so nobody else can act as it.

``fedmm server`` also makes, at every start, a throw-away CA and certificate for 127.0.0.1
(:func:`make_loopback_tls`): its own SuperLink listens on loopback only, and talking to it never
depends on the consortium's certificate naming the loopback address.

Every private key is written through a temporary file created 0600 with O_EXCL|O_NOFOLLOW,
fsynced and renamed (:func:`common.atomic.atomic_write_bytes`): it never sits under a wider
mode and a planted symlink is never followed. Keys are unencrypted (unattended services read
them; protect the folder). Existing keys are never overwritten unless ``force`` is given.
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

from common.atomic import atomic_write_bytes
from common.file_safety import UnsafePathError, own_private_folder

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
    atomic_write_bytes(path, data)  # 0600 from its creation, renamed over the old file


def _write_public(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, mode=0o644)


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
    _write_public(layout.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(layout.server_key, _pem_key(server_key))
    _write_public(layout.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    for name in hospitals:
        write_node_key(layout.hospital_key(name), layout.hospital_public(name))
    return layout


def write_node_key(private_path: Path, public_path: Path) -> None:
    private, public = make_node_key()
    _write_private(private_path, private)
    _write_public(public_path, public)


def hospital_key(out: Path, *, name: str, force: bool = False) -> tuple[Path, Path]:
    """A hospital's own node key pair ``OUT/NAME.key`` (secret, 0600) and ``OUT/NAME.pub``
    (for the consortium); made on the hospital's machine."""
    hospital_names(count=None, names=[name])  # the name's rules
    try:
        own_private_folder(Path(out))  # nobody else may swap the key after it is written
    except UnsafePathError as error:
        raise KeyFileError(str(error)) from None
    private_path, public_path = Path(out) / f"{name}.key", Path(out) / f"{name}.pub"
    existing = [str(p) for p in (private_path, public_path) if p.exists()]
    if existing and not force:
        raise KeyFileError(f"{existing[0]} already exists; pass --force to replace it (the "
                           "server must then --allow the new .pub)")
    write_node_key(private_path, public_path)
    return private_path, public_path


@dataclass(frozen=True)
class LoopbackTLS:
    """A throw-away CA and a certificate for 127.0.0.1, for the server's own SuperLink."""

    ca_cert: Path
    cert: Path
    key: Path


def make_loopback_tls(folder: Path, *, days: int = 30) -> LoopbackTLS:
    """Write a fresh CA and a 127.0.0.1 server certificate into ``folder`` (made 0700)."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca_key, ca_cert = make_ca(days=days)
    key, cert = make_server_certificate(ca_key=ca_key, ca_cert=ca_cert,
                                        hosts=["127.0.0.1", "localhost"], days=days)
    tls = LoopbackTLS(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    _write_public(tls.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(tls.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write_private(tls.key, _pem_key(key))
    return tls


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
