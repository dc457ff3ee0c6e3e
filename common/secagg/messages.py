"""The protocol's four stages as plain dataclasses, and their Flower record form.

Stage (message type)            server → client                 client → server
``train.secagg_setup``          round, index, graph, t, range   two X25519 public keys
``train.secagg_share_keys``     neighbours' public keys         sealed shares, one per neighbour
``train.secagg_masked_input``   shares sealed to this client    masked update (Z/2^32)
``train.secagg_unmask``         who survived, who dropped       self-mask or key shares

Participants are numbered 0..n−1 within a round (not by Flower node id). Every message travels
under the record name ``secagg`` through :mod:`common.records`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

SETUP = "train.secagg_setup"
SHARE_KEYS = "train.secagg_share_keys"
MASKED_INPUT = "train.secagg_masked_input"
UNMASK = "train.secagg_unmask"
STAGES = (SETUP, SHARE_KEYS, MASKED_INPUT, UNMASK)
RECORD = "secagg"


@dataclass(frozen=True)
class SetupRequest:
    RECORD: ClassVar[str] = RECORD
    context: str  # names the round: binds keys, seeds and ciphertexts to it
    index: int
    clients: int
    neighbours: list[int]
    threshold: int
    clip_range: float
    max_weight: int


@dataclass(frozen=True)
class SetupReply:
    RECORD: ClassVar[str] = RECORD
    encryption_key: bytes
    mask_key: bytes


@dataclass(frozen=True)
class ShareKeysRequest:
    RECORD: ClassVar[str] = RECORD
    encryption_keys: dict[int, bytes]
    mask_keys: dict[int, bytes]


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
class UnmaskRequest:
    RECORD: ClassVar[str] = RECORD
    active: list[int]
    dropped: list[int]


@dataclass(frozen=True)
class UnmaskReply:
    RECORD: ClassVar[str] = RECORD
    self_mask_shares: dict[int, bytes]
    key_shares: dict[int, bytes]
