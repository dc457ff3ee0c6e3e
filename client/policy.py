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

from common.config import MODALITIES, ConfigError, format_validation_error

RefusalCode = Literal[
    "budget-exhausted",
    "delta-too-large",
    "noise-too-small",
    "clip-too-large",
    "modality-not-allowed",
    "non-private-refused",
    "secure-aggregation-required",
]


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float = Field(10.0, gt=0.0, description="ε this site will ever spend per model")
    max_delta: float = Field(1e-5, gt=0.0, lt=1.0)
    min_noise_multiplier: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(10.0, gt=0.0)
    allowed_modalities: tuple[Literal["image", "text", "audio"], ...] = MODALITIES
    allow_non_private: bool = False
    require_secure_aggregation: bool = Field(
        True, description="answer only rounds that mask the update (SecAgg+)")


@dataclass(frozen=True)
class Refusal:
    code: RefusalCode
    reason: str


@dataclass(frozen=True)
class RoundRequest:
    """What one round would do at this site, with ε computed before training."""

    private: bool
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    modalities: tuple[str, ...]
    epsilon_spent: float
    epsilon_after: float


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


def check_round(policy: SitePolicy, request: RoundRequest) -> Refusal | None:
    """The first policy rule the round breaks, or None when it may run."""
    if not request.private:
        if policy.allow_non_private:
            return None
        return Refusal("non-private-refused", "run asks for training without DP; policy forbids it")
    disallowed = sorted(set(request.modalities) - set(policy.allowed_modalities))
    if disallowed:
        return Refusal("modality-not-allowed", f"modalities {disallowed} not allowed by policy")
    if request.delta > policy.max_delta:
        return Refusal("delta-too-large", f"delta {request.delta:g} > policy {policy.max_delta:g}")
    if request.noise_multiplier < policy.min_noise_multiplier:
        return Refusal(
            "noise-too-small",
            f"noise multiplier {request.noise_multiplier:.3f} < policy "
            f"{policy.min_noise_multiplier:.3f}",
        )
    if request.max_grad_norm > policy.max_grad_norm:
        return Refusal(
            "clip-too-large",
            f"max_grad_norm {request.max_grad_norm:g} > policy {policy.max_grad_norm:g}",
        )
    if request.epsilon_after > policy.max_epsilon:
        return Refusal(
            "budget-exhausted",
            f"epsilon would reach {request.epsilon_after:.3f} > policy max "
            f"{policy.max_epsilon:g} (spent {request.epsilon_spent:.3f}); this site stops "
            "training this model",
        )
    return None
