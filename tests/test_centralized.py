"""The pooled-data references: the same model and epochs without DP and with DP-SGD at the
run's ε, and the ratios that separate the cost of federation from the cost of privacy."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.training import steps_per_epoch
from common.config import RunConfig
from common.privacy import epsilon_for_history
from simulations.centralized import cost_ratios, pooled_config, train_centralized
from simulations.demo_data import generate_demo
from simulations.scenarios import Scenario


def _config(**privacy) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"embed_dim": 8, "hidden_dim": 16},
        "training": {"rounds": 3, "local_epochs": 1, "batch_size": 16},
        "privacy": {"target_epsilon": 4.0, **privacy}})


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[list[Path], Path]:
    root = tmp_path_factory.mktemp("demo")
    sites = generate_demo(root, sites=2, samples_per_site=40, seed=3, scenario=Scenario.IID,
                          test_samples=40)
    return sites, root / "test"


def test_the_pooled_run_is_one_party_training_every_epoch_of_the_federation() -> None:
    pooled = pooled_config(_config(), private=True)
    assert pooled.training.local_epochs == 3 and pooled.training.rounds == 1
    assert pooled.privacy.enabled and pooled.privacy.target_epsilon == 4.0
    assert pooled.training.momentum == 0.0  # hundreds of uninterrupted DP steps
    plain = pooled_config(_config(), private=False)
    assert not plain.privacy.enabled and plain.training.momentum == 0.9


def test_the_dp_reference_spends_the_runs_epsilon_on_the_pooled_data(demo) -> None:
    sites, test = demo
    # here, one after the other (the side-by-side test checks that two processes agree)
    references = train_centralized(config=_config(), site_dirs=sites, test_dir=test, cores=1)
    plain, dp = references["non_private"], references["dp"]
    assert plain["examples"] == dp["examples"] == 64  # 2 × 40, 20 % kept for validation
    assert plain["epochs"] == dp["epochs"] == 3
    per_epoch = steps_per_epoch(64, 16)
    assert dp["steps"] == 3 * per_epoch
    history = [[dp["noise_multiplier"], 1 / per_epoch, dp["steps"]]]
    assert dp["epsilon"] == pytest.approx(epsilon_for_history(history, delta=1e-5))
    assert 3.5 < dp["epsilon"] <= 4.0 + 1e-6  # the whole budget, on training alone
    assert 0.0 <= dp["test_accuracy"] <= 1.0 and 0.0 <= plain["test_accuracy"] <= 1.0


def test_a_non_private_run_gets_only_the_non_private_reference(demo) -> None:
    sites, test = demo
    references = train_centralized(config=_config(enabled=False), site_dirs=sites,
                                   test_dir=test)
    assert set(references) == {"non_private"}


def test_ratios_separate_federation_from_privacy() -> None:
    references = {"non_private": {"test_accuracy": 0.9}, "dp": {"test_accuracy": 0.8}}
    assert cost_ratios(references, 0.6) == {"privacy": pytest.approx(0.8889, abs=1e-4),
                                            "federation_under_dp": 0.75}
    assert cost_ratios({"non_private": {"test_accuracy": 0.8}}, 0.6) == {"federation": 0.75}
    assert cost_ratios(references, None) == {"privacy": pytest.approx(0.8889, abs=1e-4)}
    assert cost_ratios({"non_private": {}}, 0.6) == {}


def test_side_by_side_gives_what_one_after_the_other_gives(demo) -> None:
    """The two references train at once in their own processes when there are two cores; the
    figures are those of training them here one after the other."""
    sites, test = demo
    apart = train_centralized(config=_config(), site_dirs=sites, test_dir=test, cores=2)
    here = train_centralized(config=_config(), site_dirs=sites, test_dir=test, cores=1)
    for name in ("non_private", "dp"):
        for key in ("examples", "epochs", "steps", "noise_multiplier", "epsilon"):
            assert apart[name].get(key) == here[name].get(key), (name, key)
        assert apart[name]["test_loss"] == pytest.approx(here[name]["test_loss"], rel=1e-3)
