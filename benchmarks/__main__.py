"""``python -m benchmarks [--quick] [--only NAME] [--resume] [--recipe NAME]``: fedmm's speed and
utility, measured side by side on this machine; one JSON object per result line on stdout,
tables and PNG plots in BENCHMARKS.md (each section replaced as soon as it is measured).

Sections: ``dp_cost`` (DP-SGD epoch vs non-private, per head and per-sample-gradient mode),
``randomness`` (ChaCha20 DP noise and sampling vs torch's generator, per epoch), ``peer``
(fedmm's client round vs Flower's Opacus example), ``secagg`` (SecAgg+ vs plaintext
rounds, fedmm's and Flower's legacy), ``scale`` (4/16/64 simulated hospitals), ``latency``
(deployment overhead per message round trip), ``loopback`` (20 hospitals deployed at once),
``recipe`` (each change to the DP training recipe on the demo task, chosen on validation),
``utility`` (accuracy vs ε, centralized with and without DP, FL, each hospital alone,
trainable vs pretrained encoders on both tasks), ``fashion_mnist`` (ten-class Fashion-MNIST
over 10 hospitals: DP-FL, centralized DP-SGD and non-private beside Tramèr & Boneh 2021; needs
Debian's dataset-fashion-mnist; ``--quick --only fashion_mnist``: a tenth of it),
``big_site`` (peak memory and DP-SGD throughput of one site of 5,000 and 50,000 patients at
224 × 224; about 6 GB of disk, in ``$FEDMM_BIG_SITE_DIR`` or the temporary folder; ``--quick
--only big_site``: 500 and 5,000) and ``main_job`` (the README's main job, end to end).

``--quick`` runs small versions of dp_cost, peer, secagg, scale and utility in under 3 minutes
and writes them to benchmarks/quick/ (not over the full results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.report import machine, update_sections
from server.run_folder import RunFolder

SECTIONS = ("dp_cost", "finite_check", "randomness", "peer", "secagg", "scale", "latency",
            "loopback", "recipe", "utility", "fashion_mnist", "big_site", "main_job")
QUICK_SECTIONS = ("dp_cost", "peer", "secagg", "scale", "utility")


def main_job_markdown(job: dict, command: str) -> list[str]:
    return [
        "## The main job (`make demo`)", "",
        f"Command: `{command}` (runs `fedmm simulate --centralized` with defaults: 3 demo "
        "hospitals × 400 patients, DP-SGD target ε = 8, δ = 1e-5, secure aggregation on).  ",
        f"Machine: {machine()}", "",
        "| wall time (s) | s / round after the first | rounds | test accuracy (DP-FL) | "
        "test accuracy (centralized DP-SGD, same ε) | test accuracy (centralized, no DP) | "
        "ε max |",
        "|---|---|---|---|---|---|---|",
        f"| {job['wall_seconds']} | {job['round_seconds_after_first']} | {job['rounds']} | "
        f"{job['test_accuracy']} | {job['centralized_dp_test_accuracy']} | "
        f"{job['centralized_test_accuracy']} | {job['epsilon_max']} |", "",
        "Wall time includes demo-data generation, Ray start-up and both centralized "
        "references. Four balanced classes: chance is 0.25."]


def main_job() -> dict:
    """The README's main job (``fedmm simulate --centralized``, defaults), timed end to end."""
    import os
    import subprocess

    with tempfile.TemporaryDirectory(prefix="fm", dir="/tmp") as folder:
        out = Path(folder) / "run"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fedmm", "simulate", "--out", str(out),
                        "--centralized"], check=True, capture_output=True,
                       env={**os.environ, "TMPDIR": folder})
        wall = time.perf_counter() - started
        run = RunFolder(out)
        summary = run.read_summary()
        reference = json.loads(run.centralized.read_text())
        records = run.rounds()
    row = {
        "benchmark": "main_job", "wall_seconds": round(wall, 1),
        "round_seconds_after_first": round(statistics.median(
            r.seconds for r in records[1:]), 2) if len(records) > 1 else None,
        "rounds": summary["rounds_completed"],
        "test_accuracy": round(summary["final_metrics"]["test_accuracy"], 3),
        "centralized_test_accuracy": round(reference["non_private"]["test_accuracy"], 3),
        "centralized_dp_test_accuracy": round(reference["dp"]["test_accuracy"], 3),
        "epsilon_max": round(max(s["epsilon"] for s in summary["privacy"]["sites"].values()),
                             3),
    }
    print(json.dumps(row), flush=True)
    return row


def _section(name: str, *, quick: bool, resume: bool, command: str, only: tuple[str, ...],
             plots: Path, relative: Callable[[Path], str]) -> list[str]:
    """Measure one section; returns its markdown."""
    if name == "dp_cost":
        from benchmarks import dp_cost
        from benchmarks import plots as charts

        rows = dp_cost.dp_cost(quick=quick)
        picture = charts.dp_cost_plot(rows, plots / "dp_cost.png")
        return [*dp_cost.markdown(rows, command), "",
                f"![DP-SGD cost per mode]({relative(picture)})"]
    if name == "finite_check":
        from benchmarks import finite_check

        return finite_check.markdown(finite_check.finite_check(quick=quick), command)
    if name == "randomness":
        from benchmarks import randomness

        return randomness.markdown(randomness.randomness_cost(quick=quick), command)
    if name == "peer":
        from benchmarks import peer

        return peer.markdown(peer.peer_comparison(quick=quick), command)
    if name == "secagg":
        from benchmarks.secagg import markdown, secure_aggregation_cost

        return markdown(secure_aggregation_cost(quick=quick), command)
    if name == "scale":
        from benchmarks import plots as charts
        from benchmarks import scale

        rows = scale.simulation_scale(quick=quick)
        picture = charts.scale_plot(rows, plots / "scale.png")
        return scale.markdown(rows, command, relative(picture))
    if name == "latency":
        from benchmarks import latency

        return latency.markdown(latency.deployment_latency(quick=quick), command)
    if name == "loopback":
        from benchmarks.loopback import loopback_load

        return loopback_load(quick=quick, command=command)
    if name == "recipe":
        from benchmarks import recipe

        results = plots.parent / "results" / "recipe.jsonl"
        return recipe.markdown(recipe.recipe_sweep(quick=quick, resume=resume,
                                                   results=results, only=only), command)
    if name == "utility":
        from benchmarks import plots as charts
        from benchmarks import utility

        results = plots.parent / "results" / "utility.jsonl"
        rows = utility.utility(quick=quick, resume=resume, results=results)
        picture = charts.utility_plot(rows, plots / "utility.png")
        return utility.markdown(rows, command, relative(picture))
    if name == "fashion_mnist":
        from benchmarks import fashion_mnist

        results = plots.parent / "results" / "fashion_mnist.jsonl"
        return fashion_mnist.markdown(fashion_mnist.fashion_mnist(
            quick=quick, resume=resume, results=results), command)
    if name == "big_site":
        from benchmarks import big_site

        return big_site.markdown(big_site.big_site(quick=quick), command)
    return main_job_markdown(main_job(), command)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small versions of " + ", ".join(QUICK_SECTIONS)
                        + " (< 3 min), written to benchmarks/quick/")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable); the others in the output "
                        "file are kept as they are")
    parser.add_argument("--resume", action="store_true",
                        help="utility, recipe and fashion_mnist: reuse the rows already in "
                        "benchmarks/results/")
    parser.add_argument("--recipe", action="append", metavar="NAME",
                        help="recipe: run only this row (repeatable; implies --resume); "
                        "the other rows in benchmarks/results/recipe.jsonl are kept")
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown file (default: BENCHMARKS.md, or "
                        "benchmarks/quick/BENCHMARKS.md with --quick)")
    args = parser.parse_args()
    output = args.output or (Path("benchmarks/quick/BENCHMARKS.md") if args.quick
                             else Path("BENCHMARKS.md"))
    plots = Path("benchmarks/quick/plots" if args.quick else "benchmarks/plots")
    chosen = args.only or list(QUICK_SECTIONS if args.quick else SECTIONS)
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + "".join(
        f" --only {name}" for name in args.only or []) + "".join(
        f" --recipe '{name}'" for name in args.recipe or [])
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name in SECTIONS:
        if name not in chosen:
            continue
        section = _section(name, quick=args.quick, resume=args.resume, command=command,
                           only=tuple(args.recipe or ()),
                           plots=plots, relative=lambda p: _relative(p, output))
        update_sections(output, [section])  # each section lands as soon as it is done
    print(f"wrote {output} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def _relative(path: Path, output: Path) -> str:
    """``path`` as a link from the markdown file's folder."""
    import os

    return os.path.relpath(path.resolve(), output.resolve().parent)


if __name__ == "__main__":
    main()
