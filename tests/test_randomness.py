"""DP randomness from ChaCha20: the draws have the distributions claimed, streams keyed alike
agree, and streams keyed apart do not."""

import numpy as np
from scipy import stats

from common.randomness import RandomStream


def test_uniform_draws_are_uniform_on_the_unit_interval() -> None:
    draws = RandomStream.from_seed("u").uniform(200_000)
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert stats.kstest(draws, "uniform").pvalue > 1e-3


def test_normal_draws_are_standard_normal() -> None:
    draws = RandomStream.from_seed("n").normal(200_000)
    assert abs(draws.mean()) < 0.01 and abs(draws.std() - 1.0) < 0.01
    assert stats.kstest(draws, "norm").pvalue > 1e-3
    assert abs(stats.kurtosis(draws)) < 0.05  # Gaussian tails, not only its first moments


def test_same_key_same_draws_other_key_other_draws() -> None:
    assert np.array_equal(RandomStream.from_seed(1, "a").normal(10),
                          RandomStream.from_seed(1, "a").normal(10))
    assert not np.array_equal(RandomStream.from_seed(1, "a").normal(10),
                              RandomStream.from_seed(1, "b").normal(10))
    assert not np.array_equal(RandomStream.fresh().uniform(4), RandomStream.fresh().uniform(4))
