"""``fedmm server``: a SuperLink with TLS and node authentication, and one run on it.

1. Starts ``flower-superlink`` (TLS from the certificate folder, ``--enable-supernode-auth``,
   runtime dependency installation off) on the given host and port, logs in ``RUN_DIR/logs``.
2. Registers exactly the allowed hospital public keys (``flwr supernode register``).
3. Submits the run (``flwr run`` of :mod:`server.flower_app` with the run folder as run config);
   the ServerApp (:mod:`server.deployment`) writes metrics, checkpoints, report and model there.
4. Follows ``metrics.jsonl`` (one callback per finished round) and the run's status until it
   ends, then stops the SuperLink. :meth:`ServerLauncher.stop` (Ctrl-C, SIGTERM) stops the run
   and everything started, leaving the last checkpoint for ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import processes
from common.atomic import atomic_write_text
from common.config import RunConfig
from common.pki import Layout, check_public_key
from server.deployment import FAILED_NAME, RUN_CONFIG_NAME

APP_DIR = Path(__file__).resolve().parent / "flower_app"
CONNECTION = "fedmm"
STATUS_EVERY_S = 30.0
REGISTRATION_WORKERS = 8
FLWR_TIMEOUT_S = 300.0


class DeploymentError(RuntimeError):
    """The deployment cannot go on; the message is one line for a person."""


@dataclass(frozen=True)
class ServerSettings:
    run_dir: Path
    certs: Path
    allowed: Sequence[Path]
    host: str = "0.0.0.0"
    port: int = 9092
    resume: bool = False
    test_dir: Path | None = None
    wait_for_sites_s: float = 300.0

    @property
    def local_address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class ServerLauncher:
    def __init__(self, settings: ServerSettings, config: RunConfig) -> None:
        self.settings, self.config = settings, config
        self.run_dir = settings.run_dir.resolve()
        self.flwr_home = self.run_dir / ".flwr"
        self.logs = self.run_dir / "logs"
        self.superlink: subprocess.Popen | None = None
        self.run_id: str | None = None
        self.env: dict[str, str] = {}

    # -- checks --------------------------------------------------------------------------
    def check(self) -> None:
        layout = Layout(self.settings.certs)
        for path in (layout.ca_cert, layout.server_cert, layout.server_key):
            if not path.is_file():
                raise DeploymentError(f"{path}: missing; run `fedmm keys init` first")
        if not self.settings.allowed:
            raise DeploymentError("no hospital may join: pass --allow KEY.pub for each")
        for key in self.settings.allowed:
            try:
                check_public_key(key)
            except ValueError as error:
                raise DeploymentError(str(error)) from None

    def prepare_run_dir(self) -> None:
        saved = self.run_dir / RUN_CONFIG_NAME
        if self.settings.resume:
            if not saved.is_file():
                raise DeploymentError(f"{self.run_dir}: no run to resume (no {RUN_CONFIG_NAME})")
            if RunConfig.from_json(saved.read_text(encoding="utf-8")) != self.config:
                raise DeploymentError(f"{saved}: the run was started with another "
                                      "configuration; resume with the same --config")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, self.config.to_json())
        (self.run_dir / FAILED_NAME).unlink(missing_ok=True)
        self.logs.mkdir(exist_ok=True)

    # -- processes -------------------------------------------------------------------------
    def start_superlink(self) -> None:
        layout = Layout(self.settings.certs.resolve())
        self.env = processes.flower_env(self.flwr_home)
        command = [
            processes.flower_command("flower-superlink"),
            "--ssl-ca-certfile", str(layout.ca_cert), "--ssl-certfile", str(layout.server_cert),
            "--ssl-keyfile", str(layout.server_key), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--host", self.settings.host, "--port", str(self.settings.port)]
        with (self.logs / "superlink.log").open("ab") as log:  # the child keeps its own copy
            self.superlink = processes.start(command, env=self.env, log=log, cwd=self.run_dir)
        host, port = self.settings.local_address.rsplit(":", 1)
        if not processes.wait_for_port(host, int(port), timeout=60, process=self.superlink):
            raise DeploymentError(f"the SuperLink did not start on {self.settings.host}:"
                                  f"{self.settings.port} (port in use?); see "
                                  f"{self.logs / 'superlink.log'}")
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {_toml_string(self.settings.local_address)}\n"
            f"root-certificates = {_toml_string(str(layout.ca_cert))}\n", encoding="utf-8")

    def _flwr(self, *args: str) -> dict[str, Any]:
        try:
            result = subprocess.run(
                [processes.flower_command("flwr"), *args, "--format", "json"], env=self.env,
                capture_output=True, text=True, timeout=FLWR_TIMEOUT_S, cwd=self.run_dir)
        except subprocess.TimeoutExpired:
            raise DeploymentError(
                f"flwr {' '.join(args[:2])} did not answer within {FLWR_TIMEOUT_S:.0f} s (is "
                f"the machine overloaded?); see {self.logs / 'superlink.log'}") from None
        try:
            answer = json.loads(result.stdout[result.stdout.index("{"):])
        except ValueError:
            answer = {}
        if result.returncode != 0 or not answer.get("success", False):
            detail = answer.get("error-message") or (result.stdout + result.stderr).strip()
            last_line = (detail.splitlines() or ["no output"])[-1]
            raise DeploymentError(f"flwr {args[0]} failed: {last_line}")
        return answer

    def register_hospitals(self) -> list[str]:
        """Register every allowed key with the SuperLink, several at a time (each is a ``flwr``
        process; one after another, 20 hospitals took 40 s)."""
        from concurrent.futures import ThreadPoolExecutor

        def register(key: Path) -> str:
            answer = self._flwr("supernode", "register", str(Path(key).resolve()), CONNECTION)
            return str(answer.get("node-id", ""))

        with ThreadPoolExecutor(max_workers=REGISTRATION_WORKERS) as pool:
            return list(pool.map(register, self.settings.allowed))

    def submit_run(self) -> str:
        overrides = self.flwr_home / "run_overrides.toml"
        test_dir = str(self.settings.test_dir.resolve()) if self.settings.test_dir else ""
        overrides.write_text(
            f"out-dir = {_toml_string(str(self.run_dir))}\n"
            f"resume = {'true' if self.settings.resume else 'false'}\n"
            f"expected-sites = {len(self.settings.allowed)}\n"
            f"wait-for-sites-s = {float(self.settings.wait_for_sites_s)}\n"
            f"test-dir = {_toml_string(test_dir)}\n", encoding="utf-8")
        answer = self._flwr("run", str(APP_DIR), CONNECTION, "--run-config", str(overrides))
        self.run_id = str(answer["run-id"])
        return self.run_id

    def run_status(self) -> str:
        answer = self._flwr("list", CONNECTION, "--run-id", str(self.run_id))
        runs = answer.get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    # -- following the run -----------------------------------------------------------------
    def follow(self, on_round: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Report each new metrics line until the run ends; the summary when it succeeded.

        The end shows as ``summary.json`` or ``run_failed.txt`` in the run folder; Flower's run
        status (a ``flwr list`` call, a process start) is asked only now and then, to notice a
        ServerApp that died without writing either."""
        metrics = self.run_dir / "metrics.jsonl"
        summary, failed = self.run_dir / "summary.json", self.run_dir / FAILED_NAME
        seen = (len(metrics.read_text().splitlines())
                if self.settings.resume and metrics.exists() else 0)
        next_status = time.monotonic() + STATUS_EVERY_S
        status = "running"
        while True:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            for line in lines[seen:]:
                if line.strip():
                    on_round(json.loads(line))
            seen = max(seen, len(lines))
            if summary.is_file() or failed.is_file() or status.startswith("finished"):
                break
            if self.superlink is not None and self.superlink.poll() is not None:
                raise DeploymentError(f"the SuperLink stopped (exit {self.superlink.returncode})"
                                      f"; see {self.logs / 'superlink.log'}")
            if time.monotonic() >= next_status:
                status = self.run_status()
                next_status = time.monotonic() + STATUS_EVERY_S
            time.sleep(0.5)
        if failed.is_file():
            raise DeploymentError(failed.read_text(encoding="utf-8").strip())
        if not summary.is_file():
            raise DeploymentError(f"the run ended as '{status}' without a final model; see "
                                  f"{self.logs / 'superlink.log'}")
        self.run_id = None  # complete: nothing left to stop but the SuperLink
        return json.loads(summary.read_text(encoding="utf-8"))

    def stop(self) -> None:
        """Stop the run (if any) and the SuperLink; safe to call more than once."""
        if self.run_id is not None and self.superlink is not None \
                and self.superlink.poll() is None:
            with contextlib.suppress(DeploymentError, subprocess.TimeoutExpired):
                self._flwr("stop", self.run_id, CONNECTION)
        processes.stop(self.superlink)
        if self.superlink is not None:  # a ServerApp process can outlive its SuperExec
            processes.stop_strays("--runtime-api-address", self.settings.local_address)
        self.superlink = None
