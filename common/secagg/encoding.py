"""Fixed-point encoding of weighted updates into the ring Z/2^32, and decoding of their sum.

Client i with n_i examples and update Δ_i sends

    q_i = SR(s · w_i · clip(Δ_i, −R, R))  (mod 2^32),   w_i = min(n_i, W) / W,

and, as one extra element, the integer min(n_i, W). SR is unbiased stochastic rounding
(E[SR(x)] = x, |SR(x) − x| < 1) and s = (2^31 − 1 − N) / (N · R) for at most N clients. Each
encoded element is then an integer of magnitude at most s·R + 1 (a value at ±R rounds up by at
most one step), so the sum of N of them has magnitude at most N·s·R + N = 2^31 − 1: it never
wraps, and is recovered exactly from the ring sum as a signed 32-bit integer. The server
divides the decoded sum by the total weight Σ w_i: the weighted mean Σ w_i Δ_i / Σ w_i, off by
less than N / (s · Σ w_i) per element (:meth:`tolerance`).
Elements clipped to ±R are counted, never changed silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RING_BITS = 32
_RING = 1 << RING_BITS
_MAX_ABS = (1 << (RING_BITS - 1)) - 1


@dataclass(frozen=True)
class Encoded:
    vector: np.ndarray  # uint32, the update followed by the integer weight
    clipped: int  # elements of Δ outside [−R, R] before encoding


@dataclass(frozen=True)
class RingEncoding:
    clip_range: float  # R
    max_weight: int  # W
    max_clients: int  # N

    def __post_init__(self) -> None:
        if self.clip_range <= 0 or self.max_weight < 1 or self.max_clients < 1:
            raise ValueError("clip_range, max_weight and max_clients must be positive")
        if self.max_clients * self.max_weight >= _RING:
            raise ValueError("max_clients × max_weight must stay below 2^32")
        if self.max_clients >= _MAX_ABS // 2:
            raise ValueError("max_clients is too large for the 32-bit ring")

    @property
    def scale(self) -> float:
        """s: N clipped, rounded inputs sum to at most ±(N·s·R + N) = ±(2^31 − 1)."""
        return (_MAX_ABS - self.max_clients) / (self.max_clients * self.clip_range)

    def encode(self, update: np.ndarray, num_examples: int,
               rng: np.random.Generator) -> Encoded:
        """``update`` is the flat Δ_i (float); the result is masked by the caller."""
        values = np.asarray(update, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError("update is not finite; it cannot be encoded")
        clipped = int(np.count_nonzero(np.abs(values) > self.clip_range))
        weight = min(int(num_examples), self.max_weight)
        scaled = np.clip(values, -self.clip_range, self.clip_range) * (
            self.scale * weight / self.max_weight)
        floor = np.floor(scaled)
        rounded = floor + (rng.random(scaled.shape) < (scaled - floor))
        ring = np.empty(values.size + 1, dtype=np.uint32)
        ring[:-1] = rounded.astype(np.int64).astype(np.uint32)
        ring[-1] = weight
        return Encoded(vector=ring, clipped=clipped)

    def decode(self, ring_sum: np.ndarray) -> tuple[np.ndarray, float]:
        """(weighted mean Σ w_i Δ_i / Σ w_i, total weight Σ min(n_i, W)) from the ring sum."""
        total_weight = int(ring_sum[-1])
        if total_weight <= 0:
            raise ValueError("the aggregate carries no weight")
        signed = ring_sum[:-1].astype(np.uint32).view(np.int32).astype(np.float64)
        mean = signed / self.scale / (total_weight / self.max_weight)
        return mean, float(total_weight)

    def tolerance(self, total_weight: float, clients: int) -> float:
        """Largest per-element gap between the decoded mean and the exact weighted mean of
        the clipped updates: each client's rounding is off by less than one step 1/s."""
        return clients / self.scale / (total_weight / self.max_weight)


def ring_add(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.add(left, right, dtype=np.uint32)


def ring_subtract(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.subtract(left, right, dtype=np.uint32)
