"""Flower's object pulls with quicker retries: the wrapper's settings reach Flower's
``pull_objects``, a caller's own settings win, and a real pull of an object that arrives late
succeeds."""

from __future__ import annotations

from common.object_pulls import OBJECT_RETRY_CAP_S, OBJECT_RETRY_S, quick_object_retries


def test_quick_retries_are_the_default_and_a_callers_settings_win() -> None:
    calls = []
    pull = quick_object_retries(lambda *args, **kwargs: calls.append((args, kwargs)))
    pull(["a"], "fn")
    pull(["b"], "fn", initial_backoff=3.0)
    assert calls[0] == ((["a"], "fn"), {"initial_backoff": OBJECT_RETRY_S,
                                       "backoff_cap": OBJECT_RETRY_CAP_S,
                                       "max_tries_per_object": None})
    assert calls[1][1]["initial_backoff"] == 3.0
    assert quick_object_retries(pull) is pull  # wrapped once


def test_an_object_pushed_late_is_pulled_with_flowers_own_function() -> None:
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError, pull_objects

    tries = {"x": 0}

    def pull_one(object_id: str) -> bytes:
        tries[object_id] += 1
        if tries[object_id] < 4:  # not pushed yet
            raise ObjectUnavailableError(object_id)
        return b"content"

    assert quick_object_retries(pull_objects)(["x"], pull_one) == {"x": b"content"}
    assert tries["x"] == 4
