import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.secagg.encoding import RingEncoding, ring_add


@settings(max_examples=40, deadline=None)
@given(clients=st.integers(1, 12), size=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       clip=st.floats(0.01, 100.0), max_weight=st.integers(1, 100_000))
def test_decoded_sum_is_the_weighted_mean_within_one_step_per_client(
        clients, size, seed, clip, max_weight) -> None:
    rng = np.random.default_rng(seed)
    encoding = RingEncoding(clip_range=clip, max_weight=max_weight, max_clients=clients)
    updates = [rng.uniform(-clip, clip, size) for _ in range(clients)]
    counts = [int(rng.integers(1, 2 * max_weight + 1)) for _ in range(clients)]
    total = np.zeros(size + 1, dtype=np.uint32)
    for update, count in zip(updates, counts, strict=True):
        total = ring_add(total, encoding.encode(update, count, rng).vector)
    mean, total_weight = encoding.decode(total)
    weights = np.minimum(counts, max_weight).astype(np.float64)
    exact = sum(w * u for w, u in zip(weights, updates, strict=True)) / weights.sum()
    assert total_weight == weights.sum()
    assert np.max(np.abs(mean - exact)) <= encoding.tolerance(total_weight, clients) * (1 + 1e-9)


def test_stochastic_rounding_is_unbiased() -> None:
    encoding = RingEncoding(clip_range=1.0, max_weight=1, max_clients=2**20)
    value = 0.3 / encoding.scale  # 0.3 of a quantisation step
    rng = np.random.default_rng(0)
    vector = encoding.encode(np.full(100_000, value), 1, rng).vector[:-1]
    assert set(np.unique(vector)) <= {0, 1}
    assert abs(vector.mean() - 0.3) < 0.01


def test_out_of_range_values_are_clipped_and_counted() -> None:
    encoding = RingEncoding(clip_range=1.0, max_weight=10, max_clients=1)
    encoded = encoding.encode(np.array([0.5, 3.0, -7.0, 1.0]), 10, np.random.default_rng(0))
    assert encoded.clipped == 2
    mean, _ = encoding.decode(encoded.vector)
    assert np.allclose(mean, [0.5, 1.0, -1.0, 1.0], atol=1e-8)


def test_non_finite_updates_are_refused() -> None:
    encoding = RingEncoding(clip_range=1.0, max_weight=10, max_clients=2)
    with pytest.raises(ValueError, match="not finite"):
        encoding.encode(np.array([0.0, np.nan]), 5, np.random.default_rng(0))


def test_settings_that_could_overflow_the_ring_are_refused() -> None:
    with pytest.raises(ValueError, match="2\\^32"):
        RingEncoding(clip_range=1.0, max_weight=2**20, max_clients=2**12)
