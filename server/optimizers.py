"""Server optimisers: turn the mean client update Δ̄ into the next global model.

- FedAvg (McMahan et al. 2017): w ← w + η·Δ̄ (η = 1 is plain averaging); with server momentum β
  (FedAvgM, Hsu et al. 2019) m ← βm + Δ̄; w ← w + η·m. FedProx (Li et al. 2020) differs only on
  the client (proximal term), so it uses this server step too.
- FedAdam (Reddi et al. 2021): m ← β₁m + (1−β₁)Δ̄;  v ← β₂v + (1−β₂)Δ̄²;  w ← w + η·m/(√v + τ).
- Any of them with a model average (:class:`ModelAverage`): an exponential moving average of
  the global models w̄ ← β_t·w̄ + (1−β_t)·w is the model evaluated and published, while the
  sites keep training from w.

Every step and average is post-processing of the sites' (DP) updates, so none costs privacy.
State (m, v, w̄) is plain arrays so a checkpoint can restore it and a resumed run continues
exactly.
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

    def released(self, weights: Weights) -> Weights:
        """The model to evaluate and publish when the training model is ``weights``."""
        return weights

    def state(self) -> Weights:
        return {}

    def load_state(self, state: Weights) -> None:  # noqa: B027 - stateless by default
        """Restore what :meth:`state` returned."""


class FedAvg(ServerOptimizer):
    def __init__(self, *, learning_rate: float = 1.0, momentum: float = 0.0,
                 name: str = "fedavg") -> None:
        self.learning_rate, self.momentum = learning_rate, momentum
        self.name = name
        self.m: Weights = {}

    def step(self, weights: Weights, mean_update: Weights) -> Weights:
        if self.momentum == 0.0:
            return {k: (w + self.learning_rate * mean_update[k]).astype(np.float32)
                    for k, w in weights.items()}
        new = {}
        for k, w in weights.items():
            d = mean_update[k].astype(np.float64)
            self.m[k] = self.momentum * self.m.get(k, np.zeros_like(d)) + d
            new[k] = (w + self.learning_rate * self.m[k]).astype(np.float32)
        return new

    def state(self) -> Weights:
        return {f"m/{k}": v for k, v in self.m.items()}

    def load_state(self, state: Weights) -> None:
        self.m = {k[2:]: v.astype(np.float64) for k, v in state.items() if k.startswith("m/")}


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


class ModelAverage(ServerOptimizer):
    """``inner``'s steps, and an exponential moving average of the models they give.

    After the t-th step (t = 1, 2, …) w̄ ← β_t·w̄ + (1−β_t)·w with β_t = min(β, (t−1)/(t+9)):
    the first model enters whole and early ones weigh more than β alone would give them, so
    the average does not lag behind a model that is still far from its final value (the
    warm-up of TensorFlow's ExponentialMovingAverage with ``num_updates``). With DP, a model
    swings from round to round by the noise of its last updates; the average keeps what the
    rounds agree on.
    """

    def __init__(self, inner: ServerOptimizer, *, decay: float) -> None:
        self.inner, self.decay, self.name = inner, decay, inner.name
        self.average: Weights = {}
        self.steps = 0

    def step(self, weights: Weights, mean_update: Weights) -> Weights:
        new = self.inner.step(weights, mean_update)
        self.steps += 1
        beta = min(self.decay, (self.steps - 1) / (self.steps + 9))
        self.average = {k: (beta * self.average[k] + (1.0 - beta) * w.astype(np.float64)
                            if k in self.average else w.astype(np.float64))
                        for k, w in new.items()}
        return new

    def released(self, weights: Weights) -> Weights:
        if not self.average:
            return weights
        return {k: v.astype(np.float32) for k, v in self.average.items()}

    def state(self) -> Weights:
        return {**self.inner.state(), **{f"avg/{k}": v for k, v in self.average.items()},
                "avg_steps": np.array([self.steps], dtype=np.int64)}

    def load_state(self, state: Weights) -> None:
        self.inner.load_state({k: v for k, v in state.items()
                               if not k.startswith("avg/") and k != "avg_steps"})
        self.average = {k[4:]: v.astype(np.float64) for k, v in state.items()
                        if k.startswith("avg/")}
        self.steps = int(state["avg_steps"][0]) if "avg_steps" in state else 0


def build_server_optimizer(training: TrainingConfig) -> ServerOptimizer:
    optimizer: ServerOptimizer
    if training.strategy == "fedadam":
        optimizer = FedAdam(learning_rate=training.server_learning_rate,
                            beta1=training.server_beta1, beta2=training.server_beta2,
                            tau=training.server_tau)
    else:
        optimizer = FedAvg(learning_rate=training.server_learning_rate,
                           momentum=training.server_momentum, name=training.strategy)
    if training.model_average > 0.0:
        optimizer = ModelAverage(optimizer, decay=training.model_average)
    return optimizer


def weighted_mean(updates: list[tuple[Weights, float]]) -> Weights:
    """Σ nᵢΔᵢ / Σ nᵢ in float64, summed in the given order (callers sort by site id)."""
    total = float(sum(n for _, n in updates))
    if total <= 0:
        raise ValueError("no examples to aggregate")
    keys = updates[0][0].keys()
    return {k: (sum(u[k].astype(np.float64) * n for u, n in updates) / total).astype(np.float32)
            for k in keys}
