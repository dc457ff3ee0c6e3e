"""Evaluation of a model on site data: loss, accuracy and, for two classes, AUROC.

Shared by the sites (federated evaluation on their validation split) and the server (held-out
test folder). AUROC is the Mann–Whitney U statistic: the probability that a random positive
scores above a random negative, ties counted one half.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from common.config import RunConfig
from common.models import build_model, select_device
from common.serialization import Weights, load_weights
from common.sitedata import SiteData


def dataset_of(data: SiteData) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(
        torch.from_numpy(data.images),
        torch.from_numpy(data.tokens),
        torch.from_numpy(data.signals),
        torch.from_numpy(data.masks),
        torch.from_numpy(data.labels),
    )


@torch.no_grad()
def evaluate_model(model: nn.Module, data: SiteData, *, batch_size: int = 256,
                   loss_bound: float = math.inf) -> dict[str, float]:
    """Loss, accuracy and (for two classes) AUROC of ``model`` on ``data``, with the sums they
    come from: ``correct`` rows and ``clipped-loss-sum``, Σ min(loss_i, ``loss_bound``); a row
    with non-finite logits or loss is wrong, at loss ``loss_bound``."""
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
    losses = nn.functional.cross_entropy(logits.double(), labels, reduction="none")
    if math.isfinite(loss_bound):
        losses = torch.where(finite & torch.isfinite(losses), losses,
                             torch.full_like(losses, loss_bound))
    correct = int(((logits.argmax(dim=1) == labels) & finite).sum())
    metrics = {
        "loss": float(losses.mean()),
        "accuracy": correct / len(labels),
        "num-examples": len(labels),
        "correct": correct,
        "clipped-loss-sum": float(losses.clamp(max=loss_bound).sum()),
    }
    if logits.shape[1] == 2:
        metrics["auroc"] = auroc(logits.softmax(dim=1)[:, 1].numpy(), labels.numpy())
    return metrics


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
                     loss_bound: float = math.inf) -> dict[str, float]:
    model = build_model(data=config.data, model=config.model).to(select_device(config.model.device))
    load_weights(model, weights)
    return evaluate_model(model, data, loss_bound=loss_bound)
