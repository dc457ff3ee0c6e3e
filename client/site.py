"""Where a site's data, state and policy live, from the node's configuration.

Deployment: node config ``data-dir`` (required), ``state-dir`` (default ``DATA_DIR/.fedmm``, for
read-only data folders point it elsewhere), ``policy-file`` (default ``DATA_DIR/policy.toml`` when
present, else the strict built-in policy) and ``site-id`` (default: the data folder's name);
``fedmm client`` writes them (:func:`node_config`). Simulation: the runner hands the ClientApp the
list of site folders and the node's ``partition-id`` picks one; the other defaults are the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.policy import SitePolicy, load_policy
from common.config import ConfigError
from common.site_state import SiteState

POLICY_NAME = "policy.toml"
# The node config keys (the contract between `fedmm client` and the ClientApp).
DATA_DIR = "data-dir"
STATE_DIR = "state-dir"
POLICY_FILE = "policy-file"
SITE_ID = "site-id"
PARTITION_ID = "partition-id"  # Flower's, in simulations


@dataclass(frozen=True)
class Site:
    site_id: str
    data_dir: Path
    state: SiteState
    policy: SitePolicy
    simulated: bool

    @property
    def state_dir(self) -> Path:
        return self.state.root


def node_config(*, data_dir: Path, state_dir: Path, policy_file: Path | None = None,
                site_id: str | None = None) -> dict[str, str]:
    """What a SuperNode hands the ClientApp for this site."""
    values = {DATA_DIR: str(data_dir), STATE_DIR: str(state_dir)}
    if policy_file is not None:
        values[POLICY_FILE] = str(policy_file)
    if site_id:
        values[SITE_ID] = site_id
    return values


def _data_dir(node_config: Mapping[str, Any], site_dirs: Sequence[str] | None) -> Path:
    if site_dirs is not None:
        return Path(site_dirs[int(node_config[PARTITION_ID])])
    if DATA_DIR in node_config:
        return Path(str(node_config[DATA_DIR]))
    raise ConfigError(f"node config has no '{DATA_DIR}'; start the client with --data SITE_DIR")


def site_state_of(node_config: Mapping[str, Any], site_dirs: Sequence[str] | None) -> SiteState:
    """Where the site keeps its ledger, audit log and caches (without reading its policy)."""
    state_dir = node_config.get(STATE_DIR)
    return SiteState.of(_data_dir(node_config, site_dirs),
                        Path(str(state_dir)) if state_dir else None)


def site_label(node_config: Mapping[str, Any], site_dirs: Sequence[str] | None) -> str:
    """The site's name for error replies, even when its policy or data cannot be read."""
    if site_dirs is not None:
        return Path(site_dirs[int(node_config[PARTITION_ID])]).name
    return str(node_config.get(SITE_ID)
               or Path(str(node_config.get(DATA_DIR, "unknown-site"))).name)


def resolve_site(node_config: Mapping[str, Any], site_dirs: Sequence[str] | None) -> Site:
    data_dir = _data_dir(node_config, site_dirs)
    policy_file = node_config.get(POLICY_FILE)
    if policy_file:
        policy_path: Path | None = Path(str(policy_file))
    elif (data_dir / POLICY_NAME).is_file():
        policy_path = data_dir / POLICY_NAME
    else:
        policy_path = None
    site_id = str(node_config.get(SITE_ID) or data_dir.name)
    return Site(site_id, data_dir, site_state_of(node_config, site_dirs),
                load_policy(policy_path), site_dirs is not None)
