"""Who masks with whom (SecAgg+'s k-regular graph) and how many shares recover a secret.

Participants are 0..n−1. Below ``full_graph_up_to`` clients every pair masks together
(Bonawitz et al.); above, each client has k ≈ 2·⌈log2 n⌉ neighbours on a circulant graph
(i ± 1 … i ± k/2 mod n), which keeps the work per client O(log n) (Bell et al.). A client's
secrets are shared among its neighbourhood (its neighbours and itself, k + 1 holders) and
``threshold`` of them recover one: t = max(2, ⌈fraction · (k + 1)⌉). A round survives up to
k + 1 − t dropouts in any neighbourhood.
"""

from __future__ import annotations

import math

FULL_GRAPH_UP_TO = 10


def default_degree(clients: int) -> int:
    if clients <= FULL_GRAPH_UP_TO:
        return clients - 1
    return min(clients - 1, 2 * math.ceil(math.log2(clients)))


def neighbours(clients: int, degree: int | None = None) -> list[list[int]]:
    """Sorted neighbour lists (excluding oneself) of a symmetric graph of the given degree."""
    if clients < 1:
        raise ValueError("need at least one client")
    degree = default_degree(clients) if degree is None else degree
    if degree >= clients - 1:
        return [[j for j in range(clients) if j != i] for i in range(clients)]
    half = max(1, math.ceil(degree / 2))
    graph = []
    for i in range(clients):
        near = {(i + step) % clients for step in range(1, half + 1)}
        near |= {(i - step) % clients for step in range(1, half + 1)}
        graph.append(sorted(near - {i}))
    return graph


def threshold(holders: int, fraction: float) -> int:
    """Shares needed out of ``holders`` (a neighbourhood including its owner)."""
    return min(holders, max(2, math.ceil(fraction * holders)))
