"""Fusion heads over per-modality feature vectors with explicit presence masks.

Input: ``features`` B×M×D (one vector per modality, in a fixed order) and ``present`` B×M (bool).
A missing modality is never silently zero-filled into the fused vector:

- ``concat`` (feature-level): masked features and the mask itself are concatenated, so the MLP
  knows which vectors are absent.  z = [f₁·m₁, …, f_M·m_M, m] → MLP.
- ``attention`` (model-level): a learned query attends over the modality tokens (feature + learned
  modality-type embedding); absent modalities are removed through the key padding mask.
- ``late`` (decision-level): one classifier per modality; logits are combined with learned weights
  softmax-normalised over the present modalities only: ŷ = Σₘ softmax(w | present)ₘ · headₘ(fₘ).

Learned vectors (modality-type embeddings, the query, the late weights) are ``nn.Embedding``
lookups so Opacus computes their per-sample gradients like any other layer.
"""

from __future__ import annotations

import torch
from opacus.layers import DPMultiheadAttention
from torch import nn


def _indices(batch: int, count: int, device: torch.device) -> torch.Tensor:
    return torch.arange(count, device=device).repeat(batch, 1)


class ConcatFusion(nn.Module):
    def __init__(self, *, modalities: int, embed_dim: int, hidden_dim: int, classes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(modalities * (embed_dim + 1), hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, classes),
        )

    def forward(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        mask = present.unsqueeze(-1).to(features.dtype)
        fused = torch.cat([(features * mask).flatten(1), present.to(features.dtype)], dim=1)
        return self.mlp(fused)


class AttentionFusion(nn.Module):
    def __init__(
        self, *, modalities: int, embed_dim: int, hidden_dim: int, classes: int, heads: int = 4
    ) -> None:
        super().__init__()
        self.modality_type = nn.Embedding(modalities, embed_dim)
        self.query = nn.Embedding(1, embed_dim)
        self.attention = DPMultiheadAttention(embed_dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, classes)
        )

    def forward(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        batch, count, _ = features.shape
        tokens = features + self.modality_type(_indices(batch, count, features.device))
        query = self.query(torch.zeros(batch, 1, dtype=torch.long, device=features.device))
        attended, _ = self.attention(
            query, tokens, tokens, key_padding_mask=~present, need_weights=False
        )
        return self.classifier(self.norm(attended.squeeze(1)))


class LateFusion(nn.Module):
    def __init__(self, *, modalities: int, embed_dim: int, hidden_dim: int, classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU(),
                          nn.Linear(hidden_dim, classes))
            for _ in range(modalities)
        )
        self.weights = nn.Embedding(1, modalities)
        nn.init.zeros_(self.weights.weight)

    def forward(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        logits = torch.stack([head(features[:, i]) for i, head in enumerate(self.heads)], dim=1)
        raw = self.weights(torch.zeros(batch, dtype=torch.long, device=features.device))
        weights = raw.masked_fill(~present, float("-inf")).softmax(dim=1)
        return (weights.unsqueeze(-1) * logits).sum(dim=1)


FUSION_HEADS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion,
    "attention": AttentionFusion,
    "late": LateFusion,
}
