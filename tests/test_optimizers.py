import numpy as np
import pytest

from common.config import TrainingConfig
from server.optimizers import (
    FedAdam,
    FedAvg,
    ModelAverage,
    build_server_optimizer,
    weighted_mean,
)


def test_weighted_mean_is_example_weighted() -> None:
    mean = weighted_mean([({"w": np.array([1.0, 0.0])}, 1), ({"w": np.array([4.0, 3.0])}, 2)])
    assert np.allclose(mean["w"], [3.0, 2.0])
    with pytest.raises(ValueError, match="no examples"):
        weighted_mean([({"w": np.zeros(1)}, 0)])


def test_fedavg_applies_mean_update() -> None:
    new = FedAvg().step({"w": np.ones(2, np.float32)}, {"w": np.array([0.5, -1.0])})
    assert np.allclose(new["w"], [1.5, 0.0]) and new["w"].dtype == np.float32


def test_fedadam_matches_formula_and_restores_state() -> None:
    optimizer = FedAdam(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    weights = {"w": np.zeros(1, np.float32)}
    update = {"w": np.array([2.0])}
    first = optimizer.step(weights, update)
    m, v = 0.1 * 2.0, 0.01 * 4.0
    assert np.allclose(first["w"], 0.1 * m / (np.sqrt(v) + 1e-3))
    clone = FedAdam(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    clone.load_state(optimizer.state())
    assert np.allclose(clone.step(first, update)["w"], optimizer.step(first, update)["w"])


def test_build_by_name() -> None:
    assert build_server_optimizer(TrainingConfig(strategy="fedadam")).name == "fedadam"
    assert build_server_optimizer(TrainingConfig(strategy="fedprox")).name == "fedprox"


def test_server_momentum_carries_earlier_updates_and_restores_state() -> None:
    optimizer = FedAvg(learning_rate=0.5, momentum=0.9)
    weights = {"w": np.zeros(1, np.float32)}
    first = optimizer.step(weights, {"w": np.array([1.0])})
    second = optimizer.step(first, {"w": np.array([1.0])})
    assert np.allclose(first["w"], 0.5) and np.allclose(second["w"], 0.5 + 0.5 * 1.9)
    clone = FedAvg(learning_rate=0.5, momentum=0.9)
    clone.load_state(optimizer.state())
    assert np.allclose(clone.step(second, {"w": np.array([0.0])})["w"],
                       optimizer.step(second, {"w": np.array([0.0])})["w"])


def test_model_average_warms_up_then_decays_at_beta() -> None:
    optimizer = ModelAverage(FedAvg(), decay=0.5)
    weights = {"w": np.zeros(1, np.float32)}
    expected, average = [], None
    for t in range(1, 8):
        weights = optimizer.step(weights, {"w": np.array([1.0])})  # w_t = t
        beta = min(0.5, (t - 1) / (t + 9))
        average = float(t) if average is None else beta * average + (1 - beta) * t
        expected.append(average)
        assert np.allclose(optimizer.released(weights)["w"], average)
    assert np.allclose(weights["w"], 7.0)  # training is not averaged
    clone = ModelAverage(FedAvg(), decay=0.5)
    assert np.allclose(clone.released(weights)["w"], 7.0)  # nothing averaged yet
    clone.load_state(optimizer.state())
    step = {"w": np.array([1.0])}
    assert np.allclose(clone.released(clone.step(weights, step))["w"],
                       optimizer.released(optimizer.step(weights, step))["w"])


def test_model_average_wraps_the_chosen_strategy() -> None:
    built = build_server_optimizer(TrainingConfig(strategy="fedadam", model_average=0.9))
    assert isinstance(built, ModelAverage) and built.name == "fedadam"
    assert isinstance(built.inner, FedAdam)
    assert isinstance(build_server_optimizer(TrainingConfig()), ModelAverage)  # the default
    assert not isinstance(build_server_optimizer(TrainingConfig(model_average=0.0)),
                          ModelAverage)
