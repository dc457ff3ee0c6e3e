"""Server optimisers: turn the mean client update Δ̄ into the next global model.

- FedAvg (McMahan et al. 2017): w ← w + η·Δ̄ (η = 1 is plain averaging). FedProx (Li et al. 2020)
  differs only on the client (proximal term), so it uses this server step too.
- FedAdam (Reddi et al. 2021): m ← β₁m + (1−β₁)Δ̄;  v ← β₂v + (1−β₂)Δ̄²;  w ← w + η·m/(√v + τ).

State (m, v) is plain arrays so a checkpoint can restore it and a resumed run continues exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from common.config import TrainingConfig
from common.serialization import Weights


class ServerOptimizer(ABC):
    name: str

    @abstractmethod
    def step(self, weights: Weights, mean_update: Weights) -> Weights:
        """Return the new global weights (inputs are not modified)."""

    def state(self) -> Weights:
        return {}

    def load_state(self, state: Weights) -> None:  # noqa: B027 - stateless by default
        """Restore what :meth:`state` returned."""


class FedAvg(ServerOptimizer):
    def __init__(self, *, learning_rate: float = 1.0, name: str = "fedavg") -> None:
        self.learning_rate = learning_rate
        self.name = name

    def step(self, weights: Weights, mean_update: Weights) -> Weights:
        return {k: (w + self.learning_rate * mean_update[k]).astype(np.float32)
                for k, w in weights.items()}


class FedAdam(ServerOptimizer):
    name = "fedadam"

    def __init__(self, *, learning_rate: float, beta1: float, beta2: float, tau: float) -> None:
        self.learning_rate, self.beta1, self.beta2, self.tau = learning_rate, beta1, beta2, tau
        self.m: Weights = {}
        self.v: Weights = {}

    def step(self, weights: Weights, mean_update: Weights) -> Weights:
        new = {}
        for k, w in weights.items():
            d = mean_update[k].astype(np.float64)
            self.m[k] = self.beta1 * self.m.get(k, np.zeros_like(d)) + (1 - self.beta1) * d
            self.v[k] = self.beta2 * self.v.get(k, np.zeros_like(d)) + (1 - self.beta2) * d * d
            new[k] = (w + self.learning_rate * self.m[k] / (np.sqrt(self.v[k]) + self.tau))
            new[k] = new[k].astype(np.float32)
        return new

    def state(self) -> Weights:
        return {**{f"m/{k}": v for k, v in self.m.items()},
                **{f"v/{k}": v for k, v in self.v.items()}}

    def load_state(self, state: Weights) -> None:
        self.m = {k[2:]: v.astype(np.float64) for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: v.astype(np.float64) for k, v in state.items() if k.startswith("v/")}


def build_server_optimizer(training: TrainingConfig) -> ServerOptimizer:
    if training.strategy == "fedadam":
        return FedAdam(learning_rate=training.server_learning_rate, beta1=training.server_beta1,
                       beta2=training.server_beta2, tau=training.server_tau)
    return FedAvg(learning_rate=training.server_learning_rate, name=training.strategy)


def weighted_mean(updates: list[tuple[Weights, float]]) -> Weights:
    """Σ nᵢΔᵢ / Σ nᵢ in float64, summed in the given order (callers sort by site id)."""
    total = float(sum(n for _, n in updates))
    if total <= 0:
        raise ValueError("no examples to aggregate")
    keys = updates[0][0].keys()
    return {k: (sum(u[k].astype(np.float64) * n for u, n in updates) / total).astype(np.float32)
            for k in keys}
