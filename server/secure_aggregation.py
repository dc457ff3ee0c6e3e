"""The server's side of a securely aggregated training round, over the Flower Grid.

Drives :class:`common.secagg.server.SecAggServer` through the five stages (setup, key
sharing, masked input, the consistency check, unmasking), one ``send_and_receive`` each, and
turns the decoded ring sum into the mean update. Sites that fail a stage (error, refusal,
timeout, malformed reply) are dropouts from then on; the protocol recovers the sum of the others
as long as ``threshold`` survive. Otherwise the round is aborted and the caller keeps the
previous global model. Imports no torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from common.config import SecureAggregationConfig
from common.records import RecordError, from_records, to_records
from common.secagg import messages
from common.secagg.encoding import RingEncoding
from common.secagg.server import SecAggAbort, SecAggServer, Settings
from common.serialization import Weights, unflatten
from server.replies import Exchange, SiteReply, TrainOutcome

log = logging.getLogger("fedmm.server")
T = TypeVar("T")


class SecureAggregation:
    def __init__(self, *, settings: SecureAggregationConfig, exchange: Exchange) -> None:
        self.settings, self.exchange = settings, exchange

    def train(self, *, round_id: str, nodes: list[int], weights: Weights) -> TrainOutcome:
        """One round: ``nodes`` (in a fixed order) become participants 0..n−1."""
        settings = self.settings
        latest: dict[int, SiteReply] = {}
        try:
            server = SecAggServer(context=round_id, settings=Settings(
                clients=len(nodes), threshold_fraction=settings.threshold_fraction,
                degree=settings.neighbours, clip_range=settings.clip_range,
                max_weight=settings.max_weight))
        except SecAggAbort as abort:
            return TrainOutcome([], None, 0, note=f"secure aggregation: {abort}")
        expected = sum(int(np.asarray(w).size) for w in weights.values()) + 1
        seconds: dict[str, float] = {}  # each stage's exchange (setup, share_keys, ...)
        details: dict[str, Any] = {"clients": len(nodes), "threshold": server.threshold,
                                   "degree": server.degree, "stage_seconds": seconds}
        index_of = {node: i for i, node in enumerate(nodes)}

        def stage(kind: str, requests: Mapping[int, Any], answer: type[T],
                  arrays: Weights | None = None) -> dict[int, T]:
            """One stage; a site's reply to the last stage it reached (up to masked input)
            stands for it in the round record, later failures go into ``details``."""
            extra = {nodes[i]: to_records(r) for i, r in requests.items()}
            answers: dict[int, T] = {}
            started = time.perf_counter()
            replies = self.exchange(list(extra), kind, arrays, extra)
            seconds[kind.removeprefix("train.secagg_")] = round(time.perf_counter() - started, 3)
            for reply in replies:
                if reply.status == "ok":
                    try:
                        answers[index_of[reply.node]] = from_records(answer, reply.content)
                    except RecordError as error:
                        reply = reply.failed("secagg-malformed",
                                             f"malformed {kind} reply: {error}")
                if kind in (messages.SETUP, messages.SHARE_KEYS, messages.MASKED_INPUT):
                    latest[reply.node] = reply
                elif reply.status != "ok":
                    details.setdefault(f"{kind.rsplit('_', 1)[1]}_failed", []).append(
                        f"{reply.site_id}: {reply.code} {reply.reason}".strip())
            return answers

        try:
            server.receive_setup(stage(messages.SETUP, server.setup_requests(),
                                       messages.SetupReply))
            server.receive_share_keys(stage(messages.SHARE_KEYS, server.share_keys_requests(),
                                            messages.ShareKeysReply))
            inputs = stage(messages.MASKED_INPUT, server.masked_input_requests(),
                           messages.MaskedInputReply, arrays=weights)
            vectors = {}
            for i, answer in inputs.items():
                if answer.vector.size == expected and answer.vector.dtype == np.uint32:
                    vectors[i] = answer.vector
                else:
                    latest[nodes[i]] = latest[nodes[i]].failed(
                        "secagg-malformed", f"masked input has {answer.vector.size} "
                        f"{answer.vector.dtype} elements, expected {expected} uint32",
                        status="rejected")
            server.receive_masked_input(vectors)
            details["survivors"] = len(vectors)
            server.receive_consistency(stage(messages.CONSISTENCY,
                                             server.consistency_requests(),
                                             messages.ConsistencyReply))
            ring_sum = server.finish(stage(messages.UNMASK, server.unmask_requests(),
                                           messages.UnmaskReply))
            encoding = RingEncoding(clip_range=settings.clip_range,
                                    max_weight=settings.max_weight, max_clients=len(nodes))
            flat, total_weight = encoding.decode(ring_sum)
            mean = unflatten(flat, weights)
        except (SecAggAbort, ValueError) as abort:
            note = f"secure aggregation aborted: {abort}; global model kept"
            log.warning(note)
            return TrainOutcome(self._replies(nodes, latest), None, 0, note=note,
                                details=details)
        details["total_weight"] = total_weight
        return TrainOutcome(self._replies(nodes, latest), mean, len(vectors), details=details)

    @staticmethod
    def _replies(nodes: list[int], latest: Mapping[int, SiteReply]) -> list[SiteReply]:
        return [latest[n] for n in nodes if n in latest]
