"""Round-loop concerns as small callbacks: metrics log, checkpoints, progress, final outputs.

The round loop (:mod:`server.federation`) knows none of these; it calls ``on_run_start``,
``on_round_end`` after every round and ``on_run_end`` once. Each callback does one thing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.atomic import (
    append_line_durably,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)
from server.checkpoint import Checkpoint, list_checkpoints, save_checkpoint
from server.run_folder import HELD_OUT_BY_FINDING, HELD_OUT_SCORES, RoundRecord
from server.run_state import RunState


class Callback:
    def on_run_start(self, state: RunState) -> None:
        """Called once, after a resume point (if any) is restored."""

    def on_round_end(self, state: RunState, record: RoundRecord) -> None:
        """Called after each round with that round's record."""

    def on_run_end(self, state: RunState) -> None:
        """Called once when the loop ends (all rounds, or stopped early)."""


class MetricsLog(Callback):
    """``metrics.jsonl``: one record a round; on resume, later rounds are dropped."""

    def on_run_start(self, state: RunState) -> None:
        kept = [r for r in state.folder.rounds() if r.round <= state.round]
        atomic_write_text(state.folder.metrics, "".join(r.to_line() + "\n" for r in kept))
        state.rounds = kept

    def on_round_end(self, state: RunState, record: RoundRecord) -> None:
        append_line_durably(state.folder.metrics, record.to_line())


class OutputWriteError(OSError):
    """A run output could not be written (full disk, permissions); the run stops, and the
    message says what is intact and how to go on."""


class Checkpointer(Callback):
    """``checkpoints/round-N.safetensors`` after every round. A failed write stops the run:
    the previous checkpoint is intact and ``--resume`` continues from it."""

    def on_run_start(self, state: RunState) -> None:
        remove_stale_temporaries(state.folder.checkpoints)

    def on_round_end(self, state: RunState, record: RoundRecord) -> None:
        try:
            save_checkpoint(state.run_dir, Checkpoint(
                round=state.round, weights=state.weights,
                optimizer_state=state.optimizer.state(),
                state={"run_id": state.run_id, "sites": state.sites_json(),
                       "config": state.config.model_dump(mode="json")},
            ))
        except OSError as error:
            kept = list_checkpoints(state.run_dir)
            intact = (f"{kept[-1].name} is intact" if kept else "no earlier checkpoint exists")
            raise OutputWriteError(
                f"could not write the round {state.round} checkpoint in "
                f"{state.folder.checkpoints}: {error.strerror or error}; {intact}. "
                "Free space or fix permissions there, then rerun with --resume") from None


class Progress(Callback):
    """Hands each round's record to a display function (the CLI's progress bar or a log)."""

    def __init__(self, show: Callable[[RoundRecord], None]) -> None:
        self.show = show

    def on_round_end(self, state: RunState, record: RoundRecord) -> None:
        self.show(record)


class FinalOutputs(Callback):
    """Final model (safetensors + config JSON), ``summary.json`` and the report."""

    def on_run_end(self, state: RunState) -> None:
        from safetensors.numpy import save

        from server.report import write_report

        folder = state.folder
        atomic_write_bytes(folder.model, save(state.released_weights, metadata={
            "model_id": state.config.model_id}))
        atomic_write_json(folder.model_config, state.config.model_dump(mode="json"))
        summary = build_summary(state)
        write_report(folder, state.rounds, summary)
        atomic_write_json(folder.summary, summary)  # last: marks the run complete


def build_summary(state: RunState) -> dict[str, Any]:
    final: dict[str, Any] = {}
    for name in ("accuracy", "loss", "evaluation_private", "test_accuracy", "test_loss",
                 *(name for name, _ in HELD_OUT_SCORES), *HELD_OUT_BY_FINDING):
        value = next((getattr(r, name) for r in reversed(state.rounds)
                      if getattr(r, name) is not None), None)
        if value is not None:
            final[name] = value
    privacy = state.config.privacy
    return {
        "rounds_completed": state.round,
        "final_metrics": final,
        "secure_aggregation": state.config.secure_aggregation.enabled,
        "strategy": state.config.training.strategy,
        "labels": state.config.data.labels,
        "label_names": list(state.config.data.label_names),
        "dp_enabled": privacy.enabled,
        "stop_reason": state.stop_reason,
        "privacy": {"delta": privacy.delta, "accountant": privacy.accountant,
                    "sites": state.sites_json()},
        "model": {"path": str(state.folder.model),
                  "parameters": int(sum(v.size for v in state.weights.values()))},
    }
