"""A real deployment on loopback, timed: ``fedmm keys init``, one ``fedmm server`` and N
``fedmm client`` hospitals (Flower SuperLink and SuperNodes with TLS and node authentication),
DP-SGD and secure aggregation as configured. The hospitals start together once the server says
it is waiting for them (the operator's order: server first).

Reported per run: wall time, seconds per round (the server's round records), the peak resident
memory of the server's whole process tree (the ``fedmm server`` CLI, SuperLink, SuperExec and the
ServerApp process), sampled every 0.25 s, and how many sites each round heard from. Used by
``python -m benchmarks`` and by the load test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import processes
from server.run_folder import RunFolder

SMALL_MODEL = """\
model_id = "loopback"
[model]
embed_dim = 8
hidden_dim = 16
[training]
rounds = {rounds}
local_epochs = 1
batch_size = 16
min_sites = {hospitals}
round_timeout_s = {round_timeout_s}
evaluate_every = {rounds}
[privacy]
noise_multiplier = 1.2
[secure_aggregation]
enabled = {secure}
"""


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = 4096
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            statm = (entry / "statm").read_text().split()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        rss[int(entry.name)] = int(statm[1]) * page
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakMemory:
    """Samples :func:`tree_rss_bytes` of a process in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, *, every_s: float = 0.25) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _fedmm(args: list[str], *, folder: Path, core: int | None = None) -> subprocess.Popen:
    """``fedmm ARGS`` in ``folder``; on one ``core`` only when given (a hospital's share)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "output.log").open("wb")
    pinned = ["taskset", "--cpu-list", str(core)] if core is not None else []
    try:
        return processes.start([*pinned, sys.executable, "-m", "fedmm", *args],
                               env=processes.flower_env(folder / ".flwr-home"), log=log,
                               cwd=folder)
    finally:
        log.close()  # the child holds its own copy


SERVER_READY = "waiting for hospitals"


def _wait_for_line(path: Path, text: str, *, process: subprocess.Popen,
                   timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    output = path.read_text(errors="replace")[-800:] if path.exists() else "(no output)"
    raise RuntimeError(f"the server did not get ready: {output}")


def run_loopback(*, root: Path, hospitals: int, rounds: int = 2, secure: bool = True,
                 samples_per_site: int = 40, round_timeout_s: float = 300.0,
                 timeout_s: float = 900.0, client_args: tuple[str, ...] = ()
                 ) -> dict[str, Any]:
    """Run one deployment in ``root`` and return its figures (see the module docstring)."""
    from common.secagg.identity import add_to_roster
    from simulations.demo_data import generate_demo
    from simulations.scenarios import Scenario

    keys, data, out = root / "keys", root / "data", root / "out"
    subprocess.run([sys.executable, "-m", "fedmm", "keys", "init", str(keys), "--server-name",
                    "127.0.0.1", "--hospitals", str(hospitals)], check=True,
                   capture_output=True, cwd=root)
    generate_demo(data, sites=hospitals, samples_per_site=samples_per_site, seed=7,
                  scenario=Scenario.IID, test_samples=40)
    peers = sorted((keys / "hospitals").glob("*.pub"))
    for i in range(1, hospitals + 1):  # what `fedmm keys roster` writes, for every site
        add_to_roster(data / f"site-{i:02d}" / "roster", peers)
    (root / "run.toml").write_text(SMALL_MODEL.format(
        rounds=rounds, hospitals=hospitals, round_timeout_s=round_timeout_s,
        secure=str(secure).lower()))
    port = processes.free_port()
    server_args = ["server", "--config", str(root / "run.toml"), "--certs", str(keys),
                   "--out", str(out), "--port", str(port), "--host", "127.0.0.1",
                   "--test-data", str(data / "test"), "--wait-for-sites", "600"]
    for i in range(1, hospitals + 1):
        server_args += ["--allow", str(keys / "hospitals" / f"hospital-{i}.pub")]
    clients: list[subprocess.Popen] = []
    # Each hospital on one of this machine's cores, in turn: its torch then trains with one
    # thread, where 20 hospitals with a thread per core each would oversubscribe the cores.
    cores = sorted(os.sched_getaffinity(0))
    started = time.perf_counter()
    server = _fedmm(server_args, folder=root / "server")
    try:
        with PeakMemory(server.pid) as memory:
            _wait_for_line(root / "server" / "output.log", SERVER_READY, process=server,
                           timeout_s=timeout_s)
            ready = time.perf_counter() - started
            for i in range(1, hospitals + 1):
                clients.append(_fedmm(
                    ["client", "--data", str(data / f"site-{i:02d}"), "--server",
                     f"127.0.0.1:{port}", "--ca", str(keys / "ca.crt"), "--key",
                     str(keys / "hospitals" / f"hospital-{i}.key"), *client_args],
                    folder=root / f"hospital-{i}", core=cores[i % len(cores)]))
            try:
                code: int | None = server.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                code = None
        wall = time.perf_counter() - started
    finally:
        processes.stop_all([server, *clients])
    records = RunFolder(out).rounds()
    return {
        "benchmark": "loopback_deployment", "hospitals": hospitals, "rounds": rounds,
        "secure_aggregation": secure, "exit_code": code, "wall_seconds": round(wall, 1),
        "server_ready_seconds": round(ready, 1),
        "round_seconds": [r.seconds for r in records],
        "sites_ok": [r.sites_ok for r in records],
        "aggregated": [r.aggregated for r in records],
        "secagg_degree": [(r.secure_aggregation or {}).get("degree") for r in records],
        "server_peak_rss_mib": round(memory.peak / 2**20, 1),
        "server_log": (root / "server" / "output.log").read_text(errors="replace")[-2000:],
    }


def loopback_load(*, quick: bool, command: str) -> list[str]:
    """The load benchmark: 20 hospitals (5 with ``--quick``), secure aggregation on, 2 rounds."""
    import tempfile

    from benchmarks.report import machine

    hospitals = 5 if quick else 20
    with tempfile.TemporaryDirectory(prefix="fm", dir="/tmp") as folder:
        row = run_loopback(root=Path(folder), hospitals=hospitals, rounds=2)
    log = row.pop("server_log")
    print(json.dumps(row), flush=True)
    if row["exit_code"] != 0:
        raise RuntimeError(f"the loopback deployment failed (exit {row['exit_code']}):\n{log}")
    seconds = ", ".join(f"{s:.1f}" for s in row["round_seconds"])
    return [
        "## A loopback deployment under load", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}", "",
        f"`fedmm keys init`, one `fedmm server` and, once it waits for them, {hospitals} "
        "`fedmm client` hospitals started at once on this machine (Flower SuperLink and "
        "SuperNodes, TLS, node authentication), "
        "DP-SGD and secure aggregation (SecAgg+) on, a small model (embed 8, hidden 16), 40 "
        "patients per hospital, 2 rounds, evaluation in the last. Every hospital shares "
        "this machine's cores: each one's processes run on one core (in turn), so its torch "
        "trains with one thread; a real deployment gives each hospital its own machine.", "",
        "| hospitals | wall time (s) | server ready after (s) | s / round | sites in each round "
        "| server peak memory (MiB) |",
        "|---|---|---|---|---|---|",
        f"| {hospitals} | {row['wall_seconds']} | {row['server_ready_seconds']} | {seconds} | "
        f"{', '.join(str(n) for n in row['sites_ok'])} | {row['server_peak_rss_mib']} |", "",
        "Server memory is the resident set of its whole process tree (the `fedmm server` "
        "CLI, SuperLink, SuperExec, ServerApp), sampled every 0.25 s. Wall time includes key "
        "generation, registration of every hospital's key and start-up.", "",
        "Where a round's time goes: a securely aggregated round is five messages per hospital "
        "(the five SecAgg+ stages; the last round adds an evaluation); the figures from "
        "before the changes named under \"Deployment latency\" are in this file's history "
        "(commit 78bc366). Each hospital's executor (`client/executor.py`) "
        "runs the installed ClientApp in the `fedmm client` process, which imported torch and "
        "Opacus once: no process is started per message; between messages it sleeps on a "
        "doorbell its SuperNode rings (`client/doorbell.py`). The server registers the "
        "hospitals' keys through Flower's Control API from its own process (one `flwr` "
        "process per key cost ~2 s of CPU each)."]
