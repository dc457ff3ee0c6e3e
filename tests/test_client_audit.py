"""The empirical DP audit of every training path a site can take, and proof that it has teeth:
the text model (hooks), a picture-only model, each per-sample-gradient mode (ghost through its
equivalence with hooks), augmentation multiplicity, pretrained features."""


from dataclasses import replace

import numpy as np
import pytest

from client.audit import (
    GHOST_TOLERANCE,
    canary_coordinates,
    data_activity,
    ghost_matches_hooks,
    run_canary_audit,
    trainable,
)
from common.config import RunConfig
from common.features import FEATURE_SIZES
from common.models import build_model
from common.serialization import model_weights
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


@pytest.fixture(scope="module")
def picture_site(demo_root) -> tuple[RunConfig, object]:
    """A model without the text encoder (pictures only) on a small site: 12 DP-SGD steps."""
    config = RunConfig.model_validate({
        "model": {"modalities": ["image"]},
        "training": {"rounds": 1, "local_epochs": 4, "batch_size": 20, "learning_rate": 0.01},
        "privacy": {"target_epsilon": CLAIM, "grad_sample_mode": "hooks"},
    })
    return config, load_site(demo_root / "site-01", config.data)


def _with(config: RunConfig, **sections: dict) -> RunConfig:
    return config.model_copy(update={name: getattr(config, name).model_copy(update=values)
                                     for name, values in sections.items()})


def _check(audit, *, sound: bool) -> None:
    if sound:
        assert audit.result.epsilon_lower_bound <= audit.claimed_epsilon, audit
        assert audit.result.correct > audit.result.guesses / 2, audit
    else:
        assert audit.result.epsilon_lower_bound > audit.claimed_epsilon, audit


@pytest.mark.parametrize("tamper", ["none", "no-noise", "no-clipping"])
def test_picture_only_model_is_audited(picture_site: tuple, tamper: str) -> None:
    config, data = picture_site
    audit = run_canary_audit(config=config, data=data, tamper=tamper)
    assert audit.claimed_epsilon == pytest.approx(CLAIM, abs=0.02) and audit.mode == "hooks"
    _check(audit, sound=tamper == "none")


@pytest.mark.parametrize("mode", ["functorch", "ew"])
@pytest.mark.parametrize("tamper", ["none", "no-clipping"])
def test_each_per_sample_gradient_mode_is_audited(picture_site: tuple, mode: str,
                                                  tamper: str) -> None:
    config, data = picture_site
    audit = run_canary_audit(config=_with(config, privacy={"grad_sample_mode": mode}),
                             data=data, tamper=tamper)
    assert audit.audited_mode == mode
    _check(audit, sound=tamper == "none")


def test_ghost_clipping_is_audited_through_hooks_which_it_equals(picture_site: tuple) -> None:
    """Ghost clipping keeps no per-sample gradients to add canaries to: the audit checks that
    its clipped DP-SGD gradient is hooks' on the site's data, then audits hooks."""
    config, data = picture_site
    ghost = _with(config, privacy={"grad_sample_mode": "ghost"})
    weights = model_weights(build_model(data=ghost.data, model=ghost.model, seed=0))
    assert ghost_matches_hooks(ghost, data, weights) <= GHOST_TOLERANCE
    full = RunConfig.model_validate({"training": {"batch_size": 20},  # all three encoders
                                     "privacy": {"grad_sample_mode": "ghost"}})
    assert ghost_matches_hooks(full, data, model_weights(build_model(
        data=full.data, model=full.model, seed=0))) <= GHOST_TOLERANCE
    audit = run_canary_audit(config=ghost, data=data)
    assert audit.mode == "ghost" and audit.audited_mode == "hooks (= ghost)"
    _check(audit, sound=True)


@pytest.mark.parametrize("tamper", ["none", "per-copy-clipping"])
def test_augmentation_multiplicity_is_audited(picture_site: tuple, tamper: str) -> None:
    """K = 8 copies a canary, their mean the Dirac: clipping the mean keeps the claim;
    clipping each copy (sensitivity 8·C) is caught."""
    config, data = picture_site  # half the site at half the batch: the same q and steps
    eight = _with(config, training={"augmentation_multiplicity": 8, "batch_size": 10})
    audit = run_canary_audit(config=eight, data=data.subset(np.arange(30)), tamper=tamper)
    assert audit.multiplicity == 8
    _check(audit, sound=tamper == "none")


@pytest.mark.parametrize("tamper", ["none", "no-clipping"])
def test_pretrained_features_are_audited(picture_site: tuple, tamper: str) -> None:
    """``model.encoders = "pretrained"``: the model takes frozen features (random stand-ins of
    the encoders' widths here; what DP-SGD trains is the same) and trains projections."""
    config, data = picture_site
    config = _with(config, model={"encoders": "pretrained", "modalities": ("image", "text")})
    rng = np.random.default_rng(0)
    features = replace(data, images=rng.normal(size=(len(data), FEATURE_SIZES["image"])).astype(
        np.float32), tokens=rng.normal(size=(len(data), FEATURE_SIZES["text"])).astype(
        np.float32))
    _check(run_canary_audit(config=config, data=features, tamper=tamper),
           sound=tamper == "none")


def test_canaries_sit_where_the_site_data_moves_nothing(audit_site: tuple) -> None:
    """On a site without notes or signals, no sample moves the text or audio encoder: the
    canaries go there (and into unused embedding rows) before any coordinate data moves."""
    config, data = audit_site
    pictures = replace(data, masks=data.masks & np.array([True, False, False]))
    model = build_model(data=config.data, model=config.model, seed=0)
    activity = data_activity(model, pictures.subset(np.arange(40)))
    names = [(name, p.numel()) for name, p in trainable(model)]
    offset = 0
    for name, size in names:
        block = activity[offset:offset + size]
        if name.startswith(("encoders.text.", "encoders.audio.")):
            assert not block.any(), name
        offset += size
    assert activity.any()
    coordinates, unmoved = canary_coordinates(activity, 50, np.random.default_rng(0))
    assert unmoved == 50 and not activity[coordinates].any()
    few = np.array([0.0, 3.0, 1.0, 2.0])
    chosen, unmoved = canary_coordinates(few, 3, np.random.default_rng(0))
    assert unmoved == 1 and sorted(chosen) == [0, 2, 3]
    with pytest.raises(ValueError, match="per-copy-clipping"):
        run_canary_audit(config=config, data=data, tamper="per-copy-clipping")
