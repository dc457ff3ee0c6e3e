import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.processes import (
    QUIET_ENV,
    flower_env,
    free_port,
    pids_mentioning,
    pids_running,
    port_open,
    start,
    stop,
    stop_all,
    stop_strays,
)


def test_flower_processes_get_a_quiet_own_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")  # would open 0.0.0.0:9093
    env = flower_env(tmp_path / "home")
    assert not [k for k in env if k.startswith("FLWR_INTERNAL_")]
    assert env["FLWR_HOME"] == str(tmp_path / "home") and (tmp_path / "home").is_dir()
    assert all(env[k] == v for k, v in QUIET_ENV.items())
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_stop_ends_the_whole_process_group(tmp_path) -> None:
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "time.sleep(60)")
    process = start([sys.executable, "-c", script], env=os.environ, log=None)
    time.sleep(1.0)
    group = os.getpgid(process.pid)
    stop(process, grace=2)
    assert process.poll() is not None
    assert living_members(group) == []


def test_stop_all_winds_every_group_down_together(tmp_path) -> None:
    """Four leaders each take 2 s to exit after SIGTERM, a fifth ignores it: all five are gone
    after about the 3 s grace, where one after another would take 4 × 2 + 3 s."""
    graceful = ("import signal, sys, time; "
                "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(2.0), sys.exit(0))); "
                "print('ready', flush=True); time.sleep(60)")
    stubborn = ("import signal, subprocess, sys, time; "
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)")
    logs = [tmp_path / f"{i}.log" for i in range(5)]
    started = [start([sys.executable, "-c", graceful if i < 4 else stubborn], env=os.environ,
                     log=log.open("wb")) for i, log in enumerate(logs)]
    deadline = time.monotonic() + 30
    while not all("ready" in log.read_text() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.1)
    groups = [os.getpgid(p.pid) for p in started]
    began = time.monotonic()
    stop_all([*started, None], grace=3)
    took = time.monotonic() - began
    assert all(p.poll() is not None for p in started)
    assert [p.returncode for p in started[:4]] == [0, 0, 0, 0]  # they exited by themselves
    assert started[4].returncode == -9 and all(living_members(g) == [] for g in groups)
    assert took < 6


def living_members(group: int) -> list[int]:
    """Processes of ``group`` that are not zombies (waiting only to be reaped)."""
    found = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True)
    alive = []
    for pid in found.stdout.split():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(int(pid))
    return alive


def test_free_port_is_free() -> None:
    port = free_port()
    assert not port_open("127.0.0.1", port)


def test_strays_are_found_by_their_arguments_and_stopped() -> None:
    marker = f"127.0.0.1:{free_port()}"
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "--runtime-api-address", marker])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "--runtime-api-address", marker + "0"])
    try:
        assert pids_running("--runtime-api-address", marker) == [stray.pid]
        assert stop_strays("--runtime-api-address", marker) == 1
        assert stray.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None
    finally:
        for process in (stray, other):
            process.kill()
            process.wait()


def test_processes_naming_a_folder_anywhere_in_their_arguments_are_found(tmp_path) -> None:
    named = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              f"--temp-dir={tmp_path}/session_1"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pids_mentioning(tmp_path) == [named.pid]
        assert pids_mentioning(tmp_path / "elsewhere") == []
    finally:
        for process in (named, other):
            process.kill()
            process.wait()
