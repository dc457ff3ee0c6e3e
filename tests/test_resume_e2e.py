"""End to end through the CLI and Flower's real simulation engine (Ray): runs stopped every
way a run stops (a kill mid-checkpoint, a full disk, Ctrl-C, SIGTERM, Ctrl-C twice while Ray
starts) and resumed end with the model of a run that never stopped, and every round a site
trained is in its ε. A file of its own: its interrupts have deadlines ("within 10 s"), so it runs
with the machine to itself (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from client.ledger import PrivacyLedger
from common.processes import pids_mentioning
from server.checkpoint import list_checkpoints, load_checkpoint
from simulations.demo_data import generate_demo
from simulations.scenarios import Scenario
from tests.e2e import CliRun, RayCluster, read_jsonl, run_cli, write_run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, ray: RayCluster
                  ) -> dict[str, Path]:
    """An uninterrupted run a (4 rounds, 2 demo sites of 50) that stopped runs must end equal to;
    ``_same_data()`` makes a fresh copy of its data (same seed, same folders)."""
    root = tmp_path_factory.mktemp("reference")
    config_path = write_run_config(root, rounds=4)
    with config_path.open("a") as handle:  # bit-for-bit equal runs need the same mode at both
        handle.write('grad_sample_mode = "hooks"\n')  # sites: auto measures each machine
    generate_demo(root / "a", sites=2, samples_per_site=50, seed=5, scenario=Scenario.IID,
                  test_samples=0)
    code, output = run_cli(["simulate", "--data", str(root / "a"), "--config",
                            str(config_path), "--out", str(root / "run-a"), *ray.address],
                           cwd=root)
    assert code == 0, output
    return {"root": root, "config": config_path, "run": root / "run-a"}


def _same_data(reference: dict[str, Path], folder: Path) -> Path:
    generate_demo(folder, sites=2, samples_per_site=50, seed=5, scenario=Scenario.IID,
                  test_samples=0)
    return folder


def _assert_same_model(reference: dict[str, Path], run: Path) -> None:
    a = load_file(str(reference["run"] / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_crash_and_a_full_disk_lose_nothing_and_resume_ends_with_the_same_model(
        tmp_path: Path, reference_run: dict[str, Path], ray: RayCluster) -> None:
    """Run b is SIGKILLed halfway through writing its round-2 checkpoint, resumed, finds its disk
    full when writing round 3's, and is resumed again: it ends with run a's model (same data,
    uninterrupted), and every round a site trained, repeated ones included, is in its ε."""
    config_path = reference_run["config"]
    _same_data(reference_run, tmp_path / "b")
    run_b = tmp_path / "run-b"
    args = ["simulate", "--data", str(tmp_path / "b"), "--config", str(config_path),
            "--out", str(run_b), *ray.address]

    def crashing(fault: str, *extra: str) -> tuple[int, str]:
        run = CliRun([fault, *args, *extra], cwd=tmp_path, module="tests.crash")
        return run.wait(300), run.output()

    code, output = crashing("die:round-0002.safetensors:1")
    assert code == 1, output  # the worker was killed; the CLI says so and how to go on
    assert ("error: the simulation process died in round 2/4 (exit status -9); the last "
            "checkpoint, round-0001.safetensors, is intact" in output), output
    assert "--resume" in output and "Traceback" not in output
    checkpoints = run_b / "checkpoints"
    assert [p.name for p in list_checkpoints(run_b)] == ["round-0001.safetensors"]
    assert len(list(checkpoints.glob(".round-0002.safetensors.*.tmp"))) == 1  # the torn write
    assert not (run_b / "summary.json").exists()

    code, output = crashing("full:round-0003.safetensors:1", "--resume")
    assert code == 1, output
    assert ("error: could not write the round 3 checkpoint in " in output
            and "File too large; round-0002.safetensors is intact. Free space or fix "
            "permissions there, then rerun with --resume" in output), output
    assert "Traceback" not in output
    assert [p.name for p in list_checkpoints(run_b)] == ["round-0001.safetensors",
                                                         "round-0002.safetensors"]
    assert load_checkpoint(checkpoints / "round-0002.safetensors").round == 2
    assert not list(checkpoints.glob(".*.tmp"))  # swept at the start of the resumed run

    code, output = run_cli([*args, "--resume"], cwd=tmp_path)
    assert code == 0, output
    assert [r["round"] for r in read_jsonl(run_b / "metrics.jsonl")] == [1, 2, 3, 4]
    _assert_same_model(reference_run, run_b)
    summary_a = json.loads((reference_run["run"] / "summary.json").read_text())
    summary_b = json.loads((run_b / "summary.json").read_text())
    for site in ("site-01", "site-02"):
        spend = PrivacyLedger(tmp_path / "b" / site / ".fedmm").spend("e2e-model")
        assert spend is not None
        # rounds 1, 2, 2 again, 3, 3 again, 4: six rounds of DP-SGD steps, all counted
        assert [r["round"] for r in spend.rounds] == [1, 2, 2, 3, 3, 4]
        assert summary_b["privacy"]["sites"][site]["epsilon"] == pytest.approx(spend.epsilon)
        assert spend.epsilon > summary_a["privacy"]["sites"][site]["epsilon"]
    shutil.rmtree(run_b / ".ray", ignore_errors=True)


def _interrupt(run: CliRun, sig: int, *, then: int | None = None) -> tuple[int, float, str]:
    """Send ``sig`` to the CLI's process group, as a terminal's Ctrl-C does (``then``: a second
    signal 0.3 s later); returns the exit code, the seconds it took and the output. Every process
    the CLI started must be gone as it exits."""
    started = time.monotonic()
    os.killpg(run.process.pid, sig)
    if then is not None:
        time.sleep(0.3)
        os.killpg(run.process.pid, then)
    code = run.process.wait(timeout=60)
    seconds = time.monotonic() - started
    left = pids_mentioning(run.tmpdir) + pids_mentioning(str(run.cwd))
    run.stop()
    assert not left, f"processes left behind: {left}"
    return code, seconds, run.output()


def _wait_for(condition, run: CliRun, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.process.poll() is None, f"exited before {what}: {run.output()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s: {run.output()}"
        time.sleep(0.05)


@pytest.mark.deadlines  # "within 10 s"
def test_ctrl_c_and_sigterm_stop_everything_at_once_and_resume_ends_with_the_same_model(
        tmp_path: Path, reference_run: dict[str, Path], ray: RayCluster) -> None:
    """Ctrl-C mid-round, SIGTERM halfway through writing a checkpoint, then --resume: each stop
    takes under 10 s, says in one line what was interrupted, what is intact and how to go on,
    leaves no process (Ray's included) and no traceback, and the resumed run ends with the
    uninterrupted run's model; every round a site started is in its ε. A Ctrl-C while Ray
    starts, followed by a second one, quits as cleanly."""
    data = _same_data(reference_run, tmp_path / "data")
    out = tmp_path / "run"
    args = ["simulate", "--data", str(data), "--config", str(reference_run["config"]),
            "--out", str(out)]
    run = CliRun(args, cwd=tmp_path)
    _wait_for(lambda: (out / "metrics.jsonl").exists() and
              (out / "metrics.jsonl").read_text().strip(), run, "round 1")
    code, seconds, output = _interrupt(run, signal.SIGINT)
    assert code == 130 and seconds < 10, (code, seconds, output)
    assert re.search(r"interrupted \(Ctrl-C\) in round [234]/4; every process it started is "
                     r"stopped; the last checkpoint, round-000[123]\.safetensors, is intact; "
                     r"continue with: fedmm simulate .* --resume\n", output), output
    assert "Traceback" not in output and "Error" not in output, output

    paused = CliRun(["pause:round-0004.safetensors:1", *args, "--resume"], cwd=tmp_path,
                    module="tests.crash")
    torn = out / "checkpoints"
    _wait_for(lambda: any(torn.glob(".round-0004.safetensors.*.tmp")), paused,
              "the round-4 checkpoint write", timeout=180)
    code, seconds, output = _interrupt(paused, signal.SIGTERM)
    assert code == 143 and seconds < 10, (code, seconds, output)
    assert ("interrupted (SIGTERM) in round 4/4; every process it started is stopped; the last "
            "checkpoint, round-0003.safetensors, is intact" in output), output
    assert "Traceback" not in output, output
    assert [p.name for p in list_checkpoints(out)][-1] == "round-0003.safetensors"

    # the interrupted runs started Ray themselves (what is stopped includes it); the resumed
    # one only has to finish: it joins this file's cluster
    code, output = run_cli([*args, "--resume", *ray.address], cwd=tmp_path)
    assert code == 0, output
    assert [r["round"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    _assert_same_model(reference_run, out)
    summary = json.loads((out / "summary.json").read_text())
    for site in ("site-01", "site-02"):
        spend = PrivacyLedger(data / site / ".fedmm").spend("e2e-model")
        assert spend is not None
        assert {r["round"] for r in spend.rounds} == {1, 2, 3, 4}
        assert summary["privacy"]["sites"][site]["epsilon"] == pytest.approx(spend.epsilon)

    starting = CliRun([*args[:-1], str(tmp_path / "run-start")], cwd=tmp_path)
    _wait_for(lambda: (tmp_path / "run-start" / ".ray").exists(), starting, "Ray's start")
    time.sleep(1.0)
    code, seconds, output = _interrupt(starting, signal.SIGINT, then=signal.SIGINT)
    assert code == 130 and seconds < 10, (code, seconds, output)
    assert ("interrupted (Ctrl-C) in its start (Ray) or round 1; every process it started is "
            "stopped; no round had finished, so there is no checkpoint yet" in output), output
    assert "Traceback" not in output, output
