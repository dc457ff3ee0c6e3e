"""The fixed scattering features: what the transform is, that it is per sample, its cache, and
the model and DP-SGD round built on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.grad_sample import MODES
from client.training import plan_round, train_local
from common import scattering
from common.config import ConfigError, load_config
from common.features import model_inputs
from common.models import build_model
from common.scattering import (
    Scattering2D,
    coefficients_per_channel,
    filter_bank,
    output_shape,
    scatter,
    scatter_site_images,
)
from common.serialization import model_weights
from common.sitedata import load_site


def _pictures(count: int, size: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, size, size), dtype=np.float32)


def test_j2_l8_gives_81_maps_of_a_quarter_size() -> None:
    assert coefficients_per_channel() == 81
    assert output_shape(channels=3, image_size=32) == (243, 8, 8)
    assert scatter(_pictures(3), image_size=28).shape == (3, 81, 7, 7)


def test_wavelets_have_zero_mean_and_the_low_pass_keeps_the_mean() -> None:
    phi, psis = filter_bank(36)
    assert phi[0, 0] == pytest.approx(1.0, abs=1e-6)
    for per_scale in psis:
        assert np.abs(per_scale[:, 0, 0]).max() < 1e-6


def test_a_flat_picture_has_only_its_mean() -> None:
    flat = np.full((1, 1, 28, 28), 0.7, np.float32)
    coefficients = scatter(flat, image_size=28)[0]
    np.testing.assert_allclose(coefficients[0], 0.7, rtol=1e-4)
    assert np.abs(coefficients[1:]).max() < 1e-4


def test_coefficients_are_stable_to_a_small_shift() -> None:
    """Translation stability, what makes scattering a good fixed feature: a one-pixel shift
    of a textured picture moves its pixels by far more than its coefficients (measured:
    0.71 against 0.07 for noise, 0.68 against 0.13 for stripes)."""
    xx = np.mgrid[0:28, 0:28][1]
    for picture in (_pictures(1), (np.sin(xx * 1.3) * 0.5 + 0.5)[None, None]):
        picture = picture.astype(np.float32)
        shifted = np.roll(picture, 1, axis=3)
        pixels_moved = np.linalg.norm(shifted - picture) / np.linalg.norm(picture)
        a, b = scatter(picture, image_size=28), scatter(shifted, image_size=28)
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < pixels_moved / 4


def test_each_picture_is_transformed_alone() -> None:
    """The DP argument rests on this: a sample's features depend on that sample only."""
    pictures = _pictures(5)
    together = scatter(pictures, image_size=28)
    for index in range(5):
        alone = scatter(pictures[index:index + 1], image_size=28)
        np.testing.assert_allclose(alone[0], together[index], atol=1e-5)
    changed = pictures.copy()
    changed[2] = 0.0
    np.testing.assert_allclose(scatter(changed, image_size=28)[[0, 1, 3, 4]],
                               together[[0, 1, 3, 4]], atol=1e-5)
    # the same check catches a transform that shares anything between samples (weakened:
    # coefficients centred on the batch mean, as a batch normalisation would)
    def weakened(batch: np.ndarray) -> np.ndarray:
        out = scatter(batch, image_size=28)
        return out - out.mean(axis=0, keepdims=True)

    assert not np.allclose(weakened(changed)[[0, 1, 3, 4]], weakened(pictures)[[0, 1, 3, 4]],
                           atol=1e-5)


def test_sizes_that_are_not_a_multiple_of_four_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        Scattering2D(image_size=30)
    with pytest.raises(ConfigError, match=r"data\.image_size to be a multiple of 4"):
        load_config(None, {"model.encoders": "scattering", "data.image_size": "30"})


def test_the_cache_is_used_again_and_rebuilt_when_pixels_change_or_it_is_damaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pictures = _pictures(4)
    first = scatter_site_images(pictures, image_size=28, cache_dir=tmp_path)
    [stored] = tmp_path.glob("scattering-*.npy")

    def no_compute(*_args, **_kwargs):
        raise AssertionError("computed again although cached")

    monkeypatch.setattr(scattering, "scatter", no_compute)
    np.testing.assert_array_equal(
        scatter_site_images(pictures, image_size=28, cache_dir=tmp_path), first)
    monkeypatch.undo()
    changed = pictures.copy()
    changed[0, 0, 0, 0] += 0.5
    again = scatter_site_images(changed, image_size=28, cache_dir=tmp_path)
    assert not np.array_equal(again[0], first[0])
    assert [p.name for p in tmp_path.glob("scattering-*.npy")] != [stored.name]
    [current] = tmp_path.glob("scattering-*.npy")
    current.write_bytes(b"not an array")
    np.testing.assert_allclose(
        scatter_site_images(changed, image_size=28, cache_dir=tmp_path), again)


def test_a_scattering_model_trains_a_dp_sgd_round_on_a_site(demo_root: Path) -> None:
    config = load_config(None, {"model.encoders": "scattering", "training.local_epochs": "1",
                                "training.rounds": "2"})
    site = demo_root / "site-01"
    data = model_inputs(load_site(site, config.data), config.model, None)
    assert data.images.shape[1:] == (81, 8, 8)
    model = build_model(data=config.data, model=config.model, seed=0)
    assert sum(p.numel() for p in model.encoders["image"].parameters()) == 81 * 64 * 16 + 16
    initial = model_weights(model)
    plan = plan_round(len(data), config)
    torch.manual_seed(0)
    result = train_local(config=config, global_weights=initial, data=data, plan=plan, history=[])
    assert result.steps == plan.steps
    # its 82,944-value projection is calibrated: whichever correct mode timed fastest here
    assert result.grad_sample_mode in MODES
    moved = result.weights["encoders.image.project.weight"] - initial[
        "encoders.image.project.weight"]
    assert np.isfinite(moved).all() and np.abs(moved).max() > 0


def test_a_site_too_large_for_scattering_stops_with_one_line(tmp_path: Path) -> None:
    from common.features import _check_scattering_fits
    from common.rowstore import UnkeptRows
    from common.sitedata import SiteData, SiteDataError

    def site(patients: int) -> SiteData:
        return SiteData(site_dir=tmp_path, sample_ids=[str(i) for i in range(patients)],
                        labels=np.zeros(patients, np.int64),
                        images=UnkeptRows(count=patients, row_shape=(1, 224, 224),
                                          served="float32"),
                        tokens=np.zeros((patients, 4), np.int64),
                        signals=np.zeros((patients, 1, 8), np.float32),
                        masks=np.ones((patients, 3), bool))

    # 224²·4 + 81·56²·4 bytes a picture, twice: 2.43 MB; 50,000 need 121.7 GB
    with pytest.raises(SiteDataError) as caught:
        _check_scattering_fits(site(50_000), available=8 * 10**9)
    message = str(caught.value)
    assert "\n" not in message and "50,000 pictures at 224 × 224" in message
    assert "121.7 GB of memory, 8.0 GB are free" in message and "trainable" in message
    _check_scattering_fits(site(1000), available=8 * 10**9)  # 2.4 GB: fits
