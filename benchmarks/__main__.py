"""``python -m benchmarks [--quick] [--only NAME]``: DP-SGD cost per local epoch, side by side;
secure aggregation vs plaintext rounds (fedmm and Flower's legacy SecAgg+,
:mod:`benchmarks.secagg`); a loopback deployment under load (:mod:`benchmarks.loopback`); and
(without ``--quick``) the main job timed end to end.

For each fusion head, one local epoch on the same demo site is timed non-privately and with
Opacus DP-SGD in each per-sample-gradient mode, interleaved (repeat r: plain, hooks, ghost, ...)
so drifts in machine load hit every variant alike. Reported: median seconds and the ratio to the
non-private epoch. Writes one JSON object per result line to stdout and the table to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.report import machine, update_sections

MODES = ("none", "hooks", "ghost")
HEADS = ("concat", "attention", "late")


def _epoch_seconds(config, data, mode: str) -> float:
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
    train_local(config=run, global_weights=weights, data=data, plan=plan, history=[])
    return time.perf_counter() - started


def dp_cost(*, quick: bool) -> list[dict]:
    import torch

    from common.config import RunConfig
    from common.sitedata import load_site
    from simulations.demo_data import generate_demo
    from simulations.scenarios import Scenario

    torch.set_num_threads(1)
    repeats = 3 if quick else 7
    samples = 160 if quick else 480
    with tempfile.TemporaryDirectory() as folder:
        generate_demo(Path(folder), sites=1, samples_per_site=samples, seed=0,
                      scenario=Scenario.IID, test_samples=0)
        results = []
        for head in HEADS:
            config = RunConfig.model_validate({"model": {"fusion": head},
                                               "training": {"local_epochs": 1}})
            data = load_site(Path(folder) / "site-01", config.data)
            times: dict[str, list[float]] = {m: [] for m in MODES}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _epoch_seconds(config, data, "hooks")  # warm-up: imports, allocator
                for _ in range(repeats):
                    for mode in MODES:
                        times[mode].append(_epoch_seconds(config, data, mode))
            base = statistics.median(times["none"])
            for mode in MODES:
                median = statistics.median(times[mode])
                row = {"benchmark": "dp_cost", "fusion": head, "mode": mode,
                       "examples": len(data), "seconds_median": round(median, 4),
                       "ratio_to_non_private": round(median / base, 2), "repeats": repeats}
                print(json.dumps(row), flush=True)
                results.append(row)
    return results


def dp_cost_markdown(rows: list[dict], command: str) -> list[str]:
    lines = [
        "## DP-SGD cost per local epoch", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; 1 torch thread", "",
        f"One local epoch (Poisson batches of {_batch_size()}, default model ≈ "
        f"{_parameters()} parameters) on one demo site; median of the repeats; ratio to the "
        "non-private epoch of the same head in the same run (same optimiser: SGD with momentum).",
        "",
        "| fusion | per-sample gradients | examples | s / epoch | × non-private |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        mode = "non-private" if row["mode"] == "none" else f"DP-SGD, {row['mode']}"
        lines.append(f"| {row['fusion']} | {mode} | {row['examples']} | "
                     f"{row['seconds_median']:.3f} | {row['ratio_to_non_private']:.2f} |")
    lines += ["", "`grad_sample_mode = \"auto\"` picks hooks for models under 1 M parameters "
              "(faster here, see the table) and ghost clipping above."]
    return lines


def main_job_markdown(job: dict, command: str) -> list[str]:
    return [
        "## The main job (`make demo`)", "",
        f"Command: `{command}` (runs `fedmm simulate --centralized` with defaults: 3 demo "
        "hospitals × 400 patients, DP-SGD target ε = 8, δ = 1e-5).  ",
        f"Machine: {machine()}", "",
        "| wall time (s) | s / round after the first | rounds | test accuracy (DP-FL) | "
        "test accuracy (centralized, no DP) | ε max |",
        "|---|---|---|---|---|---|",
        f"| {job['wall_seconds']} | {job['round_seconds_after_first']} | {job['rounds']} | "
        f"{job['test_accuracy']} | {job['centralized_test_accuracy']} | "
        f"{job['epsilon_max']} |", "",
        "Wall time includes demo-data generation, Ray start-up and the centralized "
        "reference. Four balanced classes: chance is 0.25."]


def _batch_size() -> int:
    from common.config import RunConfig

    return RunConfig().training.batch_size


def main_job() -> dict:
    """The README's main job (``fedmm simulate --centralized``, defaults), timed end to end."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="fm", dir="/tmp") as folder:
        out = Path(folder) / "run"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fedmm", "simulate", "--out", str(out),
                        "--centralized"], check=True, capture_output=True,
                       env={**__import__("os").environ, "TMPDIR": folder})
        wall = time.perf_counter() - started
        summary = json.loads((out / "summary.json").read_text())
        reference = json.loads((out / "centralized.json").read_text())
        records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    row = {
        "benchmark": "main_job", "wall_seconds": round(wall, 1),
        "round_seconds_after_first": round(statistics.median(
            r["seconds"] for r in records[1:]), 2) if len(records) > 1 else None,
        "rounds": summary["rounds_completed"],
        "test_accuracy": round(summary["final_metrics"]["test_accuracy"], 3),
        "centralized_test_accuracy": round(reference["test_accuracy"], 3),
        "epsilon_max": round(max(s["epsilon"] for s in summary["privacy"]["sites"].values()),
                             3),
    }
    print(json.dumps(row), flush=True)
    return row


def _parameters() -> str:
    from common.config import RunConfig
    from common.models import build_model, count_parameters

    config = RunConfig()
    return f"{count_parameters(build_model(data=config.data, model=config.model)):,}"


SECTIONS = ("dp_cost", "secagg", "loopback", "main_job")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, smaller sites, no main job")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable); the others in the output "
                        "file are kept as they are")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()
    chosen = args.only or [s for s in SECTIONS if not (args.quick and s == "main_job")]
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + "".join(
        f" --only {name}" for name in args.only or [])
    sections = []
    for name in SECTIONS:
        if name not in chosen:
            continue
        if name == "dp_cost":
            sections.append(dp_cost_markdown(dp_cost(quick=args.quick), command))
        elif name == "secagg":
            from benchmarks.secagg import markdown, secure_aggregation_cost

            sections.append(markdown(secure_aggregation_cost(quick=args.quick), command))
        elif name == "loopback":
            from benchmarks.loopback import loopback_load

            sections.append(loopback_load(quick=args.quick, command=command))
        else:
            sections.append(main_job_markdown(main_job(), command))
        update_sections(args.output, [sections[-1]])  # each section lands as soon as it is done
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
