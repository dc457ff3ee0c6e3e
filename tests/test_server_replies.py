"""Sending a round's messages and reading the replies as plain data."""

from __future__ import annotations

import time

import pytest
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common import wire
from common.records import to_records
from server.replies import (
    FIRST_POLL_S,
    IN_PROCESS_POLL_S,
    POLL_INTERVAL_S,
    poll_limit_s,
    send_and_parse,
)


class SlowGrid:
    """Answers node n's message on the n-th ask for replies; node 99 never answers."""

    def __init__(self) -> None:
        self.pushed: dict[str, Message] = {}
        self.asks = 0

    def push_messages(self, messages):
        ids = []
        for i, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{i}"
            self.pushed[f"m{i}"] = message
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, message_ids):
        self.asks += 1
        ready = []
        for message_id in sorted(message_ids):
            message = self.pushed[message_id]
            node = message.metadata.dst_node_id
            if node == self.asks:
                content = RecordDict({
                    **to_records(wire.Status(site_id=f"site-{node}", status="ok")),
                    **to_records(wire.EvaluationReport(count=node, correct=node, loss_sum=0.0,
                                                       loss_bound=5.0, private=False))})
                reply = Message(content, reply_to=message)
                reply.metadata.__dict__["_src_node_id"] = node
                ready.append(reply)
        return ready


@pytest.fixture(autouse=True)
def inside_a_server_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages take their run and node ids from the running task, as in a ServerApp."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_replies_are_collected_across_asks_and_silent_nodes_are_named() -> None:
    grid = SlowGrid()
    started = time.monotonic()
    config = wire.RoundConfig(run_config="{}", round=1, run_id="r")
    replies = send_and_parse(grid, [1, 2, 99], "evaluate", config=config, arrays=None,
                             extra=None, timeout=1.0, group_id="1",
                             site_of={1: "site-1", 2: "site-2", 99: "site-99"})
    waited = time.monotonic() - started
    assert [(r.site_id, r.status, r.code) for r in replies] == [
        ("site-1", "ok", ""), ("site-2", "ok", ""), ("site-99", "failed", "no-reply")]
    assert replies[1].read(wire.EvaluationReport).count == 2
    assert grid.pushed["m0"].content["config"]["round"] == 1
    assert grid.asks >= 1.0 / POLL_INTERVAL_S - 1 and waited < 2.0  # asked often, until timeout


def test_the_deployment_grid_retries_late_objects_sooner(monkeypatch) -> None:
    import flwr.superlink.grid.http_grid as grid

    from server.replies import patch_grid_object_pulls

    monkeypatch.setattr(grid, "pull_objects", grid.pull_objects)  # restored afterwards
    assert patch_grid_object_pulls()
    assert grid.pull_objects.quick_retries


class InProcessGrid(SlowGrid):
    """A simulation's grid: it reads a ``LinkState`` in this process."""

    def __init__(self) -> None:
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

        super().__init__()
        self.state = InMemoryLinkState.__new__(InMemoryLinkState)


class Wrapper:
    """A grid wrapped as the SecAgg+ benchmark wraps it: attributes forwarded."""

    def __init__(self, grid) -> None:
        self.grid = grid

    def __getattr__(self, name):
        return getattr(self.grid, name)


@pytest.mark.parametrize("grid, limit", [
    (SlowGrid(), POLL_INTERVAL_S), (InProcessGrid(), IN_PROCESS_POLL_S),
    (Wrapper(InProcessGrid()), IN_PROCESS_POLL_S), (Wrapper(SlowGrid()), POLL_INTERVAL_S)])
def test_asks_double_from_the_first_poll_to_the_limit_of_the_grids_kind(
        monkeypatch, grid, limit) -> None:
    import server.replies

    slept: list[float] = []
    monkeypatch.setattr(server.replies.time, "sleep", slept.append)
    clock = iter(range(0, 10_000))
    monkeypatch.setattr(server.replies.time, "monotonic", lambda: next(clock) * 0.01)
    config = wire.RoundConfig(run_config="{}", round=1, run_id="r")
    send_and_parse(grid, [99], "evaluate", config=config, arrays=None, extra=None,
                   timeout=1.0, group_id="1", site_of={99: "site-99"})  # never answers
    assert poll_limit_s(grid) == limit
    assert slept[:3] == [FIRST_POLL_S, 2 * FIRST_POLL_S, 4 * FIRST_POLL_S]
    assert max(slept) == limit and slept[-1] == limit


def test_a_deployments_server_app_does_not_load_the_link_state_to_choose_its_polls() -> None:
    """``poll_limit_s`` reads what is loaded; importing Flower's LinkState would bring in
    SQLAlchemy and Alembic (1.6 s of a ServerApp's start) for a grid that has none."""
    import subprocess
    import sys

    code = ("import sys; from server.replies import poll_limit_s, POLL_INTERVAL_S; "
            "assert poll_limit_s(object()) == POLL_INTERVAL_S; "
            "print('flwr.server.superlink.linkstate' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
