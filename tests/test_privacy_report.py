import json
from pathlib import Path

import pytest

from client.ledger import PrivacyLedger
from client.policy import SitePolicy
from client.privacy_report import site_privacy_report
from common.privacy import epsilon_for_history


def _ledger(state: Path) -> PrivacyLedger:
    ledger = PrivacyLedger(state)
    for round_number in (1, 2):
        ledger.reserve(model_id="m", run_id="r", round_number=round_number,
                       noise_multiplier=1.2, sample_rate=0.2, steps=10, delta=1e-5,
                       accountant="rdp")
        if round_number == 1:
            ledger.mark(model_id="m", run_id="r", round_number=1, status="sent", sha256="x")
    return ledger


def test_report_recomputes_epsilon_and_counts_rounds(tmp_path: Path) -> None:
    _ledger(tmp_path)
    [row] = site_privacy_report(tmp_path, SitePolicy(max_epsilon=10.0))
    expected = epsilon_for_history([[1.2, 0.2, 20]], delta=1e-5)
    assert row["epsilon"] == pytest.approx(expected) and row["consistent"]
    assert row["epsilon_left"] == pytest.approx(10.0 - expected)
    assert (row["rounds_served"], row["rounds_interrupted"], row["steps"]) == (1, 1, 20)
    assert (row["noise_multiplier"], row["sample_rate"]) == (1.2, 0.2)


def test_a_tampered_epsilon_field_is_flagged(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    data = json.loads(ledger.path.read_text())
    data["models"]["m"]["epsilon"] = 0.01
    ledger.path.write_text(json.dumps(data))
    [row] = site_privacy_report(tmp_path, SitePolicy())
    assert not row["consistent"] and row["epsilon"] > 0.01
    assert site_privacy_report(tmp_path / "empty", SitePolicy()) == []


def test_the_total_composes_all_models_at_the_smallest_delta(tmp_path: Path) -> None:
    from client.privacy_report import site_total

    assert site_total(tmp_path, SitePolicy()) is None
    ledger = _ledger(tmp_path)
    ledger.reserve(model_id="renamed", run_id="r2", round_number=1, noise_multiplier=1.2,
                   sample_rate=0.2, steps=10, delta=1e-6, accountant="rdp")
    total = site_total(tmp_path, SitePolicy(max_total_epsilon=20.0))
    assert total is not None and total["models"] == 2 and total["delta"] == 1e-6
    assert total["epsilon"] == pytest.approx(epsilon_for_history([[1.2, 0.2, 30]],
                                                                 delta=1e-6))
    assert total["epsilon_left"] == pytest.approx(20.0 - total["epsilon"])
