"""The SuperNode entry point: its runtime API on a Unix socket, Flower's idle poll capped,
everything else Flower's."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from client import supernode


def test_capped_time_caps_sleep_and_forwards_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    capped = supernode.capped_time(0.5)
    capped.sleep(3)
    capped.sleep(0.2)
    assert slept == [0.5, 0.2]
    assert capped.monotonic is time.monotonic and capped.time is time.time


def test_the_supernode_loop_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.start_client_internal as loop

    monkeypatch.setattr(loop, "time", time)
    assert supernode.patch_idle_poll(0.5)
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    loop.time.sleep(3)  # the idle wait in Flower's loop
    assert slept == [0.5]
    assert not supernode.patch_idle_poll(0.5)  # already replaced: left alone


def test_it_is_flower_supernode_underneath(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "client.supernode", "--runtime-socket",
                             str(tmp_path / "api.sock"), "--idle-poll", "1", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--superlink" in result.stdout and "--auth-supernode-private-key" in result.stdout


def test_it_never_starts_without_its_socket() -> None:
    result = subprocess.run([sys.executable, "-m", "client.supernode", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--runtime-socket PATH is required" in result.stderr


def test_the_runtime_api_start_is_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import importlib

    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")
    monkeypatch.setattr(cli, "_start_supernode_http_api", cli._start_supernode_http_api)
    original = cli._start_supernode_http_api
    supernode.patch_runtime_socket(tmp_path / "api.sock")
    assert cli._start_supernode_http_api is not original
