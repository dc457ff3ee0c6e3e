"""The protocol's four stages as plain dataclasses, and their Flower record form.

Stage (message type)            server → client                 client → server
``train.secagg_setup``          round, index, graph, t, range   two X25519 public keys
``train.secagg_share_keys``     neighbours' public keys         sealed shares, one per neighbour
``train.secagg_masked_input``   shares sealed to this client    masked update (Z/2^32)
``train.secagg_unmask``         who survived, who dropped       self-mask or key shares

Participants are numbered 0..n−1 within a round (not by Flower node id).
Conversion is generic: scalars and lists travel in one ``ConfigRecord`` named ``secagg``,
``dict[int, bytes]`` fields in a ``ConfigRecord`` each, arrays in an ``ArrayRecord`` each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

SETUP = "train.secagg_setup"
SHARE_KEYS = "train.secagg_share_keys"
MASKED_INPUT = "train.secagg_masked_input"
UNMASK = "train.secagg_unmask"
STAGES = (SETUP, SHARE_KEYS, MASKED_INPUT, UNMASK)
RECORD = "secagg"


@dataclass(frozen=True)
class SetupRequest:
    context: str  # names the round: binds keys, seeds and ciphertexts to it
    index: int
    clients: int
    neighbours: list[int]
    threshold: int
    clip_range: float
    max_weight: int


@dataclass(frozen=True)
class SetupReply:
    encryption_key: bytes
    mask_key: bytes


@dataclass(frozen=True)
class ShareKeysRequest:
    encryption_keys: dict[int, bytes]
    mask_keys: dict[int, bytes]


@dataclass(frozen=True)
class ShareKeysReply:
    ciphertexts: dict[int, bytes]  # recipient → sealed shares


@dataclass(frozen=True)
class MaskedInputRequest:
    ciphertexts: dict[int, bytes]  # sender → shares sealed to this client


@dataclass(frozen=True)
class MaskedInputReply:
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))


@dataclass(frozen=True)
class UnmaskRequest:
    active: list[int]
    dropped: list[int]


@dataclass(frozen=True)
class UnmaskReply:
    self_mask_shares: dict[int, bytes]
    key_shares: dict[int, bytes]


T = TypeVar("T")


def to_records(message: Any) -> dict[str, Any]:
    """Flower records (``RecordDict`` items) carrying ``message``."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    records: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for item in dataclasses.fields(message):
        value = getattr(message, item.name)
        if isinstance(value, np.ndarray):
            records[f"{RECORD}.{item.name}"] = ArrayRecord({"v": Array(value)})
        elif isinstance(value, dict):
            records[f"{RECORD}.{item.name}"] = ConfigRecord({str(k): v for k, v in value.items()})
        else:
            scalars[item.name] = list(value) if isinstance(value, list) else value
    records[RECORD] = ConfigRecord(scalars)
    return records


def from_records(kind: type[T], content: Any) -> T:
    """The ``kind`` message from a ``RecordDict``; ``KeyError``/``ValueError`` when malformed."""
    scalars = content[RECORD]
    values: dict[str, Any] = {}
    for item in dataclasses.fields(kind):  # type: ignore[arg-type]
        name = f"{RECORD}.{item.name}"
        if "ndarray" in str(item.type):
            if name in content:
                values[item.name] = content[name]["v"].numpy()
        elif str(item.type).startswith("dict"):
            values[item.name] = {int(k): bytes(v) for k, v in content[name].items()}
        elif str(item.type).startswith("list"):
            values[item.name] = [int(v) for v in scalars[item.name]]
        else:
            values[item.name] = scalars[item.name]
    return kind(**values)
