"""Local training at one site: DP-SGD through Opacus, or ordinary training when non-private.

One round = ``local_epochs`` epochs of Poisson-sampled batches (sampling rate q = 1/⌈N/B⌉ and
exactly ⌈N/B⌉ steps an epoch, the steps the ledger reserved), each step clipping per-sample
gradients to ``max_grad_norm`` C and adding N(0, σ²C²) noise before the optimiser step. Both the
Poisson sampling and the noise are drawn from a ChaCha20 stream (:mod:`common.randomness`), not
from torch's generator. The accountant history of earlier rounds is restored before training,
so the engine's ε is the site's total for this model.

Non-private training has its own optimiser and step size (``non_private_optimizer``, Adam by
default): the clipped, noised DP-SGD gradient wants large SGD steps that make raw gradients
diverge.

FedProx' proximal term μ/2‖w − w_global‖² is applied as a decoupled step after each optimiser
step (w ← w − lr·μ·(w − w_global)): it depends on no patient data, so it is post-processing and
costs no privacy, whereas adding it to the loss would bypass Opacus' per-sample clipping.

Augmentation multiplicity (``training.augmentation_multiplicity`` K > 1): each batch of B
samples trains as B·K augmented rows (:mod:`common.augmentation`); DP-SGD averages each sample's
K per-sample gradients before clipping (:mod:`client.multiplicity`), so the sensitivity stays C
and the steps, q and σ (and so the ledger) are those of K = 1. Non-private training simply
trains on the B·K rows. K = 1 runs exactly the code path without augmentation.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.augmentation import augment_copies
from common.config import RunConfig
from common.evaluation import dataset_of
from common.models import build_model, select_device
from common.models.losses import training_loss
from common.privacy import noise_for_budget
from common.randomness import RandomStream
from common.serialization import Weights, load_weights, model_weights
from common.sitedata import SiteData

AfterBackward = Callable[[nn.Module, torch.optim.Optimizer], None]


@dataclass(frozen=True)
class RoundPlan:
    """What one round at this site will run; known before any training."""

    sample_rate: float
    steps: int
    noise_multiplier: float
    steps_per_epoch: int = 0


class PoissonBatches(torch.utils.data.Sampler[list[int]]):
    """Exactly ``steps`` Poisson batches: each sample joins each batch with probability
    ``sample_rate``, drawn from a :class:`RandomStream` (Opacus' own sampler runs
    ``int(1/q)`` steps, one fewer than planned whenever 1/(1/k) rounds below k)."""

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int,
                 stream: RandomStream) -> None:
        self.num_samples, self.sample_rate, self.steps = num_samples, sample_rate, steps
        self.stream = stream

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield np.flatnonzero(self.stream.uniform(self.num_samples)
                                 < self.sample_rate).tolist()


def _poisson_loader(dataset: torch.utils.data.Dataset, plan: RoundPlan,
                    stream: RandomStream) -> torch.utils.data.DataLoader:
    from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
    from torch.utils.data._utils.collate import default_collate

    first = dataset[0]
    return torch.utils.data.DataLoader(dataset, batch_sampler=PoissonBatches(
        num_samples=len(dataset), sample_rate=plan.sample_rate, steps=plan.steps_per_epoch,
        stream=stream), collate_fn=wrap_collate_with_empty(
            collate_fn=default_collate, sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
            dtypes=[dtype_safe(x) for x in first]))


def _stream_noise(optimizer: torch.optim.Optimizer, stream: RandomStream) -> None:
    """Opacus' ``add_noise``, with N(0, σ²C²) drawn from ``stream`` (σ and C read at each
    step, as Opacus reads them)."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    def add_noise() -> None:
        std = getattr(optimizer, "_adjusted_noise_multiplier", optimizer.noise_multiplier) * \
            optimizer.max_grad_norm
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            noise = torch.from_numpy(stream.normal(p.summed_grad.numel()) * std).to(
                dtype=p.summed_grad.dtype, device=p.summed_grad.device)
            p.grad = (p.summed_grad + noise.view_as(p.summed_grad)).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise  # type: ignore[method-assign]


def _drop_non_finite_samples(optimizer: torch.optim.Optimizer) -> None:
    """Before clipping, a sample whose per-sample gradient is not finite contributes zero.

    One such sample would otherwise make the clipped sum, and so the whole update, NaN: a
    server could then learn from the site's ``diverged`` reply whether a crafted input
    matched one patient. Zeroing a sample is a per-sample function, so clipping and the DP
    analysis are unchanged. Ghost clipping keeps no per-sample gradients and is not covered."""
    clip_and_accumulate = optimizer.clip_and_accumulate
    params = getattr(optimizer, "params", None)
    if params is None:
        return

    def sanitised() -> None:
        samples = [g for g in (getattr(p, "grad_sample", None) for p in params)
                   if isinstance(g, torch.Tensor) and g.dim() > 0 and len(g)]
        if samples:
            finite = finite_samples(samples)
            if not bool(finite.all()):
                for g in samples:
                    g.mul_(finite.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
                    g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        clip_and_accumulate()

    optimizer.clip_and_accumulate = sanitised  # type: ignore[method-assign]


def finite_samples(samples: list[torch.Tensor]) -> torch.Tensor:
    """True for each sample (dim 0) whose entries in every tensor of ``samples`` are finite.

    Read from one sum per sample: a sum is finite unless an entry is ±inf or NaN (inf − inf is
    NaN too) or finite entries overflow it; such a sample is dropped as well, still a
    per-sample function. One reduction per tensor: checking every entry with ``isfinite`` cost
    ~6 % of a DP-SGD step of the default model on CPU, the sums ~0.7 %. Half-precision
    gradients are summed in float32 (a float16 sum overflows at 65,504)."""
    def row_sums(g: torch.Tensor) -> torch.Tensor:
        wide = torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else None
        return g.reshape(len(g), -1).sum(dim=1, dtype=wide)

    return torch.isfinite(torch.stack([row_sums(g) for g in samples]).sum(dim=0))


@dataclass
class TrainResult:
    weights: Weights
    num_examples: int
    train_loss: float
    steps: int
    history: list[list[float]]
    grad_sample_mode: str
    seconds: float


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


def evaluations_in_run(config: RunConfig) -> int:
    """How many evaluations the run asks for: every ``evaluate_every`` rounds and the last."""
    training = config.training
    return sum(1 for r in range(1, training.rounds + 1)
               if r % training.evaluate_every == 0 or r == training.rounds)


def plan_round(num_examples: int, config: RunConfig, *,
               noise_for_budget: Callable[..., float] = noise_for_budget,
               evaluation_noise: float | None = None) -> RoundPlan:
    """σ from the explicit setting, or the smallest σ that keeps the *planned* run (every round,
    every epoch, and with ``evaluation_noise`` the site's evaluation releases, one per
    evaluation of the run) within ``target_epsilon``; fixed for the whole run so a resumed run
    repeats it."""
    per_epoch = steps_per_epoch(num_examples, config.training.batch_size)
    sample_rate = 1.0 / per_epoch
    steps = per_epoch * config.training.local_epochs
    privacy = config.privacy
    if not privacy.enabled:
        return RoundPlan(sample_rate, steps, 0.0, per_epoch)
    if privacy.noise_multiplier is not None:
        return RoundPlan(sample_rate, steps, privacy.noise_multiplier, per_epoch)
    extra = () if evaluation_noise is None else (
        (evaluation_noise, 1.0, evaluations_in_run(config)),)
    sigma = noise_for_budget(
        target_epsilon=privacy.target_epsilon,
        delta=privacy.delta,
        sample_rate=sample_rate,
        steps=steps * config.training.rounds,
        accountant=privacy.accountant,
        **({"extra": extra} if extra else {}),
    )
    return RoundPlan(sample_rate, steps, sigma, per_epoch)


def make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    training = config.training
    rate = step_size(config)
    kind = training.optimizer if config.privacy.enabled else training.non_private_optimizer
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=rate)
    return torch.optim.SGD(model.parameters(), lr=rate, momentum=training.momentum)


def step_size(config: RunConfig) -> float:
    training = config.training
    return training.learning_rate if config.privacy.enabled else training.non_private_learning_rate


def _calibration_model(config: RunConfig, device: torch.device) -> nn.Module:
    """The round's architecture without modality dropout, at a fixed initialisation: the
    per-sample-gradient mode is chosen on weights the server did not pick."""
    plain = config.model.model_copy(update={"modality_dropout": 0.0})
    return build_model(data=config.data, model=plain, seed=0).to(device)


def _first_batch(data: SiteData, size: int, device: torch.device) -> list[torch.Tensor]:
    """Up to ``size`` samples of ``data`` as (image, tokens, signal, present, label) tensors."""
    return [t.to(device) for t in dataset_of(data).batch(np.arange(min(size, len(data))))]


def site_grad_sample_mode(config: RunConfig, data: SiteData, *, model: nn.Module,
                          mode_memo: Path | None = None,
                          device: torch.device | None = None) -> str:
    """The per-sample-gradient mode this site trains ``model`` with (:mod:`client.grad_sample`:
    the requested one, or for ``auto`` the remembered or calibrated one; never ghost when
    augmentation multiplicity needs per-sample gradients)."""
    from client.grad_sample import ModeMemo, choose_mode

    device = device or torch.device("cpu")
    return choose_mode(
        requested=config.privacy.grad_sample_mode, model=model,
        build=partial(_calibration_model, config, device),
        batch=partial(_first_batch, data, config.training.batch_size, device),
        max_grad_norm=config.privacy.max_grad_norm, memo=ModeMemo(mode_memo),
        device=device, per_sample=config.training.augmentation_multiplicity > 1,
        loss=partial(training_loss, config.data))


def _proximal_step(model: nn.Module, anchor: dict[str, torch.Tensor], rate: float) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.sub_(rate * (parameter - anchor[name]))


def train_local(
    *,
    config: RunConfig,
    global_weights: Weights,
    data: SiteData,
    plan: RoundPlan,
    history: list[list[float]],
    after_backward: AfterBackward | None = None,
    mode_memo: Path | None = None,
    stream: RandomStream | None = None,
) -> TrainResult:
    """Train from ``global_weights`` on ``data``. DP-SGD draws its Poisson batches and noise
    from ``stream`` (a fresh CSPRNG-keyed one when none is given); torch's RNG, which the caller
    seeds, only drives what carries no privacy (modality dropout, non-private shuffling).

    ``after_backward(model, optimizer)`` runs between each step's backward pass and optimiser
    step (the privacy audit inserts its canary gradients there); ``None`` in normal training.
    ``mode_memo``: where the calibrated per-sample-gradient mode is remembered
    (:mod:`client.grad_sample`); ``None`` calibrates afresh when the mode is ``auto``.
    """
    started = time.perf_counter()
    device = select_device(config.model.device)
    model = build_model(data=config.data, model=config.model).to(device)
    load_weights(model, global_weights)
    model.train()
    optimizer = make_optimizer(model, config)
    loader = torch.utils.data.DataLoader(
        dataset_of(data), batch_size=config.training.batch_size, shuffle=True
    )
    criterion: nn.Module = training_loss(config.data)
    mode = "none"
    engine = None
    multiplicity = config.training.augmentation_multiplicity
    trained: nn.Module = model
    if config.privacy.enabled:
        from opacus import PrivacyEngine

        from client.grad_sample import make_private

        mode = site_grad_sample_mode(config, data, model=model, mode_memo=mode_memo,
                                     device=device)
        with warnings.catch_warnings():  # "Secure RNG turned off": README, "randomness"
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=config.privacy.accountant)
        engine.accountant.history = [tuple(h) for h in history]
        stream = stream or RandomStream.fresh()
        trained, optimizer, criterion, loader = make_private(
            engine, mode=mode, module=model, optimizer=optimizer,
            data_loader=_poisson_loader(dataset_of(data), plan, stream), criterion=criterion,
            noise_multiplier=plan.noise_multiplier, max_grad_norm=config.privacy.max_grad_norm,
            poisson_sampling=False)
        _stream_noise(optimizer, stream)
        _drop_non_finite_samples(optimizer)
        if multiplicity > 1:
            from client.multiplicity import average_copies

            average_copies(optimizer, multiplicity=multiplicity)
    anchor = None
    if config.training.strategy == "fedprox" and config.training.proximal_mu > 0:
        anchor = {name: p.detach().clone() for name, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' backward-hook notices, once per step
        losses, steps = _run_epochs(
            trained=trained, model=model, optimizer=optimizer, criterion=criterion,
            loader=loader, epochs=config.training.local_epochs, private=engine is not None,
            anchor=anchor, prox_rate=step_size(config) * config.training.proximal_mu,
            device=device, after_backward=after_backward,
            augment=None if multiplicity == 1 else partial(
                augment_copies, multiplicity=multiplicity,
                log_mel=config.data.signal_features == "log_mel",
                pixels=config.model.encoders == "trainable"),
        )
    recorded = [list(h) for h in engine.accountant.history] if engine else list(history)
    if engine is not None and steps != plan.steps:
        raise RuntimeError(f"DP-SGD ran {steps} steps where {plan.steps} were planned and "
                           "reserved; the ledger would disagree with the training")
    return TrainResult(
        weights=model_weights(model),
        num_examples=len(data),
        train_loss=float(np.mean(losses)) if losses else float("nan"),
        steps=steps,
        history=recorded,
        grad_sample_mode=mode,
        seconds=time.perf_counter() - started,
    )


def _run_epochs(
    *,
    trained: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    loader: torch.utils.data.DataLoader,
    epochs: int,
    private: bool,
    anchor: dict[str, torch.Tensor] | None,
    prox_rate: float,
    device: torch.device,
    after_backward: AfterBackward | None,
    augment: Callable[..., tuple[torch.Tensor, ...]] | None = None,
) -> tuple[list[float], int]:
    """The step loop; returns the batch losses and the number of optimiser steps.
    ``augment`` (augmentation multiplicity) turns a batch's tensors into their copies'."""
    losses: list[float] = []
    steps = 0
    for _ in range(epochs):
        for batch_tensors in loader:
            if augment is not None and len(batch_tensors[-1]):
                batch_tensors = augment(*batch_tensors)
            image, tokens, signal, present, label = batch_tensors
            optimizer.zero_grad(set_to_none=True)
            if label.numel() == 0:
                if private:
                    _noise_only_step(trained, optimizer)
            else:
                batch = [t.to(device) for t in (image, tokens, signal, present)]
                loss = criterion(trained(*batch), label.to(device))
                loss.backward()
                if after_backward is not None:
                    after_backward(model, optimizer)
                optimizer.step()
                losses.append(float(loss.detach()))
            steps += 1
            if anchor is not None:
                _proximal_step(model, anchor, prox_rate)
    return losses, steps


def _noise_only_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """An empty Poisson batch is still a DP step: zero per-sample gradients, then noise."""
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad_sample = torch.zeros(0, *parameter.shape, device=parameter.device)
            parameter.grad = torch.zeros_like(parameter)  # read by ghost clipping's optimizer
    optimizer.step()
