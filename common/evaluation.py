"""Evaluation of a model on site data: loss, accuracy and, for two classes, AUROC; for
multi-label findings, per-finding and macro AUROC and F1.

Shared by the sites (federated evaluation on their validation split) and the server (held-out
test folder). AUROC is the Mann–Whitney U statistic: the probability that a random positive
scores above a random negative, ties counted one half.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from common.config import DataConfig, RunConfig
from common.models import build_model, select_device
from common.models.losses import row_losses
from common.rowstore import take
from common.serialization import Weights, load_weights
from common.sitedata import SiteData


class SiteDataset(torch.utils.data.Dataset):
    """``data``'s samples as ``(image, tokens, signal, present, label)`` tensors, read a batch
    at a time (a data loader asks :meth:`__getitems__` for a whole batch): rows on disk are
    read once per batch, never all at once."""

    def __init__(self, data: SiteData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, index: Any) -> list[torch.Tensor]:
        """Samples ``index`` as five batched tensors."""
        index = np.asarray(index, dtype=np.int64)
        data = self.data
        return [torch.from_numpy(np.ascontiguousarray(take(rows, index)))
                for rows in (data.images, data.tokens, data.signals, data.masks, data.labels)]

    def __getitems__(self, index: list[int]) -> list[tuple[torch.Tensor, ...]]:
        return list(zip(*self.batch(index), strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(tensor[0] for tensor in self.batch([index]))


def dataset_of(data: SiteData) -> SiteDataset:
    return SiteDataset(data)


@torch.no_grad()
def evaluate_model(model: nn.Module, data: SiteData, *, data_config: DataConfig,
                   batch_size: int = 256, loss_bound: float = math.inf) -> dict[str, Any]:
    """Loss and accuracy of ``model`` on ``data``, with the sums they come from: ``correct``
    rows and ``clipped-loss-sum``, Σ min(loss_i, ``loss_bound``); a row with non-finite logits
    or loss is wrong, at loss ``loss_bound``. Two classes add ``auroc``; multi-label labels add
    the per-finding figures (:func:`finding_metrics`), and a row is correct when every one of
    its findings is predicted (σ(z) > 0.5) as labelled."""
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset_of(data), batch_size=batch_size)
    logits_all, labels_all = [], []
    for image, tokens, signal, present, label in loader:
        logits_all.append(model(*(t.to(device) for t in (image, tokens, signal, present))).cpu())
        labels_all.append(label)
    if not logits_all:
        return {"loss": float("nan"), "accuracy": float("nan"), "num-examples": 0,
                "correct": 0, "clipped-loss-sum": 0.0}
    logits, labels = torch.cat(logits_all), torch.cat(labels_all)
    # a row the model cannot score (non-finite logits) counts as wrong at the largest loss:
    # every row then moves each sum by a bounded amount, whatever weights were sent
    finite = torch.isfinite(logits).all(dim=1)
    losses = row_losses(logits.double(), labels, data_config)
    if math.isfinite(loss_bound):
        losses = torch.where(finite & torch.isfinite(losses), losses,
                             torch.full_like(losses, loss_bound))
    multilabel = data_config.labels == "multilabel"
    if multilabel:
        right = ((logits > 0) == (labels > 0.5)).all(dim=1)
    else:
        right = logits.argmax(dim=1) == labels
    correct = int((right & finite).sum())
    metrics: dict[str, Any] = {
        "loss": float(losses.mean()),
        "accuracy": correct / len(labels),
        "num-examples": len(labels),
        "correct": correct,
        "clipped-loss-sum": float(losses.clamp(max=loss_bound).sum()),
    }
    if multilabel:
        metrics.update(finding_metrics(torch.sigmoid(logits.double()).numpy(), labels.numpy(),
                                       finite=finite.numpy()))
    elif logits.shape[1] == 2:  # a row the model cannot score scores 0, as for findings
        scores = torch.where(finite, logits.softmax(dim=1)[:, 1], torch.zeros(len(labels)))
        metrics["auroc"] = auroc(scores.double().numpy(), labels.numpy())
    return metrics


def finding_metrics(scores: np.ndarray, targets: np.ndarray, *,
                    finite: np.ndarray | None = None) -> dict[str, Any]:
    """Per-finding AUROC and F1 (prediction: score > 0.5) of ``scores`` (N×K, σ of the logits)
    against 0/1 ``targets``; ``macro-auroc`` the mean over findings that have positive and
    negative rows, ``macro-f1`` the mean F1 over all findings (F1 of a finding with no positive
    row and no positive prediction: 1). A non-finite row scores 0 on every finding."""
    if finite is not None:
        scores = np.where(finite[:, None] & np.isfinite(scores), scores, 0.0)
    truth = targets > 0.5
    predicted = scores > 0.5
    by_finding = [auroc(scores[:, k], truth[:, k].astype(int)) for k in range(truth.shape[1])]
    f1 = []
    for k in range(truth.shape[1]):
        hits = int((predicted[:, k] & truth[:, k]).sum())
        wrong = int((predicted[:, k] != truth[:, k]).sum())
        f1.append(1.0 if hits == 0 and wrong == 0 else 2 * hits / (2 * hits + wrong))
    known = [value for value in by_finding if not math.isnan(value)]
    return {"auroc-by-finding": by_finding, "f1-by-finding": f1,
            "macro-auroc": float(np.mean(known)) if known else float("nan"),
            "macro-f1": float(np.mean(f1))}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann–Whitney U) formula, ties averaged."""
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = ranks[labels == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def evaluate_weights(config: RunConfig, weights: Weights, data: SiteData, *,
                     loss_bound: float = math.inf) -> dict[str, Any]:
    model = build_model(data=config.data, model=config.model).to(select_device(config.model.device))
    load_weights(model, weights)
    return evaluate_model(model, data, data_config=config.data, loss_bound=loss_bound)


def held_out_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The server's held-out test figures for a round record (``test_*``), a figure that is
    not defined (a finding without positive or negative test rows) or not finite (a diverged
    model's loss) as ``None``: the records stay valid JSON."""
    def number(value: float) -> float | None:
        return float(value) if math.isfinite(value) else None

    figures: dict[str, Any] = {"test_loss": number(metrics["loss"]),
                               "test_accuracy": number(metrics["accuracy"])}
    for name in ("auroc", "macro-auroc", "macro-f1"):
        if name in metrics:
            figures["test_" + name.replace("-", "_")] = number(metrics[name])
    for name in ("auroc-by-finding", "f1-by-finding"):
        if name in metrics:
            figures["test_" + name.replace("-", "_")] = [number(v) for v in metrics[name]]
    return figures

