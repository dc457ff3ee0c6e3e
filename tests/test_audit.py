import math

import pytest

from common.audit import audit_scores, epsilon_lower_bound, p_value


def test_p_value_grows_with_epsilon_and_is_one_for_no_correct_guess() -> None:
    values = [p_value(canaries=1000, guesses=200, correct=150, epsilon=e, delta=1e-5)
              for e in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values)
    nothing = p_value(canaries=100, guesses=10, correct=0, epsilon=1.0, delta=0.0)
    assert nothing == pytest.approx(1.0)


def test_pure_dp_bound_matches_the_binomial_tail() -> None:
    """δ = 0, all r guesses right: P = p_ε^r, so ε_lb solves p_ε^r = β exactly."""
    r, beta = 100, 0.05
    p = beta ** (1 / r)
    expected = math.log(p / (1 - p))
    assert epsilon_lower_bound(canaries=r, guesses=r, correct=r, delta=0.0) == pytest.approx(
        expected, abs=1e-4)


def test_no_evidence_gives_zero_and_delta_weakens_the_bound() -> None:
    assert epsilon_lower_bound(canaries=1000, guesses=400, correct=200, delta=1e-5) == 0.0
    strict = epsilon_lower_bound(canaries=1000, guesses=400, correct=400, delta=0.0)
    loose = epsilon_lower_bound(canaries=1000, guesses=400, correct=400, delta=1e-4)
    assert 0 < loose < strict


def test_audit_scores_counts_guesses() -> None:
    scores = [0.9, 0.8, 0.1, 0.2, 0.5, 0.4]
    included = [True, True, False, False, True, False]
    result = audit_scores(scores, included, top=2, bottom=2, delta=0.0)
    assert (result.guesses, result.correct) == (4, 4)
    with pytest.raises(ValueError, match="top \\+ bottom"):
        audit_scores(scores, included, top=4, bottom=4, delta=0.0)
