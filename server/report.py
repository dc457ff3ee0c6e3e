"""End-of-run report: PNG plots (accuracy/loss per round, ε per site per round) and a markdown
summary a person can read in a minute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json, atomic_write_text
from server.run_folder import HELD_OUT_SCORES, RoundRecord, RunFolder

REFERENCES_HEADING = "## Centralized references"


def _plot(path: Path, title: str, ylabel: str, series: dict[str, tuple[list, list]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _series(rounds: list[RoundRecord], key: str) -> tuple[list, list]:
    points = [(r.round, getattr(r, key)) for r in rounds if getattr(r, key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def write_report(folder: RunFolder, rounds: list[RoundRecord], summary: dict[str, Any]) -> None:
    report_dir = folder.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    _plot(report_dir / "accuracy.png", "Accuracy per round", "accuracy", {
        "sites' validation (federated)": _series(rounds, "accuracy"),
        "held-out test (server)": _series(rounds, "test_accuracy"),
    })
    _plot(report_dir / "loss.png", "Loss per round", "cross-entropy", {
        "sites' validation (federated)": _series(rounds, "loss"),
        "held-out test (server)": _series(rounds, "test_loss"),
    })
    sites = sorted({s for r in rounds for s in r.sites})
    epsilon = {
        site: ([r.round for r in rounds if site in r.sites],
               [r.sites[site].epsilon or 0.0 for r in rounds if site in r.sites])
        for site in sites
    }
    _plot(report_dir / "epsilon.png", "Privacy spent per site (ε)", "ε", epsilon)
    privacy = summary["privacy"]
    lines = [
        "# fedmm run report", "",
        f"- rounds completed: {summary['rounds_completed']}"
        + (f" (stopped: {summary['stop_reason']})" if summary.get("stop_reason") else ""),
        f"- strategy: {summary['strategy']}; secure aggregation: "
        f"{'on' if summary['secure_aggregation'] else 'off'}; "
        f"DP-SGD: {'on' if summary['dp_enabled'] else 'OFF (no privacy guarantee)'}",
        "- final metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                          summary["final_metrics"].items()
                                          if isinstance(v, int | float)
                                          and not isinstance(v, bool))
        + (" (sites' validation figures are DP releases: noisy, ε charged at the sites)"
           if summary["final_metrics"].get("evaluation_private") else ""),
        f"- model: `{summary['model']['path']}` ({summary['model']['parameters']:,} parameters)",
        *label_lines(summary),
        "", "## Privacy per site",
        f"(ε at δ = {privacy['delta']:g}, {privacy['accountant'].upper()} accountant, over every "
        "DP-SGD step and evaluation release the site made for this model, earlier runs "
        "included)", "",
        "| site | ε | clip C | σ (last) | steps |", "|---|---|---|---|---|",
    ]
    for site, info in privacy["sites"].items():
        history = info["history"]
        sigma = f"{history[-1][0]:.3f}" if history else "-"
        steps = sum(int(h[2]) for h in history)
        lines.append(f"| {site} | {info['epsilon']:.3f} | {info['max_grad_norm']:g} | {sigma} | "
                     f"{steps} |")
    lines += ["", "## Sites", "",
              "| site | last status | training examples | bad rows skipped |", "|---|---|---|---|"]
    for site in sites:
        last = next(r.sites[site] for r in reversed(rounds) if site in r.sites)
        status = last.status + (f" ({last.code})" if last.code else "")
        examples = "-" if last.num_examples is None else last.num_examples
        skipped = "-" if last.skipped_rows is None else last.skipped_rows
        lines.append(f"| {site} | {status} | {examples} | {skipped} |")
    extra = [(name, heading) for name, heading in HELD_OUT_SCORES
             if any(getattr(r, name) is not None for r in rounds)]
    lines += ["", "## Rounds", "",
              "| round | accuracy | loss | test acc | "
              + "".join(f"{heading} | " for _, heading in extra) + "ε max | sites ok | s |",
              "|---|---|---|---|" + "---|" * len(extra) + "---|---|---|"]

    for r in rounds:
        lines.append(f"| {r.round} | {fmt(r.accuracy)} | {fmt(r.loss)} | "
                     f"{fmt(r.test_accuracy)} | "
                     + "".join(f"{fmt(getattr(r, name))} | " for name, _ in extra)
                     + f"{fmt(r.epsilon_max)} | {r.sites_ok} | {r.seconds:.1f} |")
    lines += finding_lines(rounds, summary)
    lines += ["", "![accuracy](accuracy.png) ![loss](loss.png) ![epsilon](epsilon.png)", ""]
    atomic_write_text(folder.report, "\n".join(lines))


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def label_lines(summary: dict[str, Any]) -> list[str]:
    """What "accuracy" means when a patient may have several findings."""
    if summary.get("labels") != "multilabel":
        return []
    return ["- labels: multi-label findings; accuracy is exact match (every finding of a "
            "patient right at σ(z) > 0.5), loss the binary cross-entropy averaged over "
            "findings; per-finding AUROC and F1 are the held-out test's (below)"]


def finding_lines(rounds: list[RoundRecord], summary: dict[str, Any]) -> list[str]:
    """Multi-label runs: each finding's test AUROC and F1 in the last round evaluated."""
    last = next((r for r in reversed(rounds) if r.test_auroc_by_finding is not None), None)
    if last is None:
        return []
    names = summary.get("label_names") or []
    lines = ["", f"## Findings (held-out test, round {last.round})", "",
             "| finding | AUROC | F1 |", "|---|---|---|"]
    for k, (auc, f1) in enumerate(zip(last.test_auroc_by_finding, last.test_f1_by_finding or [],
                                      strict=False)):
        name = f"{k} ({names[k]})" if k < len(names) else str(k)
        lines.append(f"| {name} | {fmt(auc)} | {fmt(f1)} |")
    return lines


def reference_lines(references: dict[str, Any]) -> list[str]:
    """The report's section on the pooled-data references and the two cost ratios."""
    plain, dp = references.get("non_private", {}), references.get("dp")
    # the held-out figures a reference has beyond accuracy (AUROC; findings' macro means)
    extra = [(name, heading) for name, heading in HELD_OUT_SCORES if name in plain]

    def figures(part: dict[str, Any]) -> str:
        return " | ".join(fmt(part.get(name)) for name in ("test_accuracy",
                                                          *(n for n, _ in extra)))

    lines = [REFERENCES_HEADING, "",
             f"The same model on all sites' training splits pooled ({plain.get('examples')} "
             f"examples), {plain.get('epochs')} epochs, from the same initial model.", "",
             "| reference | test accuracy | " + "".join(f"{h} | " for _, h in extra)
             + "ε | σ |", "|---|---|" + "---|" * len(extra) + "---|---|",
             f"| centralized, no DP | {figures(plain)} | - | - |"]
    if dp is not None:
        lines.append(f"| centralized DP-SGD | {figures(dp)} | {dp['epsilon']:.3f} | "
                     f"{dp['noise_multiplier']:.3f} |")
    ratios = references.get("ratios", {})
    names = {"federation_under_dp": "cost of federation under DP (federated ÷ centralized DP)",
             "privacy": "cost of privacy (centralized DP ÷ centralized no DP)",
             "federation": "cost of federation (federated ÷ centralized no DP)"}
    if ratios:
        lines += ["", *(f"- {names[k]}: {v:.3f}" for k, v in ratios.items() if k in names)]
    return lines


def add_references(folder: RunFolder, references: dict[str, Any]) -> None:
    """Put the references in ``report.md`` (replacing an earlier section) and in
    ``summary.json`` under ``centralized`` (rewritten whole, atomically)."""
    if folder.report.exists():
        text = folder.report.read_text(encoding="utf-8")
        text = text.split("\n" + REFERENCES_HEADING)[0].rstrip("\n")
        atomic_write_text(folder.report, text + "\n\n" + "\n".join(reference_lines(
            references)) + "\n")
    if folder.summary.exists():
        summary = folder.read_summary()
        summary["centralized"] = references
        atomic_write_json(folder.summary, summary)
