"""The SuperNode entry point: its runtime API on a Unix socket, polls that back off after each
message, everything else Flower's."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from client import supernode


def test_polls_back_off_after_a_message_and_local_waits_are_short(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    sleep = supernode.BackoffSleep()
    for _ in range(8):
        sleep(3)  # just started: quick, then idle at Flower's 3 s
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3, 3]
    slept.clear()
    sleep.message_arrived()
    for _ in range(6):
        sleep(3)
    sleep(0.5)  # the wait for the executor's reply
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, supernode.LOCAL_WAIT_S]
    for _ in range(2):
        sleep(3)
    assert slept[-2:] == [3, 3]  # back to Flower's idle poll
    capped = supernode.BackoffSleep(limit_s=0.15)
    capped.message_arrived()
    for _ in range(3):
        capped(3)
    assert slept[-3:] == [0.05, 0.1, 0.15]


def test_the_supernode_loop_is_patched(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import flwr.supernode.start_client_internal as loop

    from client.doorbell import Doorbell

    monkeypatch.setattr(loop, "time", time)
    pulls = iter([None, 7])
    monkeypatch.setattr(loop, "_pull_and_store_message", lambda **kw: next(pulls))
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)  # restored afterwards
    bell = Doorbell(tmp_path / "bell")
    assert supernode.patch_polling(bell=tmp_path / "bell")
    assert loop.pull_objects.quick_retries  # a message's late objects are retried sooner
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    assert loop._pull_and_store_message() is None
    assert not bell.wait(0)  # no message: the executor sleeps on
    for _ in range(7):
        loop.time.sleep(3)  # the idle wait in Flower's loop: quick after the start, then 3 s
    assert loop._pull_and_store_message() == 7  # a message: the next polls are quick
    assert bell.wait(0)  # ...and the executor is woken for it
    bell.close()
    loop.time.sleep(3)
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3, supernode.FIRST_POLL_S]
    assert loop.time.monotonic is time.monotonic
    assert not supernode.patch_polling()  # already replaced: left alone


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
