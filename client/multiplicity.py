"""DP-SGD with augmentation multiplicity: average each sample's K copies' gradients, then clip.

A Poisson batch of B samples trains as B·K rows (:func:`common.augmentation.augment_copies`,
row ``i·K + k`` is copy k of sample i). Opacus computes one per-sample gradient per row: with
``loss_reduction="mean"`` over the n = B·K rows its grad-sample hooks multiply the
back-propagated gradient by n, so row j's ``grad_sample`` is ∇ℓ(row j) itself. Before clipping,
:func:`average_copies` replaces the rows by their per-sample means

    gᵢ = (1/K) Σₖ ∇ℓ(copy k of sample i),

and Opacus goes on as for any batch: clip gᵢ to norm C, sum over the B samples, add N(0, σ²C²),
divide by the *expected batch size* of samples (the loader's B, not B·K). Adding or removing a
sample changes the sum by one clipped gᵢ, so the sensitivity stays C whatever K is, and the
accountant sees the same (σ, q, steps). Clipping each copy separately instead (what Opacus does
with the B·K rows as they are) would let one sample move the sum by up to K·C.

Ghost clipping keeps no per-sample gradients (only their norms), so it cannot average copies:
with K > 1 the per-sample-gradient mode is hooks, ew or functorch (:mod:`client.grad_sample`).

``optimizer.augmentation_multiplicity`` is read at every step, as Opacus reads σ and C (the
privacy audit's ``per-copy-clipping`` variant sets it to 1 to break the pipeline on purpose).
"""

from __future__ import annotations

import torch


def mean_of_copies(grad_sample: torch.Tensor, multiplicity: int) -> torch.Tensor:
    """(n·K, …) per-row gradients → (n, …): the mean over each consecutive group of K rows."""
    if multiplicity == 1:
        return grad_sample
    if len(grad_sample) % multiplicity:
        raise ValueError(f"{len(grad_sample)} per-sample gradient rows are not whole groups of "
                         f"{multiplicity} augmented copies")
    return grad_sample.reshape(len(grad_sample) // multiplicity, multiplicity,
                               *grad_sample.shape[1:]).mean(dim=1)


def average_copies(optimizer: torch.optim.Optimizer, *, multiplicity: int) -> None:
    """Wrap ``optimizer.clip_and_accumulate`` so that each parameter's ``grad_sample`` is first
    reduced from one row per copy to one row per sample (:func:`mean_of_copies`)."""
    optimizer.augmentation_multiplicity = multiplicity  # type: ignore[attr-defined]
    clip_and_accumulate = optimizer.clip_and_accumulate
    params = optimizer.params  # type: ignore[attr-defined]

    def averaged() -> None:
        k = optimizer.augmentation_multiplicity  # type: ignore[attr-defined]
        for p in params:
            rows = getattr(p, "grad_sample", None)
            if isinstance(rows, torch.Tensor) and rows.dim() > 0 and len(rows):
                p.grad_sample = mean_of_copies(rows, k)
        clip_and_accumulate()

    optimizer.clip_and_accumulate = averaged  # type: ignore[method-assign]
