"""DP-SGD with a sample's finiteness checked entry by entry (before) and from one sum per tensor
(today, :func:`client.training.finite_samples`), side by side in one process.

Both drop the same samples (a test checks it); only the cost differs. Workload: the demo
model (defaults) trained with DP-SGD (hooks) on the pooled training splits of three demo
hospitals × 400 patients for four epochs; after one uncounted warm-up run of each, the two
variants alternate in ABBA order, ``repeats`` times each, so drifts in machine load and the
order hit both alike. One torch thread.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.report import machine


def entry_by_entry(samples: list) -> object:
    """The check before: ``isfinite`` on every entry of every per-sample gradient."""
    import torch

    return torch.stack([torch.isfinite(g.reshape(len(g), -1)).all(dim=1)
                        for g in samples]).all(dim=0)


def finite_check(*, quick: bool) -> dict:
    import torch

    import client.training as training
    from client.validation import simulated_site_split
    from common.config import RunConfig
    from common.model_inputs import load_model_inputs
    from simulations.centralized import pool, train_pooled
    from simulations.demo_data import generate_demo
    from simulations.scenarios import Scenario

    torch.set_num_threads(1)
    repeats = 2 if quick else 6
    config = RunConfig.model_validate({"training": {"rounds": 1 if quick else 2}})
    today = training.finite_samples
    seconds: dict[str, list[float]] = {"entry by entry": [], "one sum per tensor": []}
    with tempfile.TemporaryDirectory(prefix="fm", dir="/tmp") as folder:
        root = Path(folder)
        generate_demo(root, sites=3, samples_per_site=400, seed=0, scenario=Scenario.IID,
                      test_samples=0)
        pooled = pool([simulated_site_split(root / f"site-0{i}", config,
                                            load_model_inputs(root / f"site-0{i}", config))[0]
                       for i in (1, 2, 3)])
        variants = (("entry by entry", entry_by_entry), ("one sum per tensor", today))
        try:
            for _, check in variants:  # warm-up, not counted: the first run pays more
                training.finite_samples = check
                train_pooled(config=config, data=pooled, test=None, private=True)
            for repeat in range(repeats):  # ABBA: neither variant always goes first
                for name, check in variants if repeat % 2 == 0 else variants[::-1]:
                    training.finite_samples = check
                    result = train_pooled(config=config, data=pooled, test=None, private=True)
                    seconds[name].append(result["seconds"])
        finally:
            training.finite_samples = today
    before, after = (statistics.median(v) for v in seconds.values())
    row = {"benchmark": "finite_check", "examples": len(pooled),
           "epochs": config.training.local_epochs * config.training.rounds,
           "repeats": repeats, "seconds": seconds, "before_median": round(before, 2),
           "after_median": round(after, 2), "ratio": round(after / before, 3)}
    print(json.dumps(row), flush=True)
    return row


def markdown(row: dict, command: str) -> list[str]:
    runs = {name: ", ".join(f"{s:.2f}" for s in values)
            for name, values in row["seconds"].items()}
    return [
        "## DP-SGD: a sample's finiteness, entry by entry vs one sum per tensor", "",
        f"Command: `{command}`  ", f"Machine: {machine()}", "",
        "Before each DP-SGD step clips, a sample whose per-sample gradient is not finite "
        "counts zero (`client/training.py`). The check read every entry (`isfinite`); it now "
        f"reads one sum per sample and tensor. DP-SGD (hooks) on {row['examples']} pooled "
        f"demo patients, {row['epochs']} epochs, default model, one torch thread; the two "
        f"variants alternate in one process (ABBA, after an uncounted warm-up run of each), "
        f"{row['repeats']} runs each.", "",
        "| check | s per run (each run) | median s | × before |", "|---|---|---|---|",
        f"| entry by entry (before) | {runs['entry by entry']} | {row['before_median']} | "
        "1.00 |",
        f"| one sum per tensor (today) | {runs['one sum per tensor']} | "
        f"{row['after_median']} | {row['ratio']:.2f} |"]
