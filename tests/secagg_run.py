"""Run one SecAgg+ round in process between the real client and server state machines, with
each client's own signing key and a roster of all of them."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from common.secagg import client
from common.secagg.encoding import RingEncoding
from common.secagg.identity import Roster, Signer
from common.secagg.messages import MaskedInputRequest
from common.secagg.server import SecAggServer, Settings

MODEL = "model-digest"


@dataclass
class RoundResult:
    mean: np.ndarray
    exact: np.ndarray  # weighted mean of the survivors' clipped updates, in float64
    tolerance: float
    payloads: dict[int, np.ndarray]  # what the server received from each survivor
    encoded: dict[int, np.ndarray]  # the survivors' unmasked encodings (never sent)
    survivors: list[int]


def identities(n: int, colluding: int = 0) -> tuple[list[Signer], client.Guards]:
    signers = [Signer.generate() for _ in range(n)]
    return signers, client.Guards(roster=Roster.of(s.public for s in signers),
                                  max_colluding=colluding)


def run_round(updates: list[np.ndarray], counts: list[int], *, degree: int | None = None,
              threshold_fraction: float = 0.5, clip_range: float = 8.0,
              max_weight: int = 10_000, drop_after_setup: Collection[int] = (),
              drop_after_share: Collection[int] = (), drop_after_mask: Collection[int] = (),
              tamper: Callable[[int, MaskedInputRequest], MaskedInputRequest] | None = None,
              seed: int = 0) -> RoundResult:
    n = len(updates)
    rng = np.random.default_rng(seed)
    signers, guards = identities(n)
    settings = Settings(clients=n, threshold_fraction=threshold_fraction, degree=degree,
                        clip_range=clip_range, max_weight=max_weight)
    server = SecAggServer(context="test-run/1", settings=settings)
    encoding = RingEncoding(clip_range=clip_range, max_weight=max_weight, max_clients=n)
    states: dict[int, client.State] = {}
    replies: dict = {}
    for i, request in server.setup_requests().items():
        states[i], replies[i] = client.setup(request, signers[i])
    server.receive_setup({i: r for i, r in replies.items() if i not in drop_after_setup})
    replies = {}
    for i, request in server.share_keys_requests().items():
        states[i], replies[i] = client.share_keys(states[i], request, guards)
    server.receive_share_keys({i: r for i, r in replies.items() if i not in drop_after_share})
    vectors, encoded = {}, {}
    for i, request in server.masked_input_requests().items():
        if tamper is not None:
            request = tamper(i, request)
        states[i] = client.open_shares(states[i], request, MODEL)
        encoded[i] = encoding.encode(updates[i], counts[i], rng).vector
        states[i], vectors[i] = client.mask(states[i], encoded[i])
    server.receive_masked_input(vectors)
    replies = {}
    for i, request in server.consistency_requests().items():
        states[i], replies[i] = client.consistency(states[i], request, signers[i])
    server.receive_consistency(replies)
    replies = {}
    for i, request in server.unmask_requests().items():
        states[i], replies[i] = client.unmask(states[i], request)
    ring_sum = server.finish({i: r for i, r in replies.items() if i not in drop_after_mask})
    mean, total_weight = encoding.decode(ring_sum)
    survivors = sorted(vectors)
    weights = np.array([min(counts[i], max_weight) for i in survivors], dtype=np.float64)
    clipped = [np.clip(updates[i], -clip_range, clip_range) for i in survivors]
    exact = sum(w * u for w, u in zip(weights, clipped, strict=True)) / weights.sum()
    return RoundResult(mean, exact, encoding.tolerance(total_weight, n), vectors, encoded,
                       survivors)


@dataclass
class Stepped:
    """A round driven by the real server up to a stage, for tests that then step by hand."""

    server: SecAggServer
    states: dict[int, client.State]
    signers: list[Signer]
    guards: client.Guards


def after_shares(n: int = 3, *, colluding: int = 0, context: str = "r/1") -> Stepped:
    signers, guards = identities(n, colluding)
    server = SecAggServer(context=context, settings=Settings(clients=n))
    states, replies = {}, {}
    for i, request in server.setup_requests().items():
        states[i], replies[i] = client.setup(request, signers[i])
    server.receive_setup(replies)
    replies = {}
    for i, request in server.share_keys_requests().items():
        states[i], replies[i] = client.share_keys(states[i], request, guards)
    server.receive_share_keys(replies)
    return Stepped(server, states, signers, guards)


def after_masks(n: int = 3, length: int = 4) -> Stepped:
    stepped = after_shares(n)
    vectors = {}
    for i, request in stepped.server.masked_input_requests().items():
        stepped.states[i] = client.open_shares(stepped.states[i], request, MODEL)
        stepped.states[i], vectors[i] = client.mask(stepped.states[i],
                                                    np.zeros(length, dtype=np.uint32))
    stepped.server.receive_masked_input(vectors)
    return stepped
