"""What a site releases of a model's metrics on its validation split.

The site cannot tell whether the weights it is sent came out of the federation, so what it
reports must be safe for any weights. It reports sums the server adds up across sites: rows n,
rows classified right k, and the loss Λ = Σ min(ℓ_i, L) with each row's cross-entropy clipped
to L = :data:`LOSS_BOUND` nats.

**Under DP** the site releases them through the Gaussian mechanism. With the loss in units of
L, adding or removing one patient moves (n, k, Λ/L) by at most √3 in L2, so

    (ñ, k̃, Λ̃/L) = (n, k, Λ/L) + N(0, (z·√3)² I₃)

is the Gaussian mechanism with noise multiplier z (the policy's
``evaluation_noise_multiplier``). Its Rényi DP at order α is α / (2z²), exactly one step of
the subsampled Gaussian at rate 1, so the ledger records it as the history entry [z, 1, 1] and
composes it with the DP-SGD steps under the same accountant. The noise comes from the site's
ChaCha20 stream (:mod:`common.randomness`). Rounding the exact figures would not be DP; a
policy without a noise multiplier sends no metrics in DP runs.

**Non-private runs** (only where the policy allows them) send the exact sums and AUROC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.randomness import RandomStream

LOSS_BOUND = 5.0  # nats: a row whose true class gets probability below e^−5 ≈ 0.7 % counts 5
SENSITIVITY = math.sqrt(3.0)  # L2 change of (n, k, Λ/L) when one patient is added or removed


@dataclass(frozen=True)
class ValidationSums:
    count: float
    correct: float
    loss_sum: float


def gaussian_release(sums: ValidationSums, *, noise_multiplier: float,
                     stream: RandomStream) -> ValidationSums:
    """The sums with N(0, (z·√3)²) noise on each (the loss in units of LOSS_BOUND)."""
    if noise_multiplier <= 0:
        raise ValueError("the noise multiplier must be positive")
    noise = stream.normal(3) * noise_multiplier * SENSITIVITY
    return ValidationSums(count=sums.count + float(noise[0]),
                          correct=sums.correct + float(noise[1]),
                          loss_sum=sums.loss_sum + float(noise[2]) * LOSS_BOUND)


def history_entry(noise_multiplier: float) -> list[float]:
    """The release as the accountant sees it: one full-batch Gaussian step."""
    return [noise_multiplier, 1.0, 1]
