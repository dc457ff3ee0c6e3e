"""The site's own validation split: sized by its policy, ordered by its secret."""

from __future__ import annotations

import stat

import pytest

from client.site import resolve_site
from client.validation import simulated_site_split, site_split, split_seed
from common.config import ConfigError, RunConfig
from common.model_inputs import load_model_inputs


def split_ids(site_dir, config, **node):
    site = resolve_site({"data-dir": str(site_dir), **node}, None)
    data = load_model_inputs(site_dir, config, site.state)
    train, validation = site_split(site, config, data)
    return list(train.sample_ids), list(validation.sample_ids), site


def test_the_policy_sizes_the_split_and_the_run_config_cannot(site_copy) -> None:
    (site_copy / "policy.toml").write_text("validation_fraction = 0.5\n")
    train, validation, _ = split_ids(site_copy, RunConfig())
    assert len(validation) == 30 and not set(train) & set(validation)
    with pytest.raises(ConfigError, match="validation_fraction"):
        RunConfig.from_json('{"data": {"validation_fraction": 0.01}}')


def test_the_order_comes_from_a_secret_made_once(site_copy, tmp_path) -> None:
    config = RunConfig()
    first = split_ids(site_copy, config)
    again = split_ids(site_copy, config.model_copy(update={"model_id": "another"}))
    assert first[:2] == again[:2]  # the same patients in validation, whatever the run
    key = first[2].state.split_key
    assert key.stat().st_size == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    elsewhere = split_ids(site_copy, config, **{"state-dir": str(tmp_path / "state")})
    assert elsewhere[1] != first[1]  # another secret, another split (almost surely)


def test_a_truncated_split_key_stops_with_what_to_do(site_copy) -> None:
    _, _, site = split_ids(site_copy, RunConfig())
    site.state.split_key.write_bytes(b"short")
    with pytest.raises(ConfigError, match="restore it from backup"):
        split_seed(site, RunConfig())


def test_simulated_sites_split_by_the_run_seed_as_pooled_baselines_do(demo_root) -> None:
    from client.site import Identities

    config = RunConfig()
    site_dir = demo_root / "site-02"
    site = resolve_site({"partition-id": 1}, [str(demo_root / "site-01"), str(site_dir)],
                        Identities.generate(2))
    data = load_model_inputs(site_dir, config)
    simulated = site_split(site, config, data)
    pooled = simulated_site_split(site_dir, config, data)
    assert simulated[1].sample_ids == pooled[1].sample_ids
    other = config.model_copy(update={"training": config.training.model_copy(
        update={"seed": 1})})
    assert simulated_site_split(site_dir, other, data)[1].sample_ids != \
        pooled[1].sample_ids
