"""How a ClientApp handler reads its request and shapes its reply (:mod:`common.wire`).

Every reply carries a :class:`~common.wire.Status`: ``ok``, ``refused`` (a policy rule, with its
code) or ``failed`` (bad data, unreadable ledger, diverged training, a broken protocol step), with
a one-line reason and the site's id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import Context, Message, RecordDict

from client.ledger import LedgerError
from client.site import Identities, Site, resolve_site, site_label
from common import wire
from common.config import ConfigError, RunConfig
from common.features import MissingExtraError
from common.records import RecordError, from_records, to_records
from common.secagg.identity import IdentityError
from common.sitedata import SiteDataError

EXPECTED_FAILURES = (SiteDataError, ConfigError, LedgerError, MissingExtraError, RecordError,
                     IdentityError)


def reply(msg: Message, *messages: Any, **records: Any) -> Message:
    """A reply carrying each of ``messages`` (typed records) and any raw ``records``."""
    content: dict[str, Any] = {}
    for message in messages:
        content.update(to_records(message))
    return Message(RecordDict({**content, **records}), reply_to=msg)


def status(site_id: str, status: wire.SiteStatus, *, code: str = "",
           reason: str = "") -> wire.Status:
    return wire.Status(site_id=site_id, status=status, code=code, reason=reason)


def failure_code(error: Exception) -> str:
    if isinstance(error, LedgerError):
        return wire.BAD_LEDGER
    if isinstance(error, ConfigError | RecordError | IdentityError):
        return wire.BAD_CONFIG
    return wire.BAD_DATA


def failure(msg: Message, site_id: str, error: Exception) -> Message:
    return reply(msg, status(site_id, "failed", code=failure_code(error), reason=str(error)))


def label(context: Context, site_dirs: Sequence[str] | None) -> str:
    return site_label(context.node_config, site_dirs)


def read_request(msg: Message, context: Context, site_dirs: Sequence[str] | None,
                 identities: Identities | None = None
                 ) -> tuple[Site, wire.RoundConfig, RunConfig]:
    """The site this node serves, the message's round and the run configuration it carries."""
    site = resolve_site(context.node_config, site_dirs, identities)
    request = from_records(wire.RoundConfig, msg.content)
    return site, request, request.config()
