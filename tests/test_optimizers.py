import numpy as np
import pytest

from common.config import TrainingConfig
from server.optimizers import FedAdam, FedAvg, build_server_optimizer, weighted_mean


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
