"""The training loss for ``data.labels``, one per-row loss under every Opacus mode.

- multiclass and binary: cross-entropy of the softmax over the K classes.
- multilabel: binary cross-entropy of each finding's sigmoid, averaged over the K findings:

      ℓ(x, y) = −(1/K) Σₖ [ yₖ log σ(zₖ) + (1 − yₖ) log(1 − σ(zₖ)) ]

  one number per row, so DP-SGD's per-sample gradient is ∇ℓ of one row and its clipping to C is
  unchanged. The row's loss is reduced over the batch as ``reduction`` says (Opacus' ghost
  clipping sets ``"none"`` and expects one loss per row, not one per finding).
"""

from __future__ import annotations

import torch
from torch import nn

from common.config import DataConfig


class MultiLabelLoss(nn.Module):
    """Per-row mean over findings of the binary cross-entropy with logits; then ``reduction``
    (``"mean"``, ``"sum"`` or ``"none"``) over the rows."""

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_row = nn.functional.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), reduction="none").mean(dim=1)
        if self.reduction == "mean":
            return per_row.mean()
        if self.reduction == "sum":
            return per_row.sum()
        return per_row


def training_loss(data: DataConfig) -> nn.Module:
    """The criterion DP-SGD minimises for these labels (mean over the batch)."""
    return MultiLabelLoss() if data.labels == "multilabel" else nn.CrossEntropyLoss()


def row_losses(logits: torch.Tensor, labels: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """Each row's loss (no reduction), as training defines it."""
    if data.labels == "multilabel":
        return MultiLabelLoss(reduction="none")(logits, labels)
    return nn.functional.cross_entropy(logits, labels, reduction="none")
