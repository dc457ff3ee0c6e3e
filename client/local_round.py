"""A site's two jobs: one round of local training, and evaluating a model on its data.

:func:`train_round`: policy check → reserve ε in the ledger → DP-SGD → the update
Δ = w_local − w_global, up to (not including) what is sent. The caller decides what leaves (the
update itself, or its masked encoding under secure aggregation) and marks the ledger entry sent
with that payload's SHA-256 (``mark_sent``) before replying. :func:`evaluate_round`: the model's
metrics on the site's validation split.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any

from flwr.app import Message

from client.ledger import PrivacyLedger
from client.policy import RoundRequest, check_round
from client.replies import EXPECTED_FAILURES, failure_code, reply, status
from client.site import Site
from common import wire
from common.config import RunConfig
from common.model_inputs import load_model_inputs
from common.records import from_records
from common.serialization import Weights, all_finite, from_record
from common.sitedata import split_train_validation as split


@dataclass
class LocalRound:
    """What one round of local training produced."""

    site_id: str
    status: wire.SiteStatus
    code: str = ""
    reason: str = ""
    report: wire.TrainReport | None = None
    spend: wire.Spend | None = None  # refused rounds: what the site has spent so far
    update: Weights | None = None
    ledger_entry: dict[str, Any] | None = None  # the reserved round, to be marked sent
    site: Site | None = None

    def mark_sent(self, sha256: str) -> None:
        """Mark the reserved ledger entry sent with the SHA-256 of what leaves (DP runs)."""
        if self.ledger_entry is not None and self.site is not None:
            PrivacyLedger(self.site.state_dir).mark(**self.ledger_entry, status="sent",
                                                    sha256=sha256)

    def reply(self, msg: Message, *, sha256: str = "", secagg_clipped: int | None = None,
              **records: Any) -> Message:
        messages: list[Any] = [status(self.site_id, self.status, code=self.code,
                                      reason=self.reason)]
        if self.report is not None:
            messages.append(replace(self.report, sha256=sha256, secagg_clipped=secagg_clipped))
        if self.spend is not None:
            messages.append(self.spend)
        return reply(msg, *messages, **records)


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
        request = from_records(wire.RoundConfig, msg.content)
        return cls(request.round, request.run_id, from_record(msg.content[wire.ARRAYS]))


def train_round(inputs: RoundInputs, site: Site, config: RunConfig, *,
                threads: int | None = None) -> LocalRound:
    """One round of local training on ``site`` (a refusal or failure is a normal result)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(inputs, site, config)
    except EXPECTED_FAILURES as error:
        return LocalRound(site.site_id, "failed", code=failure_code(error), reason=str(error))


def evaluate_round(weights: Weights, site: Site, config: RunConfig, *,
                   threads: int | None = None) -> wire.EvaluationReport:
    """Loss / accuracy (AUROC for two classes) of ``weights`` on the site's validation split."""
    import torch

    from common.evaluation import evaluate_weights

    if threads:
        torch.set_num_threads(threads)
    _, validation = split(load_model_inputs(site.data_dir, config, site.state),
                          config.data.validation_fraction)
    metrics = evaluate_weights(config, weights, validation)
    return wire.EvaluationReport(num_examples=int(metrics["num-examples"]),
                                 loss=metrics["loss"], accuracy=metrics["accuracy"],
                                 auroc=metrics.get("auroc"))


def _train(inputs: RoundInputs, site: Site, config: RunConfig) -> LocalRound:
    import torch

    from client.training import plan_round, train_local
    from common.privacy import NoiseMemo, epsilon_for_history

    round_number, run_id = inputs.round_number, inputs.run_id
    data = load_model_inputs(site.data_dir, config, site.state)
    train_data, _ = split(data, config.data.validation_fraction)
    ledger = PrivacyLedger(site.state_dir)
    history = ledger.history(config.model_id)
    plan = plan_round(len(train_data), config,
                      noise_for_budget=NoiseMemo(site.state.noise_memo))
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
                          spend=wire.Spend(epsilon=spent, history=history))
    entry = {"model_id": config.model_id, "run_id": run_id, "round_number": round_number}
    if privacy.enabled:
        ledger.reserve(**entry, noise_multiplier=plan.noise_multiplier,
                       sample_rate=plan.sample_rate, steps=plan.steps, delta=privacy.delta,
                       accountant=privacy.accountant)
    torch.manual_seed(site_seed(site, config, round_number))
    global_weights = inputs.global_weights
    result = train_local(config=config, global_weights=global_weights, data=train_data,
                         plan=plan, history=history, mode_memo=site.state.grad_sample_memo)
    update = {name: result.weights[name] - global_weights[name] for name in global_weights}
    if not all_finite(update):
        if privacy.enabled:
            ledger.mark(**entry, status="diverged", detail="non-finite update not sent")
        return LocalRound(site.site_id, "failed", code=wire.DIVERGED,
                          reason="training diverged (NaN/Inf); not sent")
    report = wire.TrainReport(
        num_examples=result.num_examples, train_loss=result.train_loss, steps=result.steps,
        skipped_rows=len(data.issues), seconds=result.seconds,
        grad_sample_mode=result.grad_sample_mode)
    if privacy.enabled:
        report = replace(
            report, epsilon=epsilon_for_history(result.history, delta=privacy.delta,
                                                accountant=privacy.accountant),
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
            max_grad_norm=privacy.max_grad_norm, history=result.history)
    return LocalRound(site.site_id, "ok", report=report, update=update,
                      ledger_entry=entry if privacy.enabled else None, site=site)
