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

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from client.site import state_dir_of
from common.atomic import append_line_durably
from common.config import ConfigError

AUDIT_LOG_NAME = "audit.jsonl"


def audit_entry(msg: Message, reply: Message) -> dict:
    from flwr.common.serde import message_to_proto

    payload = message_to_proto(reply).SerializeToString()
    config = msg.content.get("config", {})
    entry = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "run": str(config.get("run-id", "")), "round": int(config.get("round", 0)),
        "kind": msg.metadata.message_type, "status": "error", "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    if not reply.has_error():
        if "status" in reply.content:
            entry["status"] = str(reply.content["status"].get("status", ""))
        if "metrics" in reply.content and "epsilon" in reply.content["metrics"]:
            entry["epsilon"] = float(reply.content["metrics"]["epsilon"])
    return entry


def audit_log_mod(site_dirs: Sequence[str] | None) -> Mod:
    """A mod that appends the audit line for each reply to the site's state folder."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        try:
            state_dir = state_dir_of(context.node_config, site_dirs)
        except ConfigError:
            return reply  # no site folder to log into; the reply already says why
        append_line_durably(state_dir / AUDIT_LOG_NAME,
                            json.dumps(audit_entry(msg, reply), sort_keys=True))
        return reply

    return mod
