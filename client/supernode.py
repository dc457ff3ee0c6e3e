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

**Polling.** Flower 1.42's SuperNode loop pulls a message, and when there is none sleeps a
fixed 3 s; after pulling one it waits for the reply in steps of 0.5 s before pushing it
(``flwr/supernode/start_client_internal.py``). A secure round is five messages in quick
succession, so those sleeps were most of a round. The loop here gets a ``time`` module whose
``sleep`` backs off instead: 0.05 s after a message, doubling to 3 s (``--idle-poll S``: to
``S``), so a run's next message is picked up within a fraction of a second while an idle
hospital still polls every 3 s; and the wait for a reply (a local check) is 0.05 s. Each
message it queues rings the executor's doorbell (:mod:`client.doorbell`), which sleeps until
then. A message's objects that have not arrived yet are retried sooner
(:mod:`common.object_pulls`). Should that
loop no longer look as expected, the SuperNode runs with Flower's poll and says so in its log.
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

from client.doorbell import bell_path, ring
from common.object_pulls import quick_object_retries

# Each idle poll is a TLS request signed with the hospital's key that the SuperLink verifies:
# 20 hospitals polling every 0.5 s are 40 requests a second, which starved their training when
# all ran on one 2-core machine. So polls back off to Flower's 3 s between messages, and only
# the few after a message are quick.
IDLE_POLL_S = 3.0  # the slowest poll (Flower's)
FIRST_POLL_S = 0.05  # the first poll after a message
LOCAL_WAIT_S = 0.05  # the SuperNode's wait for a reply from its own executor


class PatchError(RuntimeError):
    """Flower's SuperNode no longer has the start-up this module adapts."""


class BackoffSleep:
    """``sleep`` for the SuperNode loop: idle polls back off from ``first_s`` (after each
    message, and on start: the server asks a hospital what it holds as soon as enough have
    connected) doubling to ``limit_s``; short local waits take ``LOCAL_WAIT_S``."""

    def __init__(self, *, first_s: float = FIRST_POLL_S, limit_s: float = IDLE_POLL_S) -> None:
        self.first_s, self.limit_s = min(first_s, limit_s), limit_s
        self.next_s = self.first_s

    def message_arrived(self) -> None:
        self.next_s = self.first_s

    def __call__(self, seconds: float) -> None:
        if seconds < 1.0:  # the loop's wait for a reply, a local check
            time.sleep(min(seconds, LOCAL_WAIT_S))
            return
        time.sleep(min(seconds, self.next_s))
        self.next_s = min(self.next_s * 2, self.limit_s)


def backoff_time(sleep: BackoffSleep) -> types.SimpleNamespace:
    """The ``time`` module's functions, with ``sleep`` replaced."""
    functions = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    return types.SimpleNamespace(**{**functions, "sleep": sleep})


def patch_polling(limit_s: float = IDLE_POLL_S, *, bell: Path | None = None) -> bool:
    """Give the SuperNode loop :class:`BackoffSleep` (polls no slower than ``limit_s``) and,
    with ``bell``, ring the executor's doorbell (:mod:`client.doorbell`) for each message it
    queues; False (and unpatched) if the loop no longer looks as expected."""
    import flwr.supernode.start_client_internal as loop

    pull = getattr(loop, "_pull_and_store_message", None)
    if getattr(loop, "time", None) is not time or not callable(pull):
        return False
    sleep = BackoffSleep(limit_s=limit_s)

    def pull_and_note(*args: Any, **kwargs: Any) -> Any:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            sleep.message_arrived()
            if bell is not None:
                ring(bell)
        return run_id

    loop.time = backoff_time(sleep)  # type: ignore[attr-defined]
    loop._pull_and_store_message = pull_and_note  # type: ignore[attr-defined]
    if callable(getattr(loop, "pull_objects", None)):
        loop.pull_objects = quick_object_retries(loop.pull_objects)  # type: ignore[attr-defined]
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
    if not patch_polling(IDLE_POLL_S if limit is None else limit,
                         bell=bell_path(socket_path)):
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
