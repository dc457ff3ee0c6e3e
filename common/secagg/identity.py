"""Who takes part in a secure round: each site's signing key, and the roster a site trusts.

A site signs what it says in the protocol (its advertised keys, the survivor set it saw and the
global model it received) with its node key, the EC P-384 key it authenticates to the server
with (``fedmm keys hospital``); simulations make one key per virtual site and run. Every
signature covers a domain-separated message, ``fedmm-secagg/v1/<purpose>\\0<fields>``, so it can
never be taken for another protocol's (Flower's node authentication signs bare timestamps).

The roster is the set of peer public keys a site agrees to aggregate with; the server does not
control it. In deployments each hospital keeps the other hospitals' ``.pub`` files in a folder
its policy names (``roster``), exchanged out of band (fingerprints compared by phone, say).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

DOMAIN = b"fedmm-secagg/v1/"


class IdentityError(ValueError):
    """A key or roster file cannot be used; the message names the file."""


def _message(purpose: str, fields: bytes) -> bytes:
    return DOMAIN + purpose.encode() + b"\0" + fields


def canonical_public(data: bytes) -> bytes:
    """An OpenSSH public key line without its comment (how keys are compared)."""
    parts = data.strip().split()
    if len(parts) < 2:
        raise IdentityError("not an OpenSSH public key line")
    return parts[0] + b" " + parts[1]


def fingerprint(public: bytes) -> str:
    """``SHA256:…`` of the key, as ``ssh-keygen -l`` prints it (for people to compare)."""
    import base64

    blob = base64.b64decode(canonical_public(public).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class Signer:
    """A site's signing key (its node key)."""

    private_pem: bytes  # OpenSSH or PKCS#8 PEM

    def _key(self) -> ec.EllipticCurvePrivateKey:
        try:
            if b"OPENSSH" in self.private_pem:
                key = serialization.load_ssh_private_key(self.private_pem, None)
            else:
                key = serialization.load_pem_private_key(self.private_pem, None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            raise IdentityError(f"not a private key ({error})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError("the signing key must be an EC (NIST curve) key")
        return key

    @property
    def public(self) -> bytes:
        return canonical_public(self._key().public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))

    def sign(self, purpose: str, fields: bytes) -> bytes:
        return self._key().sign(_message(purpose, fields), ec.ECDSA(hashes.SHA384()))

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        try:
            signer = cls(Path(path).read_bytes())
            signer._key()
        except OSError as error:
            raise IdentityError(f"{path}: cannot read the node key ({error.strerror})") from None
        except IdentityError as error:
            raise IdentityError(f"{path}: {error}") from None
        return signer

    @classmethod
    def generate(cls) -> Signer:
        key = ec.generate_private_key(ec.SECP384R1())
        return cls(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


def verify(public: bytes, purpose: str, fields: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public``'s over ``fields`` for ``purpose``."""
    try:
        key = serialization.load_ssh_public_key(canonical_public(public))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        key.verify(signature, _message(purpose, fields), ec.ECDSA(hashes.SHA384()))
        return True
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm, IdentityError):
        return False


@dataclass(frozen=True)
class Roster:
    """The public keys of the sites this site will aggregate with."""

    keys: frozenset[bytes]

    @classmethod
    def of(cls, keys: Iterable[bytes]) -> Roster:
        return cls(frozenset(canonical_public(k) for k in keys))

    @classmethod
    def from_folder(cls, folder: Path) -> Roster:
        """Every ``*.pub`` file in ``folder``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise IdentityError(f"{folder}: roster folder not found; put the .pub files of "
                                "the hospitals this site aggregates with there")
        keys = []
        for path in sorted(folder.glob("*.pub")):
            try:
                key = serialization.load_ssh_public_key(path.read_bytes())
            except (ValueError, UnsupportedAlgorithm, OSError) as error:
                raise IdentityError(f"{path}: not an OpenSSH public key ({error})") from None
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise IdentityError(f"{path}: not an EC (NIST curve) key")
            keys.append(path.read_bytes())
        if not keys:
            raise IdentityError(f"{folder}: no .pub files; put the .pub files of the "
                                "hospitals this site aggregates with there")
        return cls.of(keys)

    def __contains__(self, public: object) -> bool:
        return isinstance(public, bytes) and canonical_public(public) in self.keys


def add_to_roster(folder: Path, public_files: Iterable[Path], *,
                  own: bytes | None = None) -> list[tuple[Path, str]]:
    """Copy peers' ``.pub`` files into ``folder`` (made if needed), each checked to be an EC
    public key and not already there under another name; this site's own key (``own``) is
    skipped. Returns each file written with its fingerprint, for people to compare with the
    peer by phone."""
    from common.atomic import atomic_write_bytes

    folder = Path(folder)
    known = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.pub")):
            with contextlib.suppress(OSError, IdentityError):
                known[canonical_public(path.read_bytes())] = path.name
    added = []
    for source in public_files:
        source = Path(source)
        try:
            data = source.read_bytes()
            key = serialization.load_ssh_public_key(data)
        except OSError as error:
            raise IdentityError(f"{source}: cannot read it ({error.strerror})") from None
        except (ValueError, UnsupportedAlgorithm) as error:
            raise IdentityError(f"{source}: not an OpenSSH public key ({error})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise IdentityError(f"{source}: not an EC (NIST curve) key")
        public = canonical_public(data)
        if own is not None and public == canonical_public(own):
            continue  # the site's own key: it always trusts itself
        target = folder / source.name
        if public in known and known[public] != target.name:
            raise IdentityError(f"{source}: the same key is already in the roster as "
                                f"{known[public]}")
        if target.exists() and canonical_public(target.read_bytes()) != public:
            raise IdentityError(f"{target}: another key already has this name; remove it "
                                "first if the hospital has a new key")
        atomic_write_bytes(target, data, mode=0o644)
        known[public] = target.name
        added.append((target, fingerprint(public)))
    return added
