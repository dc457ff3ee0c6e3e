"""The site's privacy ledger: every DP mechanism this site ran, per model, on disk.

One JSON file in the site's state folder. For each ``model_id`` it keeps the accountant history
``[[σ, q, steps], ...]``, δ, ε spent and one entry per round served: a training round's DP-SGD
steps, or an evaluation's one Gaussian release ``[z, 1, 1]`` (``kind``). A round is *reserved*
(its steps written into the history) before the work starts and marked *sent* (with the SHA-256
of what left) before the reply leaves: a crash can over-count ε, never under-count it. Writes
are atomic.

The site's patients are the same whatever the server calls the model, so the budget that
matters is the *total*: every model's history composed under one accountant
(:meth:`PrivacyLedger.total_history`; RDP composes by concatenation).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json
from common.privacy import epsilon_for_history, normalise_history
from common.site_state import SiteState

FORMAT_VERSION = 1


class LedgerError(RuntimeError):
    """The ledger cannot be read; training must not continue without it."""


@dataclass
class ModelSpend:
    """One model's record at this site (plain data view of the JSON)."""

    model_id: str
    accountant: str
    delta: float
    history: list[list[float]]
    epsilon: float
    rounds: list[dict[str, Any]]

    @property
    def rounds_served(self) -> int:
        return sum(1 for entry in self.rounds
                   if entry.get("status") == "sent" and entry.get("kind", "train") == "train")

    @property
    def evaluations_released(self) -> int:
        return sum(1 for entry in self.rounds
                   if entry.get("status") == "sent" and entry.get("kind") == "evaluate")


class PrivacyLedger:
    def __init__(self, state_dir: Path) -> None:
        self.path = SiteState(Path(state_dir)).ledger

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"format": FORMAT_VERSION, "models": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LedgerError(
                f"{self.path}: privacy ledger unreadable ({error}); restore it from backup — "
                "training without it would under-count epsilon"
            ) from None
        if data.get("format") != FORMAT_VERSION or not isinstance(data.get("models"), dict):
            raise LedgerError(f"{self.path}: unknown ledger format; refusing to train")
        return data

    def models(self) -> list[ModelSpend]:
        data = self._read()
        return [self._spend(model_id, entry) for model_id, entry in sorted(data["models"].items())]

    def spend(self, model_id: str) -> ModelSpend | None:
        entry = self._read()["models"].get(model_id)
        return None if entry is None else self._spend(model_id, entry)

    @staticmethod
    def _spend(model_id: str, entry: dict[str, Any]) -> ModelSpend:
        return ModelSpend(
            model_id=model_id,
            accountant=entry["accountant"],
            delta=entry["delta"],
            history=entry["history"],
            epsilon=entry["epsilon"],
            rounds=entry["rounds"],
        )

    def history(self, model_id: str) -> list[list[float]]:
        spend = self.spend(model_id)
        return [] if spend is None else [list(h) for h in spend.history]

    def total_history(self) -> list[list[float]]:
        """Every model's history, one after the other: the site's whole spend."""
        return [list(h) for spend in self.models() for h in spend.history]

    def reserve(
        self,
        *,
        model_id: str,
        run_id: str,
        round_number: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        accountant: str,
        kind: str = "train",
    ) -> float:
        """Record the round's steps as spent (before the work). Returns ε after them."""
        data = self._read()
        entry = data["models"].setdefault(
            model_id,
            {"accountant": accountant, "delta": delta, "history": [], "epsilon": 0.0,
             "rounds": []},
        )
        history = [*entry["history"], [noise_multiplier, sample_rate, steps]]
        entry["history"] = [list(h) for h in normalise_history(history)]
        entry["accountant"], entry["delta"] = accountant, delta
        entry["epsilon"] = epsilon_for_history(entry["history"], delta=delta,
                                               accountant=accountant)
        entry["rounds"].append({
            "run_id": run_id, "round": round_number, "kind": kind, "status": "reserved",
            "noise_multiplier": noise_multiplier, "sample_rate": sample_rate, "steps": steps,
            "epsilon_after": entry["epsilon"], "time": time.time(),
        })
        atomic_write_json(self.path, data)
        return float(entry["epsilon"])

    def mark(self, *, model_id: str, run_id: str, round_number: int, status: str,
             sha256: str = "", detail: str = "", kind: str = "train") -> None:
        """Mark the newest reserved entry of (run, round, kind) as ``sent`` or failed."""
        data = self._read()
        rounds = data["models"][model_id]["rounds"]
        for entry in reversed(rounds):
            if entry["run_id"] == run_id and entry["round"] == round_number and \
                    entry.get("kind", "train") == kind:
                entry.update(status=status, sha256=sha256, detail=detail, time=time.time())
                break
        else:
            raise LedgerError(f"{self.path}: no reserved entry for run {run_id} round "
                              f"{round_number}")
        atomic_write_json(self.path, data)
