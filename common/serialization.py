"""Model weights as named NumPy arrays, and their Flower record form.

Weights travel as ``{parameter name: float32 array}``: names make a shape mismatch a clear error
rather than a silently wrong model. Only parameters travel (the models have no buffers).

On the wire they are packed: one byte array holding every tensor end to end (``PACKED``) and
their names, dtypes and shapes as JSON (``LAYOUT``). Flower 1.42 moves each array of a message
as its own objects, one request each through the TLS gateway; the default model's 44 tensors
were about 90 requests a message, two now. A record of one array per tensor (Flower's usual
form) is still read.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
from flwr.app import Array, ArrayRecord

from common.records import RecordError

Weights = dict[str, np.ndarray]
PACKED = "fedmm.packed"
LAYOUT = "fedmm.layout"
WIRE_DTYPES = frozenset({"float16", "float32", "float64", "int32", "int64"})
MAX_LAYOUT_BYTES = 1 << 20
MAX_TENSORS = 10_000


def to_record(weights: Weights) -> ArrayRecord:
    """``weights`` as two arrays: the tensors' bytes end to end, and their layout."""
    layout = [[name, str(array.dtype), list(array.shape)] for name, array in weights.items()]
    parts = [np.ascontiguousarray(array).reshape(-1).view(np.uint8) for array in weights.values()]
    record = ArrayRecord()
    record[LAYOUT] = Array.from_numpy_ndarray(
        np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8).copy())
    record[PACKED] = Array.from_numpy_ndarray(
        np.concatenate(parts) if parts else np.zeros(0, np.uint8))
    return record


def from_record(record: ArrayRecord) -> Weights:
    """The weights of a packed record (checked: names, dtypes, shapes and sizes), or of one
    numeric array per tensor; :class:`RecordError` for anything else."""
    try:
        if PACKED not in record and LAYOUT not in record:
            return {_name(name): _numeric(array.numpy(), name) for name, array in record.items()}
        if set(record) != {PACKED, LAYOUT}:
            raise RecordError(f"packed weights: expected exactly {PACKED!r} and {LAYOUT!r}")
        return _unpack(record[PACKED].numpy(), record[LAYOUT].numpy())
    except RecordError:
        raise
    except (ValueError, TypeError) as error:  # undecodable arrays, impossible shapes
        raise RecordError(f"weights: unreadable ({error})"[:300]) from None


def _unpack(blob: np.ndarray, layout_bytes: np.ndarray) -> Weights:
    if layout_bytes.dtype != np.uint8 or layout_bytes.ndim != 1:
        raise RecordError("packed weights: the layout is not a byte array")
    if layout_bytes.size > MAX_LAYOUT_BYTES:
        raise RecordError(f"packed weights: layout of {layout_bytes.size} bytes > "
                          f"{MAX_LAYOUT_BYTES}")
    try:
        layout = json.loads(layout_bytes.tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RecordError(f"packed weights: unreadable layout ({error})") from None
    if blob.dtype != np.uint8 or blob.ndim != 1 or not isinstance(layout, list):
        raise RecordError("packed weights: not a byte array and a list of tensors")
    if len(layout) > MAX_TENSORS:
        raise RecordError(f"packed weights: {len(layout)} tensors > {MAX_TENSORS}")
    weights: Weights = {}
    offset = 0
    for entry in layout:
        name, dtype, shape = _layout_entry(entry)
        if name in weights:
            raise RecordError(f"packed weights: {name!r} appears twice")
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if offset + size > blob.size:
            raise RecordError(f"packed weights: {name!r} runs past the end of the data")
        weights[name] = blob[offset:offset + size].view(dtype).reshape(shape).copy()
        offset += size
    if offset != blob.size:
        raise RecordError(f"packed weights: {blob.size - offset} bytes left over")
    return weights


def _layout_entry(entry: object) -> tuple[str, str, tuple[int, ...]]:
    if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
            or entry[1] not in WIRE_DTYPES or not isinstance(entry[2], list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                       for d in entry[2]) or len(entry[2]) > 8):
        raise RecordError(f"packed weights: bad layout entry {str(entry)[:80]}")
    return _name(entry[0]), entry[1], tuple(entry[2])


def _name(name: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(f"weights: the tensor name {name!r} is not valid text") from None
    return name


def _numeric(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.name not in WIRE_DTYPES:
        raise RecordError(f"weights: {name!r} has dtype {array.dtype}; expected one of "
                          f"{sorted(WIRE_DTYPES)}")
    return array


def check_compatible(reference: Weights, other: Weights, *, what: str) -> None:
    """Raise ValueError naming the first missing, extra or mis-shaped array."""
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    if missing or extra:
        raise ValueError(f"{what}: arrays differ (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, array in reference.items():
        if other[name].shape != array.shape:
            raise ValueError(f"{what}: '{name}' has shape {other[name].shape}, "
                             f"expected {array.shape}")


def flatten(weights: Weights) -> np.ndarray:
    """One float64 vector, arrays in name order (the order :func:`unflatten` expects)."""
    if not weights:
        return np.zeros(0)
    return np.concatenate([np.asarray(weights[name], dtype=np.float64).ravel()
                           for name in sorted(weights)])


def unflatten(vector: np.ndarray, like: Weights) -> Weights:
    """Arrays shaped and typed like ``like`` from a vector made by :func:`flatten`."""
    size = sum(int(np.asarray(a).size) for a in like.values())
    if vector.size != size:
        raise ValueError(f"vector has {vector.size} elements, the model {size}")
    result, offset = {}, 0
    for name in sorted(like):
        reference = np.asarray(like[name])
        result[name] = vector[offset:offset + reference.size].reshape(reference.shape).astype(
            reference.dtype)
        offset += reference.size
    return result


def all_finite(weights: Weights) -> bool:
    return all(bool(np.all(np.isfinite(a))) for a in weights.values())


def digest(weights: Weights) -> str:
    """SHA-256 over names, shapes and bytes, in name order."""
    hasher = hashlib.sha256()
    for name in sorted(weights):
        array = np.ascontiguousarray(weights[name])
        hasher.update(name.encode() + str(array.shape).encode() + str(array.dtype).encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def model_weights(model) -> Weights:
    return {name: p.detach().cpu().numpy().astype(np.float32, copy=True)
            for name, p in model.named_parameters()}


def load_weights(model, weights: Weights) -> None:
    import torch

    check_compatible(model_weights(model), weights, what="global model")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.from_numpy(np.asarray(weights[name])).to(parameter.device))
