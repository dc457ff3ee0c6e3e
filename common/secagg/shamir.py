"""Shamir t-of-n secret sharing over GF(p), p = 2^521 − 1 (a Mersenne prime).

A secret s < p is the constant term of a random polynomial f of degree t − 1; share x is
(x, f(x)) for x = 1..n. Any t shares give s = f(0) by Lagrange interpolation,

    s = Σ_k y_k · Π_{m ≠ k} x_m / (x_m − x_k)   (mod p),

and any t − 1 shares are independent of s. Coefficients come from :mod:`secrets`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


class ShamirError(ValueError):
    """Shares that cannot give the secret (too few, repeated or invalid)."""


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares of a 32-byte ``secret`` at the points ``xs`` (distinct, 1 ≤ x < p)."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ShamirError(f"threshold {threshold} must be between 1 and {len(xs)} shares")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ShamirError("share points must be distinct and non-zero")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x).to_bytes(SHARE_BYTES, "big") for x in xs}


def combine(shares: dict[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (the first ``threshold`` by x are used)."""
    if len(shares) < threshold:
        raise ShamirError(f"{len(shares)} shares < threshold {threshold}")
    points = sorted(shares.items())[:threshold]
    secret = 0
    for k, (x_k, share) in enumerate(points):
        y_k = int.from_bytes(share, "big")
        if len(share) != SHARE_BYTES or y_k >= PRIME:
            raise ShamirError(f"share at x={x_k} is malformed")
        numerator, denominator = 1, 1
        for m, (x_m, _) in enumerate(points):
            if m != k:
                numerator = numerator * x_m % PRIME
                denominator = denominator * (x_m - x_k) % PRIME
        secret = (secret + y_k * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ShamirError("shares do not belong to one 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: Iterable[int], x: int) -> int:
    result = 0
    for coefficient in reversed(list(coefficients)):
        result = (result * x + coefficient) % PRIME
    return result
