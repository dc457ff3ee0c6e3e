"""White-box DP-SGD audit of this site's training path with Dirac gradient canaries.

Each of m canaries is a per-sample gradient that is zero everywhere except at one coordinate of
the model's trainable parameters, with value ``10·C`` (it only fits the claim if clipping works).
Each canary is included with probability ½; an included canary joins each DP-SGD step with the
same Poisson rate q as real samples, as one more sample's rows of the per-sample gradients
*before* Opacus clips, sums and noises them — the optimizer path
:func:`client.training.train_local` uses for every round, in the per-sample-gradient mode the
site would use (``privacy.grad_sample_mode``, ``auto`` resolved as the site resolves it) and with
the site's augmentation multiplicity K: a canary then is K rows (its augmented copies), each the
Dirac, whose mean — what DP-SGD clips — is the Dirac.

Where the canaries sit: at coordinates whose per-sample gradient is zero for every sample of the
site (an unused embedding row, the encoder and fusion slots of a modality the site never has),
computed at the initial weights with Opacus' own per-sample gradients; when there are fewer such
coordinates than canaries (a picture-only model, pretrained features), the rest are the
coordinates with the least total per-sample gradient |gᵢ| over the site. The choice depends only
on the data and the initial weights, never on which canaries are included, so the one-run
theorem of :mod:`common.audit` holds wherever they sit: real data moving a canary's coordinate
only adds noise to its score (a weaker bound, never an invalid one). No second run is
subtracted: a reference run sharing the noise would make the score depend on the mechanism's own
randomness, outside the theorem's assumptions.

A canary's score is how far its coordinate moved against its gradient; the one-run bound turns
the guesses into ε_lb. Ghost clipping (``grad_sample_mode = "ghost"``) keeps no per-sample
gradients to append rows to: the audit first checks on a batch of the site's data that ghost's
noiseless clipped DP-SGD gradient equals hooks' (relative error ≤ ``GHOST_TOLERANCE``, at the
site's C and at C/100 where every sample is clipped), then audits hooks; an equivalence, stated
as such in :attr:`CanaryAudit.audited_mode`.

``tamper`` breaks the pipeline on purpose to show the audit has teeth; those runs must yield
ε_lb above the claim: ``no-noise`` (σ = 0), ``no-clipping`` (clipping off, same noise std σ·C),
``per-copy-clipping`` (K > 1: each augmented copy clipped as if it were a sample, so one sample
moves the sum by up to K·C).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch
from torch import nn

from client.training import plan_round, site_grad_sample_mode, train_local
from common.audit import AuditResult, audit_scores
from common.config import DataConfig, RunConfig
from common.evaluation import dataset_of
from common.models import build_model
from common.models.losses import row_losses, training_loss
from common.privacy import epsilon_for_history
from common.serialization import Weights, load_weights, model_weights
from common.sitedata import SiteData

Tamper = Literal["none", "no-noise", "no-clipping", "per-copy-clipping"]
GHOST_TOLERANCE = 1e-4
_UNCLIPPED = 1e9


@dataclass(frozen=True)
class CanaryAudit:
    claimed_epsilon: float
    result: AuditResult
    tamper: str
    mode: str  # the per-sample-gradient mode the site trains with
    audited_mode: str  # the mode the audit run used ("hooks" standing in for an equal ghost)
    multiplicity: int
    unmoved_canaries: int  # canaries at coordinates the site's data has zero gradient at


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters DP-SGD trains, in the order the canaries' flat coordinates count them."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _flat(weights: Weights, names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(weights[n], dtype=np.float64).ravel() for n in names])


def data_activity(model: nn.Module, data: SiteData, *, batch_size: int = 128,
                  data_config: DataConfig | None = None) -> np.ndarray:
    """Σᵢ |gᵢ| per trainable coordinate (flat), gᵢ sample i's per-sample gradient as Opacus
    computes it (hooks), at ``model``'s weights without modality dropout."""
    from opacus import GradSampleModule

    wrapped = GradSampleModule(model.train(), loss_reduction="sum")
    parameters = [p for _, p in trainable(model)]
    total = torch.zeros(sum(p.numel() for p in parameters), dtype=torch.float64)
    loader = torch.utils.data.DataLoader(dataset_of(data), batch_size=batch_size)
    for image, tokens, signal, present, label in loader:
        wrapped.zero_grad(set_to_none=True)
        row_losses(wrapped(image, tokens, signal, present), label,
                   data_config or DataConfig()).sum().backward()
        total += torch.cat([p.grad_sample.reshape(len(label), -1).abs().sum(dim=0)
                            if p.grad_sample is not None else torch.zeros(p.numel())
                            for p in parameters]).double()
    wrapped.zero_grad(set_to_none=True)
    wrapped._close()
    return total.numpy()


def canary_coordinates(activity: np.ndarray, count: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """``count`` flat coordinates: random ones among those no sample moves, then the least
    active; and how many of them no sample moves."""
    if count > activity.size:
        raise ValueError(f"{count} canaries for {activity.size} trainable coordinates")
    unmoved = np.flatnonzero(activity == 0)
    if unmoved.size >= count:
        return rng.choice(unmoved, size=count, replace=False), count
    moved = np.flatnonzero(activity != 0)
    least = moved[np.argsort(activity[moved], kind="stable")[:count - unmoved.size]]
    return rng.permutation(np.concatenate([unmoved, least])), int(unmoved.size)


class _CanaryInserter:
    """The ``after_backward`` hook: appends this step's canary rows (K copies each) to every
    trainable parameter's ``grad_sample``."""

    def __init__(self, *, sizes: list[int], coordinates: np.ndarray, included: np.ndarray,
                 rate: float, value: float, multiplicity: int, tamper: Tamper,
                 seed: int) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.coordinates, self.included, self.rate = coordinates, included, rate
        self.value, self.multiplicity, self.tamper = value, multiplicity, tamper
        self.rng = np.random.default_rng(seed)
        self.tampered = False

    def _tamper_once(self, optimizer: torch.optim.Optimizer) -> None:
        if self.tampered or self.tamper == "none":
            return
        if self.tamper == "no-noise":
            optimizer.noise_multiplier = 0.0
        elif self.tamper == "no-clipping":  # same noise std σ·C, no clipping
            optimizer.noise_multiplier *= optimizer.max_grad_norm / _UNCLIPPED
            optimizer.max_grad_norm = _UNCLIPPED
        else:  # per-copy-clipping: Opacus clips the B·K rows as they are
            optimizer.augmentation_multiplicity = 1
        self.tampered = True

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._tamper_once(optimizer)
        members = np.flatnonzero(self.included)
        joining = members[self.rng.random(members.size) < self.rate]
        if joining.size == 0:
            return
        rows = joining.size * self.multiplicity
        flat = np.repeat(self.coordinates[joining], self.multiplicity)
        for index, (_, parameter) in enumerate(trainable(model)):
            grad_sample = getattr(parameter, "grad_sample", None)
            if grad_sample is None:
                raise RuntimeError("no per-sample gradients to add canaries to (ghost mode?)")
            block = torch.zeros(rows, parameter.numel(), dtype=grad_sample.dtype,
                                device=grad_sample.device)
            here = (flat >= self.offsets[index]) & (flat < self.offsets[index + 1])
            block[torch.from_numpy(np.flatnonzero(here)),
                  torch.from_numpy(flat[here] - self.offsets[index])] = self.value
            parameter.grad_sample = torch.cat([grad_sample,
                                               block.view(rows, *parameter.shape)])


def ghost_matches_hooks(config: RunConfig, data: SiteData, weights: Weights) -> float:
    """The largest relative difference between ghost's and hooks' noiseless DP-SGD gradients
    on the site's first batch, at C and at C/100 (every sample clipped).

    Embedding padding rows are left out: Opacus' hooks give them a per-sample gradient where
    autograd (ghost's second backward pass) gives none, so hooks moves a padding row and ghost
    does not (measured: the one difference, 3.5e-4 of the default model's gradient). Either
    way each sample's contribution is clipped to C."""
    from client.grad_sample import private_gradient, relative_error

    plain = config.model.model_copy(update={"modality_dropout": 0.0})

    def build() -> nn.Module:
        model = build_model(data=config.data, model=plain)
        load_weights(model, weights)
        return model

    batch = dataset_of(data).batch(np.arange(min(len(data), config.training.batch_size)))
    padding = {f"{name}.weight": module.padding_idx for name, module in build().named_modules()
               if isinstance(module, nn.Embedding) and module.padding_idx is not None}
    names = [name for name, _ in build().named_parameters()]

    def without_padding(gradient: list[torch.Tensor]) -> list[torch.Tensor]:
        for name, tensor in zip(names, gradient, strict=True):
            if name in padding:
                tensor[padding[name]] = 0.0
        return gradient

    worst = 0.0
    loss = partial(training_loss, config.data)
    for clip in (config.privacy.max_grad_norm, config.privacy.max_grad_norm / 100):
        worst = max(worst, relative_error(
            without_padding(private_gradient(build, "ghost", batch, clip, loss=loss)),
            without_padding(private_gradient(build, "hooks", batch, clip, loss=loss))))
    return worst


def run_canary_audit(*, config: RunConfig, data: SiteData, canaries: int = 1000,
                     guesses_each_side: int = 200, seed: int = 0,
                     tamper: Tamper = "none") -> CanaryAudit:
    """One DP-SGD round on ``data`` with canaries; the ε claimed for it and the audit's ε_lb."""
    multiplicity = config.training.augmentation_multiplicity
    if tamper == "per-copy-clipping" and multiplicity == 1:
        raise ValueError("tamper 'per-copy-clipping' needs training.augmentation_multiplicity > 1")
    config = config.model_copy(update={"privacy": config.privacy.model_copy(
        update={"enabled": True})})
    initial = model_weights(build_model(data=config.data, model=config.model, seed=seed))
    model = build_model(data=config.data, model=config.model.model_copy(
        update={"modality_dropout": 0.0}))
    load_weights(model, initial)
    mode = site_grad_sample_mode(config, data, model=model)
    audited = mode
    if mode == "ghost":
        difference = ghost_matches_hooks(config, data, initial)
        if difference > GHOST_TOLERANCE:
            raise RuntimeError(f"ghost clipping's DP-SGD gradient differs from hooks' by "
                               f"{difference:.1e}; the hooks audit does not stand for it")
        audited = "hooks"
    config = config.model_copy(update={"privacy": config.privacy.model_copy(
        update={"grad_sample_mode": audited})})
    plan = plan_round(len(data), config)
    claimed = epsilon_for_history([[plan.noise_multiplier, plan.sample_rate, plan.steps]],
                                  delta=config.privacy.delta,
                                  accountant=config.privacy.accountant)
    rng = np.random.default_rng(seed)
    names = [n for n, _ in trainable(model)]
    coordinates, unmoved = canary_coordinates(
        data_activity(model, data, data_config=config.data), canaries, rng)
    included = rng.random(canaries) < 0.5
    inserter = _CanaryInserter(
        sizes=[p.numel() for _, p in trainable(model)], coordinates=coordinates,
        included=included, rate=plan.sample_rate, value=10 * config.privacy.max_grad_norm,
        multiplicity=multiplicity, tamper=tamper, seed=seed + 1)
    torch.manual_seed(seed)
    result = train_local(config=config, global_weights=initial, data=data, plan=plan,
                         history=[], after_backward=inserter)
    moved = (_flat(initial, names) - _flat(result.weights, names))[coordinates]
    if not np.all(np.isfinite(moved)):
        raise ValueError("training diverged (NaN/Inf weights); lower training.learning_rate "
                         "for the audit")
    audit = audit_scores(moved.tolist(), included.tolist(), top=guesses_each_side,
                         bottom=guesses_each_side, delta=config.privacy.delta)
    return CanaryAudit(claimed_epsilon=claimed, result=audit, tamper=tamper, mode=mode,
                       audited_mode=audited if audited == mode else f"{audited} (= {mode})",
                       multiplicity=multiplicity, unmoved_canaries=unmoved)
