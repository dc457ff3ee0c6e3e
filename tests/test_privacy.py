import math
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from common.privacy import epsilon_for_history, noise_for_budget, normalise_history


def test_equals_opacus_accountant_step_by_step() -> None:
    accountant = RDPAccountant()
    for _ in range(30):
        accountant.step(noise_multiplier=0.9, sample_rate=0.05)
    for _ in range(12):
        accountant.step(noise_multiplier=1.3, sample_rate=0.1)
    history = [[0.9, 0.05, 30], [1.3, 0.1, 12]]
    assert epsilon_for_history(history, delta=1e-5) == pytest.approx(
        accountant.get_epsilon(delta=1e-5), rel=1e-12)


def test_rdp_is_opacus_bit_for_bit_with_each_mechanisms_curve_computed_once(monkeypatch) -> None:
    """A site's ε after each of 12 rounds (training and an evaluation release per round), as
    Opacus' RDPAccountant computes it from the whole history, equal to the last bit; the one-step
    RDP curve of each (σ, q) is computed once, not once per round."""
    import opacus.accountants.analysis.rdp as analysis

    import common.privacy as privacy

    calls = []
    original = analysis.compute_rdp

    def counting(**kwargs):
        calls.append((kwargs["noise_multiplier"], kwargs["q"]))
        return original(**kwargs)

    monkeypatch.setattr(analysis, "compute_rdp", counting)
    privacy._rdp_curve.cache_clear()
    history: list[list[float]] = []
    for round_number in range(1, 13):
        history += [[1.07, 0.125, 4], [9.5, 1.0, 1]]
        reference = RDPAccountant()
        reference.history = [(1.07, 0.125, 4 * round_number), (9.5, 1.0, round_number)]
        with monkeypatch.context() as scope:
            scope.setattr(analysis, "compute_rdp", original)
            expected = reference.get_epsilon(delta=1e-5)
        assert epsilon_for_history(history, delta=1e-5) == expected
    assert sorted(set(calls)) == sorted(calls) == [(1.07, 0.125), (9.5, 1.0)]


def test_history_merges_and_validates() -> None:
    assert normalise_history([[1.0, 0.1, 3], [1.0, 0.1, 2], [1.0, 0.2, 0]]) == [(1.0, 0.1, 5)]
    with pytest.raises(ValueError, match="out of range"):
        normalise_history([[1.0, 1.5, 3]])
    with pytest.raises(ValueError, match="must be"):
        normalise_history([[1.0, 0.1]])
    assert epsilon_for_history([], delta=1e-5) == 0.0
    assert epsilon_for_history([[0.0, 0.1, 1]], delta=1e-5) == math.inf


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_interleaved_training_and_releases_are_what_opacus_says_step_by_step(
        accountant: str, monkeypatch) -> None:
    """A site's history alternates training (σ, q, steps) and evaluation releases (σ', 1, 1)
    every round; the accountant sees each mechanism once, with its steps added up, and the ε is
    Opacus' own for the history as it happened."""
    from opacus.accountants import create_accountant

    import common.privacy as privacy

    rounds = 6
    history = [entry for _ in range(rounds) for entry in ([1.1, 0.05, 20], [8.0, 1.0, 1])]
    reference = create_accountant(mechanism=accountant)
    for sigma, rate, steps in history:
        for _ in range(steps):
            reference.step(noise_multiplier=sigma, sample_rate=rate)
    seen = []
    original = privacy._epsilon.__wrapped__

    def recording(entries, delta, name):
        seen.append(entries)
        return original(entries, delta, name)

    monkeypatch.setattr(privacy, "_epsilon", recording)
    assert epsilon_for_history(history, delta=1e-5, accountant=accountant) == pytest.approx(
        reference.get_epsilon(delta=1e-5), rel=1e-6)
    assert seen == [((1.1, 0.05, 20 * rounds), (8.0, 1.0, rounds))]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_derived_noise_reaches_the_target(accountant: str) -> None:
    sigma = noise_for_budget(target_epsilon=3.0, delta=1e-5, sample_rate=0.1, steps=100,
                             accountant=accountant)
    spent = epsilon_for_history([[sigma, 0.1, 100]], delta=1e-5, accountant=accountant)
    assert 2.9 <= spent <= 3.0


def test_noise_memo_remembers_sigma_on_disk(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from common import privacy

    memo = privacy.NoiseMemo(tmp_path / "memo.json")
    first = memo(target_epsilon=5.0, delta=1e-5, sample_rate=0.2, steps=40)
    monkeypatch.setattr(privacy, "noise_for_budget", lambda **_: pytest.fail("recomputed"))
    again = privacy.NoiseMemo(tmp_path / "memo.json")(target_epsilon=5.0, delta=1e-5,
                                                       sample_rate=0.2, steps=40)
    assert again == first
    (tmp_path / "memo.json").write_text("not json")
    monkeypatch.setattr(privacy, "noise_for_budget", lambda **_: 1.25)
    assert memo(target_epsilon=5.0, delta=1e-5, sample_rate=0.2, steps=40) == 1.25


def test_noise_leaves_room_for_the_planned_evaluation_releases() -> None:
    from common.config import ConfigError

    alone = noise_for_budget(target_epsilon=4.0, delta=1e-5, sample_rate=0.2, steps=100)
    extra = ((10.0, 1.0, 24),)
    shared = noise_for_budget(target_epsilon=4.0, delta=1e-5, sample_rate=0.2, steps=100,
                              extra=extra)
    spent = epsilon_for_history([[shared, 0.2, 100], *map(list, extra)], delta=1e-5)
    assert shared > alone and 4.0 - 0.02 <= spent <= 4.0
    with pytest.raises(ConfigError, match="evaluation releases alone"):
        noise_for_budget(target_epsilon=0.5, delta=1e-5, sample_rate=0.2, steps=100,
                         extra=((1.0, 1.0, 24),))
