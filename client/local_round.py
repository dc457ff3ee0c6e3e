"""One round of local training at a site, up to (not including) what is sent.

Policy check → reserve ε in the ledger → DP-SGD → the update Δ = w_local − w_global. The caller
decides what leaves (the update itself, or its masked encoding under secure aggregation) and
marks the ledger entry sent with that payload's SHA-256 (``mark_sent``) before replying. In a
deployment the training itself runs in the hospital's warm worker (:mod:`client.worker`); the
inputs and the result are plain data for that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message, MetricRecord

from client.ledger import PrivacyLedger
from client.policy import RoundRequest, check_round
from client.replies import EXPECTED_FAILURES, failure_code, reply, status_record
from client.site import Site
from common.config import RunConfig
from common.features import FEATURE_DIR, model_inputs
from common.serialization import Weights, all_finite, from_record
from common.sitecache import load_site_cached
from common.sitedata import SiteData, require_usable
from common.sitedata import split_train_validation as split

CACHE_DIR = "cache"
NOISE_MEMO = "noise_multipliers.json"


@dataclass
class LocalRound:
    """What one round of local training produced."""

    site_id: str
    status: str
    code: str = ""
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    update: Weights | None = None
    ledger_entry: dict[str, Any] | None = None  # the reserved round, to be marked sent
    state_dir: Path | None = None

    def mark_sent(self, sha256: str) -> None:
        """Mark the reserved ledger entry sent with the SHA-256 of what leaves (DP runs)."""
        if self.ledger_entry is not None and self.state_dir is not None:
            PrivacyLedger(self.state_dir).mark(**self.ledger_entry, status="sent", sha256=sha256)

    def reply(self, msg: Message, *, sha256: str = "", metrics: dict[str, Any] | None = None,
              **records: Any) -> Message:
        extra = {**self.extra, **({"sha256": sha256} if sha256 else {})}
        return reply(msg, status=status_record(self.site_id, self.status, code=self.code,
                                               reason=self.reason, **extra),
                     metrics=MetricRecord({**self.metrics, **(metrics or {})}), **records)


def load_site_data(site: Site, config: RunConfig) -> SiteData:
    data = load_site_cached(site.data_dir, config.data, site.state_dir / CACHE_DIR)
    return model_inputs(require_usable(data, config.data), config.model,
                        site.state_dir / FEATURE_DIR)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and names (simulation only)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def site_seed(site: Site, config: RunConfig, *parts: object) -> int:
    """Simulation: reproducible from the run seed. Deployment: from the OS CSPRNG, so nobody
    who knows the run configuration can predict (and subtract) this site's randomness."""
    if site.simulated:
        return derive_seed(config.training.seed, site.site_id, *parts)
    return int.from_bytes(os.urandom(8), "big") >> 1


@dataclass(frozen=True)
class RoundInputs:
    """What a training message carries, as plain data."""

    round_number: int
    run_id: str
    global_weights: Weights

    @classmethod
    def from_message(cls, msg: Message) -> RoundInputs:
        return cls(int(msg.content["config"]["round"]), str(msg.content["config"]["run-id"]),
                   from_record(msg.content["arrays"]))


def local_round(msg: Message, site: Site, config: RunConfig, *, threads: int) -> LocalRound:
    """Train one round (:func:`train_round`), in the hospital's warm worker when one runs."""
    return _in_worker_or_here("train", train_round, site=site, threads=threads,
                              inputs=RoundInputs.from_message(msg), config=config)


def _in_worker_or_here(kind: str, job: Callable[..., Any], *, site: Site, threads: int,
                       **arguments: Any) -> Any:
    """``job(site=..., **arguments)`` in the hospital's warm worker when one runs
    (:mod:`client.worker`), else in this process (always, in simulations)."""
    if not site.simulated:
        from client.worker import call_worker

        done, result = call_worker(site.state_dir, kind, site=site, **arguments)
        if done:
            return result
    return job(site=site, threads=threads, **arguments)


def train_round(*, inputs: RoundInputs, site: Site, config: RunConfig,
                threads: int) -> LocalRound:
    import torch

    torch.set_num_threads(threads)
    try:
        return _train_round(inputs, site, config)
    except EXPECTED_FAILURES as error:
        return LocalRound(site.site_id, "failed", code=failure_code(error), reason=str(error))


def evaluate_round(*, weights: Weights, site: Site, config: RunConfig,
                   threads: int) -> dict[str, float]:
    """Loss / accuracy (AUROC for two classes) of ``weights`` on the site's validation split."""
    import torch

    from common.evaluation import evaluate_weights

    torch.set_num_threads(threads)
    _, validation = split(load_site_data(site, config), config.data.validation_fraction)
    return evaluate_weights(config, weights, validation)


def local_evaluation(weights: Weights, site: Site, config: RunConfig, *,
                     threads: int) -> dict[str, float]:
    """:func:`evaluate_round`, in the hospital's warm worker when one runs."""
    return _in_worker_or_here("evaluate", evaluate_round, site=site, threads=threads,
                              weights=weights, config=config)


def _train_round(inputs: RoundInputs, site: Site, config: RunConfig) -> LocalRound:
    import torch

    from client.grad_sample import MEMO_NAME
    from client.training import plan_round, train_local
    from common.privacy import NoiseMemo, epsilon_for_history

    round_number, run_id = inputs.round_number, inputs.run_id
    data = load_site_data(site, config)
    train_data, _ = split(data, config.data.validation_fraction)
    ledger = PrivacyLedger(site.state_dir)
    history = ledger.history(config.model_id)
    plan = plan_round(len(train_data), config,
                      noise_for_budget=NoiseMemo(site.state_dir / NOISE_MEMO))
    privacy = config.privacy
    spent = epsilon_for_history(history, delta=privacy.delta, accountant=privacy.accountant)
    planned = [*history, [plan.noise_multiplier, plan.sample_rate, plan.steps]]
    after = (epsilon_for_history(planned, delta=privacy.delta, accountant=privacy.accountant)
             if privacy.enabled else spent)
    refusal = check_round(site.policy, RoundRequest(
        private=privacy.enabled, delta=privacy.delta, noise_multiplier=plan.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm, modalities=config.model.modalities,
        epsilon_spent=spent, epsilon_after=after,
    ))
    if refusal is not None:
        return LocalRound(site.site_id, "refused", code=refusal.code, reason=refusal.reason,
                          metrics={"epsilon": spent}, extra={"history": json.dumps(history)})
    entry = {"model_id": config.model_id, "run_id": run_id, "round_number": round_number}
    if privacy.enabled:
        ledger.reserve(**entry, noise_multiplier=plan.noise_multiplier,
                       sample_rate=plan.sample_rate, steps=plan.steps, delta=privacy.delta,
                       accountant=privacy.accountant)
    torch.manual_seed(site_seed(site, config, round_number))
    global_weights = inputs.global_weights
    result = train_local(config=config, global_weights=global_weights, data=train_data,
                         plan=plan, history=history, mode_memo=site.state_dir / MEMO_NAME)
    update = {name: result.weights[name] - global_weights[name] for name in global_weights}
    if not all_finite(update):
        if privacy.enabled:
            ledger.mark(**entry, status="diverged", detail="non-finite update not sent")
        return LocalRound(site.site_id, "failed", code="diverged",
                          reason="training diverged (NaN/Inf); not sent")
    metrics: dict[str, Any] = {"num-examples": result.num_examples,
                               "train-loss": result.train_loss, "steps": result.steps,
                               "skipped-rows": len(data.issues), "seconds": result.seconds}
    extra = {"grad-sample-mode": result.grad_sample_mode}
    if privacy.enabled:
        metrics.update({"epsilon": epsilon_for_history(result.history, delta=privacy.delta,
                                                       accountant=privacy.accountant),
                        "noise-multiplier": plan.noise_multiplier,
                        "sample-rate": plan.sample_rate, "max-grad-norm": privacy.max_grad_norm})
        extra["history"] = json.dumps(result.history)

    return LocalRound(site.site_id, "ok", metrics=metrics, extra=extra, update=update,
                      ledger_entry=entry if privacy.enabled else None,
                      state_dir=site.state_dir)
