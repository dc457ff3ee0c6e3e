"""The Gaussian release of validation sums: its noise, and what the accountant charges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client.private_evaluation import (
    LOSS_BOUND,
    SENSITIVITY,
    ValidationSums,
    gaussian_release,
    history_entry,
)
from common.privacy import epsilon_for_history
from common.randomness import RandomStream


def test_each_sum_gets_noise_of_z_root_three_in_its_own_units() -> None:
    stream = RandomStream.from_seed("release")
    exact = ValidationSums(count=100.0, correct=60.0, loss_sum=70.0)
    draws = np.array([[r.count, r.correct, r.loss_sum] for r in (
        gaussian_release(exact, noise_multiplier=2.0, stream=stream) for _ in range(20_000))])
    expected = 2.0 * math.sqrt(3)
    assert np.allclose(draws.mean(axis=0), [100, 60, 70], atol=0.1 * LOSS_BOUND)
    assert draws[:, 0].std() == pytest.approx(expected, rel=0.03)
    assert draws[:, 1].std() == pytest.approx(expected, rel=0.03)
    assert draws[:, 2].std() == pytest.approx(expected * LOSS_BOUND, rel=0.03)
    with pytest.raises(ValueError, match="positive"):
        gaussian_release(exact, noise_multiplier=0.0, stream=stream)


def test_one_patient_moves_the_sums_by_at_most_the_sensitivity() -> None:
    """Adding a patient: count +1, correct +0 or +1, loss +[0, L]: in units of L, at most √3."""
    worst = np.linalg.norm([1.0, 1.0, LOSS_BOUND / LOSS_BOUND])
    assert worst == pytest.approx(SENSITIVITY)


def test_the_release_is_charged_as_the_gaussian_mechanism() -> None:
    """RDP of the Gaussian mechanism with noise multiplier z at order α is α / (2z²); the
    ledger's [z, 1, 1] entry gives the same ε as that curve converted directly."""
    z, delta = 10.0, 1e-5
    charged = epsilon_for_history([history_entry(z)], delta=delta)
    orders = np.concatenate([np.linspace(1.01, 8, 100), np.arange(8, 64)])
    rdp = orders / (2 * z * z)
    # Balle et al. 2020's conversion, as Opacus applies it
    direct = np.min(rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders))
                    / (orders - 1))
    assert charged == pytest.approx(direct, rel=0.02)
