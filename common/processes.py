"""Starting and stopping the Flower processes fedmm launches (SuperLink, SuperNode, ``flwr``).

Every such process gets: runtime dependency installation, telemetry and update checks off; its
own ``FLWR_HOME``; this interpreter's ``bin`` folder first on ``PATH`` (Flower starts
``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name); its own process group,
so that stopping it stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

QUIET_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


# Flower's hidden switches (FLWR_INTERNAL_GRPC_CONTROL_API=1 and the like) open legacy gRPC APIs
# on 0.0.0.0 beside the ones fedmm configures; no process fedmm starts inherits them.
INTERNAL_PREFIX = "FLWR_INTERNAL_"

# SuperExec looks for new ClientApp/ServerApp tasks every second by default; each message waits
# for that poll. 0.5 s takes ~0.25 s off every message round trip; shorter polls cost real CPU
# when many SuperNodes share a machine (0.2 s: ~3 % of a core per hospital, idle).
TASK_POLL_S = "0.5"


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment for a Flower process of this deployment."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(INTERNAL_PREFIX)}
    return {**inherited, **QUIET_ENV, "FLWR_HOME": str(flwr_home),
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": TASK_POLL_S,
            "PATH": f"{bin_dir}{os.pathsep}{path}" if path else bin_dir}


def flower_command(name: str) -> str:
    """A Flower executable next to this interpreter (the virtual environment's)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, *, timeout: float, process: subprocess.Popen) -> bool:
    """True once something listens on ``host:port``; False if ``process`` exits first or the
    wait times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if port_open(host, port):
            return True
        time.sleep(0.2)
    return False


def _die_with_parent() -> None:
    """Linux: SIGTERM this child when the process that started it dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(command: Sequence[str], *, env: Mapping[str, str], log: IO[bytes] | None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``command`` in its own process group, output to ``log`` (or inherited); it is
    stopped when this process dies."""
    return subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT if log is not None else None,
                            start_new_session=True, preexec_fn=_die_with_parent)


def signal_group(group: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``group``; nothing if it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def stop(process: subprocess.Popen | None, *, grace: float = 10.0) -> None:
    """SIGTERM the process group; after ``grace`` seconds SIGKILL whatever is left of it."""
    stop_all([process], grace=grace)


def stop_all(started: Iterable[subprocess.Popen | None], *, grace: float = 10.0) -> None:
    """:func:`stop` for many processes at once: every group gets SIGTERM first and they all
    wind down together (one after another, 20 hospitals took 37 s), then SIGKILL for whatever
    is left of any group after ``grace`` seconds in all."""
    groups: list[tuple[subprocess.Popen, int]] = []
    for process in started:
        if process is None:
            continue
        try:
            groups.append((process, os.getpgid(process.pid)))
        except ProcessLookupError:
            process.poll()
    for _, group in groups:
        signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process, _ in groups:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process, group in groups:
        signal_group(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)


def _command_lines() -> list[tuple[int, bytes]]:
    """(pid, command line with a leading NUL) of every process but this one (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            found.append((int(entry.name), b"\0" + (entry / "cmdline").read_bytes()))
    return found


def pids_running(*argv: str) -> list[int]:
    """Processes (other than this one) whose command line holds ``argv`` as consecutive
    arguments."""
    needle = b"\0" + b"\0".join(a.encode() for a in argv) + b"\0"
    return [pid for pid, line in _command_lines() if needle in line]


def pids_mentioning(*texts: str | Path) -> list[int]:
    """Processes (other than this one) whose command line contains one of ``texts`` anywhere
    (a folder a process was started with, such as Ray's session folder)."""
    needles = {str(text).encode() for text in texts}
    return [pid for pid, line in _command_lines() if any(n in line for n in needles)]


def stop_strays(*argv: str) -> int:
    """SIGTERM the processes :func:`pids_running` finds; returns how many. For what a Flower
    process started outside its own process group (a ServerApp outliving its SuperExec)."""
    pids = pids_running(*argv)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    return len(pids)
