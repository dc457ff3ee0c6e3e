"""Helpers for end-to-end tests: run the real CLI in a subprocess with its own environment, and
make sure every process it started (Ray's included) is gone afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.processes import pids_mentioning

REPO = Path(__file__).resolve().parent.parent


class CliRun:
    """A ``fedmm`` subprocess in its own session, with a short private TMPDIR (Ray sockets)."""

    def __init__(self, args: list[str], *, cwd: Path, module: str = "fedmm",
                 prefix: list[str] | None = None) -> None:
        """``prefix``: a command that runs the CLI, e.g. in a private mount namespace."""
        self.tmpdir = tempfile.mkdtemp(prefix="fm", dir="/tmp")
        self.cwd = cwd
        env = {**os.environ, "TMPDIR": self.tmpdir, "PYTHONUNBUFFERED": "1",
               "FLWR_HOME": str(cwd / ".flwr-home"),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.log = cwd / f"cli-{time.time_ns()}.log"
        self._log_handle = self.log.open("w")
        self.process = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", module, *args], cwd=cwd, env=env,
            stdout=self._log_handle, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stop()

    def output(self) -> str:
        if not self._log_handle.closed:
            self._log_handle.flush()
        return self.log.read_text()

    def stop(self) -> None:
        """Kill the session and any process whose command line names our TMPDIR."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        for pid in pids_mentioning(self.tmpdir) + pids_mentioning(str(self.cwd)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not self._log_handle.closed:
            self._log_handle.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class MainJob:
    """The README's main job (``make demo``: ``fedmm simulate --centralized``, defaults) in a
    folder of its own. Started at the lowest priority while the unit tests run
    (tests/conftest.py), it uses the CPU time they leave idle; :meth:`result` waits for it."""

    ARGS = ("simulate", "--out", "demo", "--centralized")

    def __init__(self, folder: Path, *, background: bool) -> None:
        self.folder = folder
        self.run = CliRun(list(self.ARGS), cwd=folder,
                          prefix=["nice", "-n", "19"] if background else None)
        self._result: tuple[int, str] | None = None

    @property
    def out(self) -> Path:
        return self.folder / "demo"

    def result(self, timeout: float = 900) -> tuple[int, str]:
        """Its exit code and output, once it has ended."""
        if self._result is None:
            code = self.run.wait(timeout)
            self._result = (code, self.run.output())
        return self._result

    def stop(self) -> None:
        self.run.stop()


class RayCluster:
    """One local Ray cluster (``ray start --head``) that simulations join with ``--ray-address``:
    each ``fedmm simulate`` then skips starting Ray (about 14 s of a 2-core machine). Its
    folder is short (Ray's socket paths) and its own; stopping it stops every process naming
    that folder."""

    def __init__(self, *, cpus: int = 2) -> None:
        from common import processes

        self.folder = tempfile.mkdtemp(prefix="fmray", dir="/tmp")
        self.port = processes.free_port()
        self.log = Path(self.folder) / "ray-start.log"
        ray = Path(sys.executable).parent / "ray"
        env = {**os.environ, **processes.QUIET_ENV, "TMPDIR": self.folder}
        with self.log.open("wb") as log:
            self.process = processes.start(
                [str(ray), "start", "--head", "--block", f"--port={self.port}",
                 f"--num-cpus={cpus}", "--num-gpus=0", f"--temp-dir={self.folder}",
                 "--include-dashboard=false", "--disable-usage-stats"], env=env, log=log)
        if not processes.wait_for_port("127.0.0.1", self.port, timeout=120,
                                       process=self.process):
            self.stop()
            raise RuntimeError(f"Ray did not start: {self.log.read_text()[-800:]}")

    @property
    def address(self) -> list[str]:
        """The CLI arguments that join it."""
        return ["--ray-address", f"127.0.0.1:{self.port}"]

    def stop(self) -> None:
        from common import processes

        processes.stop(self.process, grace=5.0)
        for pid in pids_mentioning(self.folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


def run_cli(args: list[str], *, cwd: Path, timeout: float = 600,
            prefix: list[str] | None = None) -> tuple[int, str]:
    run = CliRun(args, cwd=cwd, prefix=prefix)
    code = run.wait(timeout)
    return code, run.output()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_run_config(folder: Path, **training: int) -> Path:
    """``folder/run.toml``: the simulations' small run (a small model, 3 rounds of one local
    epoch, DP-SGD at ε = 4), with ``training`` keys replaced."""
    settings = {"rounds": 3, "local_epochs": 1, "batch_size": 16, "min_sites": 1, **training}
    path = folder / "run.toml"
    path.write_text('model_id = "e2e-model"\n[data]\nmin_usable_rows = 10\n'
                    "[model]\nembed_dim = 8\nhidden_dim = 16\n[training]\n"
                    + "".join(f"{key} = {value}\n" for key, value in settings.items())
                    + "[privacy]\ntarget_epsilon = 4.0\n")
    return path
