"""No sum of N clipped, stochastically rounded updates wraps around the ring Z/2^32.

The extreme: every site at +R (or −R) with the full weight. Each element then rounds to
⌊s·R⌋ or ⌊s·R⌋ + 1; with s = (2^31 − 1)/(N·R), as before, N of them reach past 2^31 − 1 and
decode as large negative numbers. fedmm's s = (2^31 − 1 − N)/(N·R) leaves room for the N
extra steps: the decoded mean stays within one step per site of ±R in every trial.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.secagg.encoding import _MAX_ABS, RingEncoding, ring_add

TRIALS, SIZE = 2000, 64


class WithoutHeadroom(RingEncoding):
    """The scale as it was: no room for the rounding steps."""

    @property
    def scale(self) -> float:
        return _MAX_ABS / (self.max_clients * self.clip_range)


def wrapped_trials(encoding: RingEncoding, sign: float, clients: int) -> int:
    rng = np.random.default_rng(0)
    update = np.full(SIZE, sign * encoding.clip_range)
    wrapped = 0
    for _ in range(TRIALS):
        total = np.zeros(SIZE + 1, dtype=np.uint32)
        for _ in range(clients):
            total = ring_add(total, encoding.encode(update, encoding.max_weight, rng).vector)
        mean, weight = encoding.decode(total)
        tolerance = encoding.tolerance(weight, clients)
        wrapped += int(np.any(np.abs(mean - sign * encoding.clip_range) > tolerance))
    return wrapped


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize(("clients", "clip"), [(3, 8.0), (3, 0.3), (7, 1e6)])
def test_sites_at_the_clip_range_never_wrap(sign, clients, clip) -> None:
    encoding = RingEncoding(clip_range=clip, max_weight=10_000, max_clients=clients)
    assert wrapped_trials(encoding, sign, clients) == 0


def test_without_headroom_three_sites_at_the_range_wrap() -> None:
    encoding = WithoutHeadroom(clip_range=8.0, max_weight=10_000, max_clients=3)
    assert wrapped_trials(encoding, 1.0, 3) > 100
