"""``python -m benchmarks [--quick]``: DP-SGD cost per local epoch, side by side; secure
aggregation vs plaintext rounds (fedmm and Flower's legacy SecAgg+, :mod:`benchmarks.secagg`);
and (without ``--quick``) the main job timed end to end.

For each fusion head, one local epoch on the same demo site is timed non-privately and with
Opacus DP-SGD in each per-sample-gradient mode, interleaved (repeat r: plain, hooks, ghost, ...)
so drifts in machine load hit every variant alike. Reported: median seconds and the ratio to the
non-private epoch. Writes one JSON object per result line to stdout and the table to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

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


def write_markdown(path: Path, command: str, rows: list[dict], job: dict | None,
                   secure_rows: list[dict]) -> None:
    import torch

    from benchmarks.secagg import markdown as secure_markdown

    versions = {}
    for name in ("flwr", "opacus", "numpy"):
        module = __import__(name)
        versions[name] = getattr(module, "__version__", "?")
    lines = [
        "# Benchmarks", "",
        "Figures are ratios measured side by side in one run (never timed assertions in tests).",
        "",
        "## DP-SGD cost per local epoch", "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, 1 torch thread, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
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
              "(faster here, see the table) and ghost clipping above.", ""]
    lines += [*secure_markdown(secure_rows, command), ""]
    if job is not None:
        lines += [
            "## The main job (`make demo`)", "",
            f"Command: `{command}` (runs `fedmm simulate --centralized` with defaults: 3 demo "
            "hospitals × 400 patients, DP-SGD target ε = 8, δ = 1e-5). Machine as above, "
            "2 cores.", "",
            "| wall time (s) | s / round after the first | rounds | test accuracy (DP-FL) | "
            "test accuracy (centralized, no DP) | ε max |",
            "|---|---|---|---|---|---|",
            f"| {job['wall_seconds']} | {job['round_seconds_after_first']} | {job['rounds']} | "
            f"{job['test_accuracy']} | {job['centralized_test_accuracy']} | "
            f"{job['epsilon_max']} |", "",
            "Wall time includes demo-data generation, Ray start-up and the centralized "
            "reference. Four balanced classes: chance is 0.25.", ""]
    path.write_text("\n".join(lines))


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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller site")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()
    from benchmarks.secagg import secure_aggregation_cost

    rows = dp_cost(quick=args.quick)
    secure_rows = secure_aggregation_cost(quick=args.quick)
    job = None if args.quick else main_job()
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    write_markdown(args.output, command, rows, job, secure_rows)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
