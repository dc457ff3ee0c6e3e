"""Which Opacus per-sample-gradient mode a site trains with: the fastest one that is correct,
measured on this model, batch size and machine.

DP-SGD clips each sample's gradient gᵢ to norm C. Opacus gets the gᵢ (or their norms) four ways:

- ``hooks``: module hooks rebuild each layer's per-sample gradients from its activations and
  back-propagated gradients (Opacus' default);
- ``ew``: torch's expanded weights compute them inside the layers' own backward functions;
- ``functorch``: ``vmap(grad(loss))`` over the batch;
- ``ghost``: ghost clipping: per-sample gradient *norms* without materialising the gᵢ, then a
  second backward pass of the loss re-weighted by min(1, C/‖gᵢ‖). Much less memory and time for
  wide layers; two backward passes for small ones.

Calibration (``grad_sample_mode = "auto"``, models of ``CALIBRATE_MIN_PARAMETERS`` or more, or
with one tensor of ``CALIBRATE_MIN_TENSOR``; smaller ones train with hooks): on a batch of the
site's data each mode makes one DP-SGD step without noise; its gradient must equal the reference
(1/B) Σᵢ gᵢ·min(1, C/‖gᵢ‖), each gᵢ computed on sample i alone, within a relative error
‖Δ‖/‖reference‖ of 1e-3. A mode that raises or disagrees is out (``ew`` cannot handle every
layer). Each correct mode then times a few steps and the fastest wins; the reference mode,
hooks, is kept unless another mode is at least ``MARGIN`` faster, so the choice does not flip on
timing noise. The choice is remembered per model architecture, batch size, device and library
versions (``STATE_DIR/grad_sample_mode.json``) and measured again only when one of these
changes.

Augmentation multiplicity (K > 1) averages each sample's K per-sample gradients before clipping
(:mod:`client.multiplicity`); ghost clipping keeps none, so ``choose_mode(per_sample=True)``
chooses among hooks, ew and functorch only (remembered under its own signature), and the
config refuses an explicit ``ghost`` with K > 1.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.atomic import atomic_write_bytes

MODES = ("hooks", "ew", "functorch", "ghost")
REFERENCE_MODE = "hooks"
MARGIN = 0.2  # another mode must be ≥ 20 % faster than hooks to replace it
# Below this size every other mode was measured within MARGIN of hooks or slower (BENCHMARKS.md,
# DP-SGD cost: the three heads and pretrained features, 37-42 k parameters), so calibration
# would keep hooks: small models skip its cost (seconds of CPU in every hospital's first round).
CALIBRATE_MIN_PARAMETERS = 200_000
# ...unless one tensor is this large: hooks then materialise B × that many per-sample values
# each step (a scattering model's 3,969 × 16 projection: hooks 35 s, ghost 2.4 s for one
# Fashion-MNIST hospital's round of 12 steps of ≈ 960 samples).
CALIBRATE_MIN_TENSOR = 50_000
CHECK_SAMPLES = 16  # the correctness check compares per-sample gradients on this many samples
TIMED_STEPS = 3


def needs_calibration(model: nn.Module) -> bool:
    """Whether another mode can beat hooks: a large model, or one tensor large enough that its
    per-sample gradients dominate the step."""
    sizes = [p.numel() for p in model.parameters()]
    return sum(sizes) >= CALIBRATE_MIN_PARAMETERS or max(sizes, default=0) >= CALIBRATE_MIN_TENSOR


@dataclass(frozen=True)
class Calibration:
    """What the calibration measured: the chosen mode, seconds per step of each correct mode,
    and why the others were rejected."""

    mode: str
    seconds: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


def make_private(engine: Any, *, mode: str, module: nn.Module, optimizer: torch.optim.Optimizer,
                 data_loader: torch.utils.data.DataLoader, criterion: nn.Module,
                 noise_multiplier: float, max_grad_norm: float, poisson_sampling: bool = True,
                 ) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module,
                            torch.utils.data.DataLoader]:
    """``engine.make_private`` in any mode; returns (module, optimizer, criterion, loader) —
    ghost clipping wraps the criterion, the other modes keep it."""
    common = {"module": module, "optimizer": optimizer, "data_loader": data_loader,
              "noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm,
              "grad_sample_mode": mode, "poisson_sampling": poisson_sampling}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "ghost":
            return engine.make_private(**common, criterion=criterion)
        private, optimizer, loader = engine.make_private(**common)
    return private, optimizer, criterion, loader


Loss = Callable[[], nn.Module]  # a fresh training criterion (common.models.losses)


def reference_gradient(model: nn.Module, batch: Sequence[torch.Tensor],
                       max_grad_norm: float, *, loss: Loss = nn.CrossEntropyLoss
                       ) -> list[torch.Tensor]:
    """(1/B) Σᵢ gᵢ·min(1, C/‖gᵢ‖), each gᵢ from a forward and backward pass of sample i alone."""
    criterion = loss()
    *inputs, labels = batch
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(labels)):
        model.zero_grad(set_to_none=True)
        criterion(model(*(x[i:i + 1] for x in inputs)), labels[i:i + 1]).backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                 for p in model.parameters()]
        norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads))
        factor = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        for acc, g in zip(total, grads, strict=True):
            acc.add_(g.detach(), alpha=factor)
    return [t / len(labels) for t in total]


def relative_error(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """‖got − expected‖ / ‖expected‖ over all parameters together."""
    difference = sum(float(((g - e) ** 2).sum()) for g, e in zip(got, expected, strict=True))
    scale = sum(float((e**2).sum()) for e in expected)
    return (difference / max(scale, 1e-30)) ** 0.5


class _PrivateStep:
    """One mode's private model, optimiser and criterion on a fixed batch; ``run()`` makes one
    noiseless DP-SGD step up to the update and returns its gradient and seconds."""

    def __init__(self, build: Callable[[], nn.Module], mode: str,
                 batch: Sequence[torch.Tensor], max_grad_norm: float, *,
                 loss: Loss = nn.CrossEntropyLoss) -> None:
        from opacus import PrivacyEngine

        self.model = build()
        self.model.train()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*batch),
                                             batch_size=len(batch[-1]))
        self.private, self.optimizer, self.criterion, loader = make_private(
            PrivacyEngine(), mode=mode, module=self.model,
            optimizer=torch.optim.SGD(self.model.parameters(), lr=0.0), data_loader=loader,
            criterion=loss(), noise_multiplier=0.0, max_grad_norm=max_grad_norm,
            poisson_sampling=False)
        *self.inputs, self.labels = next(iter(loader))

    def run(self) -> tuple[list[torch.Tensor], float]:
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.criterion(self.private(*self.inputs), self.labels).backward()
        self.optimizer.pre_step()  # clip, (zero) noise, scale: p.grad is the DP-SGD gradient
        seconds = time.perf_counter() - started
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for p in self.model.parameters()], seconds


def private_gradient(build: Callable[[], nn.Module], mode: str, batch: Sequence[torch.Tensor],
                     max_grad_norm: float, *, loss: Loss = nn.CrossEntropyLoss
                     ) -> list[torch.Tensor]:
    """The noiseless DP-SGD gradient ``mode`` computes for ``batch``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _PrivateStep(build, mode, batch, max_grad_norm, loss=loss).run()[0]


def calibrate(*, build: Callable[[], nn.Module], batch: Sequence[torch.Tensor],
              max_grad_norm: float, modes: Sequence[str] = MODES,
              steps: int = TIMED_STEPS, loss: Loss = nn.CrossEntropyLoss) -> Calibration:
    """Check every mode against :func:`reference_gradient`, then time the correct ones.

    ``build()`` returns a fresh model with the same weights each call, in a deterministic
    forward pass (no dropout); ``batch`` is (inputs..., labels) at the training batch size.
    Timing: one untimed step per mode, then ``steps`` rounds in which every mode makes one step
    in turn (so drifts in machine load hit all alike); a mode's time is its fastest step.
    """
    check = [x[:CHECK_SAMPLES] for x in batch]
    seconds: dict[str, float] = {}
    rejected: dict[str, str] = {}
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference_gradient(build().train(), check, max_grad_norm, loss=loss)
        timed: dict[str, _PrivateStep] = {}
        for mode in modes:
            try:
                error = relative_error(
                    _PrivateStep(build, mode, check, max_grad_norm, loss=loss).run()[0],
                    expected)
                if error > 1e-3:
                    rejected[mode] = f"gradient differs from the reference (rel. error {error:.1e})"
                    continue
                timed[mode] = _PrivateStep(build, mode, batch, max_grad_norm, loss=loss)
                timed[mode].run()  # warm-up, untimed
            except Exception as failure:  # any failure rules the mode out
                rejected[mode] = f"{type(failure).__name__}: {str(failure)[:120]}"
        for _ in range(steps):
            for mode, step in timed.items():
                seconds[mode] = min(seconds.get(mode, float("inf")), step.run()[1])
    return Calibration(pick(seconds), seconds, rejected)


def pick(seconds: dict[str, float]) -> str:
    """The fastest mode; hooks unless another is at least ``MARGIN`` faster."""
    if not seconds:
        return REFERENCE_MODE
    fastest = min(seconds, key=seconds.__getitem__)
    reference = seconds.get(REFERENCE_MODE)
    if reference is not None and seconds[fastest] > (1 - MARGIN) * reference:
        return REFERENCE_MODE
    return fastest


class ModeMemo:
    """The calibrated mode per signature, in one small JSON file (written atomically)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return stored if isinstance(stored, dict) else {}

    def get(self, signature: str) -> str | None:
        entry = self._read().get(signature)
        mode = entry.get("mode") if isinstance(entry, dict) else None
        return mode if mode in MODES else None

    def put(self, signature: str, calibration: Calibration) -> None:
        if self.path is None:
            return
        stored = self._read()
        stored[signature] = {"mode": calibration.mode, "seconds": calibration.seconds,
                             "rejected": calibration.rejected}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(stored, indent=1, sort_keys=True).encode())


def signature(model: nn.Module, batch_size: int, device: torch.device) -> str:
    """Model architecture (parameter names and shapes), batch size, device, library versions."""
    import hashlib

    import opacus

    shapes = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters())
    text = f"{shapes}|B={batch_size}|{device}|torch {torch.__version__}|opacus {opacus.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def choose_mode(*, requested: str, model: nn.Module, build: Callable[[], nn.Module],
                batch: Callable[[], Sequence[torch.Tensor]], max_grad_norm: float,
                memo: ModeMemo, device: torch.device, per_sample: bool = False,
                loss: Loss = nn.CrossEntropyLoss) -> str:
    """``requested`` itself, or (``auto``) the remembered or freshly calibrated mode for
    ``model``; ``build`` and ``batch`` are called only when calibration is needed.
    ``per_sample``: the training needs per-sample gradients (augmentation multiplicity), so
    never ghost."""
    if requested != "auto":
        if per_sample and requested == "ghost":
            raise ValueError("ghost clipping keeps no per-sample gradients to average over "
                             "augmented copies; use hooks, ew or functorch")
        return requested
    if not needs_calibration(model):
        return REFERENCE_MODE
    sample = batch()
    criterion = type(loss()).__name__  # a mode is remembered per loss (cross-entropy: no tag)
    key = (signature(model, len(sample[-1]), device) + ("|per-sample" if per_sample else "")
           + ("" if criterion == "CrossEntropyLoss" else f"|{criterion}"))
    remembered = memo.get(key)
    if remembered is not None:
        return remembered
    calibration = calibrate(build=build, batch=sample, max_grad_norm=max_grad_norm,
                            modes=tuple(m for m in MODES if not (per_sample and m == "ghost")),
                            loss=loss)
    memo.put(key, calibration)
    return calibration.mode
