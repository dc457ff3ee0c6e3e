"""Augmentation multiplicity (De et al. 2022): K randomly augmented copies of every sample.

:func:`augment_copies` turns a batch of B samples into B·K rows, sample-major: row ``i·K + k`` is
copy k of sample i. DP-SGD then averages each sample's K per-sample gradients *before* clipping
(:mod:`client.multiplicity`), so a sample still moves the clipped sum by at most C.

What is augmented:

- pixel images (B×C×H×W): a random shift, the image reflect-padded by ``shift`` pixels on each
  side and cropped back at a random offset in [0, 2·shift]²; a horizontal flip with probability ½
  when ``flip`` (off by default: left and right are not interchangeable in every medical image);
- signals (B×channels×T, raw or log-mel): a random circular shift in time of up to
  ``signal_shift`` of the length either way; raw signals are also scaled by a factor drawn
  uniformly from [1 − ``amplitude``, 1 + ``amplitude``] (a log-mel signal is not: a gain is an
  additive offset there);
- text tokens, the presence mask and the labels are copied unchanged, and so are frozen
  pretrained image feature vectors (B×features, ``model.encoders = "pretrained"``): the copies then
  differ only in what is augmented, and K buys nothing for a model that sees no pixels or signal;
  likewise an image's scattering coefficients (``model.encoders = "scattering"``: shifting
  their quarter-size maps is not a shift of the picture).

An absent modality is all zeros in its slot, and stays zeros (reflect padding and scaling of
zeros are zeros). Randomness comes from torch's generator (seeded by the caller): augmentation
carries no privacy, unlike the Poisson sampling and noise, which use :mod:`common.randomness`.
"""

from __future__ import annotations

import torch

IMAGE_SHIFT = 2  # pixels
SIGNAL_SHIFT = 0.05  # fraction of the length
AMPLITUDE = 0.1


def augment_images(images: torch.Tensor, *, shift: int = IMAGE_SHIFT,
                   flip: bool = False) -> torch.Tensor:
    """Each image shifted by up to ``shift`` pixels (reflect padding) and optionally flipped."""
    if images.dim() != 4 or len(images) == 0:
        return images
    batch, _, height, width = images.shape
    pad = min(shift, height - 1, width - 1)
    if pad > 0:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (batch,))
        dx = torch.randint(0, 2 * pad + 1, (batch,))
        rows = (dy[:, None] + torch.arange(height)[None, :]).to(images.device)  # B×H
        cols = (dx[:, None] + torch.arange(width)[None, :]).to(images.device)  # B×W
        index = torch.arange(batch, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[index, channel, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        flipped = (torch.rand(batch) < 0.5).to(images.device)
        images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
    return images


def augment_signals(signals: torch.Tensor, *, shift: float = SIGNAL_SHIFT,
                    amplitude: float = AMPLITUDE, scale: bool = True) -> torch.Tensor:
    """Each signal rolled in time by up to ``shift``·T samples, and (``scale``) multiplied by a
    factor in [1 − ``amplitude``, 1 + ``amplitude``]."""
    if signals.dim() < 2 or len(signals) == 0:
        return signals
    batch, length = signals.shape[0], signals.shape[-1]
    most = int(shift * length)
    if most > 0:
        offsets = torch.randint(-most, most + 1, (batch,))
        positions = (torch.arange(length)[None, :] - offsets[:, None]) % length  # B×T
        positions = positions.to(signals.device).view(batch, *([1] * (signals.dim() - 2)),
                                                       length)
        signals = torch.gather(signals, -1, positions.expand_as(signals))
    if scale and amplitude > 0:
        factors = 1 + amplitude * (2 * torch.rand(batch) - 1)
        signals = signals * factors.to(signals).view(batch, *([1] * (signals.dim() - 1)))
    return signals


def augment_copies(image: torch.Tensor, tokens: torch.Tensor, signal: torch.Tensor,
                   present: torch.Tensor, label: torch.Tensor, *, multiplicity: int,
                   log_mel: bool = False, flip: bool = False, pixels: bool = True,
                   ) -> tuple[torch.Tensor, ...]:
    """(image, tokens, signal, present, label) of B samples → the same of B·K rows, row
    ``i·K + k`` copy k of sample i; ``multiplicity`` 1 returns the inputs themselves.
    ``pixels`` False: the image slot holds fixed features (scattering maps, pretrained
    vectors), copied unchanged."""
    if multiplicity == 1:
        return image, tokens, signal, present, label
    image, tokens, signal, present, label = (t.repeat_interleave(multiplicity, dim=0)
                                             for t in (image, tokens, signal, present, label))
    return (augment_images(image, flip=flip) if pixels else image, tokens,
            augment_signals(signal, scale=not log_mel), present, label)
