"""The ClientApp's secure-aggregation handlers: fail closed, light imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from flwr.clientapp import ClientApp

from client.app import make_client_app
from client.secure_aggregation import register_secure_aggregation
from common import wire
from common.config import RunConfig
from common.records import to_records
from common.secagg import messages
from simulations.demo_data import DEMO_POLICY
from tests.inprocess import InProcessSites


def strict_site(site_copy: Path) -> Path:
    policy = DEMO_POLICY.replace("require_secure_aggregation = false",
                                 "require_secure_aggregation = true")
    (site_copy / "policy.toml").write_text(policy, encoding="utf-8")
    return site_copy


def test_a_site_requiring_secure_aggregation_refuses_a_plaintext_round(site_copy) -> None:
    sites = InProcessSites(make_client_app(), [strict_site(site_copy)], RunConfig())
    [reply] = sites.exchange(sites.nodes, "train", {"w": np.zeros(2, np.float32)})
    assert reply.status == "refused" and reply.code == "secure-aggregation-required"
    assert reply.update is None
    assert not (site_copy / ".fedmm" / "privacy_ledger.json").exists()  # nothing spent


def test_a_stage_out_of_order_is_refused_without_training(site_copy) -> None:
    calls = []
    app = ClientApp()
    register_secure_aggregation(app, site_dirs=None, train=lambda *a: calls.append(a))
    sites = InProcessSites(app, [site_copy], RunConfig())
    extra = {1: to_records(messages.MaskedInputRequest(ciphertexts={}))}
    [reply] = sites.exchange(sites.nodes, messages.MASKED_INPUT, None, extra)
    assert reply.status == "failed" and reply.code == "secagg-out-of-order"
    assert calls == []


def test_a_malformed_stage_message_is_refused(site_copy) -> None:
    sites = InProcessSites(make_client_app(), [site_copy], RunConfig())
    [reply] = sites.exchange(sites.nodes, messages.SETUP, None)
    assert reply.status == "failed" and reply.code == "secagg-malformed"


def test_protocol_stages_load_neither_torch_nor_opacus(tmp_path) -> None:
    """A whole round (with a stand-in for training) in a fresh process: Flower starts one per
    message in deployment, so the key, share and unmask stages must start fast."""
    code = f"""
import sys
from pathlib import Path
import numpy as np
import numpy as np
from flwr.clientapp import ClientApp
from client.secure_aggregation import register_secure_aggregation
from common import wire
from common.config import RunConfig
from server.secure_aggregation import SecureAggregation
from tests.inprocess import InProcessSites, trained

def train(msg, site, config):
    return trained(site.site_id, {{"w": np.ones(3, np.float32)}}, 10)

app = ClientApp()
register_secure_aggregation(app, site_dirs=None, train=train)
sites = InProcessSites(app, [Path({str(tmp_path)!r}) / f"s{{i}}" for i in range(3)], RunConfig())
outcome = SecureAggregation(settings=RunConfig().secure_aggregation,
                            exchange=sites.exchange).train(
    round_id="r/1", nodes=sites.nodes, weights={{"w": np.zeros(3, np.float32)}})
assert outcome.mean is not None and np.allclose(outcome.mean["w"], 1.0, atol=1e-5)
print('torch' in sys.modules, 'opacus' in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False False"


def _stages_only(site_copy) -> tuple[InProcessSites, messages.SetupRequest]:
    """A site serving only the secure-aggregation stages, and a setup request that fits the
    default run config."""
    app = ClientApp()
    register_secure_aggregation(app, site_dirs=None, train=lambda *a: None)
    request = messages.SetupRequest(context="r/1", index=0, clients=3, threshold=2, degree=2,
                                    clip_range=8.0, max_weight=10_000)
    return InProcessSites(app, [site_copy], RunConfig()), request


def test_a_setup_whose_encoding_differs_from_the_run_config_is_refused(site_copy) -> None:
    from dataclasses import replace

    sites, request = _stages_only(site_copy)
    for bad in (replace(request, clip_range=1e6), replace(request, max_weight=1)):
        [reply] = sites.exchange(sites.nodes, messages.SETUP, None, {1: to_records(bad)})
        assert reply.status == "failed" and reply.code == "secagg-bad-setup"
    [reply] = sites.exchange(sites.nodes, messages.SETUP, None, {1: to_records(request)})
    assert reply.status == "ok"


def test_garbage_in_a_stage_is_a_failed_reply_not_a_crash(site_copy) -> None:
    sites, request = _stages_only(site_copy)
    sites.exchange(sites.nodes, messages.SETUP, None, {1: to_records(request)})
    garbage = messages.ShareKeysRequest(adverts={0: b"\x00\x00\x00\x09short"})
    [reply] = sites.exchange(sites.nodes, messages.SHARE_KEYS, None, {1: to_records(garbage)})
    assert reply.status == "failed" and reply.code.startswith("secagg-")


def test_a_plaintext_round_with_malformed_weights_is_a_failed_reply(site_copy) -> None:
    """A hostile server's weights that no model could have (a string tensor) are refused in
    the reply, before any privacy is spent, rather than crashing the ClientApp."""
    from flwr.app import Array, ArrayRecord

    sites = InProcessSites(make_client_app(), [site_copy], RunConfig())

    def strings_for_weights(node, kind, message):
        bad = ArrayRecord()
        bad["w"] = Array.from_numpy_ndarray(np.array(["1", "2"]))
        message.content[wire.ARRAYS] = bad
        return message

    sites.tamper = strings_for_weights
    [reply] = sites.exchange(sites.nodes, "train", {"w": np.zeros(2, np.float32)})
    assert reply.status == "failed" and "dtype" in reply.reason, reply
    assert not (site_copy / ".fedmm" / "privacy_ledger.json").exists()  # nothing spent
