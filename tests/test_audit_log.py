"""Every message a site sends is in its audit log first, through the real ClientApp."""

import numpy as np
from flwr.clientapp import ClientApp

from client.audit_log import audit_log_mod
from client.local_round import LocalRound
from client.secure_aggregation import register_secure_aggregation
from common import wire
from common.config import RunConfig
from common.site_state import SiteState
from server.secure_aggregation import SecureAggregation
from tests.e2e import read_jsonl
from tests.inprocess import InProcessSites


def test_one_line_per_reply_with_kind_round_size_and_digest(tmp_path) -> None:
    def train(msg, site, config):
        return LocalRound(site.site_id, "ok", update={"w": np.ones(4, np.float32)},
                          report=wire.TrainReport(num_examples=5, train_loss=0.1, steps=1,
                                                  skipped_rows=0, seconds=0.1, epsilon=1.5))

    app = ClientApp(mods=[audit_log_mod(None)])
    register_secure_aggregation(app, site_dirs=None, train=train)
    sites = InProcessSites(app, [tmp_path / "a", tmp_path / "b"], RunConfig())
    outcome = SecureAggregation(settings=RunConfig().secure_aggregation,
                                exchange=sites.exchange).train(
        round_id="r/1", nodes=sites.nodes, weights={"w": np.zeros(4, np.float32)})
    assert outcome.mean is not None
    lines = read_jsonl(SiteState.of(tmp_path / "a").audit_log)
    assert [e["kind"] for e in lines] == ["train.secagg_setup", "train.secagg_share_keys",
                                          "train.secagg_masked_input", "train.secagg_consistency",
                                          "train.secagg_unmask"]
    assert all(e["run"] == "test" and e["round"] == 1 and e["status"] == "ok" for e in lines)
    assert all(len(e["sha256"]) == 64 and e["bytes"] > 0 for e in lines)
    assert lines[2]["epsilon"] == 1.5 and "epsilon" not in lines[0]


def test_a_reply_is_logged_even_when_the_site_policy_cannot_be_read(tmp_path) -> None:
    site = tmp_path / "a"
    site.mkdir()
    (site / "policy.toml").write_text("max_epsilon = -1\n")
    app = ClientApp(mods=[audit_log_mod(None)])
    register_secure_aggregation(app, site_dirs=None, train=lambda *a: None)
    sites = InProcessSites(app, [site], RunConfig())
    [reply] = sites.exchange(sites.nodes, "train.secagg_setup", None)
    assert reply.status == "failed" and reply.code == "bad-config"
    [line] = read_jsonl(SiteState.of(site).audit_log)
    assert line["kind"] == "train.secagg_setup" and line["status"] == "failed"
