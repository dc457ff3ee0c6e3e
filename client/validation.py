"""The site's own train/validation split: its size from the site policy, its order from a secret.

A server that could size the validation split, or knew how it is drawn, could shrink it to one
patient and read that patient out of the metrics (a one-hot output bias makes accuracy 1 exactly
when the label is the biased class). So the split belongs to the site: ``validation_fraction``
comes from its policy (the run configuration has no say), and the permutation from a 256-bit
secret created once in its state folder (``validation_split.key``). The same patients stay in
validation across rounds, runs and models, so nothing the server sends moves a patient from one
side to the other. Simulations derive the permutation from the run seed instead (reproducible;
research only).
"""

from __future__ import annotations

import os
from pathlib import Path

from client.policy import load_policy
from client.site import POLICY_NAME, Site
from common.atomic import create_once
from common.config import ConfigError, RunConfig
from common.randomness import KEY_BYTES, derive_seed
from common.sitedata import SiteData, split_train_validation


def _simulated_seed(config: RunConfig, site_id: str) -> int:
    return derive_seed(config.training.seed, site_id, "validation-split")


def split_seed(site: Site, config: RunConfig) -> int:
    if site.simulated:
        return _simulated_seed(config, site.site_id)
    secret = create_once(site.state.split_key, os.urandom(KEY_BYTES))
    if len(secret) != KEY_BYTES:
        raise ConfigError(f"{site.state.split_key}: not a {KEY_BYTES}-byte split key (was it "
                          "edited or truncated?); restore it from backup: a new key would "
                          "move patients between training and validation")
    return int.from_bytes(secret[:8], "big") >> 1


def site_split(site: Site, config: RunConfig, data: SiteData) -> tuple[SiteData, SiteData]:
    """(training rows, validation rows) of ``data`` at ``site``."""
    return split_train_validation(data, site.policy.validation_fraction,
                                  seed=split_seed(site, config))


def simulated_site_split(site_dir: Path, config: RunConfig,
                         data: SiteData) -> tuple[SiteData, SiteData]:
    """The split the simulated site in ``site_dir`` makes (for pooled baselines and
    benchmarks that must train on exactly the federated sites' training rows)."""
    policy_path = Path(site_dir) / POLICY_NAME
    policy = load_policy(policy_path if policy_path.exists() else None)
    return split_train_validation(data, policy.validation_fraction,
                                  seed=_simulated_seed(config, Path(site_dir).name))
