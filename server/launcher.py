"""``fedmm server``: a SuperLink on loopback, a Fleet-only gateway in front, and one run on it.

1. Starts ``flower-superlink`` on 127.0.0.1 (a free port) with a throw-away loopback certificate
   (:func:`common.pki.make_loopback_tls`), ``--enable-supernode-auth``, runtime dependency
   installation off; logs in ``RUN_DIR/logs``. Its Control and Runtime APIs are reachable from
   this machine only, and nothing here depends on the consortium's certificate naming loopback.
2. Opens the public port: :class:`server.gateway.Gateway` with the consortium's certificate,
   forwarding only Fleet API routes to the SuperLink.
3. Registers exactly the allowed hospital public keys (``flwr supernode register``'s
   request, sent from this process).
4. Submits the run (``flwr run`` of :data:`common.app_bundle.APP_DIR` with the run folder as run
   config); the ServerApp (:mod:`server.deployment`) writes metrics, checkpoints, report and
   model there.
5. Follows ``metrics.jsonl`` (one callback per finished round) and the run's status until it
   ends, then stops everything. :meth:`ServerLauncher.stop` (Ctrl-C, SIGTERM) stops the run
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
from typing import Any, TypeVar

from common import processes
from common.app_bundle import APP_DIR
from common.atomic import atomic_write_text
from common.config import RunConfig
from common.pki import Layout, LoopbackTLS, check_public_key, make_loopback_tls
from server import deployment
from server.gateway import Gateway, GatewayError, pem_of_openssh
from server.run_folder import RoundRecord, RunFolder

CONNECTION = "fedmm"
T = TypeVar("T")
STATUS_EVERY_S = 30.0
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


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class ServerLauncher:
    def __init__(self, settings: ServerSettings, config: RunConfig) -> None:
        self.settings, self.config = settings, config
        self.folder = RunFolder(settings.run_dir.resolve())
        self.run_dir = self.folder.root
        self.flwr_home = self.folder.flwr_home
        self.logs = self.folder.logs
        self.superlink: subprocess.Popen | None = None
        self.gateway: Gateway | None = None
        self.run_id: str | None = None
        self.env: dict[str, str] = {}
        self.local_address = ""  # the SuperLink's, 127.0.0.1:PORT
        self.loopback: LoopbackTLS | None = None

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
        saved = self.folder.run_config
        if self.settings.resume:
            if not saved.is_file():
                raise DeploymentError(f"{self.run_dir}: no run to resume (no {saved.name})")
            if RunConfig.from_json(saved.read_text(encoding="utf-8")) != self.config:
                raise DeploymentError(f"{saved}: the run was started with another "
                                      "configuration; resume with the same --config")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, self.config.to_json())
        self.folder.failed.unlink(missing_ok=True)
        self.logs.mkdir(exist_ok=True)

    # -- processes -------------------------------------------------------------------------
    def start_superlink(self) -> None:
        """The SuperLink on 127.0.0.1 with its own loopback certificate."""
        self.env = processes.flower_env(self.flwr_home)
        self.loopback = make_loopback_tls(self.flwr_home / "loopback-tls")
        port = processes.free_port()
        self.local_address = f"127.0.0.1:{port}"
        command = [
            processes.flower_command("flower-superlink"),
            "--ssl-ca-certfile", str(self.loopback.ca_cert),
            "--ssl-certfile", str(self.loopback.cert), "--ssl-keyfile", str(self.loopback.key),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port)]
        with (self.logs / "superlink.log").open("ab") as log:  # the child keeps its own copy
            self.superlink = processes.start(command, env=self.env, log=log, cwd=self.run_dir)
        if not processes.wait_for_port("127.0.0.1", port, timeout=60, process=self.superlink):
            raise DeploymentError(f"the SuperLink did not start on {self.local_address}; see "
                                  f"{self.logs / 'superlink.log'}")
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {_toml_string(self.local_address)}\n"
            f"root-certificates = {_toml_string(str(self.loopback.ca_cert))}\n",
            encoding="utf-8")

    def start_gateway(self) -> None:
        """The public port: the consortium's certificate, Fleet API routes only."""
        assert self.loopback is not None, "start the SuperLink first"
        layout = Layout(self.settings.certs.resolve())
        self.gateway = Gateway(host=self.settings.host, port=self.settings.port,
                               certfile=layout.server_cert, keyfile=layout.server_key,
                               upstream=f"https://{self.local_address}",
                               upstream_ca=self.loopback.ca_cert,
                               allowed=frozenset(pem_of_openssh(k)
                                                 for k in self.settings.allowed))
        try:
            self.gateway.start()
        except GatewayError as error:
            raise DeploymentError(str(error)) from None

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

    def control(self):
        """Flower's Control API client for this SuperLink (its loopback certificate), as the
        ``flwr`` CLI builds one, in this process: each ``flwr`` process costs ~2 s of CPU, and
        registering 20 hospitals that way took 20 of them."""
        from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
        from flwr.supercore.control import ControlHttpClient
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

        assert self.loopback is not None, "start the SuperLink first"
        return ControlHttpClient.from_server_address(
            server_address=self.local_address, insecure=False,
            root_certificates=str(self.loopback.ca_cert), interceptors=[
                CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(
                    component_name="flwr CLI")])

    def _call(self, what: str, call: Callable[[Any], T]) -> T:
        """``call(client)`` on a fresh Control API client; a failure is a DeploymentError."""
        import httpx

        client = self.control()
        try:
            return call(client)
        except DeploymentError:
            raise
        except httpx.HTTPStatusError as error:
            detail = error.response.text.strip().splitlines()[-1:] or [""]
            raise DeploymentError(f"{what} failed: the SuperLink answered "
                                  f"{error.response.status_code} {detail[0][:200]}; see "
                                  f"{self.logs / 'superlink.log'}") from None
        except (httpx.HTTPError, OSError, ValueError) as error:
            raise DeploymentError(f"{what} failed: {error}; see "
                                  f"{self.logs / 'superlink.log'}") from None
        finally:
            client.close()

    def register_hospitals(self) -> list[str]:
        """Register every allowed key with the SuperLink (``flwr supernode register``'s
        request, in this process)."""
        from flwr.proto.control_pb2 import RegisterNodeRequest

        def register(client: Any) -> list[str]:
            ids = []
            for key in self.settings.allowed:
                answer = client.RegisterNode(RegisterNodeRequest(public_key=pem_of_openssh(key)))
                if not answer.node_id:
                    raise DeploymentError(f"the SuperLink did not register {key}")
                ids.append(str(answer.node_id))
            return ids

        return self._call("registering the hospitals' keys", register)

    def submit_run(self) -> str:
        overrides = self.flwr_home / "run_overrides.toml"
        test_dir = str(self.settings.test_dir.resolve()) if self.settings.test_dir else ""
        overrides.write_text(
            f"{deployment.OUT_DIR} = {_toml_string(str(self.run_dir))}\n"
            f"{deployment.RESUME} = {'true' if self.settings.resume else 'false'}\n"
            f"{deployment.EXPECTED_SITES} = {len(self.settings.allowed)}\n"
            f"{deployment.WAIT_FOR_SITES_S} = {float(self.settings.wait_for_sites_s)}\n"
            f"{deployment.TEST_DIR} = {_toml_string(test_dir)}\n", encoding="utf-8")
        answer = self._flwr("run", str(APP_DIR), CONNECTION, "--run-config", str(overrides))
        self.run_id = str(answer["run-id"])
        return self.run_id

    def run_status(self) -> str:
        """The run's status as ``flwr list`` shows it (``finished:completed``, ...)."""
        from flwr.proto.control_pb2 import ListRunsRequest

        def status(client: Any) -> str:
            import httpx

            try:
                runs = client.ListRuns(ListRunsRequest(run_id=int(self.run_id or 0))).run_dict
            except httpx.HTTPStatusError as error:
                if error.response.status_code == 404:  # no such run (any more)
                    return "unknown"
                raise
            if not runs:
                return "unknown"
            state = next(iter(runs.values())).status
            return f"{state.status}:{state.sub_status}" if state.sub_status else state.status

        return self._call("asking for the run's status", status)

    # -- following the run -----------------------------------------------------------------
    def follow(self, on_round: Callable[[RoundRecord], None]) -> dict[str, Any]:
        """Report each new metrics line until the run ends; the summary when it succeeded.

        The end shows as ``summary.json`` or ``run_failed.txt`` in the run folder; Flower's run
        status (a ``flwr list`` call, a process start) is asked only now and then, to notice a
        ServerApp that died without writing either."""
        summary, failed = self.folder.summary, self.folder.failed
        seen = len(self.folder.rounds()) if self.settings.resume else 0
        next_status = time.monotonic() + STATUS_EVERY_S
        status = "running"
        while True:
            rounds = self.folder.rounds()
            for record in rounds[seen:]:
                on_round(record)
            seen = max(seen, len(rounds))
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
        return self.folder.read_summary()

    def stop(self) -> None:
        """Stop the run (if any) and the SuperLink; safe to call more than once."""
        if self.run_id is not None and self.superlink is not None \
                and self.superlink.poll() is None:
            with contextlib.suppress(DeploymentError, subprocess.TimeoutExpired):
                self._flwr("stop", self.run_id, CONNECTION)
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        processes.stop(self.superlink)
        if self.superlink is not None:  # a ServerApp process can outlive its SuperExec
            processes.stop_strays("--runtime-api-address", self.local_address)
        self.superlink = None
