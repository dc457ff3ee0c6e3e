"""Load: a real loopback deployment of 20 hospitals (TLS, node authentication, DP-SGD, secure
aggregation) completes its rounds with every hospital in every round: no hospital misses the
round timeout. One round here, for CI's time; the timed section of BENCHMARKS.md runs two
(``python -m benchmarks --only loopback``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.loopback import run_loopback

pytestmark = [pytest.mark.slow, pytest.mark.deadlines]


def test_twenty_hospitals_complete_every_round_within_the_round_timeout(tmp_path: Path) -> None:
    result = run_loopback(root=tmp_path, hospitals=20, rounds=1, round_timeout_s=600)
    assert result["exit_code"] == 0, result["server_log"]
    assert result["sites_ok"] == [20], result
    assert result["aggregated"] == [True], result
    assert result["server_peak_rss_mib"] > 0
    summary = (tmp_path / "out" / "summary.json")
    assert summary.exists()  # written last: the run completed
