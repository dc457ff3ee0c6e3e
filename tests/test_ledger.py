import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from client.ledger import LedgerError, PrivacyLedger
from common.privacy import epsilon_for_history


def _reserve(ledger: PrivacyLedger, round_number: int, steps: int = 10) -> float:
    return ledger.reserve(model_id="m", run_id="r1", round_number=round_number,
                          noise_multiplier=1.1, sample_rate=0.1, steps=steps, delta=1e-5,
                          accountant="rdp")


def test_reserve_then_mark_sent(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    epsilon = _reserve(ledger, 1)
    assert epsilon == pytest.approx(epsilon_for_history([[1.1, 0.1, 10]], delta=1e-5))
    ledger.mark(model_id="m", run_id="r1", round_number=1, status="sent", sha256="ab")
    spend = ledger.spend("m")
    assert spend is not None and spend.rounds_served == 1
    assert spend.rounds[0]["sha256"] == "ab"


def test_history_survives_a_new_process_and_accumulates(tmp_path: Path) -> None:
    _reserve(PrivacyLedger(tmp_path), 1)
    after = _reserve(PrivacyLedger(tmp_path), 2)
    ledger = PrivacyLedger(tmp_path)
    assert ledger.history("m") == [[1.1, 0.1, 20]]
    assert after == pytest.approx(epsilon_for_history([[1.1, 0.1, 20]], delta=1e-5))
    assert ledger.history("other") == []


def test_interrupted_round_stays_counted(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    _reserve(ledger, 1)  # the process dies before "sent"
    spend = PrivacyLedger(tmp_path).spend("m")
    assert spend is not None and spend.epsilon > 0 and spend.rounds_served == 0


def test_corrupt_ledger_stops_training(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    _reserve(ledger, 1)
    ledger.path.write_text(ledger.path.read_text()[:30])
    with pytest.raises(LedgerError, match="unreadable"):
        ledger.history("m")
    ledger.path.write_text(json.dumps({"format": 99}))
    with pytest.raises(LedgerError, match="unknown ledger format"):
        ledger.history("m")


def test_mark_without_reservation_is_an_error(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    _reserve(ledger, 1)
    with pytest.raises(LedgerError, match="no reserved entry"):
        ledger.mark(model_id="m", run_id="r1", round_number=5, status="sent")


CRASHING_SITE = """
import sys
from pathlib import Path
from tests.crash import install
install(sys.argv[2])
from client.ledger import PrivacyLedger
ledger = PrivacyLedger(Path(sys.argv[1]))
ledger.reserve(model_id="m", run_id="r1", round_number=1, noise_multiplier=1.1,
               sample_rate=0.1, steps=10, delta=1e-5, accountant="rdp")
ledger.mark(model_id="m", run_id="r1", round_number=1, status="sent", sha256="ab")
"""


@pytest.mark.parametrize(("fault", "spent", "steps"), [
    ("die:privacy_ledger.json:1", False, 0),  # killed writing the reservation: nothing trained
    ("die:privacy_ledger.json:2", True, 10),  # killed marking it sent: the round stays spent
    ("full:privacy_ledger.json:2", True, 10),  # disk full marking it sent: the same
])
def test_a_site_killed_or_out_of_disk_while_writing_its_ledger(
        tmp_path: Path, fault: str, spent: bool, steps: int) -> None:
    result = subprocess.run([sys.executable, "-c", CRASHING_SITE, str(tmp_path), fault],
                            cwd=Path(__file__).parent.parent, capture_output=True, text=True,
                            timeout=120)
    if fault.startswith("die"):
        assert result.returncode == -signal.SIGKILL
    else:
        assert result.returncode == 1 and "File too large" in result.stderr
    ledger = PrivacyLedger(tmp_path)
    spend = ledger.spend("m")  # the ledger reads: old or new content, never half
    assert (spend is not None and spend.epsilon > 0) is spent
    assert ledger.history("m") == ([[1.1, 0.1, steps]] if steps else [])
    if spent:
        assert spend is not None and spend.rounds_served == 0  # reserved, never marked sent
    _reserve(ledger, 2)  # and the site trains on afterwards
    assert ledger.history("m")[-1][2] == steps + 10


def test_the_total_composes_every_models_history_and_evaluations_are_kinds(tmp_path) -> None:
    ledger = PrivacyLedger(tmp_path)
    _reserve(ledger, 1)
    ledger.reserve(model_id="other", run_id="r2", round_number=1, noise_multiplier=10.0,
                   sample_rate=1.0, steps=1, delta=1e-5, accountant="rdp", kind="evaluate")
    ledger.mark(model_id="other", run_id="r2", round_number=1, status="sent", kind="evaluate")
    assert ledger.total_history() == [[1.1, 0.1, 10], [10.0, 1.0, 1]]
    other = ledger.spend("other")
    assert other is not None and other.evaluations_released == 1 and other.rounds_served == 0
    with pytest.raises(LedgerError, match="no reserved entry"):  # a kind is its own entry
        ledger.mark(model_id="other", run_id="r2", round_number=1, status="sent")
