"""``python -m client.supernode [--idle-poll S] ARGS``: Flower's ``flower-supernode``, idling at a
shorter poll (``fedmm client --idle-poll S``).

Flower 1.42's SuperNode loop pulls a message, and when there is none sleeps a fixed 3 s
(``flwr/supernode/start_client_internal.py``); a ClientApp's reply is pushed on the loop's next
pass. So each message waits on average 1.5 s before it is picked up and its reply as long again
before it leaves, 3 s of idle waiting per message round trip, five times a securely aggregated
round. This entry point gives that loop a ``time`` module whose ``sleep`` is capped at
``IDLE_POLL_S``, then runs ``flower-supernode`` with the same arguments. Nothing else changes: the
loop's other sleeps are already shorter than the cap. Should Flower's loop no longer look as
expected, the SuperNode runs unpatched and says so in its log.
"""

from __future__ import annotations

import sys
import time
import types

IDLE_POLL_S = 0.5
# Each idle poll is a TLS request signed with the hospital's key that the SuperLink verifies:
# 20 hospitals at 0.5 s are 40 requests a second. Measured here with all of them on one 2-core
# machine, that starved their training; so ``fedmm client`` uses Flower's 3 s unless asked
# (``--idle-poll``), for deployments where latency matters more than the server's load.


def capped_time(limit_s: float) -> types.SimpleNamespace:
    """The ``time`` module's functions, with ``sleep(s)`` sleeping ``min(s, limit_s)``."""
    functions = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    return types.SimpleNamespace(**{**functions,
                                    "sleep": lambda seconds: time.sleep(min(seconds, limit_s))})


def patch_idle_poll(limit_s: float = IDLE_POLL_S) -> bool:
    """Cap the SuperNode loop's sleeps at ``limit_s``; False (and unpatched) if the loop no
    longer uses the ``time`` module as expected."""
    import flwr.supernode.start_client_internal as loop

    if getattr(loop, "time", None) is not time:
        return False
    loop.time = capped_time(limit_s)  # type: ignore[attr-defined]
    return True


def main() -> None:
    """``python -m client.supernode [--idle-poll S] FLOWER-SUPERNODE-ARGS``."""
    import logging

    from flwr.supernode.cli.flower_supernode import flower_supernode

    limit = IDLE_POLL_S
    if len(sys.argv) > 2 and sys.argv[1] == "--idle-poll":
        limit = float(sys.argv[2])
        del sys.argv[1:3]
    if not patch_idle_poll(limit):
        logging.getLogger("fedmm").warning(
            "flower-supernode's poll loop changed; running it unpatched (3 s idle poll)")
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
