import contextlib
import itertools
import os

import pytest

from common.secagg import shamir


def test_any_threshold_subset_recovers_the_secret() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4, 5])
    for subset in itertools.combinations(shares.items(), 3):
        assert shamir.combine(dict(subset), threshold=3) == secret


def test_fewer_shares_than_the_threshold_are_refused() -> None:
    shares = shamir.split(os.urandom(32), threshold=3, xs=[1, 2, 3])
    with pytest.raises(shamir.ShamirError, match="threshold"):
        shamir.combine(dict(list(shares.items())[:2]), threshold=3)


def test_each_sharing_draws_fresh_coefficients() -> None:
    secret = bytes(32)
    first = shamir.split(secret, threshold=2, xs=[1, 2])
    second = shamir.split(secret, threshold=2, xs=[1, 2])
    assert first[1] != second[1] and first[1] != secret.rjust(shamir.SHARE_BYTES, b"\0")


def test_a_corrupted_share_gives_a_different_secret_or_an_error() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=2, xs=[1, 2])
    shares[2] = bytes([shares[2][0] ^ 1]) + shares[2][1:]
    with contextlib.suppress(shamir.ShamirError):
        assert shamir.combine(shares, threshold=2) != secret


@pytest.mark.parametrize("kwargs", [
    {"threshold": 0, "xs": [1, 2]},
    {"threshold": 3, "xs": [1, 2]},
    {"threshold": 2, "xs": [1, 1]},
    {"threshold": 2, "xs": [0, 1]},
])
def test_bad_parameters_are_refused(kwargs) -> None:
    with pytest.raises(shamir.ShamirError):
        shamir.split(os.urandom(32), **kwargs)
