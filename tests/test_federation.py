"""The round loop's aggregation step: a round without a usable mean keeps the global model."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import RecordDict

from common import wire
from common.config import RunConfig
from common.records import to_records
from server.federation import Federation, FederationError
from server.optimizers import build_server_optimizer
from server.replies import SiteReply, TrainOutcome
from server.run_folder import RunFolder
from server.run_state import RunState


def state_for(config: RunConfig, tmp_path) -> RunState:
    return RunState(config=config, folder=RunFolder(tmp_path), run_id="r",
                    weights={"w": np.ones(3, np.float32)},
                    optimizer=build_server_optimizer(config.training))


def setup(tmp_path, **training):
    config = RunConfig.model_validate({"training": {"min_sites": 2, **training}})
    federation = Federation(grid=None, config=config, run_dir=tmp_path, callbacks=[])
    return federation, state_for(config, tmp_path)


def report(examples: int = 10) -> RecordDict:
    return RecordDict(to_records(wire.TrainReport(num_examples=examples, train_loss=0.5,
                                                  steps=1, skipped_rows=0, seconds=0.1)))


def reply(site: str, status: str = "ok", code: str = "") -> SiteReply:
    return SiteReply(1, site, status, code, "", None, report())


def aggregate(federation: Federation, state: RunState, outcome: TrainOutcome):
    record = federation._record_round(state, outcome)
    federation._step_global_model(state, outcome, record)
    return record


def test_an_aborted_secure_round_keeps_the_previous_model_and_says_why(tmp_path) -> None:
    federation, state = setup(tmp_path)
    note = "secure aggregation aborted: only 1 of 3 clients sent masked input; global model kept"
    outcome = TrainOutcome([reply("a"), reply("b", "failed", "no-reply")], None, 0, note=note,
                           details={"clients": 3, "threshold": 2})
    record = aggregate(federation, state, outcome)
    assert record.aggregated is False and record.note == note
    assert record.secure_aggregation == {"clients": 3, "threshold": 2}
    assert np.array_equal(state.weights["w"], np.ones(3, np.float32))


def test_fewer_contributors_than_min_sites_keep_the_model(tmp_path) -> None:
    federation, state = setup(tmp_path)
    outcome = TrainOutcome([reply("a")], {"w": np.full(3, 0.5, np.float32)}, 1)
    record = aggregate(federation, state, outcome)
    assert record.aggregated is False and "min_sites 2" in record.note
    assert np.array_equal(state.weights["w"], np.ones(3, np.float32))


def test_a_non_finite_aggregate_is_rejected(tmp_path) -> None:
    federation, state = setup(tmp_path)
    outcome = TrainOutcome([reply("a"), reply("b")], {"w": np.full(3, np.nan, np.float32)}, 2)
    record = aggregate(federation, state, outcome)
    assert record.aggregated is False and "not finite" in record.note
    assert np.array_equal(state.weights["w"], np.ones(3, np.float32))


def test_plain_updates_are_screened_one_by_one(tmp_path) -> None:
    config = RunConfig.model_validate({"training": {"min_sites": 2},
                                       "secure_aggregation": {"enabled": False}})
    federation = Federation(grid=None, config=config, run_dir=tmp_path, callbacks=[])
    state = state_for(config, tmp_path)
    updates = {"a": {"w": np.array([0.5, 0.5, 0.5], np.float32)},
               "b": {"w": np.array([0.5, 20.0, -30.0], np.float32)},  # beyond ±8
               "c": {"w": np.array([0.5, np.nan, 0.5], np.float32)},
               "d": {"w": np.ones(4, np.float32)},
               "e": {"v": np.ones(3, np.float32)}}
    federation._exchange = lambda nodes, kind, state, arrays, extra=None: [
        SiteReply(i, site, "ok", "", "", update, report())
        for i, (site, update) in enumerate(updates.items())]
    outcome = federation._collect_mean_update(state, [0, 1, 2, 3, 4])
    record = aggregate(federation, state, outcome)
    sites = record.sites
    assert outcome.contributors == 2 and record.aggregated is True
    assert sites["a"].status == "ok" and sites["a"].num_examples == 10
    assert sites["a"].out_of_range == 0 and sites["a"].code is None
    assert sites["b"].out_of_range == 2
    assert sites["c"].code == "non-finite" and sites["c"].status == "rejected"
    assert sites["d"].code == "bad-shape" and "shape (4,)" in sites["d"].reason
    assert sites["e"].code == "bad-shape" and "'v'" in sites["e"].reason
    assert np.isfinite(state.weights["w"]).all()


def test_a_usable_mean_moves_the_model(tmp_path) -> None:
    federation, state = setup(tmp_path)
    outcome = TrainOutcome([reply("a"), reply("b")], {"w": np.full(3, 0.5, np.float32)}, 2)
    record = aggregate(federation, state, outcome)
    assert record.aggregated is True and record.sites_ok == 2
    assert np.allclose(state.weights["w"], 1.5)


def test_secure_rounds_select_at_least_two_sites(tmp_path) -> None:
    federation, _ = setup(tmp_path, min_sites=1, fraction_train=0.1)
    assert len(federation._select([11, 12, 13, 14, 15], round_number=1)) == 2
    plain = Federation(grid=None, config=RunConfig.model_validate({
        "training": {"fraction_train": 0.1}, "secure_aggregation": {"enabled": False}}),
        run_dir=tmp_path, callbacks=[])
    assert len(plain._select([11, 12, 13, 14, 15], round_number=1)) == 1


class OnlineGrid:
    def __init__(self, online: list[int]) -> None:
        self.online = online

    def get_node_ids(self) -> list[int]:
        return self.online


def test_sites_flower_no_longer_sees_are_not_selected(tmp_path) -> None:
    federation, _ = setup(tmp_path)
    federation.grid = OnlineGrid([11, 13])
    assert federation._prefer_online([11, 12, 13]) == [11, 13]
    federation.grid = OnlineGrid([11])  # too few online: try them all, silent ones time out
    assert federation._prefer_online([11, 12, 13]) == [11, 12, 13]


def test_validation_sums_add_up_across_sites_and_noise_stays_in_range() -> None:
    from server.federation import combine_evaluations

    def sums(count, correct, loss, private=False):
        return wire.EvaluationReport(count=count, correct=correct, loss_sum=loss,
                                     loss_bound=5.0, private=private)

    combined = combine_evaluations([sums(10, 5, 8.0), sums(30, 27, 4.0)])
    assert combined["accuracy"] == pytest.approx(32 / 40)
    assert combined["loss"] == pytest.approx(12 / 40)
    assert combined["evaluated_sites"] == 2 and combined["evaluation_private"] is False
    noisy = combine_evaluations([sums(3.2, 4.1, -2.0, private=True)])
    assert noisy["accuracy"] == 1.0 and noisy["loss"] == 0.0 and noisy["evaluation_private"]
    assert "accuracy" not in combine_evaluations([sums(-1.5, 0.3, 1.0, private=True)])
    assert combine_evaluations([]) == {}


def test_a_site_that_will_not_release_metrics_is_not_asked_again(tmp_path) -> None:
    federation, state = setup(tmp_path)
    asked = []

    def exchange(nodes, kind, state, arrays, extra=None, *, round_number=None):
        asked.append(list(nodes))
        return [SiteReply(1, "site-1", "refused", wire.EVALUATION_NOT_PRIVATE, "no mechanism",
                          None, RecordDict()),
                SiteReply(2, "site-2", "ok", "", "", None, RecordDict(to_records(
                    wire.EvaluationReport(count=20, correct=10, loss_sum=5.0, loss_bound=5.0,
                                          private=True, epsilon=0.4,
                                          history=[[10.0, 1.0, 1]]))))][:len(nodes)]

    federation.site_of = {1: "site-1", 2: "site-2"}
    federation._exchange = exchange
    assert federation._evaluate(state, [1, 2], None)["accuracy"] == 0.5
    assert state.sites["site-2"].epsilon == 0.4  # the release's ε reaches the summary
    federation._evaluate(state, [1, 2], None)
    assert asked == [[1, 2], [2]]
    assert "site-1" in federation.not_evaluating


def test_a_model_average_is_what_sites_evaluate_while_training_goes_on(tmp_path) -> None:
    federation, state = setup(tmp_path, model_average=0.9, server_momentum=0.0)
    for _ in range(2):
        aggregate(federation, state, TrainOutcome(
            [reply("a"), reply("b")], {"w": np.full(3, 1.0, np.float32)}, 2))
    assert np.allclose(state.weights["w"], 3.0)  # trained: 1 → 2 → 3
    average = (1 / 11) * 2.0 + (10 / 11) * 3.0  # β₂ = min(0.9, 1/11)
    assert np.allclose(state.released_weights["w"], average)
    sent = []

    def exchange(nodes, kind, state, arrays, extra=None, *, round_number=None):
        sent.append(arrays)
        return []

    federation._exchange = exchange
    federation._evaluate(state, [1], None)
    assert np.allclose(sent[0]["w"], average)


def test_a_non_finite_aggregate_leaves_the_server_optimiser_as_it_was(tmp_path) -> None:
    federation, state = setup(tmp_path, server_momentum=0.9, model_average=0.5)
    aggregate(federation, state, TrainOutcome(
        [reply("a"), reply("b")], {"w": np.full(3, 1.0, np.float32)}, 2))
    before = state.optimizer.state()
    record = aggregate(federation, state, TrainOutcome(
        [reply("a"), reply("b")], {"w": np.full(3, np.inf, np.float32)}, 2))
    assert record.aggregated is False
    after = state.optimizer.state()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


class ScriptedGrid:
    """Flower's view of who is online, one entry per look (the last one stays)."""

    def __init__(self, *views: list[int]) -> None:
        self.views = list(views)

    def get_node_ids(self) -> list[int]:
        return self.views.pop(0) if len(self.views) > 1 else self.views[0]


class VirtualClock:
    """``time.monotonic`` that only ``sleep`` moves on."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def site_info_exchange(answers: dict[int, list[tuple[str, str]]], asked: list[list[int]]):
    """Each node's replies to SITE_INFO in order: (status, code)."""
    def exchange(nodes, kind, state, arrays, extra=None, *, round_number=None):
        assert kind == wire.SITE_INFO
        asked.append(list(nodes))
        replies = []
        for node in nodes:
            status, code = answers[node].pop(0)
            info = RecordDict(to_records(wire.SiteInfo(rows=10, usable=10, bad_rows=0)))
            replies.append(SiteReply(node, f"site-{node}", status, code, "", None, info))
        return replies

    return exchange


def test_a_site_seen_online_that_did_not_answer_is_asked_again_when_it_is_back(
        tmp_path, monkeypatch) -> None:
    """On a loaded machine a hospital's first connection can time out after Flower accepted
    it: Flower counts it online, it never answers, then it joins again."""
    clock = VirtualClock()  # the wait to ask again passes without taking 10 s of the suite
    monkeypatch.setattr("server.federation.time.sleep", clock.sleep)
    monkeypatch.setattr("server.federation.time.monotonic", clock.monotonic)
    config = RunConfig.model_validate({"training": {"min_sites": 3}})
    federation = Federation(grid=ScriptedGrid([1, 2, 3], [1, 2], [1, 2], [1, 2, 3]),
                            config=config, run_dir=tmp_path, callbacks=[],
                            wait_for_sites_s=60.0, expected_sites=3)
    asked: list[list[int]] = []
    federation._exchange = site_info_exchange(
        {1: [("ok", "")], 2: [("ok", "")], 3: [("failed", wire.CLIENT_ERROR), ("ok", "")]},
        asked)
    assert federation._discover_sites(state_for(config, tmp_path)) == [1, 2, 3]
    assert asked == [[1, 2, 3], [3]]


def test_a_refusing_site_is_not_asked_again_and_does_not_hold_the_run(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("server.federation.time.sleep", lambda seconds: None)
    config = RunConfig.model_validate({"training": {"min_sites": 2}})
    federation = Federation(grid=ScriptedGrid([1, 2, 3]), config=config, run_dir=tmp_path,
                            callbacks=[], wait_for_sites_s=3600.0, expected_sites=3)
    asked: list[list[int]] = []
    federation._exchange = site_info_exchange(
        {1: [("ok", "")], 2: [("ok", "")], 3: [("refused", wire.MODEL_NOT_ALLOWED)]}, asked)
    began = time.monotonic()
    assert federation._discover_sites(state_for(config, tmp_path)) == [1, 2]
    assert asked == [[1, 2, 3]] and time.monotonic() - began < 5


def test_too_few_usable_sites_after_the_whole_wait_end_the_run(tmp_path, monkeypatch) -> None:
    clock = iter(range(0, 10_000, 5))  # each look at the clock: 5 s later
    monkeypatch.setattr("server.federation.time.sleep", lambda seconds: None)
    monkeypatch.setattr("server.federation.time.monotonic", lambda: float(next(clock)))
    config = RunConfig.model_validate({"training": {"min_sites": 2}})
    federation = Federation(grid=ScriptedGrid([1, 2]), config=config, run_dir=tmp_path,
                            callbacks=[], wait_for_sites_s=100.0)
    asked: list[list[int]] = []
    federation._exchange = site_info_exchange(
        {1: [("ok", "")], 2: [("failed", wire.NO_REPLY)] * 100}, asked)
    with pytest.raises(FederationError, match="only 1 usable sites; need 2"):
        federation._discover_sites(state_for(config, tmp_path))
    assert asked[0] == [1, 2] and len(asked) > 1 and set(map(tuple, asked[1:])) == {(2,)}
