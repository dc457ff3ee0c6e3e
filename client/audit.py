"""White-box DP-SGD audit of this site's training path with Dirac gradient canaries.

Each of m canaries is a per-sample gradient that is zero everywhere except one coordinate of the
text embedding table, in a row no real token of the site uses (so real data never moves it), with
value ``10·C`` (it only fits the claim if clipping works). Each canary is included with probability
½; an included canary joins each DP-SGD step with the same Poisson rate q as real samples, as one
more row of the per-sample gradients *before* Opacus clips, sums and noises them — the same
optimizer path :func:`client.training.train_local` uses for every round.

A canary's score is how far its coordinate moved against its gradient; the one-run bound of
:mod:`common.audit` turns the guesses into ε_lb. ``tamper`` breaks the pipeline on purpose
(``no-noise``: σ = 0; ``no-clipping``: clipping off with the same noise std σ·C) to show the audit
has teeth: those runs must yield ε_lb above the claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from client.training import plan_round, train_local
from common.audit import AuditResult, audit_scores
from common.config import RunConfig
from common.models import build_model
from common.privacy import epsilon_for_history
from common.serialization import model_weights
from common.sitedata import SiteData

EMBEDDING = "encoders.text.embedding.weight"
Tamper = Literal["none", "no-noise", "no-clipping"]
_UNCLIPPED = 1e9


@dataclass(frozen=True)
class CanaryAudit:
    claimed_epsilon: float
    result: AuditResult
    tamper: str


class _CanaryInserter:
    """The ``after_backward`` hook: appends this step's canary rows to every ``grad_sample``."""

    def __init__(self, *, coordinates: np.ndarray, included: np.ndarray, rate: float,
                 value: float, tamper: Tamper, seed: int) -> None:
        self.coordinates, self.included, self.rate = coordinates, included, rate
        self.value, self.tamper = value, tamper
        self.rng = np.random.default_rng(seed)
        self.tampered = False

    def _tamper_once(self, optimizer: torch.optim.Optimizer) -> None:
        if self.tampered or self.tamper == "none":
            return
        if self.tamper == "no-noise":
            optimizer.noise_multiplier = 0.0
        else:  # same noise std σ·C, no clipping
            optimizer.noise_multiplier *= optimizer.max_grad_norm / _UNCLIPPED
            optimizer.max_grad_norm = _UNCLIPPED
        self.tampered = True

    def __call__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._tamper_once(optimizer)
        members = np.flatnonzero(self.included)
        joining = members[self.rng.random(members.size) < self.rate]
        if joining.size == 0:
            return
        for name, parameter in model.named_parameters():
            rows = torch.zeros(joining.size, *parameter.shape, dtype=parameter.grad_sample.dtype)
            if name == EMBEDDING:
                flat = rows.view(joining.size, -1)
                flat[torch.arange(joining.size), torch.from_numpy(self.coordinates[joining])] = (
                    self.value)
            parameter.grad_sample = torch.cat([parameter.grad_sample, rows])


def _unused_coordinates(data: SiteData, config: RunConfig, count: int,
                        rng: np.random.Generator) -> np.ndarray:
    used = np.zeros(config.data.vocab_size, dtype=bool)
    used[np.unique(data.tokens)] = True
    used[0] = True  # padding row
    rows = np.flatnonzero(~used)
    width = config.model.embed_dim
    candidates = (rows[:, None] * width + np.arange(width)[None, :]).ravel()
    if candidates.size < count:
        raise ValueError(f"only {candidates.size} unused embedding coordinates for {count} "
                         "canaries; raise data.vocab_size or use fewer canaries")
    return rng.choice(candidates, size=count, replace=False)


def run_canary_audit(*, config: RunConfig, data: SiteData, canaries: int = 1000,
                     guesses_each_side: int = 200, seed: int = 0,
                     tamper: Tamper = "none") -> CanaryAudit:
    """One DP-SGD round on ``data`` with canaries; the ε claimed for it and the audit's ε_lb."""
    if "text" not in config.model.modalities:
        raise ValueError("the canary audit needs the text encoder (its embedding holds them)")
    config = config.model_copy(update={"privacy": config.privacy.model_copy(
        update={"enabled": True, "grad_sample_mode": "hooks"})})
    plan = plan_round(len(data), config)
    claimed = epsilon_for_history([[plan.noise_multiplier, plan.sample_rate, plan.steps]],
                                  delta=config.privacy.delta,
                                  accountant=config.privacy.accountant)
    rng = np.random.default_rng(seed)
    coordinates = _unused_coordinates(data, config, canaries, rng)
    included = rng.random(canaries) < 0.5
    initial = model_weights(build_model(data=config.data, model=config.model, seed=seed))
    inserter = _CanaryInserter(coordinates=coordinates, included=included,
                               rate=plan.sample_rate, value=10 * config.privacy.max_grad_norm,
                               tamper=tamper, seed=seed + 1)
    torch.manual_seed(seed)
    result = train_local(config=config, global_weights=initial, data=data, plan=plan,
                         history=[], after_backward=inserter)
    moved = (initial[EMBEDDING] - result.weights[EMBEDDING]).ravel()[coordinates]
    if not np.all(np.isfinite(moved)):
        raise ValueError("training diverged (NaN/Inf weights); lower training.learning_rate "
                         "for the audit")
    audit = audit_scores(moved.tolist(), included.tolist(), top=guesses_each_side,
                         bottom=guesses_each_side, delta=config.privacy.delta)
    return CanaryAudit(claimed_epsilon=claimed, result=audit, tamper=tamper)
