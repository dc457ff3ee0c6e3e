"""fedmm's own executor for the hospital's SuperNode: the installed ClientApp, and nothing else.

Flower's SuperNode runs in *process isolation* (``flower-supernode --isolation process``): it
fetches messages from the server and queues them as tasks, but runs no code itself. This
executor, a thread of the ``fedmm client`` process, takes each task from the SuperNode's runtime
API and

1. authenticates to it with the SuperExec secret (HMAC on ``acquire-task``; the secret is a 0600
   file in the state folder and the API listens on a Unix socket inside a 0700 folder, so no
   other account on the machine can reach either, :mod:`client.supernode`);
2. pulls the task's message, context and app bundle with the task's token (held in memory only:
   no process is started with it on its command line);
3. refuses the task unless the bundle is exactly this installation's fedmm bundle
   (:func:`common.app_bundle.check_bundle`): nothing of a foreign bundle is unpacked or run, the
   refusal is one line in the audit log and on the console, and an error reply goes back;
4. otherwise runs the installed :mod:`client.app` ClientApp in this process (torch and Opacus
   imported once, no process start per message) and pushes its reply and context back.

While a task runs a heartbeat keeps its token alive; should this process die, the SuperNode
lets the token lapse and answers the server with an error, as for a crashed ClientApp.

Between tasks it sleeps on the SuperNode's doorbell (:mod:`client.doorbell`), rung once per
queued message, and asks for a task only then, or every ``POLL_FALLBACK_S`` should a ring be
lost; without a bell (it could not be opened) it asks every ``POLL_IDLE_S``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.doorbell import Doorbell, bell_path, ring

log = logging.getLogger("fedmm.client")
POLL_IDLE_S = 0.5  # without a doorbell
POLL_FALLBACK_S = 2.0  # with one: a lost ring costs at most this
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"
RUNTIME_BASE_URL = "http://fedmm-runtime"  # the host name is unused: the socket is the address


@dataclass(frozen=True)
class Refusal:
    """A run this executor would not serve."""

    run_id: int
    message_type: str
    reason: str


def runtime_client(socket_path: Path, interceptors: list[Any]):
    """A Flower runtime API client speaking HTTP over the SuperNode's Unix socket. Plain
    HTTP on a socket file: no TLS context is built (loading the system's CA certificates cost
    ~0.1 s of CPU per client, twice per task)."""
    import httpx
    from flwr.supercore.runtime import RuntimeHttpClient

    client = RuntimeHttpClient(RUNTIME_BASE_URL, interceptors=interceptors, verify=False)
    client._client.close()
    client._client = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket_path), verify=False), timeout=30.0)
    return client


def _heartbeat(client) -> Callable[[], bool]:
    """Flower's task heartbeat, minus its SIGINT on failure (this process serves on)."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    def beat() -> bool:
        try:
            return bool(client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except (httpx.HTTPError, ValueError):
            return False

    return beat


class Executor:
    """Serves the SuperNode's ClientApp tasks one at a time until :meth:`stop`."""

    def __init__(self, *, socket_path: Path, secret: bytes, app_factory: Callable[[], Any],
                 on_refused: Callable[[Refusal, Any, Any], None],
                 on_error: Callable[[str], None] | None = None) -> None:
        self.socket_path, self.secret = Path(socket_path), secret
        self.app_factory, self.on_refused = app_factory, on_refused
        self._on_error = on_error or (lambda text: log.error("%s", text))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._app: Any = None
        self.served = 0

    def on_error(self, text: str) -> None:
        """Report, whatever the report's own fate: text from a task can be hostile."""
        try:
            self._on_error(text)
        except Exception:
            log.exception("executor: reporting an error failed")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="fedmm-executor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        ring(bell_path(self.socket_path))  # wakes the serving thread at once
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _serve(self) -> None:
        _lowest_priority()
        try:
            self._app = self.app_factory()  # imports torch and Opacus once, before any task
        except Exception as error:  # each task will report the same failure
            self.on_error(f"the ClientApp could not be loaded: {error}")
        doorbell = self._open_doorbell()
        acquirer = None
        try:
            while not self._stop.is_set():
                try:
                    acquirer = acquirer or self._acquirer()
                    if self.serve_one(acquirer):
                        continue  # a round's next message may be queued already
                except Exception as error:  # the SuperNode restarting, or a broken task
                    if not _is_connection_error(error):
                        self.on_error(f"executor: {type(error).__name__}: {error}"[:500])
                    acquirer = None
                if doorbell is not None:
                    doorbell.wait(POLL_FALLBACK_S)
                else:
                    self._stop.wait(POLL_IDLE_S)
        finally:
            if doorbell is not None:
                doorbell.close()

    def _open_doorbell(self) -> Doorbell | None:
        try:
            return Doorbell(bell_path(self.socket_path))
        except OSError as error:
            log.warning("executor: no doorbell (%s); asking for tasks every %.1f s", error,
                        POLL_IDLE_S)
            return None

    def _acquirer(self):
        from flwr.supercore.interceptors import (
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )

        return runtime_client(self.socket_path, [
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            SuperExecAuthHttpInterceptor(master_secret=self.secret,
                                         protected_methods={ACQUIRE_METHOD})])

    # -- one task ---------------------------------------------------------------------------
    def serve_one(self, acquirer) -> bool:
        """Acquire one ClientApp task and serve it; False when none is pending."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        answer = acquirer.AcquireTask(AcquireTaskRequest(
            supported_task_types=[TaskType.CLIENT_APP]))
        if not (answer.HasField("task") and answer.token):
            return False
        self._run_task(answer.token)
        self.served += 1
        return True

    def _run_task(self, token: str) -> None:
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        from common.app_bundle import ForeignAppError, check_bundle

        client = runtime_client(self.socket_path, [
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token)])
        heartbeat = HeartbeatSender(_heartbeat(client))
        heartbeat.start()
        context, sub_status, details = None, SubStatus.FAILED, "fedmm executor failed"
        try:
            message, context, run, fab = pull_task_input(client)
            try:
                check_bundle(fab.content)
            except ForeignAppError as refused:
                reply = Message(Error(ErrorCode.INVALID_FAB, f"fedmm refused this run: "
                                      f"{refused}"), reply_to=message)
                push_message(client, reply, context)
                context, details = None, f"refused: {refused}"  # its context stays as it was
                try:
                    self.on_refused(Refusal(run.run_id, message.metadata.message_type,
                                            str(refused)), message, reply)
                except Exception:
                    log.exception("executor: recording a refused run failed")
                return
            try:
                if self._app is None:
                    raise RuntimeError("the ClientApp could not be loaded (see above)")
                reply = self._app(message=message, context=context)
                sub_status, details = SubStatus.COMPLETED, ""
            except Exception as error:
                self.on_error(f"the ClientApp raised {type(error).__name__}: {error}"[:500])
                log.exception("ClientApp failure")
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      f"{type(error).__name__}: {error}"), reply_to=message)
                details = f"{type(error).__name__}: {error}"
            push_message(client, reply, context)
        finally:
            heartbeat.stop()
            with contextlib.suppress(Exception):
                push_task_output(client=client, context=context, sub_status=sub_status,
                                 details=details)
            client.close()


def _is_connection_error(error: Exception) -> bool:
    import httpx

    return isinstance(error, httpx.TransportError | ConnectionError | FileNotFoundError)


def _lowest_priority() -> None:
    """Nice 19 for this thread (Linux schedules threads separately): the SuperNode, which must
    keep its heartbeat with the server, and the hospital's other work come before training."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
