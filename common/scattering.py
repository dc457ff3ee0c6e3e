"""Fixed image features: the 2-D scattering transform (``model.encoders = "scattering"``).

A scattering network (Mallat 2012; Bruna & Mallat 2013) is a cascade of wavelet convolutions and
moduli with fixed, hand-designed filters: no weights are learnt, so nothing about any patient
goes into it, and DP-SGD trains only what sits on top. Tramèr & Boneh 2021 ("Differentially
Private Learning Needs Better Features") found that a linear model or a small CNN on scattering
features beats end-to-end CNNs under DP on MNIST, Fashion-MNIST and CIFAR-10.

With J scales and L orientations, Morlet wavelets ψ_{j,θ} and the Gaussian low-pass φ_J:

    S₀x = x ⋆ φ_J
    S₁x = |x ⋆ ψ_{j₁,θ₁}| ⋆ φ_J                    for 0 ≤ j₁ < J
    S₂x = ||x ⋆ ψ_{j₁,θ₁}| ⋆ ψ_{j₂,θ₂}| ⋆ φ_J      for j₁ < j₂ < J

each subsampled by 2^J: 1 + J·L + L²·J(J−1)/2 maps per input channel (81 for J = 2, L = 8)
of (H/2^J) × (W/2^J). The filters are Kymatio's (Andreux et al. 2020): σ = 0.8·2^j,
ξ = 3π/4·2^−j, slant 4/L, periodised on the padded grid; φ_J has σ = 0.8·2^(J−1). The input is
reflect-padded by 2^J on each side and the padding cropped after subsampling. Convolutions are
products in the Fourier domain; subsampling by k is the mean of the spectrum's k² blocks.

A sample's coefficients depend on that sample alone, so computing them once per site and
caching them (:func:`scatter_site_images`) changes nothing in the DP analysis.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_bytes
from common.config import SCATTERING_SCALES

log = logging.getLogger(__name__)
SCALES = SCATTERING_SCALES  # J (the config checks image sizes against 2^J)
ORIENTATIONS = 8  # L
SCATTERING_FORMAT = "1"  # bump when the coefficients computed change
CACHE_PREFIX = "scattering-"  # the cache files in a site's feature folder
BATCH = 256


def coefficients_per_channel(scales: int = SCALES, orientations: int = ORIENTATIONS) -> int:
    """1 + J·L + L²·J(J−1)/2."""
    return 1 + scales * orientations + orientations ** 2 * scales * (scales - 1) // 2


def output_shape(*, channels: int, image_size: int, scales: int = SCALES) -> tuple[int, ...]:
    """The coefficient array of one image: (channels·K, size/2^J, size/2^J)."""
    return (channels * coefficients_per_channel(scales), image_size >> scales,
            image_size >> scales)


def _gabor(size: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> np.ndarray:
    """A Gabor filter centred on the origin of a ``size``² grid, periodised over ±2 periods."""
    rotation = np.array([[math.cos(theta), -math.sin(theta)],
                         [math.sin(theta), math.cos(theta)]])
    curvature = rotation @ np.diag([1.0, slant ** 2]) @ rotation.T / (2 * sigma ** 2)
    out = np.zeros((size, size), np.complex128)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            x, y = np.mgrid[ex * size:(ex + 1) * size, ey * size:(ey + 1) * size]
            out += np.exp(-(curvature[0, 0] * x * x + (curvature[0, 1] + curvature[1, 0]) * x * y
                            + curvature[1, 1] * y * y)
                          + 1j * xi * (x * math.cos(theta) + y * math.sin(theta)))
    return out * slant / (2 * math.pi * sigma ** 2)


def _morlet(size: int, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Gabor filter minus its Gaussian envelope scaled to make its mean zero."""
    wave = _gabor(size, sigma, theta, xi, slant)
    envelope = _gabor(size, sigma, theta, 0.0, slant)
    return wave - wave.sum() / envelope.sum() * envelope


@lru_cache(maxsize=8)
def filter_bank(size: int, *, scales: int = SCALES,
                orientations: int = ORIENTATIONS) -> tuple[np.ndarray, list[np.ndarray]]:
    """φ̂_J (size²) and, per scale j, ψ̂_{j,θ} for the L orientations (L × size²), in the
    Fourier domain (real parts, as Kymatio keeps them). Remembered per size: treat as
    read-only."""
    phi = np.real(np.fft.fft2(_gabor(size, 0.8 * 2 ** (scales - 1), 0.0, 0.0)))
    psis = []
    for j in range(scales):
        psis.append(np.stack([
            np.real(np.fft.fft2(_morlet(
                size, 0.8 * 2 ** j, (int(orientations - orientations / 2 - 1) - t)
                * math.pi / orientations, 3.0 / 4.0 * math.pi / 2 ** j, 4.0 / orientations)))
            for t in range(orientations)]))
    return phi, psis


class Scattering2D:
    """The transform for ``image_size``² inputs (a multiple of 2^J), batched in torch.

    As in Kymatio, a path at scale j is computed at resolution 2^−j (its spectrum subsampled
    before the inverse FFT), with the filters' spectra sampled at that resolution's
    frequencies."""

    def __init__(self, *, image_size: int, scales: int = SCALES,
                 orientations: int = ORIENTATIONS) -> None:
        import torch

        if image_size % (1 << scales):
            raise ValueError(f"image size {image_size} is not a multiple of 2^J = {1 << scales}")
        self.scales, self.image_size = scales, image_size
        self.pad = 1 << scales
        padded = image_size + 2 * self.pad
        phi, psis = filter_bank(padded, scales=scales, orientations=orientations)
        # [resolution r][...]: spectra sampled on the (padded / 2^r)² grid
        self.phi = [torch.from_numpy(_at_resolution(phi, r).astype(np.float32))
                    for r in range(scales + 1)]
        self.psis = [[torch.from_numpy(_at_resolution(p, r).astype(np.float32))
                      for r in range(scales + 1)] for p in psis]

    def _low_pass(self, spectrum, resolution: int):
        """(u ⋆ φ_J) at resolution 2^−J, cropped, from û at ``resolution``."""
        import torch

        small = torch.fft.ifft2(_filtered_subsample(
            spectrum, self.phi[resolution], 1 << (self.scales - resolution))).real
        start = self.pad >> self.scales
        end = start + (self.image_size >> self.scales)
        return small[..., start:end, start:end]

    def __call__(self, images):
        """``images``: B×C×H×W float tensor → B×(C·K)×(H/2^J)×(W/2^J)."""
        import torch
        import torch.nn.functional as F

        batch, channels = images.shape[:2]
        padded = F.pad(images.reshape(batch * channels, 1, *images.shape[2:]),
                       (self.pad,) * 4, mode="reflect")[:, 0]
        spectrum = torch.fft.fft2(padded)
        outputs = [self._low_pass(spectrum, 0).unsqueeze(1)]
        first: list = []
        for j1 in range(self.scales):
            wavelet = _filtered_subsample(spectrum.unsqueeze(1), self.psis[j1][0], 1 << j1)
            first.append(torch.fft.fft2(torch.fft.ifft2(wavelet).abs()))
            outputs.append(self._low_pass(first[-1], j1))
        for j1 in range(self.scales):
            for j2 in range(j1 + 1, self.scales):
                wavelet = _filtered_subsample(first[j1].unsqueeze(2), self.psis[j2][j1],
                                              1 << (j2 - j1))
                second = torch.fft.fft2(torch.fft.ifft2(wavelet).abs())
                outputs.append(self._low_pass(second, j2).flatten(1, 2))
        coefficients = torch.cat(outputs, dim=1)
        return coefficients.reshape(batch, -1, *coefficients.shape[-2:])


def _at_resolution(spectrum: np.ndarray, resolution: int) -> np.ndarray:
    """A filter's spectrum sampled at the frequencies of the (size / 2^r)² grid."""
    size = spectrum.shape[-1]
    small = size >> resolution
    frequencies = np.round(np.fft.fftfreq(small) * small).astype(int) % size
    return spectrum[..., frequencies[:, None], frequencies[None, :]]


def _filtered_subsample(spectrum, spectrum_filter, factor: int):
    """The spectrum of (signal ⋆ filter) subsampled by ``factor``: the mean of the factor²
    blocks of spectrum · filter, without forming the full-size product."""
    if factor == 1:
        return spectrum * spectrum_filter
    size = spectrum.shape[-1] // factor
    total = None
    for row in range(factor):
        for column in range(factor):
            rows, columns = slice(row * size, (row + 1) * size), slice(column * size,
                                                                        (column + 1) * size)
            product = spectrum[..., rows, columns] * spectrum_filter[..., rows, columns]
            total = product if total is None else total.add_(product)
    return total.div_(factor * factor)


def scatter(images: np.ndarray, *, image_size: int) -> np.ndarray:
    """Scattering coefficients of N×C×H×W ``images`` (float32), computed in batches."""
    import torch

    transform = Scattering2D(image_size=image_size)
    out = np.zeros((len(images), *output_shape(channels=images.shape[1],
                                                image_size=image_size)), np.float32)
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + BATCH],
                                                          dtype=np.float32))
            out[start:start + len(chunk)] = transform(chunk).numpy()
    return out


def _cache_path(folder: Path, images: np.ndarray) -> Path:
    digest = hashlib.sha256()
    digest.update(f"{SCATTERING_FORMAT}|{SCALES}|{ORIENTATIONS}|{images.shape}|".encode())
    digest.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    return folder / f"{CACHE_PREFIX}{digest.hexdigest()[:32]}.npy"


def scatter_site_images(images: np.ndarray, *, image_size: int,
                        cache_dir: Path | None) -> np.ndarray:
    """:func:`scatter`, read from ``cache_dir`` when these exact pixels were scattered before
    (keyed by the SHA-256 of the pixel array and the transform's version), else computed and
    stored there atomically. A cache that cannot be read or written only costs time."""
    path = _cache_path(cache_dir, images) if cache_dir is not None else None
    expected = (len(images), *output_shape(channels=images.shape[1], image_size=image_size))
    if path is not None and path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == expected and cached.dtype == np.float32:
                return cached
        except (OSError, ValueError):
            pass
    coefficients = scatter(images, image_size=image_size)
    if path is not None:
        try:
            buffer = io.BytesIO()
            np.save(buffer, coefficients, allow_pickle=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in path.parent.glob(f"{CACHE_PREFIX}*.npy"):
                stale.unlink(missing_ok=True)
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as error:
            log.warning("could not write the scattering cache %s (%s); it will be computed "
                        "again next time", path, error.strerror or error)
    return coefficients
