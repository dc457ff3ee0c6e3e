"""The SuperNode's doorbell wakes its executor at once, and the executor asks for a task only
when it rings (or after the fallback), instead of many times a second."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from client import executor as executor_module
from client.doorbell import Doorbell, bell_path, ring
from client.executor import Executor


def test_the_bell_sits_next_to_the_runtime_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "runtime" / "api.sock"
    assert bell_path(socket_path) == tmp_path / "runtime" / "bell"
    assert len(bell_path(socket_path).name) <= len(socket_path.name)


def test_a_ring_wakes_the_waiter_at_once_and_silence_times_out(tmp_path: Path) -> None:
    bell = Doorbell(tmp_path / "bell")
    try:
        assert stat.S_ISSOCK(os.stat(tmp_path / "bell").st_mode)
        started = time.monotonic()
        assert not bell.wait(0.2)
        assert time.monotonic() - started >= 0.19
        threading.Timer(0.1, ring, args=(tmp_path / "bell",)).start()
        started = time.monotonic()
        assert bell.wait(10)
        assert time.monotonic() - started < 2
        for _ in range(5):  # rings before the wait: one wake-up takes them all
            ring(tmp_path / "bell")
        assert bell.wait(0)
        assert not bell.wait(0)
    finally:
        bell.close()
    assert not (tmp_path / "bell").exists()


def test_ringing_nobody_is_harmless(tmp_path: Path) -> None:
    ring(tmp_path / "nobody-listens")
    ring(tmp_path / "no-such-folder" / "bell")
    (tmp_path / "a-file").write_text("x")
    ring(tmp_path / "a-file")


def test_a_stale_bell_file_is_replaced(tmp_path: Path) -> None:
    Doorbell(tmp_path / "bell")._socket.close()  # a process that died without closing
    bell = Doorbell(tmp_path / "bell")
    try:
        ring(tmp_path / "bell")
        assert bell.wait(5)
    finally:
        bell.close()


@pytest.fixture
def counted_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An executor whose SuperNode is a counter of task requests (a pending task is served
    once, then the queue is empty)."""
    asked: list[float] = []
    pending: list[int] = []

    def serve_one(self, acquirer) -> bool:
        asked.append(time.monotonic())
        if pending:
            pending.pop()
            return True
        return False

    monkeypatch.setattr(Executor, "_acquirer", lambda self: object())
    monkeypatch.setattr(Executor, "serve_one", serve_one)
    executor = Executor(socket_path=tmp_path / "api.sock", secret=b"s" * 32,
                        app_factory=lambda: None, on_refused=lambda *a: None)
    executor.start()
    yield executor, asked, pending, tmp_path / "bell"
    executor.stop()


def test_the_executor_asks_only_when_rung_and_right_away(counted_executor) -> None:
    executor, asked, pending, bell = counted_executor
    deadline = time.monotonic() + 10
    while not bell.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)
    idle = len(asked)
    assert idle <= 2  # the first ask, perhaps one fallback: not ten a second
    pending.append(1)
    rung = time.monotonic()
    ring(bell)
    while len(asked) < idle + 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert asked[idle] - rung < 0.5  # served at once...
    assert len(asked) == idle + 2  # ...then asked once more (a round's next message)
    started = time.monotonic()
    executor.stop()
    assert time.monotonic() - started < 1 and not executor.alive


def test_a_lost_ring_costs_at_most_the_fallback(counted_executor) -> None:
    asked = counted_executor[1]
    deadline = time.monotonic() + executor_module.POLL_FALLBACK_S * 3 + 5
    while len(asked) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(asked) >= 2  # asked again without a ring
    gap = asked[1] - asked[0]
    assert executor_module.POLL_FALLBACK_S * 0.9 <= gap <= executor_module.POLL_FALLBACK_S * 2


def test_without_a_bell_it_asks_on_the_old_schedule(tmp_path: Path, monkeypatch) -> None:
    asked: list[float] = []
    monkeypatch.setattr(Executor, "_acquirer", lambda self: object())
    monkeypatch.setattr(Executor, "serve_one", lambda self, a: asked.append(1) or False)
    executor = Executor(socket_path=tmp_path / "missing-folder" / "api.sock", secret=b"s" * 32,
                        app_factory=lambda: None, on_refused=lambda *a: None)
    executor.start()
    try:
        time.sleep(executor_module.POLL_IDLE_S * 3)
        assert executor.alive and len(asked) >= 2
    finally:
        executor.stop()
