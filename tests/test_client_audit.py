"""The empirical DP audit of the site training path, and proof that it has teeth."""


import pytest

from client.audit import run_canary_audit
from common.config import RunConfig
from common.sitedata import load_site
from simulations.demo_data import generate_demo
from simulations.scenarios import Scenario

CLAIM = 2.0


@pytest.fixture(scope="module")
def audit_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, object]:
    root = tmp_path_factory.mktemp("audit")
    generate_demo(root, sites=1, samples_per_site=300, seed=3, scenario=Scenario.IID,
                  test_samples=0)
    # lr is small so that the no-clipping variant does not diverge; scores are relative
    config = RunConfig.model_validate({
        "training": {"rounds": 1, "local_epochs": 5, "batch_size": 60, "learning_rate": 0.01},
        "privacy": {"target_epsilon": CLAIM},
    })
    return config, load_site(root / "site-01", config.data)


def test_sound_pipeline_stays_below_its_claim(audit_site: tuple) -> None:
    config, data = audit_site
    audit = run_canary_audit(config=config, data=data)
    assert audit.claimed_epsilon == pytest.approx(CLAIM, abs=0.02)
    assert audit.result.epsilon_lower_bound <= audit.claimed_epsilon
    assert audit.result.correct > audit.result.guesses / 2  # the canaries are visible at all


@pytest.mark.parametrize("tamper", ["no-noise", "no-clipping"])
def test_broken_pipeline_is_caught(audit_site: tuple, tamper: str) -> None:
    config, data = audit_site
    audit = run_canary_audit(config=config, data=data, tamper=tamper)
    assert audit.result.epsilon_lower_bound > audit.claimed_epsilon, audit


def test_audit_needs_the_text_encoder(audit_site: tuple) -> None:
    config, data = audit_site
    image_only = config.model_copy(update={"model": config.model.model_copy(
        update={"modalities": ("image",)})})
    with pytest.raises(ValueError, match="needs the text encoder"):
        run_canary_audit(config=image_only, data=data)
