"""The server's secure round over real ClientApp handlers, with dropouts and tampering."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message
from flwr.clientapp import ClientApp

from client.local_round import LocalRound
from client.secure_aggregation import register_secure_aggregation
from common.config import RunConfig, SecureAggregationConfig
from common.secagg import messages
from common.secagg.encoding import RingEncoding
from common.serialization import flatten
from server.secure_aggregation import SecureAggregation
from tests.inprocess import InProcessSites, trained

SHAPES = {"a.weight": (6, 5), "b.bias": (7,)}
COUNTS = {"site-1": 100, "site-2": 250, "site-3": 40, "site-4": 400}


def update_of(site_id: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(site_id[-1]))
    return {name: rng.normal(0, 0.5, shape).astype(np.float32) for name, shape in SHAPES.items()}


def fake_train(msg: Message, site, config) -> LocalRound:
    return trained(site.site_id, update_of(site.site_id), COUNTS[site.site_id])


@pytest.fixture
def sites(tmp_path) -> InProcessSites:
    app = ClientApp()
    register_secure_aggregation(app, site_dirs=None, train=fake_train)
    dirs = [tmp_path / f"site-{i}" for i in range(1, 5)]
    return InProcessSites(app, dirs, RunConfig())


def run(sites: InProcessSites):
    settings = SecureAggregationConfig()
    secure = SecureAggregation(settings=settings, exchange=sites.exchange)
    weights = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    return secure.train(round_id="run/1", nodes=sites.nodes, weights=weights)


def expected_mean(site_ids) -> tuple[np.ndarray, float]:
    counts = np.array([COUNTS[s] for s in site_ids], float)
    mean = sum(c * flatten(update_of(s)) for c, s in zip(counts, site_ids, strict=True))
    encoding = RingEncoding(clip_range=8.0, max_weight=10_000, max_clients=4)
    return mean / counts.sum(), encoding.tolerance(counts.sum(), 4)


def assert_mean_of(outcome, site_ids) -> None:
    assert outcome.mean is not None and outcome.contributors == len(site_ids)
    exact, tolerance = expected_mean(site_ids)
    assert np.max(np.abs(flatten(outcome.mean) - exact)) <= tolerance + 1e-7


def silence(node: int, kind: str):
    return lambda n, k, message: None if (n, k) == (node, kind) else message


def test_the_mean_of_all_sites(sites) -> None:
    outcome = run(sites)
    assert [r.status for r in outcome.replies] == ["ok"] * 4
    assert_mean_of(outcome, ["site-1", "site-2", "site-3", "site-4"])
    assert outcome.details["survivors"] == 4 and outcome.details["threshold"] == 3


@pytest.mark.parametrize("stage", [messages.SETUP, messages.SHARE_KEYS, messages.MASKED_INPUT])
def test_a_site_lost_before_masked_input_is_left_out_of_an_exact_sum(sites, stage) -> None:
    sites.tamper = silence(2, stage)
    outcome = run(sites)
    assert {r.site_id: r.code for r in outcome.replies}["site-2"] == "no-reply"
    assert_mean_of(outcome, ["site-1", "site-3", "site-4"])


def test_a_site_lost_after_masked_input_still_counts(sites) -> None:
    sites.tamper = silence(3, messages.UNMASK)
    outcome = run(sites)
    assert_mean_of(outcome, ["site-1", "site-2", "site-3", "site-4"])
    assert outcome.details["unmask_failed"] == ["site-3: no-reply no reply before the round "
                                                "timeout"]


def test_too_many_dropouts_abort_and_keep_no_mean(sites) -> None:
    def three_silent(node, kind, message):
        return None if kind == messages.MASKED_INPUT and node != 1 else message

    sites.tamper = three_silent
    outcome = run(sites)
    assert outcome.mean is None and "secure aggregation aborted" in outcome.note
    assert "only 1 of 4 clients sent masked input" in outcome.note


def test_a_tampered_share_is_rejected_and_reported(sites) -> None:
    def flip(node, kind, message):
        if (node, kind) == (1, messages.MASKED_INPUT):
            sealed = message.content["secagg.ciphertexts"]
            sender = next(iter(sealed.keys()))
            data = bytes(sealed[sender])
            sealed[sender] = data[:-1] + bytes([data[-1] ^ 0x40])
        return message

    sites.tamper = flip
    outcome = run(sites)
    reply = {r.site_id: r for r in outcome.replies}["site-1"]
    assert reply.status == "failed" and reply.code == "secagg-bad-share"
    assert "failed authentication" in reply.reason
    assert_mean_of(outcome, ["site-2", "site-3", "site-4"])


def test_no_site_sends_its_update_in_the_clear(sites) -> None:
    outcome = run(sites)
    assert all(r.update is None for r in outcome.replies)
    assert all("arrays" not in r.content for r in outcome.replies)


def test_a_wrongly_sized_masked_input_is_rejected(tmp_path) -> None:
    def train(msg, site, config):
        result = fake_train(msg, site, config)
        if site.site_id == "site-4":
            result.update = {**result.update, "extra": np.zeros(3, np.float32)}
        return result

    app = ClientApp()
    register_secure_aggregation(app, site_dirs=None, train=train)
    sites = InProcessSites(app, [tmp_path / f"site-{i}" for i in range(1, 5)], RunConfig())
    outcome = run(sites)
    reply = {r.site_id: r for r in outcome.replies}["site-4"]
    assert reply.status == "rejected" and "expected 38 uint32" in reply.reason
    assert_mean_of(outcome, ["site-1", "site-2", "site-3"])


def test_a_site_lost_between_its_masked_input_and_its_signature_aborts_the_round(sites) -> None:
    sites.tamper = silence(2, messages.CONSISTENCY)
    outcome = run(sites)
    assert outcome.mean is None and "did not sign the survivor set" in outcome.note
    assert outcome.details["consistency_failed"] == ["site-2: no-reply no reply before the "
                                                     "round timeout"]
