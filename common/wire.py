"""What travels in a plaintext round: the message types, their typed records and their codes.

Both sides import this module; nothing else spells a record key. Every message a server sends
carries a :class:`RoundConfig`; every reply a site sends carries a :class:`Status` and, when it
did the work, the report of that work (:class:`SiteInfo`, :class:`TrainReport`,
:class:`EvaluationReport`). The model itself travels as an ``ArrayRecord`` named
:data:`ARRAYS` (:mod:`common.serialization`). Secure aggregation's stage messages are in
:mod:`common.secagg.messages`; all of them go through :mod:`common.records`.

Message type         server → site                       site → server
``query.site_info``  RoundConfig                         Status, SiteInfo
``train``            RoundConfig, global weights         Status, TrainReport, update Δ
``evaluate``         RoundConfig, global weights         Status, EvaluationReport
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from common.config import RunConfig

SITE_INFO_ACTION = "site_info"  # the ClientApp handler: @app.query(SITE_INFO_ACTION)
SITE_INFO = f"query.{SITE_INFO_ACTION}"
TRAIN = "train"
EVALUATE = "evaluate"
ARRAYS = "arrays"

SiteStatus = Literal["ok", "refused", "failed", "rejected"]

# Why a site refused a round (its policy; :mod:`client.policy`).
BUDGET_EXHAUSTED = "budget-exhausted"
DELTA_TOO_LARGE = "delta-too-large"
NOISE_TOO_SMALL = "noise-too-small"
CLIP_TOO_LARGE = "clip-too-large"
MODALITY_NOT_ALLOWED = "modality-not-allowed"
NON_PRIVATE_REFUSED = "non-private-refused"
SECURE_AGGREGATION_REQUIRED = "secure-aggregation-required"
MODEL_NOT_ALLOWED = "model-not-allowed"
EVALUATION_NOT_PRIVATE = "evaluation-not-private"
TOO_FEW_EVAL_ROWS = "too-few-eval-rows"
# Refusals that hold for the rest of a run (its configuration does not change): the server
# stops asking the site.
LASTING_REFUSALS = frozenset({
    BUDGET_EXHAUSTED, DELTA_TOO_LARGE, NOISE_TOO_SMALL, CLIP_TOO_LARGE, MODALITY_NOT_ALLOWED,
    NON_PRIVATE_REFUSED, SECURE_AGGREGATION_REQUIRED, MODEL_NOT_ALLOWED})
# Why a site failed (its data, config or ledger; training).
BAD_DATA = "bad-data"
BAD_CONFIG = "bad-config"
BAD_LEDGER = "bad-ledger"
DIVERGED = "diverged"
# What the server makes of a reply.
NO_REPLY = "no-reply"
CLIENT_ERROR = "client-error"
MALFORMED = "malformed-reply"
BAD_SHAPE = "bad-shape"
NON_FINITE = "non-finite"


@dataclass(frozen=True)
class RoundConfig:
    """Sent with every message: the run's validated configuration, the round and the run."""

    RECORD: ClassVar[str] = "config"
    run_config: str  # RunConfig.to_json()
    round: int
    run_id: str

    def config(self) -> RunConfig:
        return RunConfig.from_json(self.run_config)


@dataclass(frozen=True)
class Status:
    """Every reply: who answers, whether it did the work, and if not why (one line)."""

    RECORD: ClassVar[str] = "status"
    site_id: str
    status: SiteStatus
    code: str = ""
    reason: str = ""


@dataclass(frozen=True)
class SiteInfo:
    """The answer to ``query.site_info``: how much usable data the site holds."""

    RECORD: ClassVar[str] = "site-info"
    rows: int
    usable: int
    bad_rows: int
    label_counts: dict[int, int] = field(default_factory=dict)
    modality_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainReport:
    """What one local round did. The privacy fields are set when the round ran DP-SGD."""

    RECORD: ClassVar[str] = "train"
    num_examples: int
    train_loss: float | None  # sent only in non-private rounds (an exact loss is a readout)
    steps: int
    skipped_rows: int
    seconds: float
    grad_sample_mode: str = ""
    sha256: str = ""  # of what left the site: the update, or its masked encoding
    epsilon: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    max_grad_norm: float | None = None
    history: list[list[float]] | None = None  # the accountant history [[σ, q, steps], ...]
    secagg_clipped: int | None = None  # update elements clipped to the secure range


@dataclass(frozen=True)
class Spend:
    """A refused round's reply: what the site has spent on this model so far."""

    RECORD: ClassVar[str] = "spend"
    epsilon: float
    history: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class EvaluationReport:
    """The global model on the site's validation split, as sums the server adds up across
    sites. ``private``: released through the Gaussian mechanism (noisy floats, ε charged);
    otherwise exact, with AUROC for two classes."""

    RECORD: ClassVar[str] = "evaluate"
    count: float  # validation rows
    correct: float  # rows classified right
    loss_sum: float  # Σ per-row cross-entropy, each clipped to loss_bound
    loss_bound: float
    private: bool
    noise_multiplier: float | None = None
    epsilon: float | None = None  # this model's ε at the site after the release
    history: list[list[float]] | None = None  # the model's accountant history after it
    auroc: float | None = None


def round_config(content: Mapping[str, Any]) -> RoundConfig:
    """The :class:`RoundConfig` of a message (:class:`~common.records.RecordError` if none)."""
    from common.records import from_records

    return from_records(RoundConfig, content)
