"""The README's deployment on loopback, command by command (tests/deployment.py): the consortium
makes its CA and the server certificate for ``fl.consortium.example``, each hospital makes its
own node key, one ``fedmm server`` and three ``fedmm client`` hospitals that reach the server by
that name; DP-SGD and secure aggregation on. In the same run: an unregistered hospital and a
hospital with the wrong CA are refused with clear messages; one hospital is SIGKILLed while it
trains in a securely aggregated round (the others finish it through the dropout path); the
server is SIGKILLed after round 2 and restarted with --resume, and the run completes. The
attacks of tests/attacks/ run against this same deployment."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from client.ledger import PrivacyLedger
from common.pki import init_keys
from common.processes import free_port, pids_mentioning
from tests.deployment import RUN_CONFIG, audit, wait_until
from tests.e2e import CliRun, read_jsonl, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.deadlines]


def what_happened(deployment) -> str:
    """The server's output before and after its restart, and where hospital 3 was killed: a
    failure here says what the run did."""
    return (f"first server:\n{deployment['first_output']}\nresumed server:\n"
            f"{deployment['output']}\nsite-03's round 2 when it was killed: "
            f"{deployment['site_03_round_two_when_killed']!r}")


def test_the_run_completes_after_a_hospital_and_the_server_were_killed(deployment) -> None:
    assert deployment["code"] == 0, what_happened(deployment)
    out = deployment["run_dir"]
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3], what_happened(deployment)
    assert all(r["aggregated"] for r in records), what_happened(deployment)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert summary["secure_aggregation"] is True and summary["dp_enabled"] is True
    weights = load_file(str(out / "model.safetensors"))
    assert summary["model"]["parameters"] == sum(v.size for v in weights.values())
    assert "round 3/3" in deployment["output"] and "done: 3 rounds" in deployment["output"]


def test_the_killed_hospital_dropped_out_of_round_two_securely(deployment) -> None:
    assert deployment["site_03_round_two_when_killed"] == "reserved", what_happened(deployment)
    records = read_jsonl(deployment["run_dir"] / "metrics.jsonl")
    assert records[0]["secure_aggregation"]["survivors"] == 3
    second = records[1]
    assert second["secure_aggregation"]["clients"] == 3
    assert second["secure_aggregation"]["survivors"] == 2
    assert second["sites"]["site-03"]["code"] == "no-reply"
    assert records[2]["secure_aggregation"]["clients"] == 2


def test_audit_logs_and_ledgers_agree_with_the_server(deployment) -> None:
    records = read_jsonl(deployment["run_dir"] / "metrics.jsonl")
    data = deployment["data"]
    for site in ("site-01", "site-02", "site-03"):
        sent = [e for e in audit(data / site / ".fedmm")
                if e["kind"] == "train.secagg_masked_input" and e["status"] == "ok"]
        served = [r["round"] for r in records
                  if r["sites"].get(site, {}).get("status") == "ok"]
        logged = [e["round"] for e in sent]
        spend = PrivacyLedger(data / site / ".fedmm").spend("deploy-e2e")
        assert spend is not None
        if site == "site-03":
            # killed in round 2: its log and ledger are written before a reply leaves, so they
            # may hold the round-2 update the server never got (over-counted, never under)
            assert served == [1] and logged in ([1], [1, 2])
            assert spend.rounds_served == len(logged) and len(spend.history) >= 1
        else:
            assert logged == served == [1, 2, 3], site
            assert spend.rounds_served == 3
        assert all(len(e["sha256"]) == 64 and e["bytes"] > 0 and e["epsilon"] > 0
                   for e in sent)
    code, report = run_cli(["privacy", str(data / "site-01"), "--json"],
                           cwd=deployment["root"])
    assert code == 0, report
    [model] = json.loads(report)["models"]
    assert model["rounds_served"] == 3 and 0 < model["epsilon"] < 10.0  # the site's max


def test_an_unregistered_hospital_is_refused_with_a_clear_message(deployment) -> None:
    code, output = deployment["unregistered"]
    assert code == 1, output
    assert "refused this hospital's key (hospital-4.key): it is not registered" in output


def test_a_hospital_with_the_wrong_ca_gets_a_clear_tls_message(deployment) -> None:
    code, output = deployment["wrong_ca"]
    assert code == 1, output
    assert "TLS: the server at fl.consortium.example:" in output and "is not trusted by" in output


def test_the_server_never_needs_its_certificate_to_name_loopback(deployment) -> None:
    """The README's certificate names only fl.consortium.example; the server talks to its own
    SuperLink through a certificate of its own for 127.0.0.1."""
    assert "Connection to the SuperLink is unavailable" not in deployment["first_output"]
    assert "waiting for hospitals" in deployment["first_output"]


def test_sigterm_stops_the_server_and_everything_it_started(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", server_hosts=["fl.example.org"], hospitals=["hospital-1"])
    (tmp_path / "run.toml").write_text(RUN_CONFIG)
    server = CliRun(["server", "--config", str(tmp_path / "run.toml"), "--certs",
                     str(tmp_path / "keys"), "--allow",
                     str(tmp_path / "keys" / "hospitals" / "hospital-1.pub"), "--out",
                     str(tmp_path / "out"), "--host", "127.0.0.1", "--port", str(free_port())],
                    cwd=tmp_path)
    try:
        wait_until(lambda: "waiting for hospitals" in server.output(), timeout=90,
                   what="the server to start")
        superlinks = pids_mentioning(str(tmp_path / "out" / ".flwr" / "loopback-tls"))
        assert superlinks
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(timeout=60) == 143  # 128 + SIGTERM
        wait_until(lambda: not pids_mentioning(str(tmp_path / "out" / ".flwr")),
                   timeout=30, what="the SuperLink to stop")
        assert "stopped; continue with: fedmm server --resume" in server.output()
    finally:
        server.stop()
