"""DP-SGD cost per local epoch, side by side: for each fusion head, one epoch on the same demo site
non-privately and with Opacus DP-SGD in each per-sample-gradient mode (hooks, ew, functorch,
ghost) and in ``auto`` (the mode the site's calibration picks, :mod:`client.grad_sample`).

Variants run interleaved (repeat r: plain, hooks, ew, ...) so drifts in machine load hit them
alike. Reported: the median seconds per epoch and its ratio to the non-private epoch of the same
model in the same run (same optimiser: SGD with momentum), or why a mode cannot run the model.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks.report import machine

MODES = ("none", "hooks", "ew", "functorch", "ghost", "auto")
# (label, model section overrides): the three heads at default size, a wide head, and the
# default head on frozen pretrained features
MODELS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("concat", {"fusion": "concat"}),
    ("attention", {"fusion": "attention"}),
    ("late", {"fusion": "late"}),
    ("concat, wide head", {"fusion": "concat", "embed_dim": 96, "hidden_dim": 4096}),
    ("concat, pretrained encoders", {"fusion": "concat", "encoders": "pretrained"}),
)


def _epoch_seconds(config, data, mode: str, memo: Path) -> tuple[float, str]:
    import torch

    from client.training import plan_round, train_local
    from common.models import build_model
    from common.serialization import model_weights

    privacy = {"enabled": mode != "none", "noise_multiplier": 1.0,
               "grad_sample_mode": "hooks" if mode == "none" else mode}
    same_optimiser = {"non_private_optimizer": config.training.optimizer,
                      "non_private_learning_rate": config.training.learning_rate}
    run = config.model_copy(update={
        "privacy": config.privacy.model_copy(update=privacy),
        "training": config.training.model_copy(update=same_optimiser)})
    weights = model_weights(build_model(data=run.data, model=run.model, seed=0))
    plan = plan_round(len(data), run)
    torch.manual_seed(0)
    started = time.perf_counter()
    result = train_local(config=run, global_weights=weights, data=data, plan=plan, history=[],
                         mode_memo=memo)
    return time.perf_counter() - started, result.grad_sample_mode


def _model_rows(label: str, config, data, *, repeats: int, memo: Path) -> list[dict]:
    times: dict[str, list[float]] = {m: [] for m in MODES}
    failures: dict[str, str] = {}
    chosen = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        _, chosen = _epoch_seconds(config, data, "auto", memo)  # calibration + warm-up
        calibration_seconds = time.perf_counter() - started
        for _ in range(repeats):
            for mode in MODES:
                if mode in failures:
                    continue
                try:
                    times[mode].append(_epoch_seconds(config, data, mode, memo)[0])
                except Exception as error:  # reported as the mode's result
                    failures[mode] = f"{type(error).__name__}: {str(error).splitlines()[0][:90]}"
    from common.models import build_model, count_parameters

    parameters = count_parameters(build_model(data=config.data, model=config.model))
    base = statistics.median(times["none"])
    rows = []
    for mode in MODES:
        row: dict[str, Any] = {"benchmark": "dp_cost", "model": label, "mode": mode,
                               "parameters": parameters, "examples": len(data),
                               "repeats": repeats}
        if mode in failures:
            row["error"] = failures[mode]
        else:
            median = statistics.median(times[mode])
            row.update(seconds_median=round(median, 4),
                       ratio_to_non_private=round(median / base, 2))
        if mode == "auto":
            row.update(chosen=chosen, calibration_seconds=round(calibration_seconds, 1))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def dp_cost(*, quick: bool) -> list[dict]:
    import torch

    from common.config import RunConfig
    from common.model_inputs import load_model_inputs
    from common.site_state import SiteState
    from simulations.demo_data import generate_demo
    from simulations.scenarios import Scenario

    torch.set_num_threads(1)
    repeats = 2 if quick else 5
    samples = 160 if quick else 480
    models = (MODELS[0], MODELS[2]) if quick else MODELS  # quick: concat and late
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_demo(root, sites=1, samples_per_site=samples, seed=0, scenario=Scenario.IID,
                      test_samples=0)
        for label, overrides in models:
            config = RunConfig.model_validate({"model": overrides,
                                               "training": {"local_epochs": 1}})
            data = load_model_inputs(root / "site-01", config, SiteState(root / "state"))
            rows += _model_rows(label, config, data, repeats=repeats,
                                memo=root / f"memo-{len(rows)}.json")
    return rows


def markdown(rows: list[dict], command: str) -> list[str]:
    from common.config import RunConfig

    batch = RunConfig().training.batch_size
    lines = [
        "## DP-SGD cost per local epoch", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; 1 torch thread", "",
        f"One local epoch (Poisson batches of {batch}) on one demo site; median of the repeats; "
        "ratio to the non-private epoch of the same model in the same run (same optimiser: "
        "SGD with momentum). `auto` is what a site runs by default: each mode's gradient is "
        "checked against per-sample reference gradients, the correct ones are timed on the "
        "site's batch and the fastest is remembered (`client/grad_sample.py`); its first "
        "round pays the calibration once.", "",
        "| model | parameters | per-sample gradients | s / epoch | × non-private |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        mode = {"none": "non-private", "auto": f"DP-SGD, auto → {row.get('chosen', '?')} "
                f"(calibration {row.get('calibration_seconds', '?')} s, once)"}.get(
            row["mode"], f"DP-SGD, {row['mode']}")
        if "error" in row:
            lines.append(f"| {row['model']} | {row['parameters']:,} | {mode} | cannot run: "
                         f"{row['error']} | – |")
        else:
            lines.append(f"| {row['model']} | {row['parameters']:,} | {mode} | "
                         f"{row['seconds_median']:.3f} | {row['ratio_to_non_private']:.2f} |")
    lines += ["", _verdict(rows), "", SMALL_MODELS]
    return lines


SMALL_MODELS = ("Models under 200,000 parameters skip the calibration and train with hooks "
                "(`CALIBRATE_MIN_PARAMETERS`): at those sizes every other mode measured within "
                "20 % of hooks or slower (table above), so calibrating would only cost each "
                "hospital seconds of CPU in its first round. The calibration times for the "
                "small models above were measured before that rule.")


def _verdict(rows: list[dict]) -> str:
    default = next((r for r in rows if r["model"] == "concat" and r["mode"] == "auto"), None)
    if default is None or "ratio_to_non_private" not in default:
        return ""
    ratio = default["ratio_to_non_private"]
    met = "met" if ratio <= 2.0 else f"missed by {ratio - 2.0:.2f}×"
    return (f"Target (DP epoch ≤ 2× the non-private epoch, default model, CPU): {ratio:.2f}× "
            f"with `auto` → {default['chosen']}: {met}.")
