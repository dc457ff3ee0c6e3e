"""A server that lies about dropouts, colludes with a hospital, or shows different sites
different survivor sets or models never rebuilds one hospital's update from fedmm's secure
aggregation at the sites' default settings; the same attacks rebuild it exactly once the
sites' guards are weakened back to what they were (any server-sent threshold of at least 2,
and no check of the survivors' signatures).

Every attack runs against the real ClientApp handlers of real site folders, each with its
node key, its roster of the others' public keys and its policy; training is a stand-in that
returns a known update, since the update is what the attack is after.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.clientapp import ClientApp

from client.secure_aggregation import register_secure_aggregation
from common.config import RunConfig
from common.secagg import client as protocol
from common.secagg.encoding import RingEncoding
from tests.attacks.lying_server import SIZE, LyingServer
from tests.inprocess import InProcessSites, trained

GLOBAL = {"w": np.zeros(SIZE, np.float32)}


def private_update(site_id: str) -> np.ndarray:
    return np.random.default_rng(int(site_id.rsplit("-", 1)[1])).uniform(
        -1, 1, SIZE).astype(np.float32)


def stand_in_training(msg, site, config):
    """The site's update, shaped by what it received: a ``gate`` array in the model and the
    learning rate in the configuration, both the server's (a crafted model or setting that
    zeroes other sites' updates)."""
    from common.serialization import from_record

    weights = from_record(msg.content["arrays"])
    gate = weights.get("gate", np.ones(SIZE, np.float32))
    scale = config.training.learning_rate / RunConfig().training.learning_rate
    return trained(site.site_id, {"w": private_update(site.site_id) * gate * scale}, 100)


def hospitals(tmp_path: Path, n: int, policy: str = "") -> InProcessSites:
    dirs = []
    for i in range(n):
        folder = tmp_path / f"site-{i}"
        folder.mkdir()
        (folder / "policy.toml").write_text(policy, encoding="utf-8")
        dirs.append(folder)
    app = ClientApp()
    register_secure_aggregation(app, site_dirs=None, train=stand_in_training)
    return InProcessSites(app, dirs, RunConfig())


def weaken(monkeypatch: pytest.MonkeyPatch, *, signatures: bool) -> None:
    """The sites' guards as they were: accept any threshold ≥ 2 (and, with ``signatures``,
    skip the consistency check)."""
    monkeypatch.setattr(protocol, "minimum_threshold", lambda holders, colluding: 2)
    if signatures:
        monkeypatch.setattr(protocol, "verify", lambda *args: True)


def split(n: int, *, partition: bool) -> dict[int, list[int]]:
    """Sites 0..n/2−1 are told everyone survived, the rest that site 0 dropped; or, with
    ``partition``, each half is shown only itself (every member signs its own set, so the
    consistency check alone cannot tell)."""
    half = n // 2
    first, second = list(range(half)), list(range(half, n))
    if partition:
        return {i: first if i < half else second for i in range(n)}
    return {i: list(range(n)) if i < half else list(range(1, n)) for i in range(n)}


def models(n: int) -> dict[int, dict[str, np.ndarray]]:
    return {i: GLOBAL for i in range(n)}


def step(n: int) -> float:
    """One quantisation step of a single site's update (weight 100) among n."""
    return RingEncoding(clip_range=8.0, max_weight=10_000, max_clients=n).tolerance(100, 1)


def assert_rebuilt(attempt, n: int) -> None:
    assert attempt.recovered is not None, attempt
    assert np.max(np.abs(attempt.recovered - private_update("site-0"))) <= step(n) + 1e-7


@pytest.mark.parametrize("n", [4, 6])
@pytest.mark.parametrize("partition", [False, True], ids=["dropout-lie", "partition"])
def test_the_dropout_lie_fails_at_the_default_threshold(tmp_path, n, partition) -> None:
    attempt = LyingServer(hospitals(tmp_path, n)).run(
        target=0, views=split(n, partition=partition), models=models(n))
    assert attempt.recovered is None
    assert set(attempt.refusals) == set(range(n))  # every site refused to unmask
    assert set(attempt.refusals.values()) <= {"secagg-inconsistent", "secagg-too-few"}


@pytest.mark.parametrize("n", [4, 6])
def test_a_lower_threshold_sent_by_the_server_is_refused(tmp_path, n) -> None:
    attempt = LyingServer(hospitals(tmp_path, n), threshold=n // 2).run(
        target=0, views=split(n, partition=True), models=models(n))
    assert attempt.recovered is None and attempt.why_not == "sites refused to share keys"
    assert set(attempt.refusals.values()) == {"secagg-unsafe"}


@pytest.mark.parametrize("n", [4, 6])
def test_the_dropout_lie_rebuilds_the_update_without_the_guards(tmp_path, monkeypatch,
                                                                n) -> None:
    weaken(monkeypatch, signatures=True)
    attempt = LyingServer(hospitals(tmp_path, n), threshold=n // 2).run(
        target=0, views=split(n, partition=False), models=models(n), forward="all")
    assert attempt.refusals == {}
    assert_rebuilt(attempt, n)


@pytest.mark.parametrize("n", [4, 6])
def test_signatures_alone_do_not_stop_a_partition_below_the_bound(tmp_path, monkeypatch,
                                                                  n) -> None:
    """Why the threshold bound matters even with the consistency check."""
    weaken(monkeypatch, signatures=False)
    attempt = LyingServer(hospitals(tmp_path, n), threshold=n // 2).run(
        target=0, views=split(n, partition=True), models=models(n))
    assert attempt.refusals == {}
    assert_rebuilt(attempt, n)


COLLUDER_VIEWS = {0: [0, 1], 2: [1, 2]}  # site 1 colludes: target 0 and site 2 are split


@pytest.mark.parametrize("threshold", [2, 3])
def test_server_and_one_colluding_hospital_fail_when_policy_allows_for_one(tmp_path,
                                                                           threshold) -> None:
    sites = hospitals(tmp_path, 3, "max_colluding_sites = 1\n")
    attempt = LyingServer(sites, threshold=threshold, colluders=[1]).run(
        target=0, views=COLLUDER_VIEWS, models=models(3))
    assert attempt.recovered is None
    expected = "secagg-unsafe" if threshold == 2 else "secagg-too-few"
    assert set(attempt.refusals.values()) == {expected}


def test_server_and_one_colluding_hospital_succeed_when_policy_assumes_none(tmp_path) -> None:
    """The default policy (max_colluding_sites = 0) does not protect against a colluding
    hospital: three sites at threshold 2, one of them the server's."""
    sites = hospitals(tmp_path, 3)
    attempt = LyingServer(sites, colluders=[1]).run(target=0, views=COLLUDER_VIEWS,
                                                    models=models(3))
    assert attempt.refusals == {}
    assert_rebuilt(attempt, 3)


def crafted_models() -> dict[int, dict[str, np.ndarray]]:
    """Site 0 gets a model that keeps its update; the others one that zeroes theirs."""
    keep = {**GLOBAL, "gate": np.ones(SIZE, np.float32)}
    zero = {**GLOBAL, "gate": np.zeros(SIZE, np.float32)}
    return {0: keep, 1: zero, 2: zero}


@pytest.mark.parametrize("forward", ["same-view", "all"])
def test_different_models_to_different_sites_are_caught(tmp_path, forward) -> None:
    attempt = LyingServer(hospitals(tmp_path, 3)).run(
        target=None, views={i: [0, 1, 2] for i in range(3)}, models=crafted_models(),
        forward=forward)
    assert attempt.total is None
    assert set(attempt.refusals) == {0, 1, 2}
    assert set(attempt.refusals.values()) == {"secagg-inconsistent"}


def test_different_models_single_out_one_site_without_the_check(tmp_path, monkeypatch) -> None:
    """The model-inconsistency attack: the 'aggregate' is site 0's update alone."""
    weaken(monkeypatch, signatures=True)
    attempt = LyingServer(hospitals(tmp_path, 3)).run(
        target=None, views={i: [0, 1, 2] for i in range(3)}, models=crafted_models(),
        forward="all")
    assert attempt.refusals == {} and attempt.total is not None
    assert np.max(np.abs(attempt.total - private_update("site-0") / 3)) <= 3 * step(3)


def test_participants_the_server_makes_up_are_refused(tmp_path) -> None:
    """One hospital and two participants of the server's own: their 'sum' would be the
    hospital's update. The hospital's roster does not know their keys."""
    attempt = LyingServer(hospitals(tmp_path, 1), sybils=2).run(
        target=None, views={i: [0, 1, 2] for i in range(3)}, models=models(3))
    assert attempt.total is None and attempt.refusals == {0: "secagg-unknown-peer"}


def test_participants_the_server_makes_up_isolate_a_site_without_a_roster(
        tmp_path, monkeypatch) -> None:
    from common.secagg.identity import Roster

    monkeypatch.setattr(Roster, "__contains__", lambda self, key: True)
    attempt = LyingServer(hospitals(tmp_path, 1), sybils=2).run(
        target=None, views={i: [0, 1, 2] for i in range(3)}, models=models(3))
    assert attempt.refusals == {} and attempt.total is not None
    assert np.max(np.abs(attempt.total - private_update("site-0"))) <= 3 * step(3)


def crafted_configs() -> dict[int, RunConfig]:
    """Site 0 trains as asked; the others with a step size that makes their updates vanish."""
    frozen = RunConfig.model_validate({"training": {"learning_rate": 1e-9}})
    return {0: RunConfig(), 1: frozen, 2: frozen}


def test_different_settings_to_different_sites_are_caught(tmp_path) -> None:
    attempt = LyingServer(hospitals(tmp_path, 3)).run(
        target=None, views={i: [0, 1, 2] for i in range(3)}, models=models(3),
        configs=crafted_configs(), forward="all")
    assert attempt.total is None
    assert set(attempt.refusals.values()) == {"secagg-inconsistent"}


def test_different_settings_single_out_one_site_without_the_check(tmp_path,
                                                                  monkeypatch) -> None:
    weaken(monkeypatch, signatures=True)
    attempt = LyingServer(hospitals(tmp_path, 3)).run(
        target=None, views={i: [0, 1, 2] for i in range(3)}, models=models(3),
        configs=crafted_configs(), forward="all")
    assert attempt.refusals == {} and attempt.total is not None
    assert np.max(np.abs(attempt.total - private_update("site-0") / 3)) <= 3 * step(3)
