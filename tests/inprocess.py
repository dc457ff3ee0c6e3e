"""Deliver Flower messages to real ClientApps in this process (no Flower runtime)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp

from client.local_round import LocalRound
from common import wire
from common.config import RunConfig
from common.records import to_records
from common.serialization import Weights, to_record
from server.replies import SiteReply, no_reply, parse_reply


def trained(site_id: str, update: Weights, num_examples: int, *,
            epsilon: float | None = None) -> LocalRound:
    """A successful local round, for stand-ins of training."""
    return LocalRound(site_id, "ok", update=update, report=wire.TrainReport(
        num_examples=num_examples, train_loss=0.0, steps=1, skipped_rows=0, seconds=0.0,
        epsilon=epsilon))


Tamper = Callable[[int, str, Message], Message | None]  # None: the node stays silent


def give_identities(site_dirs: Sequence[Path], keys: Path) -> dict[Path, Path]:
    """A node key per site (``keys/``) and, in each site's ``roster/``, every site's ``.pub``:
    what a hospital has after ``fedmm keys hospital`` and the out-of-band key exchange."""
    from common.pki import write_node_key

    paths = {}
    for site in site_dirs:
        private, public = keys / f"{Path(site).name}.key", keys / f"{Path(site).name}.pub"
        write_node_key(private, public)
        paths[Path(site)] = private
    for site in site_dirs:
        roster = Path(site) / "roster"
        roster.mkdir(parents=True, exist_ok=True)
        for other in site_dirs:
            (roster / f"{Path(other).name}.pub").write_bytes(
                (keys / f"{Path(other).name}.pub").read_bytes())
    return paths


class InProcessSites:
    """One ClientApp and one persistent Context per node, as a SuperNode would keep them; each
    site has its node key and the others' public keys in its roster."""

    def __init__(self, app: ClientApp, site_dirs: Sequence[Path], config: RunConfig) -> None:
        self.app, self.config = app, config
        keys = give_identities(site_dirs, Path(site_dirs[0]).parent / "node-keys")
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={
                "data-dir": str(site), "node-key": str(keys[Path(site)])},
                state=RecordDict(), run_config={})
            for node, site in enumerate(site_dirs, start=1)}
        self.site_of = {node: Path(site).name for node, site in enumerate(site_dirs, start=1)}
        self.tamper: Tamper | None = None
        self.sent: list[tuple[int, str]] = []

    @property
    def nodes(self) -> list[int]:
        return sorted(self.contexts)

    def round_config(self) -> wire.RoundConfig:
        """What every message of the round carries."""
        return wire.RoundConfig(run_config=self.config.to_json(), round=1, run_id="test")

    def exchange(self, nodes: Sequence[int], kind: str, arrays: Weights | None,
                 extra: Mapping[int, Mapping[str, Any]] | None = None) -> list[SiteReply]:
        replies = []
        for node in nodes:
            content = RecordDict({**to_records(self.round_config()),
                                  **(extra or {}).get(node, {})})
            if arrays is not None:
                content[wire.ARRAYS] = to_record(arrays)
            message = Message(content=content, metadata=Metadata(
                run_id=1, message_id=f"{kind}-{node}", src_node_id=0, dst_node_id=node,
                reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                message_type=kind))
            if self.tamper is not None and (message := self.tamper(node, kind, message)) is None:
                replies.append(no_reply(node, self.site_of[node]))
                continue
            self.sent.append((node, kind))
            answer = self.app(message, self.contexts[node])
            replies.append(parse_reply(answer, self.site_of))
        return replies


def one_secure_round(site_dirs: Sequence[Path], config: RunConfig, *, seed: int = 0
                     ) -> tuple[Weights, Any]:
    """The initial model's weights and the outcome of one securely aggregated round of the
    real ClientApp at every site (real X25519, AES-GCM, Shamir; no Flower runtime)."""
    from client.app import make_client_app
    from common.models import build_model
    from common.serialization import model_weights
    from server.secure_aggregation import SecureAggregation

    weights = model_weights(build_model(data=config.data, model=config.model, seed=seed))
    hospitals = InProcessSites(make_client_app(), site_dirs, config)
    outcome = SecureAggregation(settings=config.secure_aggregation,
                                exchange=hospitals.exchange).train(
        round_id="test/1", nodes=hospitals.nodes, weights=weights)
    return weights, outcome
