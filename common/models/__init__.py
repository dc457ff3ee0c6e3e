"""The multimodal fusion model: one encoder per configured modality plus a fusion head.

``MultimodalModel.forward(image, tokens, signal, present)`` takes all three modality tensors and
the B×3 presence mask (order: image, text, audio); modalities the model is not configured for are
ignored. With ``model.encoders = "pretrained"`` the image and text inputs are frozen encoders'
feature vectors (:mod:`common.features`) and their encoders are projections; with
``"scattering"`` the image input is its fixed scattering coefficients (:mod:`common.scattering`)
and its encoder a projection. Modality dropout
(training only) hides each present modality with probability p while always keeping at least one.
"""

from __future__ import annotations

import torch
from torch import nn

from common.config import MODALITIES, DataConfig, ModelConfig
from common.features import FEATURE_SIZES
from common.models.encoders import (
    AttentionTextEncoder,
    FeatureProjection,
    GRUTextEncoder,
    ImageEncoder,
    ScatteringProjection,
    SignalEncoder,
)
from common.models.fusion import FUSION_HEADS
from common.preprocess import signal_shape
from common.scattering import output_shape


def _encoder(modality: str, data: DataConfig, model: ModelConfig) -> nn.Module:
    if model.encoders == "pretrained" and modality in FEATURE_SIZES:
        return FeatureProjection(features=FEATURE_SIZES[modality], embed_dim=model.embed_dim)
    if model.encoders == "scattering" and modality == "image":
        channels, size, _ = output_shape(channels=data.image_channels, image_size=data.image_size)
        return ScatteringProjection(channels=channels, size=size, embed_dim=model.embed_dim)
    if modality == "image":
        return ImageEncoder(channels=data.image_channels, embed_dim=model.embed_dim)
    if modality == "audio":
        return SignalEncoder(channels=signal_shape(data)[0], embed_dim=model.embed_dim)
    if model.text_encoder == "gru":
        return GRUTextEncoder(vocab_size=data.vocab_size, embed_dim=model.embed_dim)
    return AttentionTextEncoder(
        vocab_size=data.vocab_size, max_tokens=data.max_text_tokens, embed_dim=model.embed_dim
    )


def drop_modalities(present: torch.Tensor, probability: float) -> torch.Tensor:
    """Hide each present modality with ``probability``; a row keeps at least one."""
    keep = present & (torch.rand(present.shape, device=present.device) >= probability)
    empty = ~keep.any(dim=1)
    if empty.any():
        # restore the first present modality of rows that lost all of them
        first = (present.cumsum(dim=1) == 1) & present
        keep = keep | (first & empty.unsqueeze(1))
    return keep


class MultimodalModel(nn.Module):
    def __init__(self, *, data: DataConfig, model: ModelConfig) -> None:
        super().__init__()
        self.modalities = tuple(m for m in MODALITIES if m in model.modalities)
        self.columns = [MODALITIES.index(m) for m in self.modalities]
        self.modality_dropout = model.modality_dropout
        self.encoders = nn.ModuleDict({m: _encoder(m, data, model) for m in self.modalities})
        self.fusion = FUSION_HEADS[model.fusion](
            modalities=len(self.modalities),
            embed_dim=model.embed_dim,
            hidden_dim=model.hidden_dim,
            classes=data.num_classes,
        )

    def forward(
        self,
        image: torch.Tensor,
        tokens: torch.Tensor,
        signal: torch.Tensor,
        present: torch.Tensor,
    ) -> torch.Tensor:
        inputs = {"image": image, "text": tokens, "audio": signal}
        mask = present[:, self.columns].bool()
        if self.training and self.modality_dropout > 0:
            mask = drop_modalities(mask, self.modality_dropout)
        features = torch.stack([self.encoders[m](inputs[m]) for m in self.modalities], dim=1)
        return self.fusion(features, mask)


def build_model(*, data: DataConfig, model: ModelConfig, seed: int | None = None) -> nn.Module:
    """A fresh model; with ``seed`` its initial weights are the same on every machine."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MultimodalModel(data=data, model=model)
    return MultimodalModel(data=data, model=model)


def select_device(preference: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where none exists is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device = 'cuda' but no CUDA device is visible; use 'auto'")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
