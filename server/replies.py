"""What the server makes of the sites' replies: plain data the round loop can sum and log."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from flwr.app import Message

from common import wire
from common.object_pulls import quick_object_retries
from common.records import RecordError, from_records, read_optional
from common.serialization import Weights, from_record

T = TypeVar("T")


@dataclass(frozen=True)
class SiteReply:
    """One site's reply: its status and the records it carried (``content``)."""

    node: int
    site_id: str
    status: str
    code: str = ""
    reason: str = ""
    update: Weights | None = None
    content: Any = field(default=None, compare=False, repr=False)
    out_of_range: int | None = None  # plaintext: update elements beyond the declared range

    def failed(self, code: str, reason: str, *, status: str = "failed") -> SiteReply:
        return replace(self, status=status, code=code, reason=reason, update=None)

    def read(self, kind: type[T]) -> T | None:
        """The ``kind`` record the site sent, ``None`` when it sent none."""
        return None if self.content is None else read_optional(kind, self.content)


def no_reply(node: int, site_id: str) -> SiteReply:
    return SiteReply(node, site_id, "failed", wire.NO_REPLY, "no reply before the round timeout")


def parse_reply(reply: Message, site_of: Mapping[int, str]) -> SiteReply:
    node = reply.metadata.src_node_id
    fallback = site_of.get(node, f"node-{node}")
    if reply.has_error():
        return SiteReply(node, fallback, "failed", wire.CLIENT_ERROR, reply.error.reason[:300])
    content = reply.content
    try:
        status = from_records(wire.Status, content)
        update = from_record(content[wire.ARRAYS]) if wire.ARRAYS in content else None
    except (RecordError, KeyError, TypeError, ValueError) as error:
        return SiteReply(node, fallback, "failed", wire.MALFORMED,
                         f"malformed reply: {error}"[:300])
    return SiteReply(node, status.site_id or fallback, status.status, status.code,
                     status.reason, update, content)


POLL_INTERVAL_S = 0.2
FIRST_POLL_S = 0.01
IN_PROCESS_POLL_S = 0.05


def poll_limit_s(grid: Any) -> float:
    """The longest wait between asks for replies. Through a SuperLink each ask is a request:
    ``POLL_INTERVAL_S``. In simulation the grid reads the run's state in this process (a grid
    with a ``LinkState``, or a wrapper that forwards it): an ask for 64 sites' replies takes
    about 0.5 ms, so ``IN_PROCESS_POLL_S`` (1 % of a core while sites train). Read from
    ``sys.modules``, not imported: a grid holding a ``LinkState`` has loaded that package, and
    importing it in a deployment's ServerApp would load SQLAlchemy and Alembic (1.6 s, 500
    modules) for nothing."""
    linkstate = sys.modules.get("flwr.server.superlink.linkstate")
    in_process = linkstate is not None and isinstance(getattr(grid, "state", None),
                                                      linkstate.LinkState)
    return IN_PROCESS_POLL_S if in_process else POLL_INTERVAL_S


def patch_grid_object_pulls() -> bool:
    """Give the deployment grid :func:`quick_object_retries`; False if it no longer pulls
    objects through ``pull_objects``."""
    import flwr.superlink.grid.http_grid as grid

    if not callable(getattr(grid, "pull_objects", None)):
        return False
    grid.pull_objects = quick_object_retries(grid.pull_objects)  # type: ignore[attr-defined]
    return True


def send_and_receive(grid: Any, messages: Sequence[Message], *, timeout: float) -> list[Message]:
    """``Grid.send_and_receive``, but asking for replies after 0.01 s, doubling to every
    0.2 s (:func:`poll_limit_s`: in simulation, to every 0.05 s): Flower's deployment grid
    waits 3 s between asks, which adds up to 3 s to every message exchange of every round, and
    in simulation a wait doubling to 0.2 s rounded each exchange up to its next ask (0.15 s,
    0.31 s)."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    interval, limit = FIRST_POLL_S, poll_limit_s(grid)
    while pending:
        arrived = list(grid.pull_messages(pending))
        replies += arrived
        pending -= {reply.metadata.reply_to_message_id for reply in arrived}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(interval)
        interval = min(2 * interval, limit)
    return replies


def send_and_parse(grid: Any, nodes: Sequence[int], kind: str, *, config: wire.RoundConfig,
                   arrays: Weights | None, extra: Mapping[int, Mapping[str, Any]] | None,
                   timeout: float, group_id: str, site_of: Mapping[int, str]) -> list[SiteReply]:
    """Send ``kind`` with the round's ``config`` (plus ``extra`` records per node) to ``nodes``
    through a Flower ``Grid``; one reply per node (``no-reply`` for the silent ones), sorted by
    site id so that sums over replies are reproducible."""
    from flwr.app import RecordDict

    from common.records import to_records
    from common.serialization import to_record

    base = to_records(config)
    payload = to_record(arrays) if arrays is not None else None
    messages = []
    for node in nodes:
        content = RecordDict({**base, **(extra or {}).get(node, {})})
        if payload is not None:
            content[wire.ARRAYS] = payload
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
