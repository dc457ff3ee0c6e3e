"""What the server makes of the sites' replies: plain data the round loop can sum and log."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message

from common.serialization import Weights, from_record


@dataclass(frozen=True)
class SiteReply:
    node: int
    site_id: str
    status: str
    code: str
    reason: str
    metrics: dict[str, Any]
    record: dict[str, str]
    update: Weights | None
    content: Any = field(default=None, compare=False, repr=False)

    def failed(self, code: str, reason: str, *, status: str = "failed") -> SiteReply:
        return SiteReply(self.node, self.site_id, status, code, reason, self.metrics,
                         self.record, None, self.content)


def no_reply(node: int, site_id: str) -> SiteReply:
    return SiteReply(node, site_id, "failed", "no-reply", "no reply before the round timeout",
                     {}, {}, None)


def parse_reply(reply: Message, site_of: Mapping[int, str]) -> SiteReply:
    node = reply.metadata.src_node_id
    fallback = site_of.get(node, f"node-{node}")
    if reply.has_error():
        return SiteReply(node, fallback, "failed", "client-error", reply.error.reason[:300], {},
                         {}, None)
    content = reply.content
    record = dict(content["status"]) if "status" in content else {}
    metrics = dict(content["metrics"]) if "metrics" in content else {}
    update = from_record(content["arrays"]) if "arrays" in content else None
    return SiteReply(node, str(record.get("site-id", fallback)),
                     str(record.get("status", "failed")),
                     str(record.get("code", "")), str(record.get("reason", "")), metrics,
                     {k: str(v) for k, v in record.items()}, update, content)


POLL_INTERVAL_S = 0.2


def send_and_receive(grid: Any, messages: Sequence[Message], *, timeout: float) -> list[Message]:
    """``Grid.send_and_receive``, but asking for replies every 0.2 s: Flower's deployment grid
    waits 3 s between asks, which adds up to 3 s to every message exchange of every round."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        arrived = list(grid.pull_messages(pending))
        replies += arrived
        pending -= {reply.metadata.reply_to_message_id for reply in arrived}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    return replies


def send_and_parse(grid: Any, nodes: Sequence[int], kind: str, *, config: Mapping[str, Any],
                   arrays: Weights | None, extra: Mapping[int, Mapping[str, Any]] | None,
                   timeout: float, group_id: str, site_of: Mapping[int, str]) -> list[SiteReply]:
    """Send ``kind`` with the ``config`` record (plus ``extra`` records per node) to ``nodes``
    through a Flower ``Grid``; one reply per node (``no-reply`` for the silent ones), sorted by
    site id so that sums over replies are reproducible."""
    from flwr.app import ConfigRecord, RecordDict

    from common.serialization import to_record

    base = ConfigRecord(dict(config))
    payload = to_record(arrays) if arrays is not None else None
    messages = []
    for node in nodes:
        content = RecordDict({"config": base, **(extra or {}).get(node, {})})
        if payload is not None:
            content["arrays"] = payload
        messages.append(Message(content, dst_node_id=node, message_type=kind,
                                group_id=group_id))
    parsed = [parse_reply(r, site_of) for r in send_and_receive(grid, messages, timeout=timeout)]
    answered = {p.node for p in parsed}
    parsed += [no_reply(node, site_of.get(node, f"node-{node}"))
               for node in nodes if node not in answered]
    return sorted(parsed, key=lambda p: p.site_id)


# (nodes, message type, arrays or None, per-node extra records) → one reply per node
Exchange = Callable[[Sequence[int], str, Weights | None, Mapping[int, Mapping[str, Any]] | None],
                    list[SiteReply]]


@dataclass
class TrainOutcome:
    """One training round's replies and, when enough sites contributed, the mean update."""

    replies: list[SiteReply]
    mean: Weights | None
    contributors: int
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
