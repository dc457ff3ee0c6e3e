"""The utility benchmark's bookkeeping: resumable rows, mean ± sd, targets stated with margins,
and the plot written as a real PNG."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.plots import utility_plot
from benchmarks.utility import Results, markdown, summary


def _rows() -> list[dict]:
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.02), (2, -0.02)):
        base = {"benchmark": "utility", "task": "demo", "encoders": "trainable", "seed": seed,
                "rounds": 24}
        rows += [{**base, "setting": "centralized", "epsilon": None, "test_accuracy": 0.95},
                 {**base, "setting": "fl", "epsilon": None, "test_accuracy": 0.80 + shift},
                 {**base, "setting": "dp-fl", "epsilon": 8.0, "test_accuracy": 0.76 + shift,
                  "round_seconds": 2.5},
                 {**base, "setting": "dp-fl", "epsilon": 1.0, "test_accuracy": 0.5 + shift},
                 {**base, "setting": "site-01 alone", "epsilon": None,
                  "test_accuracy": 0.7 + shift},
                 {**base, "setting": "site-01 alone, dp", "epsilon": 8.0,
                  "test_accuracy": 0.78 + shift}]
    rows.append({"benchmark": "utility", "task": "fashion-mnist", "encoders": "pretrained",
                 "seed": 0, "rounds": 24, "setting": "dp-fl", "epsilon": 8.0,
                 "test_accuracy": 0.6, "round_seconds": 1.9})
    rows.append({"benchmark": "utility", "task": "fashion-mnist", "encoders": "trainable",
                 "seed": 0, "rounds": 24, "setting": "dp-fl", "epsilon": 8.0,
                 "test_accuracy": 0.52, "round_seconds": 2.5})
    return rows


def test_summary_is_mean_and_sample_sd() -> None:
    mean, spread, count = summary(_rows(), setting="fl")
    assert (round(mean, 4), round(spread, 4), count) == (0.8, 0.02, 3)
    assert summary(_rows(), setting="dp-fl", epsilon=3.0) is None


def test_markdown_states_each_target_with_its_margin(tmp_path: Path) -> None:
    text = "\n".join(markdown(_rows(), "python -m benchmarks --only utility", "plot.png"))
    assert "| FL, non-private (same schedule: 1 local epoch a round) | 0.800 ± 0.020 |" in text
    assert "| DP-FL, ε = 3 | – |" in text
    assert "4.0 points below non-private FL (target: within 3): missed by 1.0 points" in text
    assert ("non-private: FL is +10.0 points against the best single hospital trained the same "
            "way (target: FL above every single site): met." in text)
    assert "DP-SGD at ε = 8: FL is -2.0 points" in text and "missed by 2.0 points" in text
    assert "| site-01 alone (its data only, DP-SGD, ε = 8) | 0.780 ± 0.020 |" in text
    assert "| fashion-mnist | pretrained | – | – | 0.600 | – | 1.9 |" in text
    assert ("- fashion-mnist: pretrained minus trainable, test accuracy points: +8.0 at ε = 8."
            in text)
    assert "![accuracy vs ε](plot.png)" in text


def test_results_resume_from_the_file_and_start_afresh_without(tmp_path: Path) -> None:
    path = tmp_path / "utility.jsonl"
    store = Results(path, resume=False)
    row = _rows()[0]
    store.add(row)
    assert json.loads(path.read_text()) == row
    again = Results(path, resume=True)
    assert again.get(**{k: row[k] for k in ("task", "encoders", "setting", "epsilon", "seed",
                                            "rounds")}) == row
    assert Results(path, resume=False).rows == {} and not path.exists()


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    path = utility_plot(_rows(), tmp_path / "utility.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
