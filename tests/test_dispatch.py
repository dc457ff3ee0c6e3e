"""The simulation engine's message dispatch: the same loop as Flower's, a shorter wait."""

from __future__ import annotations

import inspect
import threading
from queue import Queue

import pytest

from simulations import dispatch

pytestmark = pytest.mark.timeout(30)  # a loop that ignored its stop would hang, not fail


class State:
    """A run's state holding each node's messages."""

    def __init__(self, messages: dict[int, list[str]]) -> None:
        self.messages = messages

    def get_message_ins(self, *, node_id: int, limit: int) -> list[str]:
        taken, self.messages[node_id] = (self.messages[node_id][:limit],
                                         self.messages[node_id][limit:])
        return taken


class Stop:
    """The loop's stop event: keeps each wait asked for and stops after ``waits`` of them;
    ``arrive`` adds messages to the state at a given wait."""

    def __init__(self, waits: int, state: State, arrive: dict[int, tuple[int, str]]) -> None:
        self.asked: list[float] = []
        self.waits, self.state, self.arrive = waits, state, arrive

    def is_set(self) -> bool:
        return len(self.asked) >= self.waits

    def wait(self, seconds: float) -> bool:
        self.asked.append(seconds)
        if (new := self.arrive.get(len(self.asked))) is not None:
            self.state.messages[new[0]].append(new[1])
        return self.is_set()


def test_every_nodes_messages_reach_the_queue_one_per_ask_in_order() -> None:
    state, queue = State({1: ["a1", "a2", "a3"], 2: ["b1"]}), Queue()
    dispatch.add_messages_to_queue(state, queue, {1: None, 2: None}, Stop(5, state, {}))
    assert [queue.get_nowait() for _ in range(queue.qsize())] == ["a1", "b1", "a2", "a3"]


def test_it_asks_again_within_milliseconds_after_a_message_and_backs_off_while_idle() -> None:
    state, queue = State({1: [], 2: []}), Queue()
    stop = Stop(12, state, {6: (2, "m")})  # a message arrives during the 6th wait
    dispatch.add_messages_to_queue(state, queue, {1: None, 2: None}, stop)
    assert queue.get_nowait() == "m"
    first, longest = dispatch.FIRST_WAIT_S, dispatch.LONGEST_WAIT_S
    assert stop.asked == [longest] * 6 + [first, 2 * first, 4 * first, 8 * first, 16 * first,
                                          longest]


def test_it_stops_when_told() -> None:
    stop = threading.Event()
    stop.set()
    dispatch.add_messages_to_queue(State({1: ["x"]}), Queue(), {1: None}, stop)  # returns


def test_the_patch_replaces_flowers_loop_and_refuses_one_it_does_not_know(monkeypatch) -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    assert list(inspect.signature(original).parameters) == dispatch.EXPECTED_PARAMETERS
    monkeypatch.setattr(vce_api, "add_messages_to_queue", original)
    assert dispatch.patch_message_dispatch()
    assert vce_api.add_messages_to_queue is dispatch.add_messages_to_queue
    assert dispatch.patch_message_dispatch()  # twice: still this one

    def changed(state, queue, nodes_mapping, f_stop, extra):  # pragma: no cover - never run
        raise AssertionError

    monkeypatch.setattr(vce_api, "add_messages_to_queue", changed)
    assert not dispatch.patch_message_dispatch()
    assert vce_api.add_messages_to_queue is changed


def test_without_flowers_loop_nothing_is_patched(monkeypatch) -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    monkeypatch.delattr(vce_api, "add_messages_to_queue")
    assert not dispatch.patch_message_dispatch()
    assert not hasattr(vce_api, "add_messages_to_queue")
