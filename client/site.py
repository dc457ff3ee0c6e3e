"""Where a site's data, state and policy live, from the node's configuration.

Deployment: node config ``data-dir`` (required), ``state-dir`` (default ``DATA_DIR/.fedmm``, for
read-only data folders point it elsewhere), ``policy-file`` (default ``DATA_DIR/policy.toml`` when
present, else the strict built-in policy), ``site-id`` (default: the data folder's name) and
``node-key`` (the hospital's node key, which also signs its secure-aggregation messages);
``fedmm client`` writes them (:func:`node_config`). The roster of peers it aggregates with is
the folder its policy names (``roster``, relative to the policy file). Simulation: the runner
hands the ClientApp the list of site folders and per-run keys (:class:`Identities`), and the
node's ``partition-id`` picks one; the other defaults are the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.policy import SitePolicy, load_policy
from common.config import ConfigError
from common.secagg.client import Guards
from common.secagg.identity import IdentityError, Roster, Signer
from common.site_state import SiteState

POLICY_NAME = "policy.toml"
# The node config keys (the contract between `fedmm client` and the ClientApp).
DATA_DIR = "data-dir"
STATE_DIR = "state-dir"
POLICY_FILE = "policy-file"
SITE_ID = "site-id"
NODE_KEY = "node-key"
PARTITION_ID = "partition-id"  # Flower's, in simulations


@dataclass(frozen=True)
class Identities:
    """Simulation: one signing key per virtual site (made for the run), and the roster of all."""

    private_keys: tuple[bytes, ...]
    public_keys: tuple[bytes, ...]

    @classmethod
    def generate(cls, sites: int) -> Identities:
        signers = [Signer.generate() for _ in range(sites)]
        return cls(tuple(s.private_pem for s in signers), tuple(s.public for s in signers))


@dataclass(frozen=True)
class Site:
    site_id: str
    data_dir: Path
    state: SiteState
    policy: SitePolicy
    simulated: bool
    signer: Signer | None = None
    roster: Roster | None = None
    roster_problem: str = ""  # why there is no roster
    roster_dir: Path | None = None  # the folder the policy names (deployments)

    @property
    def state_dir(self) -> Path:
        return self.state.root

    def guards(self) -> Guards:
        """What this site insists on in a secure round; :class:`IdentityError` when it has no
        key or no roster to check its peers against."""
        if self.signer is None:
            raise IdentityError(f"site {self.site_id} has no node key to sign with (node "
                                f"config '{NODE_KEY}'); start it with fedmm client --key")
        if self.roster is None:
            raise IdentityError(self.roster_problem or f"site {self.site_id} has no roster")
        return Guards(roster=self.roster, max_colluding=self.policy.max_colluding_sites,
                      min_neighbourhood=self.policy.min_neighbourhood
                      ).with_own(self.signer.public)


def node_config(*, data_dir: Path, state_dir: Path, policy_file: Path | None = None,
                site_id: str | None = None, node_key: Path | None = None) -> dict[str, str]:
    """What a SuperNode hands the ClientApp for this site."""
    values = {DATA_DIR: str(data_dir), STATE_DIR: str(state_dir)}
    if policy_file is not None:
        values[POLICY_FILE] = str(policy_file)
    if site_id:
        values[SITE_ID] = site_id
    if node_key is not None:
        values[NODE_KEY] = str(node_key)
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


def roster_folder(policy: SitePolicy, policy_path: Path | None, data_dir: Path) -> Path:
    """The folder of peers' ``.pub`` files: the policy's ``roster``, relative to the policy
    file (the data folder when the built-in policy applies)."""
    return (policy_path.parent if policy_path is not None else data_dir) / policy.roster


def _identity(node_config: Mapping[str, Any], folder: Path, identities: Identities | None
              ) -> tuple[Signer | None, Roster | None, str]:
    """The site's signing key, its roster, and why there is no roster when there is none."""
    if identities is not None:
        partition = int(node_config[PARTITION_ID])
        return (Signer(identities.private_keys[partition]),
                Roster.of(identities.public_keys), "")
    key = node_config.get(NODE_KEY)
    signer = Signer.from_file(Path(str(key))) if key else None
    try:
        return signer, Roster.from_folder(folder), ""
    except IdentityError as error:
        return signer, None, f"{error} (policy roster; fedmm keys roster adds them)"


def policy_path_of(data_dir: Path, given: Path | None) -> Path | None:
    """The site's policy file: ``given``, else ``DATA_DIR/policy.toml`` when present, else none
    (the strict built-in policy)."""
    if given is not None:
        return given
    default = data_dir / POLICY_NAME
    return default if default.is_file() else None


def resolve_site(node_config: Mapping[str, Any], site_dirs: Sequence[str] | None,
                 identities: Identities | None = None) -> Site:
    data_dir = _data_dir(node_config, site_dirs)
    policy_file = node_config.get(POLICY_FILE)
    policy_path = policy_path_of(data_dir, Path(str(policy_file)) if policy_file else None)
    site_id = str(node_config.get(SITE_ID) or data_dir.name)
    policy = load_policy(policy_path)
    folder = roster_folder(policy, policy_path, data_dir)
    signer, roster, problem = _identity(node_config, folder, identities)
    return Site(site_id, data_dir, site_state_of(node_config, site_dirs), policy,
                site_dirs is not None, signer, roster, problem,
                None if identities is not None else folder)
