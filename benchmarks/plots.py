"""PNG plots for BENCHMARKS.md (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.utility import EPSILONS, summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    _pyplot().close(figure)
    return path


def utility_plot(rows: list[dict], path: Path) -> Path:
    """Test accuracy vs ε, one line per task and encoder kind; non-private at the right."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=120)
    positions = [*EPSILONS, 16.0]
    for task, encoders in sorted({(r["task"], r["encoders"]) for r in rows}):
        picked = [r for r in rows if r["task"] == task and r["encoders"] == encoders]
        stats = [summary(picked, setting="dp-fl", epsilon=e) for e in EPSILONS]
        stats.append(summary(picked, setting="fl"))
        points = [(x, s) for x, s in zip(positions, stats, strict=True) if s]
        if not points:
            continue
        seeds = len({r["seed"] for r in picked})
        axis.errorbar([x for x, _ in points], [s[0] for _, s in points],
                      yerr=[s[1] for _, s in points], marker="o", capsize=3,
                      label=f"{task}, {encoders} encoders "
                      + (f"(mean ± sd, {seeds} seeds)" if seeds > 1 else "(one seed)"))
    central = summary([r for r in rows if r["task"] == "demo"], setting="centralized")
    if central:
        axis.axhline(central[0], linestyle=":", color="grey",
                     label="demo, centralized (no DP)")
    axis.axhline(0.25, linestyle="--", color="lightgrey", label="chance (4 classes)")
    axis.set_xscale("log")
    axis.set_xticks(positions, [f"{e:g}" for e in EPSILONS] + ["no DP"])
    axis.set_xlabel("ε per hospital (δ = 1e-5)")
    axis.set_ylabel("test accuracy")
    axis.set_title("Federated test accuracy vs privacy budget")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def scale_plot(rows: list[dict], path: Path) -> Path:
    """Round time and peak memory vs the number of simulated hospitals."""
    plt = _pyplot()
    figure, time_axis = plt.subplots(figsize=(6.5, 4), dpi=120)
    hospitals = [r["hospitals"] for r in rows]
    time_axis.plot(hospitals, [r["round_seconds_after_first"] for r in rows], marker="o",
                   color="tab:blue", label="s / round (after the first)")
    time_axis.set_xlabel("simulated hospitals (40 patients each)")
    time_axis.set_ylabel("seconds per round", color="tab:blue")
    time_axis.set_xscale("log", base=2)
    time_axis.set_xticks(hospitals, [str(h) for h in hospitals])
    memory_axis = time_axis.twinx()
    memory_axis.plot(hospitals, [r["peak_rss_mib"] for r in rows], marker="s",
                     color="tab:red", label="peak memory (MiB)")
    memory_axis.set_ylabel("peak memory of the process tree (MiB)", color="tab:red")
    memory_axis.set_ylim(bottom=0)
    time_axis.set_ylim(bottom=0)
    time_axis.set_title("fedmm simulate: round time and memory vs hospitals")
    time_axis.grid(alpha=0.3)
    return _save(figure, path)


def dp_cost_plot(rows: list[dict], path: Path) -> Path:
    """DP-SGD epoch time ÷ non-private epoch time, per model and per-sample-gradient mode."""
    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    modes = [m for m in dict.fromkeys(r["mode"] for r in rows) if m != "none"]
    figure, axis = plt.subplots(figsize=(8, 4.2), dpi=120)
    width = 0.8 / len(modes)
    for index, mode in enumerate(modes):
        values = [next((r.get("ratio_to_non_private", 0.0) for r in rows
                        if r["model"] == m and r["mode"] == mode), 0.0) or 0.0
                  for m in models]
        axis.bar([i + index * width for i in range(len(models))], values, width, label=mode)
    axis.axhline(2.0, linestyle="--", color="grey", label="target 2×")
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, fontsize=8)
    axis.set_ylabel("DP epoch ÷ non-private epoch")
    axis.set_title("DP-SGD cost per per-sample-gradient mode (0: cannot run)")
    axis.legend(fontsize=7, ncol=3)
    axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)
