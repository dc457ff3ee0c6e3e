import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from client.grad_sample import MODES, ModeMemo
from client.training import finite_samples, plan_round, steps_per_epoch, train_local
from common.config import RunConfig
from common.evaluation import auroc, evaluate_weights
from common.models import build_model
from common.privacy import epsilon_for_history, noise_for_budget
from common.randomness import RandomStream
from common.serialization import model_weights
from common.sitedata import load_site


def _config(small_config: RunConfig, **privacy: object) -> RunConfig:
    return small_config.model_copy(update={
        "privacy": small_config.privacy.model_copy(update=privacy)})


def test_plan_derives_sigma_for_the_whole_planned_run(small_config: RunConfig) -> None:
    plan = plan_round(60, small_config, noise_for_budget=noise_for_budget)
    assert plan.steps == steps_per_epoch(60, 16) == 4
    assert plan.sample_rate == pytest.approx(1 / 4)
    planned = [[plan.noise_multiplier, plan.sample_rate, plan.steps * 2]]
    assert epsilon_for_history(planned, delta=1e-5) == pytest.approx(8.0, abs=0.1)
    explicit = plan_round(60, _config(small_config, noise_multiplier=2.0),
                          noise_for_budget=noise_for_budget)
    assert explicit.noise_multiplier == 2.0
    off = plan_round(60, _config(small_config, enabled=False), noise_for_budget=noise_for_budget)
    assert off.noise_multiplier == 0.0


def test_dp_training_records_every_step_and_continues_history(
        demo_root: Path, small_config: RunConfig) -> None:
    small_config = _config(small_config, grad_sample_mode="hooks")
    data = load_site(demo_root / "site-01", small_config.data)
    weights = model_weights(build_model(data=small_config.data, model=small_config.model,
                                        seed=0))
    plan = plan_round(len(data), small_config, noise_for_budget=noise_for_budget)
    earlier = [[0.7, 0.5, 3]]
    torch.manual_seed(0)
    result = train_local(config=small_config, global_weights=weights, data=data, plan=plan,
                         history=earlier, stream=RandomStream.from_seed(0))
    assert result.steps == plan.steps == math.ceil(len(data) / 16)
    assert result.history == [[0.7, 0.5, 3], [plan.noise_multiplier, plan.sample_rate,
                                              plan.steps]]
    assert result.grad_sample_mode == "hooks"
    assert any(not np.array_equal(result.weights[k], weights[k]) for k in weights)
    torch.manual_seed(0)
    again = train_local(config=small_config, global_weights=weights, data=data, plan=plan,
                        history=earlier, stream=RandomStream.from_seed(0))
    assert all(np.array_equal(again.weights[k], result.weights[k]) for k in weights)
    other = train_local(config=small_config, global_weights=weights, data=data, plan=plan,
                        history=earlier, stream=RandomStream.from_seed(1))
    assert any(not np.array_equal(other.weights[k], result.weights[k]) for k in weights)


def test_non_private_and_fedprox_paths(demo_root: Path, small_config: RunConfig) -> None:
    data = load_site(demo_root / "site-02", small_config.data)
    config = _config(small_config, enabled=False).model_copy(update={
        "training": small_config.training.model_copy(update={"strategy": "fedprox",
                                                             "proximal_mu": 0.5})})
    weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
    plan = plan_round(len(data), config, noise_for_budget=noise_for_budget)
    result = train_local(config=config, global_weights=weights, data=data, plan=plan,
                         history=[])
    assert result.grad_sample_mode == "none" and result.history == []
    assert np.isfinite(result.train_loss)


def test_auto_mode_is_calibrated_once_and_remembered(demo_root: Path, small_config: RunConfig,
                                                     tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("client.grad_sample.CALIBRATE_MIN_PARAMETERS", 0)  # calibrate it too
    data = load_site(demo_root / "site-01", small_config.data)
    weights = model_weights(build_model(data=small_config.data, model=small_config.model, seed=0))
    config = _config(small_config, grad_sample_mode="auto")
    plan = plan_round(len(data), config)
    memo = tmp_path / "memo.json"
    torch.manual_seed(0)
    first = train_local(config=config, global_weights=weights, data=data, plan=plan,
                        history=[], mode_memo=memo, stream=RandomStream.from_seed(0))
    [entry] = json.loads(memo.read_text()).values()
    assert first.grad_sample_mode == entry["mode"] in MODES
    assert set(entry["seconds"]) | set(entry["rejected"]) == set(MODES)
    stamp = memo.stat().st_mtime_ns
    torch.manual_seed(0)
    second = train_local(config=config, global_weights=weights, data=data, plan=plan,
                         history=[], mode_memo=memo, stream=RandomStream.from_seed(0))
    assert memo.stat().st_mtime_ns == stamp  # remembered, not measured again
    assert second.grad_sample_mode == first.grad_sample_mode
    for name in first.weights:  # calibration did not disturb the training randomness
        np.testing.assert_array_equal(first.weights[name], second.weights[name])
    assert ModeMemo(memo).get("another model") is None


def test_evaluation_metrics(demo_root: Path, small_config: RunConfig) -> None:
    data = load_site(demo_root / "test", small_config.data)
    weights = model_weights(build_model(data=small_config.data, model=small_config.model,
                                        seed=0))
    metrics = evaluate_weights(small_config, weights, data)
    assert metrics["num-examples"] == len(data) and 0 <= metrics["accuracy"] <= 1
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)


def test_binary_task_reports_auroc(demo_root: Path, small_config: RunConfig) -> None:
    data = load_site(demo_root / "test", small_config.data)
    data.labels = (data.labels >= 2).astype(np.int64)  # arrhythmia or not
    config = small_config.model_copy(update={"data": small_config.data.model_copy(
        update={"num_classes": 2})})
    weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
    metrics = evaluate_weights(config, weights, data)
    assert 0.0 <= metrics["auroc"] <= 1.0


def test_finite_samples_flags_each_sample_with_an_infinite_or_nan_entry_anywhere() -> None:
    weight, bias = torch.randn(6, 4, 3), torch.randn(6, 3)
    weight[1, 2, 0] = float("nan")
    bias[3, 1] = float("inf")
    weight[4, 0, 0], weight[4, 3, 2] = float("inf"), -float("inf")  # their sum is NaN
    assert finite_samples([weight, bias]).tolist() == [True, False, True, False, False, True]


def test_finite_samples_sums_half_precision_without_overflow() -> None:
    large = torch.full((2, 100), 60_000.0, dtype=torch.float16)  # each row sums past 65,504
    large[1, 7] = float("nan")
    assert finite_samples([large]).tolist() == [True, False]
