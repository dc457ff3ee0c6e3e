"""Model weights as named NumPy arrays, and their Flower record form.

Weights travel as ``{parameter name: float32 array}``: names make a shape mismatch a clear error
rather than a silently wrong model. Only parameters travel (the models have no buffers).
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import Array, ArrayRecord

Weights = dict[str, np.ndarray]


def to_record(weights: Weights) -> ArrayRecord:
    record = ArrayRecord()
    for name, array in weights.items():
        record[name] = Array.from_numpy_ndarray(np.ascontiguousarray(array))
    return record


def from_record(record: ArrayRecord) -> Weights:
    return {name: array.numpy() for name, array in record.items()}


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
