"""The layout of a site's state folder: everything a hospital keeps about its runs.

By default ``SITE_DIR/.fedmm`` (``--state-dir`` moves it, e.g. for read-only data). Every file
name inside it is defined here and nowhere else::

    privacy_ledger.json      every DP-SGD step this site ran, per model (client/ledger.py)
    audit.jsonl              one line per message the site sent (client/audit_log.py)
    cache/                   preprocessed site arrays, row files read a batch at a time
                             (common/sitecache.py, common/rowstore.py)
    features/                frozen pretrained features (common/features.py)
    grad_sample_mode.json    the per-sample-gradient mode measured here (client/grad_sample.py)
    noise_multipliers.json   σ found for a budget (common/privacy.py)
    validation_split.key     the secret that orders its validation split (client/validation.py)
    node_config.toml         what the SuperNode hands the ClientApp (client/launcher.py)
    logs/supernode.log       Flower's SuperNode log
    flwr/                    the SuperNode's FLWR_HOME
    runtime/                 0700: the SuperNode's runtime socket (api.sock), the
                             executor's doorbell (bell) and the SuperExec secret
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_DIR_NAME = ".fedmm"
# next to the runtime socket, wherever that is (client/doorbell.py); shorter than its name
RUNTIME_BELL_NAME = "bell"


@dataclass(frozen=True)
class SiteState:
    root: Path

    @classmethod
    def of(cls, data_dir: Path, state_dir: Path | None = None) -> SiteState:
        """The state folder of the site in ``data_dir`` (``state_dir`` when given)."""
        return cls(Path(state_dir) if state_dir is not None
                   else Path(data_dir) / STATE_DIR_NAME)

    @property
    def ledger(self) -> Path:
        return self.root / "privacy_ledger.json"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def feature_dir(self) -> Path:
        return self.root / "features"

    @property
    def grad_sample_memo(self) -> Path:
        return self.root / "grad_sample_mode.json"

    @property
    def noise_memo(self) -> Path:
        return self.root / "noise_multipliers.json"

    @property
    def split_key(self) -> Path:
        return self.root / "validation_split.key"

    @property
    def node_config(self) -> Path:
        return self.root / "node_config.toml"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def supernode_log(self) -> Path:
        return self.logs_dir / "supernode.log"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr"

    @property
    def runtime_dir(self) -> Path:
        return self.root / "runtime"

    @property
    def runtime_socket(self) -> Path:
        return self.runtime_dir / "api.sock"

    @property
    def superexec_secret(self) -> Path:
        return self.runtime_dir / "superexec.secret"
