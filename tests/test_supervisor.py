"""The supervisor of ``fedmm simulate``, driving fake workers (real processes, real signals): it
relays the worker's events, tells a crash from an error, and on a signal stops the worker's whole
process group and anything naming the run's Ray folder, within its grace period."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.processes import pids_mentioning
from simulations import supervisor
from simulations.supervisor import SimulationJob, Supervisor

# A fake worker: its first argument is the event pipe's file descriptor; the job on stdin.
PRELUDE = """\
import json, os, subprocess, sys, time
events = os.fdopen(int(sys.argv[-1]), "w")
job = json.loads(sys.stdin.read())
def send(**event):
    events.write(json.dumps(event) + "\\n"); events.flush()
"""


@pytest.fixture
def signals_restored() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _job(tmp_path: Path) -> SimulationJob:
    return SimulationJob(config_json="{}", run_dir=tmp_path / "run", site_dirs=[])


def _worker(monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = PRELUDE + textwrap.dedent(body)
    monkeypatch.setattr(supervisor, "WORKER_COMMAND", [sys.executable, "-c", script])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for its parent is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_rounds_and_warnings_are_relayed_and_done_ends_it(tmp_path, monkeypatch) -> None:
    _worker(monkeypatch, """
        send(event="round", record={"round": 1, "run": job["run_dir"]})
        send(event="warning", message="careful")
        send(event="done", stop_reason="all rounds")
    """)
    rounds, warnings = [], []
    outcome = Supervisor(_job(tmp_path), on_round=rounds.append,
                         on_warning=warnings.append).run()
    assert (outcome.kind, outcome.message) == ("done", "all rounds")
    assert rounds == [{"round": 1, "run": str(tmp_path / "run")}]
    assert warnings == ["careful"]


def test_an_error_is_a_message_and_a_silent_exit_is_a_death(tmp_path, monkeypatch) -> None:
    _worker(monkeypatch, 'send(event="error", message="site-1: no manifest.csv")\nsys.exit(1)')
    outcome = Supervisor(_job(tmp_path), on_round=print, on_warning=print).run()
    assert (outcome.kind, outcome.message) == ("error", "site-1: no manifest.csv")

    _worker(monkeypatch, 'os.kill(os.getpid(), 9)')
    outcome = Supervisor(_job(tmp_path), on_round=print, on_warning=print).run()
    assert (outcome.kind, outcome.exit_status) == ("died", -signal.SIGKILL)


def test_a_signal_stops_the_worker_its_group_and_its_ray_processes(
        tmp_path, monkeypatch, signals_restored) -> None:
    """The worker ignores SIGTERM (only SIGKILL after the grace stops it); its child stays in its
    group; a process naming the run's Ray folder left the group, as Ray's can."""
    monkeypatch.setattr(supervisor, "GRACE_S", 0.5)
    _worker(monkeypatch, """
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        ray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "--temp-dir=" + job["run_dir"] + "/.ray/session"],
                               start_new_session=True)
        send(event="round", record={"child": child.pid, "ray": ray.pid})
        time.sleep(60)
    """)
    started: dict[str, int] = {}

    def on_round(record: dict[str, int]) -> None:
        started.update(record)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` from another terminal would

    watch = Supervisor(_job(tmp_path), on_round=on_round, on_warning=print)
    began = time.monotonic()
    outcome = watch.run()
    assert (outcome.kind, outcome.signum) == ("interrupted", signal.SIGTERM)
    assert time.monotonic() - began < 10
    assert watch.process is not None and watch.process.poll() == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in started.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in started.values()), started
    assert pids_mentioning(tmp_path / "run" / ".ray") == []
    # This process is quitting: a later signal changes nothing.
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_weakened_without_the_ray_sweep_a_process_outside_the_group_survives(
        tmp_path, monkeypatch, signals_restored) -> None:
    """The same stop with the sweep of the Ray folder taken out leaves Ray's process running:
    the sweep is what stops it."""
    monkeypatch.setattr(supervisor, "GRACE_S", 0.5)
    monkeypatch.setattr(supervisor.processes, "pids_mentioning", lambda *texts: [])
    _worker(monkeypatch, """
        ray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "--temp-dir=" + job["run_dir"] + "/.ray/session"],
                               start_new_session=True)
        send(event="round", record={"ray": ray.pid})
        time.sleep(60)
    """)
    started: dict[str, int] = {}

    def on_round(record: dict[str, int]) -> None:
        started.update(record)
        os.kill(os.getpid(), signal.SIGINT)

    outcome = Supervisor(_job(tmp_path), on_round=on_round, on_warning=print).run()
    try:
        assert outcome.kind == "interrupted"
        time.sleep(0.5)
        assert not _gone(started["ray"])
    finally:
        os.kill(started["ray"], signal.SIGKILL)
