"""``fedmm simulate`` runs the simulation in a worker process of its own and supervises it.

The worker (:mod:`simulations.worker`) starts Ray and Flower in a session of its own, so a
terminal's Ctrl-C (SIGINT to the foreground process group) and a SIGTERM reach only this
process. On either, the supervisor stops the worker's whole process group (Ray's processes are
in it): SIGTERM, up to :data:`GRACE_S` seconds, then SIGKILL, and any process still naming the
run's Ray folder after that. A second signal while it stops skips the grace. Every file the worker
writes is written atomically, so the last checkpoint and each site's ledger are whole whenever
it is stopped; a site's ledger already holds the interrupted round's steps (it reserves them
before training), and ``--resume`` trains that round again and counts it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from common import processes

GRACE_S = 4.0
# The worker's events, one JSON object a line: {"event": KIND, ...}.
ROUND, WARNING, DONE, ERROR = "round", "warning", "done", "error"
# How the worker is started; crash tests start it through their fault injector instead.
WORKER_COMMAND: list[str] = [sys.executable, "-m", "simulations.worker"]


class SimulationJob(BaseModel):
    """Everything the worker needs, as JSON on its stdin."""

    model_config = ConfigDict(frozen=True)

    config_json: str
    run_dir: Path
    site_dirs: list[Path]
    test_dir: Path | None = None
    resume: bool = False
    parallel: int | None = None
    ray_address: str | None = None
    verbose: bool = False
    short_dir: Path | None = None  # a short folder for Ray's sockets (their paths stay short)

    @property
    def log(self) -> Path:
        """The worker's output: Flower's and Ray's logs, and any traceback."""
        return self.run_dir / "logs" / "simulate.log"

    def run_config(self) -> Any:
        from common.config import RunConfig

        return RunConfig.from_json(self.config_json)


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Outcome:
    """How the worker ended: ``done`` (with the stop reason), ``error`` (a message for a person),
    ``died`` (killed or crashed without a word: its exit status) or ``interrupted``."""

    kind: str
    message: str = ""
    signum: int = 0
    exit_status: int = 0


class Supervisor:
    """Starts the worker, relays its events, and stops everything it started on a signal."""

    def __init__(self, job: SimulationJob, *, on_round: Callable[[dict[str, Any]], None],
                 on_warning: Callable[[str], None]) -> None:
        self.job = job
        self.on_round = on_round
        self.on_warning = on_warning
        self.process: subprocess.Popen | None = None
        self._hurry = False

    def run(self) -> Outcome:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def interrupt(signum: int, frame: object) -> None:
            raise Interrupted(signum)

        for sig in previous:
            signal.signal(sig, interrupt)
        try:
            outcome = self._follow()
        except Interrupted as interruption:
            self._stop_on_signals()
            self.stop()
            for sig in previous:  # this process is quitting: later signals change nothing
                signal.signal(sig, signal.SIG_IGN)
            return Outcome("interrupted", signum=interruption.signum)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return outcome

    def _follow(self) -> Outcome:
        read_fd, write_fd = os.pipe()
        try:
            self.process = subprocess.Popen(
                [*WORKER_COMMAND, str(write_fd)], stdin=subprocess.PIPE, pass_fds=(write_fd,),
                start_new_session=True)
        finally:
            os.close(write_fd)
        with os.fdopen(read_fd, encoding="utf-8") as events:
            assert self.process.stdin is not None
            self.process.stdin.write(self.job.model_dump_json().encode())
            self.process.stdin.close()
            outcome = None
            for line in events:
                outcome = self._handle(json.loads(line)) or outcome
        status = self.process.wait()
        self.stop()  # whatever the worker left in its group
        if outcome is not None:
            return outcome
        return Outcome("died", exit_status=status)

    def _handle(self, event: dict[str, Any]) -> Outcome | None:
        kind = event.get("event")
        if kind == ROUND:
            self.on_round(event["record"])
        elif kind == WARNING:
            self.on_warning(str(event["message"]))
        elif kind == DONE:
            return Outcome("done", message=str(event.get("stop_reason", "")))
        elif kind == ERROR:
            return Outcome("error", message=str(event["message"]))
        return None

    def _stop_on_signals(self) -> None:
        """While stopping: a second Ctrl-C or SIGTERM means now."""
        def hurry(signum: int, frame: object) -> None:
            self._hurry = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, hurry)

    def stop(self) -> None:
        """SIGTERM the worker's process group, SIGKILL it after :data:`GRACE_S` (at once on a
        second signal), then SIGKILL anything still naming the run's Ray folder."""
        process = self.process
        if process is not None:
            processes.signal_group(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
            while process.poll() is None and time.monotonic() < deadline and not self._hurry:
                time.sleep(0.05)
            processes.signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5.0)
        marks = [self.job.run_dir / ".ray", *([self.job.short_dir] if self.job.short_dir else [])]
        for pid in processes.pids_mentioning(*marks, *(mark.resolve() for mark in marks)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
