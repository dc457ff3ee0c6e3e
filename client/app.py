"""The hospital's ClientApp (Flower Message API).

Handlers:

- ``query.site_info``: who this site is, how much usable data it holds (no torch import); its
  exact label counts and modality coverage only where its policy says ``share_data_summary``.
- ``train.secagg_*``: the five stages of secure aggregation (:mod:`client.secure_aggregation`);
  local training runs inside the masked-input stage and only the masked update leaves.
- ``train``: a plaintext round, answered only when the site policy does not require secure
  aggregation: policy check → reserve ε → DP-SGD → mark the ledger entry sent → the update Δ.
- ``evaluate``: the global model's validation sums on the site's own split, released through
  the policy's Gaussian mechanism in DP runs (ε charged to the ledger) or not at all
  (:mod:`client.private_evaluation`).

Every reply is recorded in the site's audit log first (:mod:`client.audit_log`). Torch and Opacus
are imported inside the handlers that need them: Flower starts a process per message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.audit_log import audit_log_mod
from client.local_round import LocalRound, RoundInputs, evaluate_round, train_round
from client.replies import EXPECTED_FAILURES, failure, label, read_request, reply, status
from client.secure_aggregation import register_secure_aggregation
from client.site import Identities, Site
from common import wire
from common.config import RunConfig
from common.serialization import digest, to_record
from common.sitecache import load_site_cached


def make_client_app(*, site_dirs: Sequence[str] | None = None, threads: int = 1,
                    identities: Identities | None = None) -> ClientApp:
    """The ClientApp; ``site_dirs`` and ``identities`` (per-run keys) are given by the
    simulation runner only."""
    app = ClientApp(mods=[audit_log_mod(site_dirs)])

    def train_on(msg: Message, site: Site, config: RunConfig) -> LocalRound:
        return train_round(RoundInputs.from_message(msg), site, config, threads=threads)

    register_secure_aggregation(app, site_dirs=site_dirs, train=train_on,
                                identities=identities)

    @app.query(wire.SITE_INFO_ACTION)
    def site_info(msg: Message, context: Context) -> Message:
        try:
            site, _, config = read_request(msg, context, site_dirs, identities)
            data = load_site_cached(site.data_dir, config.data, site.state.cache_dir,
                                    limits=site.policy.read_limits)
        except EXPECTED_FAILURES as error:
            return failure(msg, label(context, site_dirs), error)
        summary = site.policy.share_data_summary
        return reply(msg, status(site.site_id, "ok"), wire.SiteInfo(
            rows=data.total_rows, usable=len(data), bad_rows=len(data.issues),
            label_counts=data.label_counts() if summary else {},
            modality_counts=data.modality_coverage() if summary else {}))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Plaintext round: the update itself is sent (only where the site policy allows)."""
        try:
            site, _, config = read_request(msg, context, site_dirs, identities)
            inputs = RoundInputs.from_message(msg)
        except EXPECTED_FAILURES as error:
            return failure(msg, label(context, site_dirs), error)
        if site.policy.require_secure_aggregation:
            return reply(msg, status(
                site.site_id, "refused", code=wire.SECURE_AGGREGATION_REQUIRED,
                reason="this site sends only masked updates (policy "
                       "require_secure_aggregation); run with secure aggregation on"))
        result = train_round(inputs, site, config, threads=threads)
        if result.update is None:
            return result.reply(msg)
        sha256 = digest(result.update)
        result.mark_sent(sha256)
        return result.reply(msg, sha256=sha256, **{wire.ARRAYS: to_record(result.update)})

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Validation sums of the global model: DP-released, exact (non-private runs the
        policy allows), or refused."""
        try:
            site, _, config = read_request(msg, context, site_dirs, identities)
            inputs = RoundInputs.from_message(msg)
        except EXPECTED_FAILURES as error:
            return failure(msg, label(context, site_dirs), error)
        return evaluate_round(inputs, site, config, threads=threads).reply(msg)

    return app


def warm_client_app() -> ClientApp:
    """The deployed ClientApp with torch and Opacus imported up front (the executor loads it
    once, before its first task: a hospital's long-lived ClientApp)."""
    import opacus  # noqa: F401
    import torch  # noqa: F401

    import client.training  # noqa: F401
    import common.models  # noqa: F401

    return make_client_app(threads=len(os.sched_getaffinity(0)) or 1)  # the cores it may use


app = make_client_app()
