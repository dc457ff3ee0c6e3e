"""The executor serves on whatever a task throws at it (its own tests with a real SuperNode are
the deployment and attack tests)."""

from __future__ import annotations

import time

from client.executor import Executor


def test_a_task_whose_error_text_breaks_the_reporter_does_not_stop_the_executor(
        tmp_path, monkeypatch) -> None:
    """A foreign bundle's file names reach the console; a name such as ``[/x].py`` once made
    the rich console raise inside the error handler and ended the executor's thread."""
    reports: list[str] = []

    def hostile_report(text: str) -> None:
        reports.append(text)
        raise ValueError(f"closing tag '[/x]' at position 0 has nothing to close ({text})")

    executor = Executor(socket_path=tmp_path / "api.sock", secret=b"s" * 32,
                        app_factory=lambda: None, on_refused=lambda *a: None,
                        on_error=hostile_report)
    monkeypatch.setattr(Executor, "_acquirer", lambda self: object())
    monkeypatch.setattr(Executor, "serve_one",
                        lambda self, acquirer: (_ for _ in ()).throw(RuntimeError("[/x].py")))
    executor.start()
    try:
        deadline = time.monotonic() + 5
        while len(reports) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(reports) >= 2 and executor.alive
    finally:
        executor.stop()
    assert not executor.alive
