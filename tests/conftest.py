"""Shared fixtures: small demo sites written once per session, and a small run config."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from simulations.demo_data import generate_demo
from simulations.fashion_mnist import FILES
from simulations.scenarios import Scenario


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three iid demo hospitals of 60 patients and a 120-patient test folder (read-only use)."""
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, sites=3, samples_per_site=60, seed=7, scenario=Scenario.IID,
                  test_samples=120)
    return root


@pytest.fixture
def site_copy(demo_root: Path, tmp_path: Path) -> Path:
    """A writable copy of one demo site."""
    target = tmp_path / "site"
    shutil.copytree(demo_root / "site-01", target)
    return target


@pytest.fixture
def site_copy_factory(demo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Fresh writable copies of one demo site, as many as a test needs (property tests)."""
    def copy() -> Path:
        target = tmp_path_factory.mktemp("site") / "site"
        shutil.copytree(demo_root / "site-01", target)
        return target

    return copy


@pytest.fixture
def small_config() -> RunConfig:
    return RunConfig.model_validate({
        "model": {"embed_dim": 8, "hidden_dim": 16},
        "training": {"rounds": 2, "local_epochs": 1, "batch_size": 16},
    })


@pytest.fixture(scope="session")
def deployment():
    """The README's deployment (tests/deployment.py), attacked while it runs: one for the
    deployment end-to-end tests and every attack test."""
    from tests.deployment import readme_deployment

    yield from readme_deployment()


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def fashion_source(tmp_path: Path) -> Path:
    """A Fashion-MNIST look-alike in the real IDX format: ten classes × 80 train and 110 test
    pictures, each picture's first pixel = its class and second its index, so a written PNG
    says where it came from."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    for split, per_class in (("train", 80), ("test", 110)):
        labels = np.repeat(np.arange(10), per_class)
        images = np.random.default_rng(0).integers(0, 256, (len(labels), 28, 28))
        images[:, 0, 0] = labels
        images[:, 0, 1] = np.arange(len(labels)) % 256
        images_file, labels_file = FILES[split]
        write_idx(folder / images_file, images)
        write_idx(folder / labels_file, labels)
    return folder
