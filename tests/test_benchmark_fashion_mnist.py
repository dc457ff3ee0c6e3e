"""The Fashion-MNIST benchmark's table: every measured row in its cell, the paper's rows
beside them, and the goals stated with what was measured."""

from __future__ import annotations

from benchmarks.fashion_mnist import PAPER, markdown


def _row(encoders: str, setting: str, epsilon: float | None, accuracy: float) -> dict:
    return {"benchmark": "fashion_mnist", "task": "fashion-mnist-10", "seed": 0,
            "encoders": encoders, "rounds": 12, "samples": 6000, "setting": setting,
            "epsilon": epsilon, "test_accuracy": accuracy, "seconds_per_epoch": 1.5}


def test_cells_paper_rows_and_goals() -> None:
    rows = [_row("scattering", "dp-fl", 3.0, 0.871), _row("scattering", "dp-fl", 8.0, 0.88),
            _row("scattering", "centralized, dp", 3.0, 0.85),
            _row("scattering", "centralized", None, 0.9),
            _row("trainable", "dp-fl", 3.0, 0.7)]
    text = "\n".join(markdown(rows, "python -m benchmarks --only fashion_mnist"))
    assert "| DP-FL, 10 hospitals | 0.871 | 0.880 | – |" in text
    assert "| centralized, no DP | – | – | 0.900 |" in text
    assert "| trainable CNN (the default encoders) | DP-FL, 10 hospitals | 0.700 | – | – |" in text
    for name, accuracy in PAPER:
        assert f"Tramèr & Boneh 2021: {name} | centralized DP-SGD, 60,000 pictures | " \
               f"{accuracy:.3f}" in text
    assert "DP-FL at ε = 3: 0.871 (goal ≥ 0.860" in text and "): met." in text
    assert "Centralized DP at ε = 3: 0.850 (goal: within 2 points of 0.860): met." in text
    assert "(DP-FL ÷ centralized DP, ε = 3): 1.025" in text


def test_unmet_goals_say_so() -> None:
    rows = [_row("scattering", "dp-fl", 3.0, 0.8), _row("scattering", "centralized, dp", 3.0,
                                                         0.83)]
    text = "\n".join(markdown(rows, "x"))
    assert "DP-FL at ε = 3: 0.800 (goal ≥ 0.860, the paper's centralized end-to-end CNN; " \
           "stretch 0.897): not met." in text
    assert "within 2 points of 0.860): not met." in text
