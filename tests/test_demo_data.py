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


@pytest.mark.slow
def test_fusion_beats_every_single_modality_on_held_out_data(tmp_path: Path) -> None:
    """The demo task is genuinely multimodal: each modality alone carries partial evidence."""
    import torch

    from client.training import plan_round, train_local
    from common.config import RunConfig
    from common.evaluation import evaluate_weights
    from common.models import build_model
    from common.privacy import noise_for_budget
    from common.serialization import model_weights

    generate_demo(tmp_path, sites=1, samples_per_site=600, seed=1, scenario=Scenario.IID,
                  test_samples=400)
    accuracy = {}
    for modalities in (("image",), ("text",), ("audio",), ("image", "text", "audio")):
        config = RunConfig.model_validate({
            "model": {"modalities": list(modalities)},
            "training": {"local_epochs": 15, "batch_size": 32},
            "privacy": {"enabled": False, "max_grad_norm": 5.0},
        })
        train = load_site(tmp_path / "site-01", config.data)
        test = load_site(tmp_path / "test", config.data)
        weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
        plan = plan_round(len(train), config, noise_for_budget=noise_for_budget)
        torch.manual_seed(0)
        result = train_local(config=config, global_weights=weights, data=train, plan=plan,
                             history=[])
        accuracy["+".join(modalities)] = evaluate_weights(config, result.weights,
                                                          test)["accuracy"]
    fused = accuracy.pop("image+text+audio")
    best_single = max(accuracy.values())
    assert all(0.3 < a < 0.7 for a in accuracy.values()), accuracy  # partial evidence each
    assert fused > best_single + 0.15, (fused, accuracy)
