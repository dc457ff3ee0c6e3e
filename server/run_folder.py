"""The layout of a run folder, and the typed record each round writes into it.

Every name inside a run folder is defined here and nowhere else::

    metrics.jsonl                one RoundRecord (JSON) a round, appended durably
    summary.json                 written last: its presence means the run completed
    checkpoints/                 round-NNNN.safetensors, the last three (server/checkpoint.py)
    model.safetensors            the final global model
    model_config.json            the config that builds it
    report/report.md, *.png      the end-of-run report (server/report.py)
    centralized.json             the pooled-data reference (``--centralized``)
    run_config.json              deployments: the validated run config the ServerApp reads
    run_failed.txt               deployments: why a run stopped
    logs/                        Flower's logs; serverapp-error.log when the ServerApp failed
    .flwr/                       FLWR_HOME of the processes this run started

:meth:`RunFolder.rounds` is the one reader of ``metrics.jsonl``: it stops at a torn last line
(a crash mid-append) instead of failing.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

_CHECKPOINT_NAME = re.compile(r"^round-(\d{4,})\.safetensors$")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; the message says what to pass instead."""


class SiteRound(BaseModel):
    """One site in one round, as the server saw it."""

    model_config = ConfigDict(extra="ignore")
    status: str
    code: str | None = None
    reason: str | None = None
    epsilon: float | None = None
    train_loss: float | None = None
    num_examples: int | None = None
    seconds: float | None = None
    noise_multiplier: float | None = None
    skipped_rows: int | None = None
    secagg_clipped: int | None = None
    out_of_range: int | None = None
    grad_sample_mode: str | None = None


# RoundRecord's metric fields, as the live view and the TensorBoard export show them
# the held-out test's figures beyond accuracy, with how they are headed (two classes: AUROC;
# multi-label findings: macro means, and per-finding lists)
HELD_OUT_SCORES = (("test_auroc", "test AUROC"), ("test_macro_auroc", "test macro AUROC"),
                   ("test_macro_f1", "test macro F1"))
HELD_OUT_BY_FINDING = ("test_auroc_by_finding", "test_f1_by_finding")
SCORE_METRICS = ("accuracy", "test_accuracy", *(name for name, _ in HELD_OUT_SCORES))
LOSS_METRICS = ("loss", "test_loss")


class RoundRecord(BaseModel):
    """What ``metrics.jsonl`` holds for one round."""

    model_config = ConfigDict(extra="ignore")
    round: int
    sites: dict[str, SiteRound] = {}
    sites_ok: int = 0
    aggregated: bool = False
    note: str | None = None
    secure_aggregation: dict[str, Any] | None = None
    epsilon_max: float | None = None
    loss: float | None = None  # the sites' validation, per-row loss clipped (EvaluationReport)
    accuracy: float | None = None
    evaluated_sites: int | None = None
    evaluation_private: bool | None = None  # DP-released: noisy, ε charged at the sites
    test_loss: float | None = None
    test_accuracy: float | None = None
    test_auroc: float | None = None  # two classes
    test_macro_auroc: float | None = None  # multi-label findings (common.evaluation)
    test_macro_f1: float | None = None
    test_auroc_by_finding: list[float | None] | None = None
    test_f1_by_finding: list[float | None] | None = None
    seconds: float = 0.0

    def to_line(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True))


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, round_number: int) -> Path:
        return self.checkpoints / f"round-{round_number:04d}.safetensors"

    def saved_checkpoints(self) -> list[tuple[int, Path]]:
        """The checkpoint files present, as (round, path), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), path) for path in self.checkpoints.iterdir()
                 if (m := _CHECKPOINT_NAME.match(path.name))]
        return sorted(found)

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def model_config(self) -> Path:
        return self.root / "model_config.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report(self) -> Path:
        return self.report_dir / "report.md"

    @property
    def centralized(self) -> Path:
        return self.root / "centralized.json"

    @property
    def run_config(self) -> Path:
        return self.root / "run_config.json"

    @property
    def failed(self) -> Path:
        return self.root / "run_failed.txt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def serverapp_error_log(self) -> Path:
        return self.logs / "serverapp-error.log"

    @property
    def flwr_home(self) -> Path:
        return self.root / ".flwr"

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to mix runs in one folder: an existing run needs ``resume`` (continue it)
        or ``overwrite`` (delete it first)."""
        if resume and overwrite:
            raise RunFolderError("--resume and --overwrite contradict each other; pick one")
        if self.root.exists() and any(self.root.iterdir()) and not (resume or overwrite):
            raise RunFolderError(f"--out {self.root} already holds a run; pass --resume to "
                                 "continue it or --overwrite to replace it")
        if overwrite and self.root.exists():
            shutil.rmtree(self.root)

    def rounds(self) -> list[RoundRecord]:
        """Every complete round record, in order; a torn or unreadable line ends the list."""
        if not self.metrics.is_file():
            return []
        return round_records(self.metrics.read_text(encoding="utf-8"))

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text(encoding="utf-8"))


def round_records(text: str, *, max_line: int | None = None) -> list[RoundRecord]:
    """The round records of ``metrics.jsonl``'s text, in order: a torn last line from a crash,
    an unreadable one (or, with ``max_line``, one longer than that or nested past the parser's
    depth) ends the list, and what follows it is dropped."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if max_line is not None and len(line) > max_line:
            break
        try:
            records.append(RoundRecord.model_validate(json.loads(line)))
        except (ValueError, RecursionError):  # JSONDecodeError, ValidationError
            break
    return records
