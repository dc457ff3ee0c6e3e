"""The hospital's ClientApp (Flower Message API).

Handlers:

- ``query.site_info``: who this site is, how much usable data it holds (no torch import).
- ``train``: policy check → reserve ε in the ledger → DP-SGD → mark the ledger entry sent →
  reply with the update Δ = w_local − w_global, example count, loss and ε so far.
- ``evaluate``: loss / accuracy (AUROC for two classes) of the global model on the site's
  validation split.

Every reply carries a ``status`` record: ``ok``, ``refused`` (a policy rule, with its code) or
``failed`` (bad data, unreadable ledger, diverged training), with a one-line reason. Torch and
Opacus are imported inside the handlers that need them: Flower starts a process per message.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.ledger import LedgerError, PrivacyLedger
from client.policy import RoundRequest, check_round
from client.site import Site, resolve_site
from common.config import ConfigError, RunConfig
from common.serialization import all_finite, digest, from_record, to_record
from common.sitecache import load_site_cached
from common.sitedata import SiteData, SiteDataError, require_usable
from common.sitedata import split_train_validation as split

CACHE_DIR = "cache"
NOISE_MEMO = "noise_multipliers.json"


def _status(site_id: str, status: str, *, code: str = "", reason: str = "", **extra: str):
    return ConfigRecord({"site-id": site_id, "status": status, "code": code, "reason": reason,
                         **extra})


def _reply(msg: Message, **records) -> Message:
    return Message(RecordDict(records), reply_to=msg)


EXPECTED_FAILURES = (SiteDataError, ConfigError, LedgerError)


def _failure(msg: Message, site_id: str, error: Exception) -> Message:
    code = ("bad-ledger" if isinstance(error, LedgerError)
            else "bad-config" if isinstance(error, ConfigError) else "bad-data")
    return _reply(msg, status=_status(site_id, "failed", code=code, reason=str(error)))


def _request(msg: Message, context: Context,
             site_dirs: Sequence[str] | None) -> tuple[Site, RunConfig]:
    """The site this node serves and the run configuration the message carries."""
    site = resolve_site(context.node_config, site_dirs)
    return site, RunConfig.from_json(str(msg.content["config"]["run-config"]))


def _site_label(context: Context, site_dirs: Sequence[str] | None) -> str:
    """The site's name for error replies, even when its policy or data cannot be read."""
    config = context.node_config
    if site_dirs is not None:
        return Path(site_dirs[int(config["partition-id"])]).name
    return str(config.get("site-id") or Path(str(config.get("data-dir", "unknown-site"))).name)


def _load(site: Site, config: RunConfig) -> SiteData:
    data = load_site_cached(site.data_dir, config.data, site.state_dir / CACHE_DIR)
    return require_usable(data, config.data)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and names (simulation only)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def _seed_randomness(site: Site, config: RunConfig, round_number: int) -> None:
    """Simulation: reproducible from the run seed. Deployment: from the OS CSPRNG, so nobody who
    knows the run configuration can predict (and subtract) this site's DP noise."""
    import torch

    if site.simulated:
        torch.manual_seed(derive_seed(config.training.seed, site.site_id, round_number))
    else:
        torch.manual_seed(int.from_bytes(os.urandom(8), "big"))


def make_client_app(*, site_dirs: Sequence[str] | None = None, threads: int = 1) -> ClientApp:
    """The ClientApp; ``site_dirs`` is given by the simulation runner only."""
    app = ClientApp()

    @app.query("site_info")
    def site_info(msg: Message, context: Context) -> Message:
        try:
            site, config = _request(msg, context, site_dirs)
            data = load_site_cached(site.data_dir, config.data, site.state_dir / CACHE_DIR)
        except EXPECTED_FAILURES as error:
            return _failure(msg, _site_label(context, site_dirs), error)
        return _reply(
            msg,
            status=_status(site.site_id, "ok",
                           labels=json.dumps(data.label_counts()),
                           coverage=json.dumps(data.modality_coverage())),
            metrics=MetricRecord({"rows": data.total_rows, "usable": len(data),
                                  "bad-rows": len(data.issues)}),
        )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import torch

        torch.set_num_threads(threads)
        try:
            site, config = _request(msg, context, site_dirs)
            return _train(msg, site, config, int(msg.content["config"]["round"]),
                          str(msg.content["config"]["run-id"]))
        except EXPECTED_FAILURES as error:
            return _failure(msg, _site_label(context, site_dirs), error)

    def _train(msg: Message, site: Site, config: RunConfig, round_number: int,
               run_id: str) -> Message:
        from client.training import plan_round, train_local
        from common.privacy import NoiseMemo, epsilon_for_history

        data = _load(site, config)
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
            return _reply(
                msg,
                status=_status(site.site_id, "refused", code=refusal.code, reason=refusal.reason,
                               history=json.dumps(history)),
                metrics=MetricRecord({"epsilon": spent}),
            )
        if privacy.enabled:
            ledger.reserve(model_id=config.model_id, run_id=run_id, round_number=round_number,
                           noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                           steps=plan.steps, delta=privacy.delta, accountant=privacy.accountant)
        _seed_randomness(site, config, round_number)
        global_weights = from_record(msg.content["arrays"])
        result = train_local(config=config, global_weights=global_weights, data=train_data,
                             plan=plan, history=history)
        update = {name: result.weights[name] - global_weights[name] for name in global_weights}
        if not all_finite(update):
            if privacy.enabled:
                ledger.mark(model_id=config.model_id, run_id=run_id, round_number=round_number,
                            status="diverged", detail="non-finite update not sent")
            return _reply(msg, status=_status(site.site_id, "failed", code="diverged",
                                              reason="training diverged (NaN/Inf); not sent"))
        sha256 = digest(update)
        if privacy.enabled:
            epsilon = epsilon_for_history(result.history, delta=privacy.delta,
                                          accountant=privacy.accountant)  # memoised
            ledger.mark(model_id=config.model_id, run_id=run_id, round_number=round_number,
                        status="sent", sha256=sha256)
        metrics = {"num-examples": result.num_examples, "train-loss": result.train_loss,
                   "steps": result.steps, "skipped-rows": len(data.issues),
                   "seconds": result.seconds}
        accounting = {}
        if privacy.enabled:
            metrics.update({"epsilon": epsilon, "noise-multiplier": plan.noise_multiplier,
                            "sample-rate": plan.sample_rate,
                            "max-grad-norm": privacy.max_grad_norm})
            accounting["history"] = json.dumps(result.history)
        return _reply(
            msg,
            arrays=to_record(update),
            metrics=MetricRecord(metrics),
            status=_status(site.site_id, "ok", sha256=sha256,
                           **{"grad-sample-mode": result.grad_sample_mode}, **accounting),
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        import torch

        from common.evaluation import evaluate_weights

        torch.set_num_threads(threads)
        try:
            site, config = _request(msg, context, site_dirs)
            _, validation = split(_load(site, config), config.data.validation_fraction)
        except EXPECTED_FAILURES as error:
            return _failure(msg, _site_label(context, site_dirs), error)
        metrics = evaluate_weights(config, from_record(msg.content["arrays"]), validation)
        return _reply(msg, status=_status(site.site_id, "ok"), metrics=MetricRecord(metrics))

    return app


app = make_client_app()
