"""Flower's object pulls, retried sooner.

Flower 1.42 sends a message's metadata first and then its objects (one per array), and the
receiver pulls the objects at once. An object that has not arrived yet is retried after 1 s,
then 2 s, up to 10 s (``flwr.supercore.inflatable.inflatable_utils.pull_objects``), although
it arrives within milliseconds. :func:`quick_object_retries` wraps ``pull_objects`` to retry
after 0.05 s, doubling to 1 s, for as long as Flower's overall limit (2 h) allows: its 500 tries
an object would otherwise end after about 8 minutes of slow upload. The server
(:mod:`server.replies`) and the SuperNode (:mod:`client.supernode`) each put it in place of the
function their Flower module calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OBJECT_RETRY_S = 0.05  # the first retry of an object not there yet (Flower: 1 s)
OBJECT_RETRY_CAP_S = 1.0  # the longest wait between retries (Flower: 10 s)


def quick_object_retries(pull_objects: Callable[..., Any]) -> Callable[..., Any]:
    """``pull_objects`` with the quicker retries, unless the caller sets its own."""
    if getattr(pull_objects, "quick_retries", False):
        return pull_objects

    def pull(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("initial_backoff", OBJECT_RETRY_S)
        kwargs.setdefault("backoff_cap", OBJECT_RETRY_CAP_S)
        kwargs.setdefault("max_tries_per_object", None)  # Flower's max_time (2 h) still bounds
        return pull_objects(*args, **kwargs)

    pull.quick_retries = True  # type: ignore[attr-defined]
    return pull
