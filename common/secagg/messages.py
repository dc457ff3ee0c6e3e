"""The protocol's five stages as plain dataclasses (their Flower record form: common.records).

Stage (message type)            server → site                      site → server
``train.secagg_setup``          round, index, n, t, degree, range  two X25519 keys, signed
``train.secagg_share_keys``     every site's signed advertisement  sealed shares per neighbour
``train.secagg_masked_input``   shares sealed to this site, model  masked update (Z/2^32)
``train.secagg_consistency``    the survivors U3                   signature on U3 and the round
``train.secagg_unmask``         U3 and the survivors' signatures   self-mask or key shares

Participants are numbered 0..n−1 within a round (not by Flower node id). Every message travels
under the record name ``secagg``. Each site derives its neighbours itself, from the signed
advertisements (:mod:`.graph`), and which shares to reveal from the survivor set it signed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

SETUP = "train.secagg_setup"
SHARE_KEYS = "train.secagg_share_keys"
MASKED_INPUT = "train.secagg_masked_input"
CONSISTENCY = "train.secagg_consistency"
UNMASK = "train.secagg_unmask"
STAGES = (SETUP, SHARE_KEYS, MASKED_INPUT, CONSISTENCY, UNMASK)
RECORD = "secagg"
_LENGTH = struct.Struct(">I")


def pack(*fields: bytes) -> bytes:
    """Length-prefixed concatenation: unambiguous bytes to sign and to carry."""
    return b"".join(_LENGTH.pack(len(f)) + f for f in fields)


def unpack(data: bytes, count: int) -> list[bytes]:
    fields, offset = [], 0
    for _ in range(count):
        if offset + _LENGTH.size > len(data):
            raise ValueError("truncated field")
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + size > len(data):
            raise ValueError("truncated field")
        fields.append(data[offset:offset + size])
        offset += size
    if offset != len(data):
        raise ValueError("trailing bytes")
    return fields


@dataclass(frozen=True)
class Advert:
    """What site ``index`` advertises in a round, signed with its node key."""

    index: int
    encryption_key: bytes
    mask_key: bytes
    signer: bytes  # OpenSSH public key line
    signature: bytes

    @staticmethod
    def signed_fields(context: str, index: int, encryption_key: bytes,
                      mask_key: bytes) -> bytes:
        return pack(context.encode(), str(index).encode(), encryption_key, mask_key)

    def to_bytes(self) -> bytes:
        return pack(str(self.index).encode(), self.encryption_key, self.mask_key,
                    self.signer, self.signature)

    def identity(self) -> bytes:
        """What the advertisement says, without its signature (ECDSA signatures can be
        re-encoded by anyone, so nothing derived from an advertisement may hash them)."""
        return pack(str(self.index).encode(), self.encryption_key, self.mask_key, self.signer)

    @classmethod
    def from_bytes(cls, data: bytes) -> Advert:
        index, encryption_key, mask_key, signer, signature = unpack(data, 5)
        if not index.isdigit() or str(int(index)).encode() != index:
            raise ValueError("the index is not a plain decimal number")
        return cls(int(index), encryption_key, mask_key, signer, signature)


def view_fields(context: str, survivors: list[int], seen: str) -> bytes:
    """What a site signs in the consistency stage: the survivor set, and what it saw of the
    round (digests of the round's parameters, the model and configuration it received, and
    the advertisements)."""
    return pack(context.encode(), ",".join(str(i) for i in sorted(survivors)).encode(),
                seen.encode())


@dataclass(frozen=True)
class SetupRequest:
    RECORD: ClassVar[str] = RECORD
    context: str  # names the round: binds keys, seeds, ciphertexts and signatures to it
    index: int
    clients: int
    threshold: int
    degree: int  # neighbours per site in the graph (clients − 1: everyone)
    clip_range: float
    max_weight: int


@dataclass(frozen=True)
class SetupReply:
    RECORD: ClassVar[str] = RECORD
    encryption_key: bytes
    mask_key: bytes
    signer: bytes
    signature: bytes


@dataclass(frozen=True)
class ShareKeysRequest:
    RECORD: ClassVar[str] = RECORD
    adverts: dict[int, bytes]  # index → Advert.to_bytes(), every site that advertised


@dataclass(frozen=True)
class ShareKeysReply:
    RECORD: ClassVar[str] = RECORD
    ciphertexts: dict[int, bytes]  # recipient → sealed shares


@dataclass(frozen=True)
class MaskedInputRequest:
    RECORD: ClassVar[str] = RECORD
    ciphertexts: dict[int, bytes]  # sender → shares sealed to this client


@dataclass(frozen=True)
class MaskedInputReply:
    RECORD: ClassVar[str] = RECORD
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))


@dataclass(frozen=True)
class ConsistencyRequest:
    RECORD: ClassVar[str] = RECORD
    survivors: list[int]  # U3: the sites whose masked input the server holds


@dataclass(frozen=True)
class ConsistencyReply:
    RECORD: ClassVar[str] = RECORD
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    RECORD: ClassVar[str] = RECORD
    survivors: list[int]
    signatures: dict[int, bytes]  # survivor → its signature on (U3, model)


@dataclass(frozen=True)
class UnmaskReply:
    RECORD: ClassVar[str] = RECORD
    self_mask_shares: dict[int, bytes]
    key_shares: dict[int, bytes]
