"""A server that runs the secure-aggregation stages against real fedmm ClientApps and lies.

It numbers the sites, picks the threshold it sends, may send different global models to
different sites, shows each site the survivor set it likes, forwards whichever signatures
suit it, may have colluding hospitals (whose keys and protocol state it holds), and finally
tries to rebuild one site's update x_u from what the sites revealed:

    x_u = y_u − PRG(b_u) − Σ_j sign(j − u) · PRG(s_uj),

b_u from ``threshold`` shares of u's self-mask seed, s_uj from u's mask key rebuilt from
``threshold`` key shares. Nothing here is fedmm's server code: only the protocol's public
message types and primitives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from client.secure_aggregation import STATE_RECORD, received_digest
from common.config import RunConfig
from common.records import from_records, to_records
from common.secagg import client as protocol
from common.secagg import messages, shamir
from common.secagg.client import pairwise_mask
from common.secagg.encoding import RingEncoding, ring_add, ring_subtract
from common.secagg.identity import Roster, Signer
from common.secagg.messages import Advert, view_fields
from common.secagg.primitives import expand_mask
from common.secagg.server import SecAggAbort, SecAggServer, Settings
from common.serialization import Weights, digest
from tests.inprocess import InProcessSites

CONTEXT = "attack/1"
SIZE = 40  # elements of the update (plus one for the weight)


@dataclass
class Attempt:
    refusals: dict[int, str] = field(default_factory=dict)  # site index → secagg code
    recovered: np.ndarray | None = None  # x_u decoded, when the server rebuilt it
    total: np.ndarray | None = None  # the decoded mean, when the server unmasked the sum
    why_not: str = ""


class LyingServer:
    def __init__(self, sites: InProcessSites, *, threshold: int | None = None,
                 colluders: Sequence[int] = (), sybils: int = 0) -> None:
        self.sites, self.nodes = sites, sites.nodes
        self.n = len(self.nodes) + sybils
        # participants the server makes up, after the real sites, with keys of its own
        self.sybils = {len(self.nodes) + k: Signer.generate() for k in range(sybils)}
        self.sybil_states: dict[int, protocol.State] = {}
        self.threshold = threshold
        self.colluders = set(colluders)
        self.server = SecAggServer(context=CONTEXT, settings=Settings(clients=self.n))
        self.attempt = Attempt()

    # -- plumbing ---------------------------------------------------------------------------
    def _stage(self, kind: str, requests: Mapping[int, object], answer: type,
               arrays: Mapping[int, Weights] | None = None,
               configs: Mapping[int, RunConfig] | None = None) -> dict[int, object]:
        replies: dict[int, object] = {}
        for i, request in requests.items():
            if i in self.sybils:
                replies[i] = self._sybil(i, kind, request)
                continue
            node = self.nodes[i]
            if configs is not None:
                self.sites.config = configs[i]
            extra = {node: to_records(request)}
            weights = None if arrays is None else arrays[i]
            [reply] = self.sites.exchange([node], kind, weights, extra)
            if reply.status == "ok":
                replies[i] = from_records(answer, reply.content)
            else:
                self.attempt.refusals[i] = reply.code
        return replies

    def _sybil(self, i: int, kind: str, request: object) -> object:
        """A made-up participant: fedmm's own state machine under the server's key,
        contributing a zero update of weight 0."""
        signer, state = self.sybils[i], self.sybil_states.get(i, {})
        everyone = protocol.Guards(roster=Roster.of(
            [Advert.from_bytes(a).signer for a in getattr(request, "adverts", {}).values()]))
        if kind == messages.SETUP:
            state, answer = protocol.setup(request, signer)
        elif kind == messages.SHARE_KEYS:
            state, answer = protocol.share_keys(state, request, everyone)
        elif kind == messages.MASKED_INPUT:
            state = protocol.open_shares(state, request, received_digest(
                digest(self.models[0]), self.sites.round_config()))
            zero = self._encoding().encode(np.zeros(SIZE), 0, np.random.default_rng(0))
            state, vector = protocol.mask(state, zero.vector)
            answer = messages.MaskedInputReply(vector=vector)
        elif kind == messages.CONSISTENCY:
            state, answer = protocol.consistency(state, request, signer)
        else:
            state, answer = protocol.unmask(state, request)
        self.sybil_states[i] = state
        return answer

    def _protocol_state(self, i: int) -> protocol.State:
        """A colluding hospital hands over its protocol state."""
        context = self.sites.contexts[self.nodes[i]]
        return protocol.load_state(bytes(context.state[STATE_RECORD]["state"]))

    def _signer(self, i: int) -> Signer:
        context = self.sites.contexts[self.nodes[i]]
        return Signer.from_file(context.node_config["node-key"])

    # -- the attack -------------------------------------------------------------------------
    def run(self, *, target: int | None, views: Mapping[int, list[int]],
            models: Mapping[int, Weights], forward: str = "same-view",
            configs: Mapping[int, RunConfig] | None = None) -> Attempt:
        """``views``: the survivor set each site is shown; ``models``: the global model each
        site receives; ``forward``: which signatures each site gets (``same-view``: those
        on its own set; ``all``)."""
        server, t = self.server, self.threshold
        self.models = models
        setups = server.setup_requests()
        if t is not None:
            setups = {i: replace(r, threshold=t) for i, r in setups.items()}
        server.threshold = setups[0].threshold
        server.receive_setup(self._stage(messages.SETUP, setups, messages.SetupReply))
        shared = self._stage(messages.SHARE_KEYS, server.share_keys_requests(),
                             messages.ShareKeysReply)
        if len(shared) < self.n:
            return self._failed("sites refused to share keys")
        server.receive_share_keys(shared)
        masked = self._stage(messages.MASKED_INPUT, server.masked_input_requests(),
                             messages.MaskedInputReply, arrays=models, configs=configs)
        if len(masked) < self.n:
            return self._failed("sites refused to mask")
        vectors = {i: r.vector for i, r in masked.items()}
        server.receive_masked_input(vectors)
        signatures = self._signatures(views)
        unmasked: dict[int, messages.UnmaskReply] = {}
        for i in range(self.n):
            if i in self.colluders:
                continue
            view = tuple(sorted(views[i]))
            if forward == "all":  # every signature there is, whatever it covers
                pool = {j: sig for by_site in signatures.values() for j, sig in by_site.items()}
            else:
                pool = dict(signatures.get(view, {}))
            chosen = {j: sig for j, sig in pool.items() if j in view}
            unmasked.update(self._stage(messages.UNMASK, {i: messages.UnmaskRequest(
                survivors=list(view), signatures=chosen)}, messages.UnmaskReply))
        if target is None:
            return self._sum(unmasked)
        return self._rebuild(target, vectors, unmasked)

    def _sum(self, replies: Mapping[int, messages.UnmaskReply]) -> Attempt:
        try:
            ring_sum = self.server.finish(replies)
        except SecAggAbort as abort:
            return self._failed(str(abort))
        self.attempt.total, _ = self._encoding().decode(ring_sum)
        return self.attempt

    def _encoding(self) -> RingEncoding:
        return RingEncoding(clip_range=8.0, max_weight=10_000, max_clients=self.n)

    def _signatures(self, views: Mapping[int, list[int]]) -> dict[tuple, dict[int, bytes]]:
        """Signatures per survivor set: each honest site signs the set it is shown; a
        colluder (the server holds its key) signs every set."""
        signed: dict[tuple, dict[int, bytes]] = {}
        for i in range(self.n):
            if i in self.colluders:
                continue
            view = tuple(sorted(views[i]))
            replies = self._stage(messages.CONSISTENCY, {i: messages.ConsistencyRequest(
                survivors=list(view))}, messages.ConsistencyReply)
            if i in replies:
                signed.setdefault(view, {})[i] = replies[i].signature
        for c in self.colluders:
            state = self._protocol_state(c)
            seen = protocol._seen(state)  # what the colluder's own signature would cover
            for view in {tuple(sorted(v)) for v in views.values()}:
                signed.setdefault(view, {})[c] = self._signer(c).sign(
                    protocol.VIEW, view_fields(CONTEXT, list(view), seen))
        return signed

    def _failed(self, why: str) -> Attempt:
        self.attempt.why_not = why
        return self.attempt

    def _rebuild(self, u: int, vectors: Mapping[int, np.ndarray],
                 replies: Mapping[int, messages.UnmaskReply]) -> Attempt:
        seed_shares = {h + 1: r.self_mask_shares[u] for h, r in replies.items()
                       if u in r.self_mask_shares}
        key_shares = {h + 1: r.key_shares[u] for h, r in replies.items() if u in r.key_shares}
        for c in self.colluders:  # a colluder gives both kinds
            state = self._protocol_state(c)
            seed_shares[c + 1] = state["seed_shares"][u]
            key_shares[c + 1] = state["key_shares"][u]
        t = self.server.threshold
        if len(seed_shares) < t or len(key_shares) < t:
            return self._failed(f"{len(seed_shares)} self-mask shares and {len(key_shares)} "
                                f"key shares of site {u}; {t} of each needed")
        seed = shamir.combine(seed_shares, threshold=t)
        private = shamir.combine(key_shares, threshold=t)
        y = vectors[u]
        x = ring_subtract(y, expand_mask(seed, y.size))
        for j in range(self.n):
            if j == u:
                continue
            pair = pairwise_mask(private, self.server.keys[j].mask_key, context=CONTEXT,
                                 length=y.size)
            x = ring_subtract(x, pair) if j > u else ring_add(x, pair)
        self.attempt.recovered, _ = self._encoding().decode(x)
        return self.attempt
