"""The recipe sweep: a run's figures against the goals, the table, and one real (tiny)
in-process federation with fedmm's DP-SGD and server optimisers."""

from __future__ import annotations

from benchmarks.recipe import RECIPES, Recipe, federate, markdown, recipe_config, summarise
from common.config import TrainingConfig
from simulations.demo_data import generate_demo
from simulations.scenarios import Scenario


def _rounds(accuracies: list[float]) -> list[dict]:
    return [{"round": i + 1, "validation_accuracy": a - 0.01, "test_accuracy": a}
            for i, a in enumerate(accuracies)]


def test_summary_names_the_first_round_at_the_goal_and_the_last_five_rounds() -> None:
    row = summarise(_rounds([0.25, 0.3, 0.52, 0.6, 0.7, 0.72, 0.71, 0.74, 0.73]))
    assert row["first_round_at_goal"] == 3
    assert row["test_last5"] == round((0.7 + 0.72 + 0.71 + 0.74 + 0.73) / 5, 4)
    assert row["test_spread_last5"] == 0.04 and row["test_final"] == 0.73
    assert summarise(_rounds([0.25] * 6))["first_round_at_goal"] is None


def test_each_recipe_changes_one_thing_and_the_table_picks_on_validation() -> None:
    assert RECIPES[0].overrides == {} and len({r.name for r in RECIPES}) == len(RECIPES)
    assert recipe_config(RECIPES[0], seed=0, rounds=24).training.model_average == 0.0
    assert RECIPES[-1].from_defaults and recipe_config(RECIPES[-1], seed=0, rounds=24
                                                       ).training == TrainingConfig(seed=0)
    config = recipe_config(Recipe("x", {"training.batch_size": 64}), seed=2, rounds=5)
    assert config.training.batch_size == 64 and config.training.seed == 2
    assert not config.secure_aggregation.enabled and config.training.rounds == 5
    rows = [{"recipe": name, "seed": seed, "rounds": 24, "seconds": 10.0, **summarise(
        _rounds([0.6 + shift] * 24))} for seed in (0, 1) for name, shift in
        (("defaults", 0.0), ("better", 0.1))]
    text = "\n".join(markdown(rows, "python -m benchmarks --only recipe"))
    assert "| better | 0.690 ± 0.000 | 0.700 ± 0.000 |" in text
    assert "Best on validation: **better**." in text


def test_a_tiny_federation_trains_with_dp_and_reports_every_round(tmp_path) -> None:
    sites = generate_demo(tmp_path, sites=2, samples_per_site=30, seed=1,
                          scenario=Scenario.IID, test_samples=20)
    config = recipe_config(Recipe("average", {"training.model_average": 0.9,
                                              "model.embed_dim": 8, "model.hidden_dim": 16,
                                              "training.batch_size": 8}), seed=1, rounds=2)
    rows = federate(config, sites, tmp_path / "test", evaluation_noise=10.0)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)


def test_only_named_rows_run_and_the_others_are_kept(tmp_path, monkeypatch) -> None:
    """``--recipe NAME``: just that row runs; stored rows of the others are reported as they
    are, and a stored row whose config changed since (its fingerprint) is measured again."""
    import json

    import pytest

    from benchmarks import recipe

    ran: list[tuple[str, int]] = []

    def fake_federate(config, site_dirs, test_dir, *, evaluation_noise):
        ran.append((config.training.augmentation_multiplicity, config.training.seed))
        return _rounds([0.6] * config.training.rounds)

    monkeypatch.setattr(recipe, "federate", fake_federate)
    monkeypatch.setattr("simulations.tasks.generate_task", lambda *a, **k: [])
    stored = tmp_path / "recipe.jsonl"
    kept = {"recipe": "batch 64", "seed": 0, "rounds": 24, "seconds": 1.0,
            **summarise(_rounds([0.5] * 24))}
    stale = {**kept, "recipe": "augmentation multiplicity 4 (on today's defaults)", "seed": 1,
             "config": "not this config"}
    stored.write_text(json.dumps(kept) + "\n" + json.dumps(stale) + "\n")
    four = "augmentation multiplicity 4 (on today's defaults)"
    rows = recipe.recipe_sweep(results=stored, only=(four,))
    assert ran == [(4, 0), (4, 1), (4, 2)]
    assert {(r["recipe"], r["seed"]) for r in rows} == {("batch 64", 0), (four, 0), (four, 1),
                                                        (four, 2)}
    assert len(stored.read_text().splitlines()) == 5  # nothing deleted, three appended
    ran.clear()
    recipe.recipe_sweep(results=stored, only=(four,))
    assert ran == []  # all three reused now
    with pytest.raises(ValueError, match="no recipe named"):
        recipe.recipe_sweep(results=stored, only=("no such row",))
