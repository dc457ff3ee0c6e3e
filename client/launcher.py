"""``fedmm client``: one hospital joins a federation through Flower's SuperNode.

1. Validates the site folder with the same checks training uses; unusable data never joins.
2. Makes the state folder the hospital's alone (owned by this account, mode 0700; refused when
   another account owns it), with a fresh SuperExec secret (0600) in its ``runtime/`` folder.
3. Checks the server's TLS certificate against the consortium CA before anything else (a clear
   message instead of endless retries when the CA is wrong).
4. Runs Flower's SuperNode in process isolation (:mod:`client.supernode`: its runtime API on a
   Unix socket in ``runtime/``) with TLS, the hospital's node key and the site folder in its
   node config, and starts it again whenever it stops (server restarted, network gone), so the
   hospital rejoins by itself. It runs no app code: the executor does (:mod:`client.executor`).
   Its log is ``STATE_DIR/logs/supernode.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import site
from common import processes
from common.atomic import atomic_write_bytes, atomic_write_text
from common.config import ConfigError
from common.file_safety import UnsafePathError, check_not_writable_by_others, own_private_folder
from common.pki import check_private_key
from common.secagg.identity import IdentityError
from common.site_state import SiteState

RESTART_PAUSE_S = 5.0
MAX_PAUSE_S = 60.0
NOT_REGISTERED = "Exit Code: 305"  # Flower: "Failed to activate SuperNode" (key unknown there)


class JoinError(RuntimeError):
    """The hospital cannot join; the message is one line for a person."""


@dataclass(frozen=True)
class ClientSettings:
    data_dir: Path
    server: str  # HOST:PORT
    ca: Path
    key: Path
    policy: Path | None = None
    state_dir: Path | None = None
    site_id: str | None = None
    registration_wait_s: float = 600.0  # keep trying this long while the key is unknown there
    idle_poll_s: float | None = None  # the slowest poll; None: Flower's 3 s (client/supernode.py)

    @property
    def state(self) -> SiteState:
        return SiteState(SiteState.of(self.data_dir, self.state_dir).root.resolve())

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.server.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise JoinError(f"--server {self.server}: expected HOST:PORT, e.g. "
                            "fl.example-hospital.org:9092")
        return host.strip("[]"), int(port)


def check_server_certificate(host: str, port: int, ca: Path, *, timeout: float = 10.0) -> bool:
    """True when the server's certificate verifies against ``ca`` for ``host``; False when the
    server cannot be reached yet. A certificate that does not verify raises :class:`JoinError`."""
    if not ca.is_file():
        raise JoinError(f"--ca {ca}: file not found; use the consortium's ca.crt")
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as error:
        raise JoinError(f"--ca {ca}: not a PEM certificate ({error.reason})") from None
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except ssl.SSLCertVerificationError as error:
        raise JoinError(f"TLS: the server at {host}:{port} is not trusted by {ca} "
                        f"({error.verify_message}); check --ca (the consortium's ca.crt) and "
                        "--server (a name in the server's certificate)") from None
    except ssl.SSLError as error:
        raise JoinError(f"TLS handshake with {host}:{port} failed ({error.reason}); is it a "
                        "fedmm server?") from None
    except OSError:
        return False


def node_config(settings: ClientSettings) -> dict[str, str]:
    """What the SuperNode hands the ClientApp (:func:`client.site.resolve_site` reads it)."""
    return site.node_config(
        data_dir=settings.data_dir.resolve(), state_dir=settings.state.root,
        policy_file=settings.policy.resolve() if settings.policy is not None else None,
        site_id=settings.site_id, node_key=settings.key.resolve())


def write_node_config(settings: ClientSettings) -> Path:
    values = node_config(settings)
    path = settings.state.node_config
    atomic_write_text(path, "".join(f"{key} = {json.dumps(value)}\n"
                                    for key, value in values.items()))
    return path


MAX_SOCKET_PATH = 107  # AF_UNIX: 108 bytes with the terminating NUL


def _own_private_folder(path: Path) -> None:
    try:
        own_private_folder(path)
    except UnsafePathError as error:
        raise JoinError(f"{error} (or give this hospital its own --state-dir)") from None


def check_site_paths(settings: ClientSettings) -> None:
    """The data folder, the policy, the roster, the key and the CA certificate: no other
    account can change them, or any folder above them (:mod:`common.file_safety`)."""
    policy = settings.policy or settings.data_dir / site.POLICY_NAME
    paths = [settings.data_dir, settings.key, settings.ca, *([policy] if policy.exists() else [])]
    with contextlib.suppress(ConfigError, IdentityError):  # reported where they are read
        roster = site.resolve_site(node_config(settings), None).roster_dir
        if roster is not None and roster.is_dir():
            paths += [roster, *sorted(roster.glob("*.pub"))]
    for path in paths:
        try:
            if path.exists():
                check_not_writable_by_others(path)
        except UnsafePathError as error:
            raise JoinError(str(error)) from None


def lock_state_folder(state: SiteState) -> int:
    """An exclusive lock on the state folder for this process's life (its descriptor);
    :class:`JoinError` when another ``fedmm client`` holds it."""
    import fcntl

    fd = os.open(state.runtime_dir / "client.lock",
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JoinError(f"another fedmm client already serves {state.root}; stop it, or give "
                        "this one its own --state-dir") from None
    return fd


def secure_state_folder(state: SiteState) -> tuple[Path, bytes, int]:
    """Make the state folder and its ``runtime/`` folder private to this account, lock it and
    write a fresh SuperExec secret; returns the runtime socket's path, the secret and the
    lock's descriptor."""
    root = state.root
    _own_private_folder(root)
    _own_private_folder(state.runtime_dir)
    lock = lock_state_folder(state)
    secret = secrets.token_bytes(32)
    atomic_write_bytes(state.superexec_secret, secret)  # 0600, O_EXCL|O_NOFOLLOW, renamed
    socket_path = state.runtime_socket
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:  # a deep state folder: a private
        socket_path = Path(tempfile.mkdtemp(prefix="fedmm-")) / socket_path.name  # 0700
    socket_path.unlink(missing_ok=True)
    return socket_path, secret, lock


def supernode_command(*, socket_path: Path, idle_poll_s: float | None = None) -> list[str]:
    """Flower's SuperNode through :mod:`client.supernode`: its runtime API on ``socket_path``;
    its polls back off after each message to ``idle_poll_s`` (default 3 s)."""
    command = [sys.executable, "-m", "client.supernode", "--runtime-socket", str(socket_path)]
    if idle_poll_s is not None:
        command += ["--idle-poll", str(idle_poll_s)]
    return command


def _warm_client_app() -> Any:
    from client.app import warm_client_app

    return warm_client_app()


class ClientLauncher:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.supernode: subprocess.Popen | None = None
        self.log_start = 0
        self.log_path = settings.state.supernode_log
        self.socket_path: Path | None = None
        self.secret = b""
        self._lock: int | None = None

    def prepare(self) -> tuple[Path, bytes]:
        """The private state folder and the SuperExec secret; returns (socket path, secret)."""
        check_site_paths(self.settings)
        try:
            self.socket_path, self.secret, self._lock = secure_state_folder(
                self.settings.state)
        except OSError as error:
            raise JoinError(f"{self.settings.state.root}: cannot prepare the state folder "
                            f"({error.strerror or error}); check its permissions") from None
        return self.socket_path, self.secret

    def check(self) -> bool:
        """Key and TLS checks; True when the server answered, False when not reachable yet."""
        try:
            check_private_key(self.settings.key)
        except ValueError as error:
            raise JoinError(str(error)) from None
        host, port = self.settings.host_port()
        return check_server_certificate(host, port, self.settings.ca)

    def start(self) -> None:
        host, port = self.settings.host_port()
        if self.socket_path is None:
            self.prepare()
        assert self.socket_path is not None
        check_site_paths(self.settings)  # again: nothing may have changed since
        _own_private_folder(self.settings.state.root)
        node_config = write_node_config(self.settings)
        command = [
            *supernode_command(socket_path=self.socket_path,
                               idle_poll_s=self.settings.idle_poll_s),
            "--superlink", f"{host}:{port}",
            "--root-certificates", str(self.settings.ca.resolve()),
            "--auth-supernode-private-key", str(self.settings.key.resolve()),
            "--node-config", str(node_config), "--isolation", "process",
            "--superexec-auth-secret-file", str(self.settings.state.superexec_secret)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = processes.flower_env(self.settings.state.flwr_home)
        descriptor = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                             | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(descriptor, "ab") as log:  # the child keeps its own copy of the handle
            self.supernode = processes.start(command, env=env, log=log)

    def _refused(self) -> bool:
        """Whether the SuperNode stopped because the server does not know this hospital's key."""
        assert self.supernode is not None
        with self.log_path.open("rb") as log:
            log.seek(self.log_start)
            log_text = log.read().decode(errors="replace")
        return self.supernode.returncode != 0 and NOT_REGISTERED in log_text

    def supervise(self, on_restart: Callable[[int], None] | None = None,
                  on_unregistered: Callable[[float], None] | None = None,
                  on_tick: Callable[[], None] | None = None) -> None:
        """Keep the SuperNode running: when it stops (the server went away, the connection
        broke), start it again after a pause, so the hospital rejoins when the server is back.
        A refused key is retried for ``registration_wait_s`` (a starting server registers its
        hospitals' keys a few seconds after it listens), then ends in :class:`JoinError`.
        Returns only through :class:`JoinError` or an exception from outside."""
        pause = RESTART_PAUSE_S
        refused_since: float | None = None
        while True:
            self.start()
            started = time.monotonic()
            assert self.supernode is not None
            while self.supernode.poll() is None:
                time.sleep(0.5)
                if on_tick is not None:
                    on_tick()
            ran_long = time.monotonic() - started > 60
            if self._refused():
                refused_since = refused_since if refused_since is not None else started
                if time.monotonic() - refused_since >= self.settings.registration_wait_s:
                    raise JoinError(
                        f"the server at {self.settings.server} refused this hospital's key "
                        f"({self.settings.key.name}): it is not registered there; send the "
                        "matching .pub file to the server operator (fedmm server --allow)")
                # back off: a SuperNode start costs seconds of CPU, and a starting server
                # with many hospitals is registering them all at once
                pause = min(MAX_PAUSE_S, max(2 * RESTART_PAUSE_S, pause * 2))
                if on_unregistered is not None:
                    on_unregistered(pause)
                time.sleep(pause)
                continue
            refused_since = None
            pause = RESTART_PAUSE_S if ran_long else min(MAX_PAUSE_S, pause * 2)
            if on_restart is not None:
                on_restart(self.supernode.returncode)
            time.sleep(pause)

    def serve(self, notify: Callable[[str], None]) -> None:
        """Join and serve until stopped from outside (Ctrl-C, SIGTERM) or a :class:`JoinError`:
        the executor runs the installed ClientApp, the SuperNode is kept running."""
        from client.audit_log import log_refused_run
        from client.executor import Executor, Refusal

        socket_path, secret = self.prepare()
        server, state = self.settings.server, self.settings.state

        def refused(refusal: Refusal, message: Any, reply: Any) -> None:
            log_refused_run(state, message, reply, refusal.reason)
            notify(f"refused run {refusal.run_id} ({refusal.message_type}): {refusal.reason}")

        def start_executor() -> Executor:
            executor = Executor(socket_path=socket_path, secret=secret,
                                app_factory=_warm_client_app, on_refused=refused,
                                on_error=lambda text: notify(f"error: {text}"))
            executor.start()  # imports torch and Opacus once, while the SuperNode connects
            return executor

        executor = start_executor()

        def watch() -> None:
            nonlocal executor
            if not executor.alive:
                notify("error: the executor stopped; starting it again")
                executor = start_executor()

        try:
            while not self.check():
                notify(f"server {server}: not reachable yet; trying again in 10 s")
                time.sleep(10)
            notify(f"server {server}: TLS certificate verified")
            notify(f"joining as a SuperNode; log: {self.log_path}")
            self.supervise(
                on_tick=watch,
                on_restart=lambda code: notify(
                    f"connection to the server ended (exit {code}); reconnecting ..."),
                on_unregistered=lambda pause: notify(
                    f"server {server}: this hospital's key is not registered there (yet), "
                    "or its last connection still counts as live (up to a minute after it "
                    f"broke); trying again in {pause:.0f} s"))
        finally:
            executor.stop()
            self.stop()

    def stop(self) -> None:
        processes.stop(self.supernode)
        self.supernode = None
        if self._lock is not None:  # only the process that holds the folder cleans it
            self.settings.state.superexec_secret.unlink(missing_ok=True)
            if self.socket_path is not None:
                self.socket_path.unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None
