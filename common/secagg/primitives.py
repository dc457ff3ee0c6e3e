"""Cryptographic primitives of the protocol, all from ``cryptography``.

- Key agreement: X25519; the shared point goes through HKDF-SHA256 with a purpose label and the
  round's identifier as ``info``, so encryption keys and mask seeds never coincide and never
  repeat across rounds.
- Sealing: AES-256-GCM with a random 96-bit nonce (prefixed to the ciphertext) and associated
  data binding the ciphertext to its round, sender and recipient.
- Masks: a 256-bit seed keys ChaCha20 (zero nonce; every seed is used once); its keystream,
  read as little-endian uint32, is a uniform vector of Z/2^32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw


class SealError(ValueError):
    """A ciphertext failed authentication (tampered, truncated or for someone else)."""


@dataclass(frozen=True)
class KeyPair:
    private: bytes
    public: bytes


def generate_key_pair() -> KeyPair:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(_RAW, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return KeyPair(private=private, public=public_key_of(private))


def public_key_of(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes, *, purpose: str, context: str) -> bytes:
    """A 32-byte key both ends derive: HKDF-SHA256(X25519(private, peer_public))."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=f"fedmm-secagg/{purpose}/{context}".encode()).derive(shared)


def seal(key: bytes, plaintext: bytes, *, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, ciphertext: bytes, *, associated: bytes) -> bytes:
    if len(ciphertext) <= NONCE_BYTES:
        raise SealError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:],
                                   associated)
    except InvalidTag:
        raise SealError("ciphertext failed authentication") from None


def random_seed() -> bytes:
    return os.urandom(KEY_BYTES)


def expand_mask(seed: bytes, length: int) -> np.ndarray:
    """``length`` uniform elements of Z/2^32 from the ChaCha20 keystream under ``seed``."""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"mask seed must be {KEY_BYTES} bytes")
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes(4 * length))
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32, copy=False)
