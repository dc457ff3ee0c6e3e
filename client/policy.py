"""The hospital's own privacy policy, read from a TOML file the hospital controls.

The server's run configuration is only a *request*: each round is checked against this policy
before any training, and refused with a machine-readable reason when it does not fit. Nothing the
server sends can change the policy.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common import wire
from common.config import MODALITIES, ConfigError, format_validation_error
from common.read_limits import ReadLimits

RefusalCode = Literal[
    "budget-exhausted",
    "delta-too-large",
    "noise-too-small",
    "clip-too-large",
    "modality-not-allowed",
    "model-not-allowed",
    "non-private-refused",
    "secure-aggregation-required",
    "evaluation-not-private",
    "too-few-eval-rows",
]


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float = Field(10.0, gt=0.0, description="ε this site spends on one model_id")
    max_total_epsilon: float = Field(
        10.0, gt=0.0, description="ε this site spends on all models together, whatever the "
        "server calls them (every history composed under one RDP accountant)")
    allowed_model_ids: tuple[str, ...] | None = Field(
        None, description="train only these models (none: any name)")
    max_delta: float = Field(1e-5, gt=0.0, lt=1.0)
    min_noise_multiplier: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(10.0, gt=0.0)
    allowed_modalities: tuple[Literal["image", "text", "audio"], ...] = MODALITIES
    allow_non_private: bool = False
    require_secure_aggregation: bool = Field(
        True, description="answer only rounds that mask the update (SecAgg+)")
    validation_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="the site's own validation split (the run config "
        "cannot size it)")
    min_eval_rows: int = Field(
        20, ge=1, description="evaluate only on at least this many validation rows")
    evaluation_noise_multiplier: float | None = Field(
        None, gt=0.0, description="DP runs: release validation metrics through the Gaussian "
        "mechanism with this noise multiplier, charged to the ledger; none: send no metrics")
    share_data_summary: bool = Field(
        False, description="send exact label counts and modality coverage at start-up")
    roster: str = Field(
        "roster", description="folder of the peers' .pub files this site aggregates with "
        "(relative to the policy file)")
    max_colluding_sites: int = Field(
        0, ge=0, description="how many other sites may work with the server in a secure "
        "round; the site refuses thresholds below ⌊(n + c)/2⌋ + 1")
    min_neighbourhood: int = Field(
        2, ge=2, description="the fewest sites a secure round may sum this site with")
    read_limits: ReadLimits = Field(
        ReadLimits(), description="how much one data file may decode to (checked from its "
        "header first; a file over a limit is one skipped row); only this file moves them")


@dataclass(frozen=True)
class Refusal:
    code: RefusalCode
    reason: str


@dataclass(frozen=True)
class RoundRequest:
    """What one round (or evaluation) would do at this site, with ε computed before."""

    private: bool
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    modalities: tuple[str, ...]
    epsilon_spent: float
    epsilon_after: float
    model_id: str = ""
    total_epsilon_after: float = 0.0


def load_policy(path: Path | None) -> SitePolicy:
    """Read the policy file; ``None`` gives the strict built-in defaults."""
    if path is None:
        return SitePolicy()
    if not path.is_file():
        raise ConfigError(f"{path}: site policy file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return SitePolicy.model_validate(raw)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source=str(path))) from None


def _common_rules(policy: SitePolicy, request: RoundRequest) -> Refusal | None:
    """The rules every message that spends privacy obeys (training and evaluation)."""
    if policy.allowed_model_ids is not None and request.model_id not in \
            policy.allowed_model_ids:
        return Refusal(wire.MODEL_NOT_ALLOWED, f"model_id '{request.model_id}' is not in "
                       "this site's allowed_model_ids")
    disallowed = sorted(set(request.modalities) - set(policy.allowed_modalities))
    if disallowed:
        return Refusal(wire.MODALITY_NOT_ALLOWED,
                       f"modalities {disallowed} not allowed by policy")
    if not request.private:
        if policy.allow_non_private:
            return None
        return Refusal(wire.NON_PRIVATE_REFUSED,
                       "run asks for training without DP; policy forbids it")
    if request.delta > policy.max_delta:
        return Refusal(wire.DELTA_TOO_LARGE,
                       f"delta {request.delta:g} > policy {policy.max_delta:g}")
    return None


def _budget(policy: SitePolicy, request: RoundRequest) -> Refusal | None:
    if request.epsilon_after > policy.max_epsilon:
        return Refusal(
            wire.BUDGET_EXHAUSTED,
            f"epsilon would reach {request.epsilon_after:.3f} > policy max "
            f"{policy.max_epsilon:g} (spent {request.epsilon_spent:.3f}); this site stops "
            "training this model",
        )
    if request.total_epsilon_after > policy.max_total_epsilon:
        return Refusal(
            wire.BUDGET_EXHAUSTED,
            f"epsilon over all models would reach {request.total_epsilon_after:.3f} > policy "
            f"max_total_epsilon {policy.max_total_epsilon:g}; a new model_id does not reset "
            "this site's patients' budget",
        )
    return None


def check_round(policy: SitePolicy, request: RoundRequest) -> Refusal | None:
    """The first policy rule a training round breaks, or None when it may run."""
    refusal = _common_rules(policy, request)
    if refusal is not None or not request.private:
        return refusal
    if request.noise_multiplier < policy.min_noise_multiplier:
        return Refusal(
            wire.NOISE_TOO_SMALL,
            f"noise multiplier {request.noise_multiplier:.3f} < policy "
            f"{policy.min_noise_multiplier:.3f}",
        )
    if request.max_grad_norm > policy.max_grad_norm:
        return Refusal(
            wire.CLIP_TOO_LARGE,
            f"max_grad_norm {request.max_grad_norm:g} > policy {policy.max_grad_norm:g}",
        )
    return _budget(policy, request)


def check_evaluation(policy: SitePolicy, request: RoundRequest,
                     validation_rows: int) -> Refusal | None:
    """The first rule an evaluation breaks, or None. Under DP it must be released through the
    policy's Gaussian mechanism (and fit the budget); its split must be large enough."""
    refusal = _common_rules(policy, request)
    if refusal is not None:
        return refusal
    if request.private and policy.evaluation_noise_multiplier is None:
        return Refusal(wire.EVALUATION_NOT_PRIVATE,
                       "this site sends validation metrics in DP runs only through a DP "
                       "mechanism, and its policy sets none (evaluation_noise_multiplier)")
    if validation_rows < policy.min_eval_rows:
        return Refusal(wire.TOO_FEW_EVAL_ROWS,
                       f"validation split has {validation_rows} rows < policy min_eval_rows "
                       f"{policy.min_eval_rows}; no metrics sent")
    return _budget(policy, request) if request.private else None
