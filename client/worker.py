"""A warm training process for one hospital.

Flower runs each message in a fresh ``flwr-clientapp`` process, so every training or evaluation
message would pay torch's and Opacus's imports (about 5 s of CPU here) before any work.
``fedmm client`` therefore runs a :class:`TrainingWorker` beside its SuperNode: it imports them
once and does the hospital's training and evaluation; the ClientApp process hands it the job
(plain data: the global weights, the site, the run config) and sends the reply itself.

The worker listens on a Linux abstract Unix socket named after the state folder. Both ends prove
knowledge of a 32-byte key in ``STATE_DIR/worker.key`` (mode 0600, written when the worker
starts) before anything is exchanged (``multiprocessing.connection``'s HMAC challenge, both
ways), so only processes of the hospital's own account can use it. When no worker answers, the
ClientApp does the job itself (simulations never use one). The worker thread runs at the lowest
CPU priority.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

KEY_NAME = "worker.key"
log = logging.getLogger("fedmm.client")


class WorkerError(RuntimeError):
    """The worker cannot start (its state folder is served already), or failed a job with an
    error that could not travel back as itself."""


def worker_address(state_dir: Path) -> str:
    """The abstract socket address of the worker serving ``state_dir``."""
    name = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:24]
    return f"\0fedmm-worker-{name}"


def _write_key(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)


def _jobs() -> dict[str, Callable[..., Any]]:
    from client.local_round import evaluate_round, train_round

    return {"train": train_round, "evaluate": evaluate_round}


def _lowest_priority() -> None:
    """Nice 19 for this thread (Linux schedules threads separately): Flower's own processes,
    which must check in within 30 s of being started, and the hospital's other work come
    before training."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _warm_up() -> None:
    import opacus  # noqa: F401
    import torch  # noqa: F401

    import client.training  # noqa: F401
    import common.models  # noqa: F401
    _jobs()


class TrainingWorker:
    """Serves jobs one at a time in a background thread of the ``fedmm client`` process."""

    def __init__(self, state_dir: Path, *, threads: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.threads = threads or os.cpu_count() or 1
        self.key_path = self.state_dir / KEY_NAME
        self._listener: Listener | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        key = secrets.token_bytes(32)
        try:
            self._listener = Listener(worker_address(self.state_dir), family="AF_UNIX",
                                      authkey=key)
        except OSError as error:
            raise WorkerError(f"another fedmm client already serves {self.state_dir} "
                              f"({error.strerror}); stop it, or give this one its own "
                              "--state-dir") from None
        _write_key(self.key_path, key)
        self._thread = threading.Thread(target=self._serve, name="fedmm-worker", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        _lowest_priority()
        try:
            _warm_up()
        except Exception:  # each job will raise the same error to its caller
            log.exception("training worker: warm-up failed")
        listener = self._listener
        while listener is not None:
            try:
                connection = listener.accept()
            except (OSError, EOFError, AuthenticationError):  # closed, or failed the challenge
                listener = self._listener
                continue
            with connection:
                try:
                    self._answer(connection)
                except Exception:  # a broken request or caller must not stop the worker
                    log.exception("training worker: a request failed")

    def _answer(self, connection: Connection) -> None:
        kind, arguments = connection.recv()
        try:
            result = ("ok", _jobs()[kind](**arguments, threads=self.threads))
        except Exception as error:  # raised again in the caller, as if local
            result = ("raise", error)
        try:
            connection.send(result)
        except (OSError, EOFError):
            raise
        except Exception:  # an exception that does not pickle
            connection.send(("raise", WorkerError(f"{type(result[1]).__name__}: "
                                                  f"{result[1]}")))

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:  # only the worker that wrote the key removes it
            listener.close()
            self.key_path.unlink(missing_ok=True)


def call_worker(state_dir: Path, kind: str, **arguments: Any) -> tuple[bool, Any]:
    """``(True, result)`` when the hospital's worker did the job; ``(False, None)`` when no
    worker is running (the caller does the job itself). An exception the job raised in the
    worker is raised here."""
    key_path = Path(state_dir) / KEY_NAME
    try:
        key = key_path.read_bytes()
        connection = Client(worker_address(state_dir), family="AF_UNIX", authkey=key)
    except (FileNotFoundError, ConnectionRefusedError):
        return False, None
    except Exception as error:  # a stale key, a foreign listener: do not hand it the data
        log.warning("training worker at %s unusable (%s); training in this process",
                    state_dir, error)
        return False, None
    with connection:
        connection.send((kind, arguments))
        status, result = connection.recv()
    if status == "raise":
        raise result
    return True, result
