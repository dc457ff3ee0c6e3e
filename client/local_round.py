"""A site's two jobs: one round of local training, and evaluating a model on its data.

:func:`train_round`: policy check → reserve ε in the ledger → DP-SGD → the update
Δ = w_local − w_global, up to (not including) what is sent. The caller decides what leaves (the
update itself, or its masked encoding under secure aggregation) and marks the ledger entry sent
with that payload's SHA-256 (``mark_sent``) before replying. :func:`evaluate_round`: the model's
metrics on the site's own validation split (:mod:`client.validation`), through the policy's DP
mechanism in DP runs (:mod:`client.private_evaluation`), with the same policy and budget rules.

Every budget check weighs two figures: ε for this ``model_id`` (``max_epsilon``) and the site's
total over all models (``max_total_epsilon``), so a new model name never resets the patients'
budget.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any

from flwr.app import Message

from client.ledger import PrivacyLedger
from client.policy import RoundRequest, check_evaluation, check_round
from client.replies import EXPECTED_FAILURES, failure_code, reply, status
from client.site import Site
from client.validation import site_split
from common import wire
from common.config import ConfigError, RunConfig
from common.model_inputs import load_model_inputs
from common.randomness import RandomStream, derive_seed
from common.records import from_records
from common.serialization import Weights, all_finite, from_record


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


def site_seed(site: Site, config: RunConfig, *parts: object) -> int:
    """Simulation: reproducible from the run seed. Deployment: from the OS CSPRNG, so nobody
    who knows the run configuration can predict (and subtract) this site's randomness."""
    if site.simulated:
        return derive_seed(config.training.seed, site.site_id, *parts)
    return int.from_bytes(os.urandom(8), "big") >> 1


def site_stream(site: Site, config: RunConfig, *parts: object) -> RandomStream:
    """The DP randomness of one job: a ChaCha20 stream keyed from the OS CSPRNG in deployment,
    from the run seed in simulation (reproducible; research only)."""
    if site.simulated:
        return RandomStream.from_seed(config.training.seed, site.site_id, *parts)
    return RandomStream.fresh()


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


@dataclass
class LocalEvaluation:
    """What one evaluation produced: a report, or why there is none."""

    site_id: str
    status: wire.SiteStatus
    code: str = ""
    reason: str = ""
    report: wire.EvaluationReport | None = None
    spend: wire.Spend | None = None

    def reply(self, msg: Message) -> Message:
        messages: list[Any] = [status(self.site_id, self.status, code=self.code,
                                      reason=self.reason)]
        messages += [m for m in (self.report, self.spend) if m is not None]
        return reply(msg, *messages)


@dataclass(frozen=True)
class Budget:
    """ε before and after a planned mechanism, for this model and over all models."""

    history: list[list[float]]
    spent: float
    after: float
    total_after: float


def _budget(ledger: PrivacyLedger, config: RunConfig, planned: list[list[float]]) -> Budget:
    from common.privacy import epsilon_for_history

    privacy = config.privacy
    history = ledger.history(config.model_id)

    def epsilon(entries: list[list[float]]) -> float:
        return epsilon_for_history(entries, delta=privacy.delta, accountant=privacy.accountant)

    spent = epsilon(history)
    if not privacy.enabled:
        return Budget(history, spent, spent, 0.0)
    return Budget(history, spent, epsilon([*history, *planned]),
                  epsilon([*ledger.total_history(), *planned]))


def _request(config: RunConfig, budget: Budget, noise_multiplier: float) -> RoundRequest:
    privacy = config.privacy
    return RoundRequest(
        private=privacy.enabled, delta=privacy.delta, noise_multiplier=noise_multiplier,
        max_grad_norm=privacy.max_grad_norm, modalities=config.model.modalities,
        epsilon_spent=budget.spent, epsilon_after=budget.after, model_id=config.model_id,
        total_epsilon_after=budget.total_after)


def _check_fits(config: RunConfig, weights: Weights) -> None:
    """The weights the server sent fit this run's model (checked before anything is spent)."""
    from common.models import build_model
    from common.serialization import check_compatible, model_weights

    reference = model_weights(build_model(data=config.data, model=config.model))
    try:
        check_compatible(reference, weights, what="the global model")
    except ValueError as error:
        raise ConfigError(f"{error}; it does not fit the run configuration's model") from None


def planned_evaluation_noise(site: Site, validation_rows: int) -> float | None:
    """The noise multiplier of the evaluation releases this site will make in a DP run (None
    when it will make none), so training leaves room for them in ``target_epsilon``."""
    if validation_rows < site.policy.min_eval_rows:
        return None
    return site.policy.evaluation_noise_multiplier


def evaluate_round(inputs: RoundInputs, site: Site, config: RunConfig, *,
                   threads: int | None = None) -> LocalEvaluation:
    """The model's validation sums at ``site`` (a refusal or failure is a normal result)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        return _evaluate(inputs, site, config)
    except EXPECTED_FAILURES as error:
        return LocalEvaluation(site.site_id, "failed", code=failure_code(error),
                               reason=str(error))


def _evaluate(inputs: RoundInputs, site: Site, config: RunConfig) -> LocalEvaluation:
    from client.private_evaluation import (
        LOSS_BOUND,
        ValidationSums,
        gaussian_release,
        history_entry,
    )
    from common.evaluation import evaluate_weights
    from common.privacy import epsilon_for_history

    privacy = config.privacy
    _check_fits(config, inputs.global_weights)
    _, validation = site_split(site, config, load_model_inputs(
        site.data_dir, config, site.state, limits=site.policy.read_limits))
    noise = site.policy.evaluation_noise_multiplier
    planned = [history_entry(noise)] if privacy.enabled and noise is not None else []
    ledger = PrivacyLedger(site.state_dir)
    budget = _budget(ledger, config, planned)
    refusal = check_evaluation(site.policy, _request(config, budget, noise or 0.0),
                               len(validation))
    if refusal is not None:
        return LocalEvaluation(site.site_id, "refused", code=refusal.code,
                               reason=refusal.reason,
                               spend=wire.Spend(epsilon=budget.spent, history=budget.history))
    entry = {"model_id": config.model_id, "run_id": inputs.run_id,
             "round_number": inputs.round_number, "kind": "evaluate"}
    if planned:
        assert noise is not None
        ledger.reserve(**entry, noise_multiplier=noise, sample_rate=1.0, steps=1,
                       delta=privacy.delta, accountant=privacy.accountant)
    metrics = evaluate_weights(config, inputs.global_weights, validation,
                               loss_bound=LOSS_BOUND)
    sums = ValidationSums(float(metrics["num-examples"]), float(metrics["correct"]),
                          float(metrics["clipped-loss-sum"]))
    if not planned:
        return LocalEvaluation(site.site_id, "ok", report=wire.EvaluationReport(
            count=sums.count, correct=sums.correct, loss_sum=sums.loss_sum,
            loss_bound=LOSS_BOUND, private=False, auroc=metrics.get("auroc")))
    assert noise is not None
    released = gaussian_release(sums, noise_multiplier=noise, stream=site_stream(
        site, config, inputs.round_number, "evaluation"))
    report = wire.EvaluationReport(
        count=released.count, correct=released.correct, loss_sum=released.loss_sum,
        loss_bound=LOSS_BOUND, private=True, noise_multiplier=noise,
        epsilon=epsilon_for_history([*budget.history, *planned], delta=privacy.delta,
                                    accountant=privacy.accountant),
        history=[list(h) for h in ledger.history(config.model_id)])
    ledger.mark(**entry, status="sent", sha256=hashlib.sha256(
        repr((report.count, report.correct, report.loss_sum)).encode()).hexdigest())
    return LocalEvaluation(site.site_id, "ok", report=report)


def _train(inputs: RoundInputs, site: Site, config: RunConfig) -> LocalRound:
    import torch

    from client.training import plan_round, train_local
    from common.privacy import NoiseMemo, epsilon_for_history

    round_number, run_id = inputs.round_number, inputs.run_id
    _check_fits(config, inputs.global_weights)
    data = load_model_inputs(site.data_dir, config, site.state,
                             limits=site.policy.read_limits)
    train_data, validation = site_split(site, config, data)
    ledger = PrivacyLedger(site.state_dir)
    plan = plan_round(len(train_data), config,
                      noise_for_budget=NoiseMemo(site.state.noise_memo),
                      evaluation_noise=planned_evaluation_noise(site, len(validation)))
    privacy = config.privacy
    budget = _budget(ledger, config, [[plan.noise_multiplier, plan.sample_rate, plan.steps]])
    history = budget.history
    refusal = check_round(site.policy, _request(config, budget, plan.noise_multiplier))
    if refusal is not None:
        return LocalRound(site.site_id, "refused", code=refusal.code, reason=refusal.reason,
                          spend=wire.Spend(epsilon=budget.spent, history=history))
    entry = {"model_id": config.model_id, "run_id": run_id, "round_number": round_number}
    if privacy.enabled:
        ledger.reserve(**entry, noise_multiplier=plan.noise_multiplier,
                       sample_rate=plan.sample_rate, steps=plan.steps, delta=privacy.delta,
                       accountant=privacy.accountant)
    torch.manual_seed(site_seed(site, config, round_number))
    global_weights = inputs.global_weights
    result = train_local(config=config, global_weights=global_weights, data=train_data,
                         plan=plan, history=history, mode_memo=site.state.grad_sample_memo,
                         stream=site_stream(site, config, round_number, "dp-sgd"))
    update = {name: result.weights[name] - global_weights[name] for name in global_weights}
    if not all_finite(update):
        if privacy.enabled:
            ledger.mark(**entry, status="diverged", detail="non-finite update not sent")
        return LocalRound(site.site_id, "failed", code=wire.DIVERGED,
                          reason="training diverged (NaN/Inf); not sent")
    report = wire.TrainReport(
        num_examples=result.num_examples,
        train_loss=None if privacy.enabled else result.train_loss, steps=result.steps,
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
