"""``python -m client.supernode --runtime-socket PATH [--idle-poll S] ARGS``: Flower's
``flower-supernode`` with its runtime API on a Unix socket, optionally idling at a shorter poll.

**Runtime socket.** In process isolation the SuperNode serves its runtime API (tasks, their
inputs, the node's context with its secure-aggregation secrets) for an executor to pull; Flower
binds it to a TCP port on 127.0.0.1, which every account on the machine can reach and any of
them can occupy first. Here it listens on a Unix socket instead, at ``PATH`` inside the state
folder's 0700 ``runtime/`` folder (:class:`common.site_state.SiteState`), so only the hospital's
own account can connect at all; the executor (:mod:`client.executor`) also signs its task
requests with the SuperExec secret. If Flower's start-up no longer looks as expected the
SuperNode does not start (it never falls back to TCP).

**Bundles.** The SuperNode parses a run's bundle only when it is this installation's
(:func:`guard_bundle_config`).

**Idle poll.** Flower 1.42's SuperNode loop pulls a message, and when there is none sleeps a
fixed 3 s (``flwr/supernode/start_client_internal.py``); ``--idle-poll S`` gives that loop a
``time`` module whose ``sleep`` is capped at ``S``. Should that loop no longer look as expected,
the SuperNode runs with Flower's poll and says so in its log.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import types
from pathlib import Path
from typing import Any

# Each idle poll is a TLS request signed with the hospital's key that the SuperLink verifies:
# 20 hospitals at 0.5 s are 40 requests a second. Measured here with all of them on one 2-core
# machine, that starved their training; so ``fedmm client`` uses Flower's 3 s unless asked
# (``--idle-poll``), for deployments where latency matters more than the server's load.
IDLE_POLL_S = 0.5


class PatchError(RuntimeError):
    """Flower's SuperNode no longer has the start-up this module adapts."""


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


def patch_runtime_socket(path: Path) -> None:
    """Serve the SuperNode's runtime API on the Unix socket ``path`` instead of TCP."""
    import importlib

    # the module, not the function of the same name the package exports
    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")
    if not callable(getattr(cli, "_start_supernode_http_api", None)):
        raise PatchError("flower-supernode has no _start_supernode_http_api; this fedmm "
                         "does not support the installed Flower")

    def start_on_socket(config: Any, state_factory: Any) -> tuple[Any, threading.Thread]:
        import uvicorn
        from flwr.supernode.main import create_app

        server = uvicorn.Server(uvicorn.Config(
            app=create_app(state_factory=state_factory,
                           superexec_auth_secret=config.superexec_auth_secret),
            uds=str(path), reload=False, access_log=False, workers=1, log_level="warning"))
        # a daemon: should Flower's exit handler be cut short (a second SIGINT arrives while
        # it runs, as when a restarted server no longer knows this node), the process still
        # ends, and `fedmm client` starts it again
        thread = threading.Thread(target=server.run, name="supernode-runtime-socket",
                                  daemon=True)
        thread.start()
        while thread.is_alive() and not server.started:
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError(f"the SuperNode's runtime socket {path} could not be opened")
        return server, thread

    cli._start_supernode_http_api = start_on_socket  # type: ignore[attr-defined]


def guard_bundle_config() -> None:
    """Flower's SuperNode reads a run's ``pyproject.toml`` from its bundle (for the run's
    config) before any executor sees the run; a hostile bundle could make it inflate gigabytes
    or raise. It now reads only this installation's bundle (checked with bounded reads,
    :func:`common.app_bundle.check_bundle`); a foreign run gets an empty config, and the
    executor refuses it."""
    import flwr.supernode.start_client_internal as loop

    from common.app_bundle import ForeignAppError, check_bundle

    original = loop.get_fused_config_from_fab

    def guarded(fab_content: bytes, run: Any) -> Any:
        try:
            check_bundle(fab_content)
        except ForeignAppError:
            return {}
        return original(fab_content, run)

    loop.get_fused_config_from_fab = guarded  # type: ignore[attr-defined]


def main() -> None:
    """``python -m client.supernode --runtime-socket PATH [--idle-poll S] SUPERNODE-ARGS``."""
    import logging

    from flwr.supernode.cli.flower_supernode import flower_supernode

    arguments = sys.argv[1:]
    socket_path: Path | None = None
    limit: float | None = None
    while arguments[:1] and arguments[0] in ("--runtime-socket", "--idle-poll"):
        flag, value, arguments = arguments[0], arguments[1], arguments[2:]
        if flag == "--runtime-socket":
            socket_path = Path(value)
        else:
            limit = float(value)
    if socket_path is None:
        raise SystemExit("client.supernode: --runtime-socket PATH is required")
    patch_runtime_socket(socket_path)
    guard_bundle_config()
    if limit is not None and not patch_idle_poll(limit):
        logging.getLogger("fedmm").warning(
            "flower-supernode's poll loop changed; running it unpatched (3 s idle poll)")
    sys.argv = ["flower-supernode", *arguments]
    code: int | str | None = 1
    try:
        flower_supernode()
        code = 0
    except SystemExit as error:  # flwr_exit
        code = error.code
    except BaseException:  # an interrupted exit handler: still exit, and say why
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)  # never wait on Flower's threads


if __name__ == "__main__":
    main()
