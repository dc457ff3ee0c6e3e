"""Shared fixtures: small demo sites written once per session, and a small run config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.config import RunConfig
from simulations.demo_data import generate_demo
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
def small_config() -> RunConfig:
    return RunConfig.model_validate({
        "model": {"embed_dim": 8, "hidden_dim": 16},
        "training": {"rounds": 2, "local_epochs": 1, "batch_size": 16},
    })
