"""Run the real ServerApp and ClientApp on Flower's simulation engine (Ray), in one process.

Each virtual site gets a signing key made for this run, and every site's roster is the run's
keys (:class:`client.site.Identities`).

Process hygiene for everything Flower and Ray start: runtime dependency installation, telemetry
and update checks off; ``FLWR_HOME`` and Ray's temp folder inside the run folder (Ray's socket
paths must stay under ~100 characters, so a short link in the system temp folder points there).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.processes import QUIET_ENV
from server.run_folder import RoundRecord
from server.run_state import RunState

log = logging.getLogger("fedmm.simulate")


def prepare_environment(run_dir: Path, short_dir: Path | None = None) -> dict[str, str]:
    """Environment for Flower/Ray processes of this run (applied to this process too);
    ``short_dir``: an empty folder with a short path for the link to Ray's folder (default: a
    new one in the system temp folder)."""
    flwr_home = run_dir / ".flwr"
    ray_dir = run_dir / ".ray"
    flwr_home.mkdir(parents=True, exist_ok=True)
    ray_dir.mkdir(parents=True, exist_ok=True)
    link = (short_dir or Path(tempfile.mkdtemp(prefix="fedmm-"))) / "ray"
    link.symlink_to(ray_dir.resolve(), target_is_directory=True)
    env = {**QUIET_ENV, "FLWR_HOME": str(flwr_home), "RAY_TMPDIR": str(link)}
    os.environ.update(env)
    return env


def backend_config(*, parallel: int | None = None, ray_address: str | None = None
                   ) -> dict[str, Any]:
    """One CPU per virtual hospital; as many run at once as there are cores (or ``parallel``).

    With ``ray_address`` (``auto`` or ``HOST:PORT``) the simulation joins a running Ray cluster
    instead of starting Ray here: each virtual hospital takes one CPU of the cluster, as many at
    once as the cluster has CPUs."""
    if ray_address:
        return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"address": ray_address, "logging_level": logging.ERROR,
                              "log_to_driver": False}}
    cores = os.cpu_count() or 1
    parallel = max(1, min(parallel or cores, cores))
    import torch

    gpus = 1.0 / parallel if torch.cuda.is_available() else 0.0
    return {
        "client_resources": {"num_cpus": max(1, cores // parallel), "num_gpus": gpus},
        "init_args": {"num_cpus": cores, "include_dashboard": False,
                      "logging_level": logging.ERROR, "log_to_driver": False},
    }


def run_federated_simulation(
    *,
    config: RunConfig,
    run_dir: Path,
    site_dirs: Sequence[Path],
    test_dir: Path | None = None,
    resume: bool = False,
    show: Callable[[RoundRecord], None] | None = None,
    parallel: int | None = None,
    ray_address: str | None = None,
    short_dir: Path | None = None,
) -> RunState:
    """Run the whole federation; returns the server's final state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = prepare_environment(run_dir, short_dir)
    try:
        return _run(config=config, run_dir=run_dir, site_dirs=site_dirs, test_dir=test_dir,
                    resume=resume, show=show,
                    backend=backend_config(parallel=parallel, ray_address=ray_address))
    finally:
        shutil.rmtree(Path(env["RAY_TMPDIR"]).parent, ignore_errors=True)  # the short link


def _run(
    *,
    config: RunConfig,
    run_dir: Path,
    site_dirs: Sequence[Path],
    test_dir: Path | None,
    resume: bool,
    show: Callable[[RoundRecord], None] | None,
    backend: dict[str, Any],
) -> RunState:
    from flwr.simulation import run_simulation

    from client.app import make_client_app
    from client.site import Identities
    from server.app import default_callbacks, make_server_app
    from simulations.dispatch import patch_message_dispatch

    if not patch_message_dispatch():
        log.warning("Flower's simulation engine no longer looks as expected: its messages "
                    "reach the hospitals at its own pace (up to 0.1 s late)")
    result: list[RunState] = []
    server_app = make_server_app(config=config, run_dir=run_dir, resume=resume,
                                 test_dir=test_dir, callbacks=default_callbacks(show),
                                 result=result)
    client_app = make_client_app(site_dirs=[str(p.resolve()) for p in site_dirs],
                                 identities=Identities.generate(len(site_dirs)))
    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=len(site_dirs), backend_config=backend)
    if not result:
        raise RuntimeError("the simulation ended without a result; see the log above")
    return result[0]
