"""The server's state over a run: what the round loop and every callback see."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.serialization import Weights
from server.optimizers import ServerOptimizer
from server.run_folder import RoundRecord, RunFolder


@dataclass
class SitePrivacy:
    """A site's privacy figures as it last reported them (ε over its whole history)."""

    epsilon: float
    max_grad_norm: float
    history: list[list[float]]


@dataclass
class RunState:
    config: RunConfig
    folder: RunFolder
    run_id: str
    weights: Weights
    optimizer: ServerOptimizer
    round: int = 0
    rounds: list[RoundRecord] = field(default_factory=list)
    sites: dict[str, SitePrivacy] = field(default_factory=dict)
    stop_reason: str = ""

    @property
    def run_dir(self) -> Path:
        return self.folder.root

    @property
    def released_weights(self) -> Weights:
        """The model evaluated and published: ``weights`` or, with a model average, that."""
        return self.optimizer.released(self.weights)

    def sites_json(self) -> dict[str, dict[str, Any]]:
        return {name: {"epsilon": s.epsilon, "max_grad_norm": s.max_grad_norm,
                       "history": s.history} for name, s in sorted(self.sites.items())}
