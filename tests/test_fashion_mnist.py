"""The Fashion-MNIST site builder: IDX reading, pairing per class, no picture used twice, clear
errors; on a small IDX set written here, and on Debian's real files where they are installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import DataConfig
from common.sitedata import load_site
from simulations.fashion_mnist import (
    FASHION_DIR,
    FILES,
    GARMENTS,
    FashionDataError,
    generate_fashion_mnist,
    read_idx,
)
from simulations.scenarios import Scenario


def test_sites_get_the_garment_paired_with_each_label_and_no_picture_twice(
        fashion_source: Path, tmp_path: Path) -> None:
    sites = generate_fashion_mnist(tmp_path / "out", sites=2, samples_per_site=40, seed=0,
                                   scenario=Scenario.LABEL_SKEW, test_samples=20,
                                   source=fashion_source)
    seen = set()
    for folder in [*sites, tmp_path / "out" / "test"]:
        data = load_site(folder, DataConfig())
        assert len(data) == data.total_rows and not data.issues
        for sample_id, label in zip(data.sample_ids, data.labels, strict=True):
            pixels = np.asarray(Image.open(folder / "images" / f"{sample_id}.png"))
            assert pixels.shape == (28, 28)
            assert pixels[0, 0] == GARMENTS[label]
            origin = (folder.name == "test", int(pixels[0, 0]), int(pixels[0, 1]))
            assert origin not in seen
            seen.add(origin)
    counts = [np.bincount(load_site(s, DataConfig()).labels, minlength=4) for s in sites]
    assert not np.array_equal(counts[0], counts[1])  # label skew: the sites differ


def test_same_seed_same_sites(fashion_source: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        generate_fashion_mnist(tmp_path / name, sites=1, samples_per_site=20, seed=5,
                               scenario=Scenario.IID, test_samples=0, source=fashion_source)
    assert ((tmp_path / "a" / "site-01" / "manifest.csv").read_bytes()
            == (tmp_path / "b" / "site-01" / "manifest.csv").read_bytes())


def test_missing_dataset_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(FashionDataError, match="apt-get install dataset-fashion-mnist"):
        generate_fashion_mnist(tmp_path / "out", sites=1, samples_per_site=10, seed=0,
                               scenario=Scenario.IID, source=tmp_path / "nowhere")


def test_corrupt_or_foreign_files_are_named(fashion_source: Path) -> None:
    broken = fashion_source / FILES["train"][0]
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(FashionDataError, match="unreadable"):
        read_idx(broken)
    broken.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + (4).to_bytes(4, "big")))
    with pytest.raises(FashionDataError, match="not an IDX file"):
        read_idx(broken)


def test_asking_for_more_pictures_than_exist_is_an_error(fashion_source: Path,
                                                         tmp_path: Path) -> None:
    with pytest.raises(FashionDataError, match="not enough"):
        generate_fashion_mnist(tmp_path / "out", sites=1, samples_per_site=400, seed=0,
                               scenario=Scenario.IID, test_samples=0, source=fashion_source)


@pytest.mark.skipif(not (FASHION_DIR / FILES["test"][0]).is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_real_files_read_as_documented() -> None:
    images, labels = (read_idx(FASHION_DIR / name) for name in FILES["test"])
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert np.bincount(labels).tolist() == [1000] * 10


def test_ten_classes_pictures_only_partition_the_split_evenly(fashion_source: Path,
                                                               tmp_path: Path) -> None:
    """iid: each site's classes as even as the pictures allow, so sites × samples = the whole
    train split uses every picture once; text and signal cells are empty."""
    from common.config import load_config
    from simulations.fashion_mnist import CLASSES_10, generate_fashion_mnist_10
    from simulations.tasks import Task, task_config

    sites = generate_fashion_mnist_10(tmp_path / "out", sites=2, samples_per_site=400, seed=0,
                                      scenario=Scenario.IID, test_samples=1100,
                                      source=fashion_source)
    config = load_config(None, task_config(Task.FASHION_MNIST_10))
    assert len(CLASSES_10) == config.data.num_classes == 10
    seen = set()
    for folder in [*sites, tmp_path / "out" / "test"]:
        data = load_site(folder, config.data)
        assert len(data) == data.total_rows and not data.issues
        assert data.masks.all(axis=0).tolist() == [True, False, False]
        if folder.name != "test":
            assert np.bincount(data.labels, minlength=10).tolist() == [40] * 10
        for sample_id, label in zip(data.sample_ids, data.labels, strict=True):
            pixels = np.asarray(Image.open(folder / "images" / f"{sample_id}.png"))
            assert pixels[0, 0] == label
            seen.add((folder.name == "test", int(pixels[0, 0]), int(pixels[0, 1])))
    assert len(seen) == 800 + 1100  # every train and test picture exactly once
    assert "allowed_modalities = [\"image\"]" in (sites[0] / "policy.toml").read_text()


def test_the_task_config_yields_to_the_run_config_and_set(tmp_path: Path) -> None:
    from fedmm.cli import with_task_defaults
    from simulations.tasks import Task

    run = tmp_path / "run.toml"
    run.write_text("[data]\nimage_size = 32\n")
    merged = with_task_defaults(Task.FASHION_MNIST_10, run, {"model.modalities": '["image"]'})
    assert merged == {"data.num_classes": 10, "model.modalities": '["image"]'}
    assert with_task_defaults(Task.DEMO, None, {}) == {}
