"""``fedmm client``: one hospital joins a federation through Flower's SuperNode.

1. Validates the site folder with the same checks training uses; unusable data never joins.
2. Checks the server's TLS certificate against the consortium CA before anything else (a clear
   message instead of endless retries when the CA is wrong).
3. Runs ``flower-supernode`` with TLS, the hospital's node key and the site folder in its node
   config (a TOML file in the state folder), runtime dependency installation off, and starts it
   again whenever it stops (server restarted, network gone), so the hospital rejoins by itself.
   Its log is ``STATE_DIR/logs/supernode.log``.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client.site import STATE_DIR_NAME
from common import processes
from common.pki import check_private_key

NODE_CONFIG_NAME = "node_config.toml"
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
    runtime_port: int | None = None
    registration_wait_s: float = 600.0  # keep trying this long while the key is unknown there
    idle_poll_s: float | None = None  # None: Flower's own 3 s idle poll (client/supernode.py)

    @property
    def state(self) -> Path:
        return (self.state_dir or self.data_dir / STATE_DIR_NAME).resolve()

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
    values = {"data-dir": str(settings.data_dir.resolve()), "state-dir": str(settings.state)}
    if settings.policy is not None:
        values["policy-file"] = str(settings.policy.resolve())
    if settings.site_id:
        values["site-id"] = settings.site_id
    return values


def write_node_config(settings: ClientSettings) -> Path:
    values = node_config(settings)
    path = settings.state / NODE_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()),
                    encoding="utf-8")
    return path


def supernode_command(idle_poll_s: float | None = None) -> list[str]:
    """Flower's SuperNode; with ``idle_poll_s``, through :mod:`client.supernode`, which polls
    that often instead of every 3 s when idle."""
    if idle_poll_s is None:
        return [processes.flower_command("flower-supernode")]
    return [sys.executable, "-m", "client.supernode", "--idle-poll", str(idle_poll_s)]


class ClientLauncher:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.supernode: subprocess.Popen | None = None
        self.log_start = 0
        self.log_path = settings.state / "logs" / "supernode.log"

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
        node_config = write_node_config(self.settings)
        runtime_port = self.settings.runtime_port or processes.free_port()
        command = [
            *supernode_command(self.settings.idle_poll_s), "--superlink", f"{host}:{port}",
            "--root-certificates", str(self.settings.ca.resolve()),
            "--auth-supernode-private-key", str(self.settings.key.resolve()),
            "--node-config", str(node_config), "--port", str(runtime_port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = processes.flower_env(self.settings.state / "flwr")
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the handle
            self.supernode = processes.start(command, env=env, log=log)

    def _refused(self) -> bool:
        """Whether the SuperNode stopped because the server does not know this hospital's key."""
        assert self.supernode is not None
        with self.log_path.open("rb") as log:
            log.seek(self.log_start)
            log_text = log.read().decode(errors="replace")
        return self.supernode.returncode != 0 and NOT_REGISTERED in log_text

    def supervise(self, on_restart: Callable[[int], None] | None = None,
                  on_unregistered: Callable[[float], None] | None = None) -> None:
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

    def stop(self) -> None:
        processes.stop(self.supernode)
        self.supernode = None
