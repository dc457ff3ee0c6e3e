"""The protocol end to end in process: real keys, shares, AES-GCM and ChaCha20 masks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.secagg.server import SecAggAbort, SecAggServer, Settings
from tests.secagg_run import run_round


def random_round(clients: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0, 1, size) for _ in range(clients)]
    counts = [int(rng.integers(1, 5000)) for _ in range(clients)]
    return updates, counts


def assert_exact(result) -> None:
    assert np.max(np.abs(result.mean - result.exact)) <= result.tolerance * (1 + 1e-9)


@settings(max_examples=15, deadline=None)
@given(clients=st.integers(2, 14), size=st.integers(1, 2000), seed=st.integers(0, 10**6))
def test_secure_sum_equals_the_plaintext_weighted_mean(clients, size, seed) -> None:
    updates, counts = random_round(clients, size, seed)
    result = run_round(updates, counts, seed=seed)
    assert result.survivors == list(range(clients))
    assert_exact(result)


@settings(max_examples=10, deadline=None)
@given(clients=st.integers(3, 9), data=st.data())
def test_dropouts_up_to_n_minus_t_still_give_the_exact_sum(clients, data) -> None:
    threshold = clients // 2 + 1  # the default: a majority of the neighbourhood
    spare = clients - threshold
    after_share = data.draw(st.sets(st.integers(0, clients - 1), max_size=spare))
    rest = [i for i in range(clients) if i not in after_share]
    after_mask = data.draw(st.sets(st.sampled_from(rest), max_size=spare - len(after_share)))
    updates, counts = random_round(clients, 500, clients)
    result = run_round(updates, counts, drop_after_share=after_share,
                       drop_after_mask=after_mask)
    assert result.survivors == rest  # those who dropped after masking are in the sum
    assert_exact(result)


def test_dropouts_in_a_sparse_graph_are_recovered() -> None:
    updates, counts = random_round(24, 300, 1)
    result = run_round(updates, counts, drop_after_setup={3}, drop_after_share={0, 11},
                       drop_after_mask={5})
    assert len(result.survivors) == 21
    assert_exact(result)


@pytest.mark.parametrize("stage", ["after_share", "after_mask"])
def test_one_dropout_too_many_aborts_the_round(stage: str) -> None:
    updates, counts = random_round(5, 50, 2)  # t = 3: two dropouts are fine, three are not
    dropped = {"drop_after_share": {0, 1, 2}} if stage == "after_share" else {
        "drop_after_mask": {0, 1, 2}}
    with pytest.raises(SecAggAbort, match=r"at least 3 needed|threshold 3"):
        run_round(updates, counts, **dropped)


def test_the_server_sees_only_uniform_payloads_unlike_the_plaintext() -> None:
    updates, counts = random_round(4, 50_000, 3)
    result = run_round(updates, counts)
    for i, payload in result.payloads.items():
        assert not np.array_equal(payload, result.encoded[i])
        top = np.bincount((payload >> 24).astype(np.int64), minlength=256)
        expected = payload.size / 256
        assert float(((top - expected) ** 2 / expected).sum()) < 340  # 255 dof, p < 0.0005
        plain_top = np.bincount((result.encoded[i] >> 24).astype(np.int64), minlength=256)
        assert float(((plain_top - expected) ** 2 / expected).sum()) > 10_000


def test_fewer_than_two_clients_cannot_be_aggregated_securely() -> None:
    with pytest.raises(SecAggAbort, match="at least 2"):
        SecAggServer(context="r", settings=Settings(clients=1))
