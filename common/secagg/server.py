"""The server's side of SecAgg+ as a state machine over plain data (no Flower, no torch).

The server relays every site's signed advertisement to all, routes sealed shares along the
graph the advertisements seed, collects masked inputs from the survivors U3, has every survivor
sign U3 (the consistency stage) and relays those signatures with the unmasking request, then
recovers the survivors' sum

    Σ_{i∈U3} x_i = Σ_{i∈U3} y_i − Σ_{i∈U3} PRG(b_i)
                   − Σ_{d∈U2∖U3} Σ_{i∈N(d)∩U3} sign(d − i) · PRG(s_id),

rebuilding each b_i and each dropped client's mask key s_sk_d from ``threshold`` Shamir shares.
Each site decides itself which shares it reveals, from the survivor set it signed. Fewer than
``threshold`` survivors at any stage aborts the round (:class:`SecAggAbort`); the caller keeps
the previous model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from common.secagg import shamir
from common.secagg.client import pairwise_mask
from common.secagg.encoding import ring_add, ring_subtract
from common.secagg.graph import default_degree, graph_seed
from common.secagg.graph import neighbours as build_graph
from common.secagg.graph import threshold as threshold_for
from common.secagg.messages import (
    Advert,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputRequest,
    SetupReply,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from common.secagg.primitives import expand_mask, public_key_of


class SecAggAbort(RuntimeError):
    """The round cannot produce a sum (too many dropouts, inconsistent shares)."""


@dataclass(frozen=True)
class Settings:
    clients: int
    threshold_fraction: float = 0.5
    degree: int | None = None
    clip_range: float = 8.0
    max_weight: int = 10_000


class SecAggServer:
    def __init__(self, *, context: str, settings: Settings) -> None:
        if settings.clients < 2:
            raise SecAggAbort("secure aggregation needs at least 2 clients in a round")
        self.context, self.settings = context, settings
        degree = default_degree(settings.clients) if settings.degree is None else \
            settings.degree
        self.degree = max(1, min(degree, settings.clients - 1))
        self.threshold = threshold_for(self.degree + 1, settings.threshold_fraction)
        self.graph: list[list[int]] = []
        self.keys: dict[int, Advert] = {}
        self.adverts: dict[int, bytes] = {}
        self.sealed: dict[int, dict[int, bytes]] = {}  # sender → recipient → ciphertext
        self.masked: dict[int, np.ndarray] = {}
        self.signatures: dict[int, bytes] = {}

    # stage 1
    def setup_requests(self) -> dict[int, SetupRequest]:
        s = self.settings
        return {i: SetupRequest(context=self.context, index=i, clients=s.clients,
                                threshold=self.threshold, degree=self.degree,
                                clip_range=s.clip_range, max_weight=s.max_weight)
                for i in range(s.clients)}

    def receive_setup(self, replies: Mapping[int, SetupReply]) -> None:
        self.keys = {i: Advert(i, r.encryption_key, r.mask_key, r.signer, r.signature)
                     for i, r in replies.items()}
        self.adverts = {i: advert.to_bytes() for i, advert in self.keys.items()}
        self._require(set(self.keys), "advertised keys")
        self.graph = build_graph(self.settings.clients, self.degree, graph_seed(
            self.context, [advert.identity() for advert in self.keys.values()]))

    # stage 2
    def share_keys_requests(self) -> dict[int, ShareKeysRequest]:
        return {i: ShareKeysRequest(adverts=dict(self.adverts)) for i in sorted(self.keys)}

    def receive_share_keys(self, replies: Mapping[int, ShareKeysReply]) -> None:
        self.sealed = {i: dict(reply.ciphertexts) for i, reply in replies.items()
                       if i in self.keys}
        self._require(set(self.sealed), "shared their keys")

    # stage 3
    def masked_input_requests(self) -> dict[int, MaskedInputRequest]:
        return {i: MaskedInputRequest(ciphertexts={
                    j: self.sealed[j][i] for j in self.graph[i]
                    if j in self.sealed and i in self.sealed[j]})
                for i in sorted(self.sealed)}

    def receive_masked_input(self, vectors: Mapping[int, np.ndarray]) -> None:
        lengths = {v.size for v in vectors.values()}
        if len(lengths) > 1:
            raise SecAggAbort(f"masked inputs of different lengths {sorted(lengths)}")
        self.masked = {i: np.asarray(v, dtype=np.uint32) for i, v in vectors.items()
                       if i in self.sealed}
        self._require(set(self.masked), "sent masked input")

    # stage 4
    def consistency_requests(self) -> dict[int, ConsistencyRequest]:
        survivors = sorted(self.masked)
        return {i: ConsistencyRequest(survivors=survivors) for i in survivors}

    def receive_consistency(self, replies: Mapping[int, ConsistencyReply]) -> None:
        """Every survivor must sign: each site unmasks only when all of U3 signed it."""
        self.signatures = {i: r.signature for i, r in replies.items() if i in self.masked}
        unsigned = sorted(set(self.masked) - set(self.signatures))
        if unsigned:
            raise SecAggAbort(f"clients {unsigned} sent masked input but did not sign the "
                              "survivor set; the others will not unmask without them")

    # stage 5
    def unmask_requests(self) -> dict[int, UnmaskRequest]:
        survivors = sorted(self.masked)
        return {i: UnmaskRequest(survivors=survivors, signatures=dict(self.signatures))
                for i in survivors}

    def finish(self, replies: Mapping[int, UnmaskReply]) -> np.ndarray:
        """The ring sum of the survivors' encoded inputs."""
        replies = {i: r for i, r in replies.items() if i in self.masked}
        self._require(set(replies), "answered the unmasking request")
        survivors, dropped = sorted(self.masked), sorted(set(self.sealed) - set(self.masked))
        length = next(iter(self.masked.values())).size
        total = np.zeros(length, dtype=np.uint32)
        for i in survivors:
            total = ring_add(total, self.masked[i])
        for i in survivors:
            seed = self._recover(i, {h: r.self_mask_shares for h, r in replies.items()},
                                 "self-mask seed")
            total = ring_subtract(total, expand_mask(seed, length))
        for d in dropped:
            private = self._recover(d, {h: r.key_shares for h, r in replies.items()}, "mask key")
            if public_key_of(private) != self.keys[d].mask_key:
                raise SecAggAbort(f"client {d}'s mask key rebuilt from shares does not match "
                                  "its public key; shares are inconsistent")
            for i in self.graph[d]:
                if i in self.masked:
                    pair = pairwise_mask(private, self.keys[i].mask_key, context=self.context,
                                         length=length)
                    # survivor i added +pair when d > i and −pair when d < i
                    total = ring_subtract(total, pair) if d > i else ring_add(total, pair)
        return total

    def _recover(self, owner: int, shares_by_holder: Mapping[int, Mapping[int, bytes]],
                 what: str) -> bytes:
        shares = {holder + 1: held[owner] for holder, held in shares_by_holder.items()
                  if owner in held}
        if len(shares) < self.threshold:
            raise SecAggAbort(f"only {len(shares)} shares of client {owner}'s {what}; "
                              f"threshold {self.threshold}")
        try:
            return shamir.combine(shares, threshold=self.threshold)
        except shamir.ShamirError as error:
            raise SecAggAbort(f"client {owner}'s {what}: {error}") from None

    def _require(self, present: set[int], what: str) -> None:
        if len(present) < self.threshold:
            raise SecAggAbort(f"only {len(present)} of {self.settings.clients} clients "
                              f"{what}; at least {self.threshold} needed")
