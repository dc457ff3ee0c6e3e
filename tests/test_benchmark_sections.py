"""The other benchmark sections' arithmetic and reports: DP cost verdict, latency overhead per
round trip, scale ratios, the peer table, and their plots as real PNGs."""

from __future__ import annotations

from pathlib import Path

from benchmarks import dp_cost, finite_check, latency, peer, scale
from benchmarks.plots import dp_cost_plot, scale_plot
from server.run_folder import RoundRecord

PNG = b"\x89PNG\r\n\x1a\n"


def _dp_rows() -> list[dict]:
    rows = [{"model": "concat", "mode": "none", "parameters": 37252, "seconds_median": 0.5,
             "ratio_to_non_private": 1.0},
            {"model": "concat", "mode": "hooks", "parameters": 37252, "seconds_median": 0.8,
             "ratio_to_non_private": 1.6},
            {"model": "concat", "mode": "ew", "parameters": 37252, "error": "RuntimeError: x"},
            {"model": "concat", "mode": "auto", "parameters": 37252, "seconds_median": 0.8,
             "ratio_to_non_private": 1.6, "chosen": "hooks", "calibration_seconds": 4.0}]
    return rows


def test_dp_cost_report_names_failures_and_the_target(tmp_path: Path) -> None:
    text = "\n".join(dp_cost.markdown(_dp_rows(), "cmd"))
    assert "| concat | 37,252 | DP-SGD, ew | cannot run: RuntimeError: x | – |" in text
    assert "DP-SGD, auto → hooks (calibration 4.0 s, once)" in text
    assert "1.60× with `auto` → hooks: met." in text
    assert dp_cost_plot(_dp_rows(), tmp_path / "d.png").read_bytes()[:8] == PNG


def test_latency_overhead_is_per_exchange_beyond_the_slowest_training() -> None:
    records = [RoundRecord.model_validate(r) for r in (
        {"round": 1, "seconds": 30.0, "sites": {"a": {"status": "ok", "seconds": 1.0}}},
        {"round": 2, "seconds": 14.0, "sites": {"a": {"status": "ok", "seconds": 1.0},
                                                "b": {"status": "ok", "seconds": 2.0}},
         "secure_aggregation": {"stage_seconds": {"consistency": 1.0}}},
        {"round": 3, "seconds": 10.0, "sites": {"a": {"status": "ok", "seconds": 2.0},
                                                "b": {"status": "ok", "seconds": 2.0}},
         "secure_aggregation": {"stage_seconds": {"consistency": 0.5}}},
        {"round": 4, "seconds": 40.0, "sites": {"a": {"status": "ok", "seconds": 1.0}}})]
    row = latency._overhead({"secure_aggregation": True, "hospitals": 2}, records)
    assert row["exchanges_per_round"] == 5
    assert row["overhead_per_round_trip_seconds"] == 2.0  # median of 12/5 and 8/5
    assert row["consistency_seconds"] == 0.75
    text = "\n".join(latency.markdown([row], "cmd"))
    assert "| SecAgg+ | 5 | 12.0 | 0.75 | 11.25 | 2.0 | 2.0 | missed by 1.0 s |" in text
    fast = {**row, "overhead_per_round_trip_seconds": 0.7}
    assert "| 0.7 | met |" in "\n".join(latency.markdown([fast], "cmd"))


def test_scale_report_compares_the_smallest_and_largest_run(tmp_path: Path) -> None:
    rows = [{"hospitals": 4, "patients": 160, "wall_seconds": 60, "first_round_seconds": 30,
             "round_seconds_after_first": 2.0, "seconds_per_1000_patients": 12.5,
             "sites_ok": [4, 4, 4], "peak_rss_mib": 1000.0},
            {"hospitals": 64, "patients": 2560, "wall_seconds": 200, "first_round_seconds": 88,
             "round_seconds_after_first": 32.0, "seconds_per_1000_patients": 12.5,
             "sites_ok": [64, 64, 64], "peak_rss_mib": 1100.0}]
    text = "\n".join(scale.markdown(rows, "cmd", "scale.png"))
    assert ("peak memory 1.10× (target: flat: met), round time 16.0× (target: at most linear, "
            "16×: met)" in text)
    assert "about 0.5 s per hospital of one-off work" in text
    assert "--ray-address auto" in text
    assert scale_plot(rows, tmp_path / "s.png").read_bytes()[:8] == PNG


def test_peer_report_says_whose_epsilon_covers_what() -> None:
    rows = [{"client": "peer", "rounds": 8, "first_round_seconds": 2.0,
             "round_seconds_median": 1.0, "epsilon_reported": 2.1},
            {"client": "fedmm", "rounds": 8, "first_round_seconds": 5.0,
             "round_seconds_median": 1.1, "epsilon_reported": 9.3}]
    text = "\n".join(peer.markdown(rows, "cmd"))
    assert "| Flower Opacus example | 2.00 | 1.000 | 2.10 |" in text
    assert "fedmm's round takes 1.10× the peer's" in text
    assert "9.30 is the accountant's ε for all 8 rounds" in text


def test_big_site_draws_patients_again_under_new_ids_and_measures_both_ways(
        tmp_path: Path) -> None:
    from benchmarks.big_site import build_site, markdown, measure
    from common.sitedata import load_site, read_manifest

    site = build_site(tmp_path, 90, distinct=30)
    rows = read_manifest(site)
    assert len({row.sample_id for row in rows}) == 90
    assert rows[0].image == rows[30].image and rows[0].sample_id != rows[30].sample_id
    from common.config import DataConfig

    assert len(load_site(site, DataConfig()).issues) == 0
    built = measure(site, 2, in_memory=False, image_size=16)
    on_disk = measure(site, 2, in_memory=False, image_size=16)
    in_memory = measure(site, 2, in_memory=True, image_size=16)
    assert built["arrays"] == "row files, cache built here"
    assert on_disk["arrays"] == "row files, cache reused"
    assert on_disk["patients"] == in_memory["patients"] == 90
    assert on_disk["steps"] == in_memory["steps"] == 2
    assert on_disk["cache_mb"] > 0 and in_memory["cache_mb"] == 0
    larger = {**on_disk, "patients": 900, "peak_rss_mib": on_disk["peak_rss_mib"] * 1.1,
              "cache_mb": on_disk["cache_mb"] * 10,
              "peak_rss_after_read_mib": on_disk["peak_rss_after_read_mib"] + 81}
    text = "\n".join(markdown([built, on_disk, in_memory, larger], "python -m benchmarks"))
    assert "| 90 | row files, cache reused |" in text and "| 90 | in memory |" in text
    assert "| 90 | row files, cache built here |" in text
    assert "10× the patients (cache reused): peak memory 1.10×" in text
    assert "by 104.9 kB a patient" in text  # 81 MiB over 810 more patients


def test_the_finiteness_checks_compared_drop_the_same_samples() -> None:
    import torch

    from client.training import finite_samples

    generator = torch.Generator().manual_seed(3)
    samples = [torch.randn(40, 5, 3, generator=generator), torch.randn(40, 7, generator=generator)]
    samples[0][4, 1, 2], samples[1][9, 0] = float("nan"), float("inf")
    samples[0][17, 0, 0], samples[1][17, 6] = -float("inf"), float("inf")
    assert torch.equal(finite_check.entry_by_entry(samples), finite_samples(samples))
    assert finite_samples(samples).logical_not().nonzero().flatten().tolist() == [4, 9, 17]


def test_finite_check_report_shows_each_run_and_the_ratio() -> None:
    row = {"examples": 960, "epochs": 4, "repeats": 2, "before_median": 12.0,
           "after_median": 10.0, "ratio": 0.833,
           "seconds": {"entry by entry": [12.5, 11.5], "one sum per tensor": [10.25, 9.75]}}
    text = "\n".join(finite_check.markdown(row, "python -m benchmarks --only finite_check"))
    assert "| entry by entry (before) | 12.50, 11.50 | 12.0 | 1.00 |" in text
    assert "| one sum per tensor (today) | 10.25, 9.75 | 10.0 | 0.83 |" in text
    assert "Command: `python -m benchmarks --only finite_check`" in text
