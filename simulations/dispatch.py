"""Messages handed to the simulated hospitals within milliseconds of the server sending them.

Flower 1.42's simulation engine moves the server's messages to the Ray actors from a thread
that asks the run's state for new ones, then waits a fixed 0.1 s
(``flwr/server/superlink/fleet/vce/vce_api.py``, ``add_messages_to_queue``). A securely
aggregated round is five message exchanges, each of a few milliseconds of work, so that wait
was most of every exchange but the training. :func:`patch_message_dispatch` gives the engine
the same loop with a backing-off wait instead: 5 ms after a message, doubling to the engine's
0.1 s while none comes (an idle simulation asks no more often than before).
"""

from __future__ import annotations

import inspect
import threading
from queue import Queue
from typing import Any

FIRST_WAIT_S = 0.005
LONGEST_WAIT_S = 0.1  # the engine's own wait
EXPECTED_PARAMETERS = ["state", "queue", "nodes_mapping", "f_stop"]


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: dict[int, Any],
                          f_stop: threading.Event) -> None:
    """Flower's loop (each node's next message from the run's state into the actors' queue),
    waiting ``FIRST_WAIT_S`` after a round of asks that found a message, doubling to
    ``LONGEST_WAIT_S`` while none does."""
    wait = LONGEST_WAIT_S
    while not f_stop.is_set():
        found = False
        for node_id in nodes_mapping:
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
                found = True
        wait = FIRST_WAIT_S if found else min(2 * wait, LONGEST_WAIT_S)
        f_stop.wait(wait)


def patch_message_dispatch() -> bool:
    """Install :func:`add_messages_to_queue` in Flower's simulation engine; False (Flower's own
    loop runs, only slower) when the engine no longer has the loop this replaces."""
    from flwr.server.superlink.fleet.vce import vce_api

    original = getattr(vce_api, "add_messages_to_queue", None)
    if original is add_messages_to_queue:
        return True
    if not callable(original) or list(inspect.signature(original).parameters) != \
            EXPECTED_PARAMETERS:
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue  # type: ignore[attr-defined]
    return True
