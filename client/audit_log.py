"""The site's append-only audit log: one JSON line per message the site sends.

``SITE_STATE_DIR/audit.jsonl`` (next to the privacy ledger). Each line is written and fsynced
*before* the reply leaves the ClientApp:

    {"time": ISO-8601 UTC, "run": run id, "round": n, "kind": message type,
     "status": ok|refused|failed, "bytes": serialised reply size, "sha256": of those bytes,
     "epsilon": ε after this message (when the reply reports it)}

It is a Flower mod wrapped around every handler, so no handler can forget it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Sequence
from typing import Any, TypeVar

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from client.site import site_state_of
from common import wire
from common.atomic import append_line_durably
from common.config import ConfigError
from common.records import RecordError, read_optional
from common.site_state import SiteState

T = TypeVar("T")


def _read(kind: type[T], content: Any) -> T | None:
    try:
        return read_optional(kind, content)
    except RecordError:
        return None  # the log records what was sent, even a malformed reply


def audit_entry(msg: Message, reply: Message) -> dict:
    from flwr.common.serde import message_to_proto

    payload = message_to_proto(reply).SerializeToString()
    request = _read(wire.RoundConfig, msg.content)
    entry = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "run": request.run_id if request else "", "round": request.round if request else 0,
        "kind": msg.metadata.message_type, "status": "error", "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    if not reply.has_error():
        status = _read(wire.Status, reply.content)
        if status is not None:
            entry["status"] = status.status
        report = _read(wire.TrainReport, reply.content)
        if report is not None and report.epsilon is not None:
            entry["epsilon"] = report.epsilon
    return entry


def log_refused_run(state: SiteState, msg: Message, reply: Message, reason: str) -> dict:
    """The audit line of a run the executor refused (its bundle was not this fedmm)."""
    entry = {**audit_entry(msg, reply), "status": "refused-app", "reason": reason}
    append_line_durably(state.audit_log, json.dumps(entry, sort_keys=True))
    return entry


def read_audit_log(state: SiteState) -> list[dict[str, Any]]:
    """Every complete line of the site's audit log, oldest first; a torn or unreadable line
    (a crash mid-append) ends the list. No log yet: an empty list. Read as the live view reads
    (:func:`~common.dashboard_http.read_inside`): a link, a FIFO or a log past its size limit
    is an OSError."""
    from common.dashboard_http import json_lines, read_inside

    try:
        text = read_inside(state.root, state.audit_log).decode("utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for entry in json_lines(text):
        if not isinstance(entry, dict):
            break
        entries.append(entry)
    return entries


def audit_log_mod(site_dirs: Sequence[str] | None) -> Mod:
    """A mod that appends the audit line for each reply to the site's state folder."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        try:
            state = site_state_of(context.node_config, site_dirs)
        except ConfigError:
            return reply  # no site folder to log into; the reply already says why
        append_line_durably(state.audit_log, json.dumps(audit_entry(msg, reply), sort_keys=True))
        return reply

    return mod
