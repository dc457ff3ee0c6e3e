"""Round-loop concerns as small callbacks: metrics log, checkpoints, progress, final outputs.

The round loop (:mod:`server.federation`) knows none of these; it calls ``on_run_start``,
``on_round_end`` after every round and ``on_run_end`` once. Each callback does one thing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import (
    append_line_durably,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)
from common.config import RunConfig
from common.serialization import Weights
from server.checkpoint import CHECKPOINT_DIR, Checkpoint, list_checkpoints, save_checkpoint
from server.optimizers import ServerOptimizer

METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
MODEL_NAME = "model.safetensors"
MODEL_CONFIG_NAME = "model_config.json"


@dataclass
class RunState:
    config: RunConfig
    run_dir: Path
    run_id: str
    weights: Weights
    optimizer: ServerOptimizer
    round: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    stop_reason: str = ""


class Callback:
    def on_run_start(self, state: RunState) -> None:
        """Called once, after a resume point (if any) is restored."""

    def on_round_end(self, state: RunState, record: dict[str, Any]) -> None:
        """Called after each round with that round's metrics record."""

    def on_run_end(self, state: RunState) -> None:
        """Called once when the loop ends (all rounds, or stopped early)."""


class MetricsLog(Callback):
    """``metrics.jsonl``: one JSON object a round; on resume, later rounds are dropped."""

    def on_run_start(self, state: RunState) -> None:
        path = state.run_dir / METRICS_NAME
        kept = [r for r in _read_jsonl(path) if r.get("round", 0) <= state.round]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        state.rounds = kept

    def on_round_end(self, state: RunState, record: dict[str, Any]) -> None:
        append_line_durably(state.run_dir / METRICS_NAME, json.dumps(record))


class OutputWriteError(OSError):
    """A run output could not be written (full disk, permissions); the run stops, and the
    message says what is intact and how to go on."""


class Checkpointer(Callback):
    """``checkpoints/round-N.safetensors`` after every round. A failed write stops the run:
    the previous checkpoint is intact and ``--resume`` continues from it."""

    def on_run_start(self, state: RunState) -> None:
        remove_stale_temporaries(state.run_dir / CHECKPOINT_DIR)

    def on_round_end(self, state: RunState, record: dict[str, Any]) -> None:
        try:
            save_checkpoint(state.run_dir, Checkpoint(
                round=state.round, weights=state.weights,
                optimizer_state=state.optimizer.state(),
                state={"run_id": state.run_id, "sites": state.sites,
                       "config": state.config.model_dump(mode="json")},
            ))
        except OSError as error:
            kept = list_checkpoints(state.run_dir)
            intact = (f"{kept[-1].name} is intact" if kept else "no earlier checkpoint exists")
            raise OutputWriteError(
                f"could not write the round {state.round} checkpoint in "
                f"{state.run_dir / CHECKPOINT_DIR}: {error.strerror or error}; {intact}. "
                "Free space or fix permissions there, then rerun with --resume") from None


class Progress(Callback):
    """Hands each round's record to a display function (the CLI's progress bar or a log)."""

    def __init__(self, show: Callable[[RunState, dict[str, Any]], None]) -> None:
        self.show = show

    def on_round_end(self, state: RunState, record: dict[str, Any]) -> None:
        self.show(state, record)


class FinalOutputs(Callback):
    """Final model (safetensors + config JSON), ``summary.json`` and the report."""

    def on_run_end(self, state: RunState) -> None:
        from safetensors.numpy import save

        from server.report import write_report

        model_path = state.run_dir / MODEL_NAME
        atomic_write_bytes(model_path, save(state.weights, metadata={"model_id":
                                                                    state.config.model_id}))
        atomic_write_json(state.run_dir / MODEL_CONFIG_NAME, state.config.model_dump(mode="json"))
        summary = build_summary(state, model_path)
        write_report(state.run_dir, state.rounds, summary)
        atomic_write_json(state.run_dir / SUMMARY_NAME, summary)  # last: marks the run complete


def build_summary(state: RunState, model_path: Path) -> dict[str, Any]:
    last = next((r for r in reversed(state.rounds) if r.get("accuracy") is not None), {})
    final = {k: last[k] for k in ("accuracy", "loss", "test_accuracy", "test_loss") if k in last}
    privacy = state.config.privacy
    return {
        "rounds_completed": state.round,
        "final_metrics": final,
        "secure_aggregation": state.config.secure_aggregation.enabled,
        "strategy": state.config.training.strategy,
        "dp_enabled": privacy.enabled,
        "stop_reason": state.stop_reason,
        "privacy": {
            "delta": privacy.delta,
            "accountant": privacy.accountant,
            "sites": {site: {"epsilon": info["epsilon"], "max_grad_norm": info["max_grad_norm"],
                             "history": info["history"]}
                      for site, info in sorted(state.sites.items())},
        },
        "model": {"path": str(model_path), "parameters": int(sum(v.size for v in
                                                                   state.weights.values()))},
    }


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a crash: drop it and what follows
    return records
