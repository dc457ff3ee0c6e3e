import hashlib
from pathlib import Path

import numpy as np
import pytest

from common.config import DataConfig
from common.sitedata import load_site
from simulations.demo_data import generate_demo
from simulations.scenarios import Scenario, site_plan


def _tree_digest(root: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        hasher.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return hasher.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_demo(tmp_path / name, sites=2, samples_per_site=15, seed=seed,
                      scenario=Scenario.MISSING_MODALITY, test_samples=5)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_generated_sites_validate_cleanly(demo_root: Path) -> None:
    for site in ("site-01", "site-02", "site-03", "test"):
        data = load_site(demo_root / site, DataConfig())
        assert not data.issues and len(data) > 0
        assert set(data.label_counts()) <= {0, 1, 2, 3}
    assert (demo_root / "site-01" / "policy.toml").is_file()


@pytest.mark.parametrize("scenario", list(Scenario))
def test_scenarios(scenario: Scenario) -> None:
    plans = site_plan(scenario, sites=4, samples_per_site=200, classes=4,
                      rng=np.random.default_rng(0))
    sizes = [len(p.labels) for p in plans]
    if scenario is Scenario.QUANTITY_SKEW:
        assert max(sizes) > 2 * min(sizes)
    else:
        assert sizes == [200] * 4
    if scenario is Scenario.LABEL_SKEW:
        shares = [np.bincount(p.labels, minlength=4).max() / 200 for p in plans]
        assert max(shares) > 0.5
    if scenario is Scenario.MISSING_MODALITY:
        assert [max(p.missing, key=p.missing.get) for p in plans[:3]] == ["image", "text",
                                                                         "audio"]
    else:
        assert all(not p.missing for p in plans)
