"""How a ClientApp handler reads its request and shapes its reply.

Every reply carries a ``status`` record: ``ok``, ``refused`` (a policy rule, with its code) or
``failed`` (bad data, unreadable ledger, diverged training, a broken protocol step), with a
one-line reason, and the site's id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.ledger import LedgerError
from client.site import Site, resolve_site
from common.config import ConfigError, RunConfig
from common.features import MissingExtraError
from common.sitedata import SiteDataError

EXPECTED_FAILURES = (SiteDataError, ConfigError, LedgerError, MissingExtraError)


def status_record(site_id: str, status: str, *, code: str = "", reason: str = "",
                  **extra: str) -> ConfigRecord:
    return ConfigRecord({"site-id": site_id, "status": status, "code": code, "reason": reason,
                         **extra})


def reply(msg: Message, **records: Any) -> Message:
    return Message(RecordDict(records), reply_to=msg)


def failure_code(error: Exception) -> str:
    return ("bad-ledger" if isinstance(error, LedgerError)
            else "bad-config" if isinstance(error, ConfigError) else "bad-data")


def failure(msg: Message, site_id: str, error: Exception) -> Message:
    return reply(msg, status=status_record(site_id, "failed", code=failure_code(error),
                                           reason=str(error)))


def read_request(msg: Message, context: Context,
                 site_dirs: Sequence[str] | None) -> tuple[Site, RunConfig]:
    """The site this node serves and the run configuration the message carries."""
    site = resolve_site(context.node_config, site_dirs)
    return site, RunConfig.from_json(str(msg.content["config"]["run-config"]))


def site_label(context: Context, site_dirs: Sequence[str] | None) -> str:
    """The site's name for error replies, even when its policy or data cannot be read."""
    config = context.node_config
    if site_dirs is not None:
        return Path(site_dirs[int(config["partition-id"])]).name
    return str(config.get("site-id") or Path(str(config.get("data-dir", "unknown-site"))).name)
