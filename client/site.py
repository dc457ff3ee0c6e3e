"""Where a site's data, state and policy live, from the node's configuration.

Deployment: node config ``data-dir`` (required), ``state-dir`` (default ``DATA_DIR/.fedmm``, for
read-only data folders point it elsewhere), ``policy-file`` (default ``DATA_DIR/policy.toml`` when
present, else the strict built-in policy) and ``site-id`` (default: the data folder's name).
Simulation: the runner hands the ClientApp the list of site folders and the node's
``partition-id`` picks one; the other defaults are the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.policy import SitePolicy, load_policy
from common.config import ConfigError

POLICY_NAME = "policy.toml"
STATE_DIR_NAME = ".fedmm"


@dataclass(frozen=True)
class Site:
    site_id: str
    data_dir: Path
    state_dir: Path
    policy: SitePolicy
    simulated: bool


def _data_dir(node_config: Mapping[str, Any], site_dirs: Sequence[str] | None) -> Path:
    if site_dirs is not None:
        return Path(site_dirs[int(node_config["partition-id"])])
    if "data-dir" in node_config:
        return Path(str(node_config["data-dir"]))
    raise ConfigError("node config has no 'data-dir'; start the client with --data SITE_DIR")


def state_dir_of(node_config: Mapping[str, Any], site_dirs: Sequence[str] | None) -> Path:
    """Where the site keeps its ledger, audit log and cache (without reading its policy)."""
    data_dir = _data_dir(node_config, site_dirs)
    return Path(str(node_config.get("state-dir", data_dir / STATE_DIR_NAME)))


def resolve_site(node_config: Mapping[str, Any], site_dirs: Sequence[str] | None) -> Site:
    data_dir = _data_dir(node_config, site_dirs)
    policy_file = node_config.get("policy-file")
    if policy_file:
        policy_path: Path | None = Path(str(policy_file))
    elif (data_dir / POLICY_NAME).is_file():
        policy_path = data_dir / POLICY_NAME
    else:
        policy_path = None
    site_id = str(node_config.get("site-id") or data_dir.name)
    return Site(site_id, data_dir, state_dir_of(node_config, site_dirs), load_policy(policy_path),
                site_dirs is not None)
