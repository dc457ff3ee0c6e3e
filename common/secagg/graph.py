"""Who masks with whom (SecAgg+'s k-regular graph) and how many shares recover a secret.

Participants are 0..n−1. Up to ``FULL_GRAPH_UP_TO`` clients every pair masks together
(Bonawitz et al.); above, each client has k ≈ 2·⌈log2 n⌉ neighbours on a circulant graph
(Bell et al.), which keeps the work per client O(log n). The circulant is laid over a
permutation of the participants drawn from a seed that every site computes from all sites'
signed advertisements (:func:`graph_seed`), so the server, which numbers the participants,
cannot place its colluders around one site.

A client's secrets are shared among its neighbourhood (its neighbours and itself: the
``holders``) and ``threshold`` of them recover one.

**The threshold a site insists on.** A server that lies about who dropped out tries to collect,
for a target site u, ``t`` shares of u's self-mask seed (from holders told that u survived) and
``t`` shares of u's mask key (from holders told that u dropped): both together unmask u's
update. Each honest holder reveals one kind of share per site, for the one survivor set it
signed in the consistency stage (:mod:`.client`); u itself is among the first group; up to c
colluding holders give both kinds. With h honest holders (u included) and n = h + c holders,
the split needs h_A + 1 + c ≥ t and h_B + c ≥ t with h_A + h_B = h − 1, so it is possible
exactly when 2t ≤ h + 2c = n + c. A site therefore refuses any threshold below

    t_min(n, c) = ⌊(n + c) / 2⌋ + 1                      (:func:`minimum_threshold`),

which the active-adversary setting of Bonawitz et al. 2017 (t > 2n/3 with fewer than n/3
corrupt clients) satisfies. The consistency stage does not change this count (a site refuses
both kinds of share for one site whatever it is told); it makes each honest site's survivor set
a single signed commitment, so a site unmasks only for a set every survivor signed with the
same global-model hash, which exposes a server that shows different sets or models to different
sites. A round with n holders at threshold t survives n − t dropouts in any neighbourhood
(lost before their masked input or after signing).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

FULL_GRAPH_UP_TO = 10


def default_degree(clients: int) -> int:
    if clients <= FULL_GRAPH_UP_TO:
        return clients - 1
    return min(clients - 1, 2 * math.ceil(math.log2(clients)))


def graph_seed(context: str, adverts: list[bytes]) -> bytes:
    """SHA-256 over the round and every advertisement's identity (index, keys, signer: not
    its signature, which anyone can re-encode), in a fixed order."""
    hasher = hashlib.sha256(context.encode() + b"\0")
    for advert in sorted(adverts):
        hasher.update(len(advert).to_bytes(4, "big") + advert)
    return hasher.digest()


def neighbours(clients: int, degree: int | None = None,
               seed: bytes = b"") -> list[list[int]]:
    """Sorted neighbour lists (excluding oneself) of a symmetric graph of the given degree,
    laid out over the permutation of 0..n−1 that ``seed`` draws."""
    if clients < 1:
        raise ValueError("need at least one client")
    degree = default_degree(clients) if degree is None else degree
    if degree >= clients - 1:
        return [[j for j in range(clients) if j != i] for i in range(clients)]
    order = np.random.default_rng(list(seed) or [0]).permutation(clients)
    position = {int(site): place for place, site in enumerate(order)}
    half = max(1, math.ceil(degree / 2))
    graph = []
    for i in range(clients):
        near = {int(order[(position[i] + step) % clients]) for step in range(1, half + 1)}
        near |= {int(order[(position[i] - step) % clients]) for step in range(1, half + 1)}
        graph.append(sorted(near - {i}))
    return graph


def threshold(holders: int, fraction: float) -> int:
    """The server's threshold for ``holders`` (a neighbourhood including its owner): more
    than ``fraction`` of them, at least 2, at most all of them."""
    return min(holders, max(2, math.floor(fraction * holders) + 1))


def minimum_threshold(holders: int, colluding: int) -> int:
    """The least threshold a site accepts when up to ``colluding`` of the ``holders`` may work
    with the server: ⌊(n + c)/2⌋ + 1 (see the module docstring), and never below 2."""
    return max(2, (holders + colluding) // 2 + 1)
