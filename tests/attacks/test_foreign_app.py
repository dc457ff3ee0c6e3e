"""A hospital executes only the fedmm it installed. A foreign app, submitted by the operator to
fedmm server's own SuperLink or to a SuperLink the operator starts by hand with the
consortium's certificates, never runs at a hospital (the marker file its ClientApp would
write never appears); the refusal is in the hospital's audit log and output, and the hospital
serves the real run on. Flower's own SuperNode (the old launcher) runs the same app and hands
it the site's files."""

from __future__ import annotations

import json

import pytest

from tests.deployment import audit

pytestmark = pytest.mark.slow
INVALID_FAB = 7  # Flower's ErrorCode.INVALID_FAB


def _refusals(deployment) -> dict[str, list[dict]]:
    data = deployment["data"]
    return {site: [e for e in audit(data / site / ".fedmm") if e["status"] == "refused-app"]
            for site in ("site-01", "site-02", "site-03")}


def test_a_foreign_app_sent_through_fedmm_server_never_runs(deployment) -> None:
    markers = deployment["markers_operator"]
    assert not list(markers.glob("stolen-*.json"))
    result = json.loads((markers / "server-result.json").read_text())
    assert result["nodes"] == 3 and len(result["replies"]) == 3
    assert all(r["code"] == INVALID_FAB and "fedmm refused this run" in r["error"]
               for r in result["replies"])
    for site, lines in _refusals(deployment).items():
        assert lines, site
        assert all("not this installation's fedmm bundle" in e["reason"] for e in lines)
        assert all(e["kind"] == "query" and len(e["sha256"]) == 64 for e in lines)
    for run in deployment["clients"].values():
        assert "refused run" in run.output() and "not this installation's fedmm" in \
            run.output()


def test_the_hospitals_serve_the_real_run_after_refusing(deployment) -> None:
    assert deployment["code"] == 0, deployment["output"]
    sent = [e for e in audit(deployment["data"] / "site-01" / ".fedmm")
            if e["kind"] == "train.secagg_masked_input" and e["status"] == "ok"]
    assert [e["round"] for e in sent] == [1, 2, 3]


def test_a_foreign_app_on_the_operators_own_superlink_never_runs(deployment) -> None:
    own = deployment["own_superlink"]
    code, answer, output = own["registered"]
    assert code == 0, output
    code, answer, output = own["submitted"]
    assert code == 0 and answer["run-id"], output
    assert not list(own["marker_dir"].glob("stolen-*.json"))
    result = json.loads((own["marker_dir"] / "server-result.json").read_text())
    assert result["replies"] and all(r["code"] == INVALID_FAB for r in result["replies"])


def test_flowers_own_supernode_runs_the_foreign_app(weakened) -> None:
    loot = weakened["loot"]
    assert loot["node_config"]["data-dir"].endswith("site-01")
    assert "manifest.csv" in loot["files"]
    assert loot["row"].startswith("s01-")  # a patient's row, clinical note included
