"""The hospital's ClientApp (Flower Message API).

Handlers:

- ``query.site_info``: who this site is, how much usable data it holds (no torch import).
- ``train.secagg_*``: the four stages of secure aggregation (:mod:`client.secure_aggregation`);
  local training runs inside the masked-input stage and only the masked update leaves.
- ``train``: a plaintext round, answered only when the site policy does not require secure
  aggregation: policy check → reserve ε → DP-SGD → mark the ledger entry sent → the update Δ.
- ``evaluate``: loss / accuracy (AUROC for two classes) of the global model on the site's
  validation split.

Every reply is recorded in the site's audit log first (:mod:`client.audit_log`). Torch and Opacus
are imported inside the handlers that need them: Flower starts a process per message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from client.audit_log import audit_log_mod
from client.local_round import CACHE_DIR, local_evaluation, local_round
from client.replies import (
    EXPECTED_FAILURES,
    failure,
    read_request,
    reply,
    site_label,
    status_record,
)
from client.secure_aggregation import register_secure_aggregation
from common.serialization import digest, from_record, to_record
from common.sitecache import load_site_cached


def make_client_app(*, site_dirs: Sequence[str] | None = None, threads: int = 1) -> ClientApp:
    """The ClientApp; ``site_dirs`` is given by the simulation runner only."""
    app = ClientApp(mods=[audit_log_mod(site_dirs)])
    register_secure_aggregation(app, site_dirs=site_dirs,
                                train=partial(local_round, threads=threads))

    @app.query("site_info")
    def site_info(msg: Message, context: Context) -> Message:
        try:
            site, config = read_request(msg, context, site_dirs)
            data = load_site_cached(site.data_dir, config.data, site.state_dir / CACHE_DIR)
        except EXPECTED_FAILURES as error:
            return failure(msg, site_label(context, site_dirs), error)
        return reply(
            msg,
            status=status_record(site.site_id, "ok",
                                 labels=json.dumps(data.label_counts()),
                                 coverage=json.dumps(data.modality_coverage())),
            metrics=MetricRecord({"rows": data.total_rows, "usable": len(data),
                                  "bad-rows": len(data.issues)}),
        )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Plaintext round: the update itself is sent (only where the site policy allows)."""
        try:
            site, config = read_request(msg, context, site_dirs)
        except EXPECTED_FAILURES as error:
            return failure(msg, site_label(context, site_dirs), error)
        if site.policy.require_secure_aggregation:
            return reply(msg, status=status_record(
                site.site_id, "refused", code="secure-aggregation-required",
                reason="this site sends only masked updates (policy "
                       "require_secure_aggregation); run with secure aggregation on"))
        result = local_round(msg, site, config, threads=threads)
        if result.update is None:
            return result.reply(msg)
        sha256 = digest(result.update)
        result.mark_sent(sha256)
        return result.reply(msg, sha256=sha256, arrays=to_record(result.update))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        try:
            site, config = read_request(msg, context, site_dirs)
            metrics = local_evaluation(from_record(msg.content["arrays"]), site, config,
                                       threads=threads)
        except EXPECTED_FAILURES as error:
            return failure(msg, site_label(context, site_dirs), error)
        return reply(msg, status=status_record(site.site_id, "ok"),
                     metrics=MetricRecord(metrics))

    return app


app = make_client_app()
