"""Privacy accounting for DP-SGD, on top of Opacus' accountants.

A site's spend is fully described by its accountant *history*: a list of
``(noise_multiplier σ, sample_rate q, steps)`` entries, one per run of steps with the same σ and q.
For the Poisson-subsampled Gaussian mechanism the RDP of one step at order α is ε_α(σ, q); RDP
composes additively over steps, and (ε, δ) follows by the conversion of Balle et al. 2020, which is
what :class:`opacus.accountants.RDPAccountant` implements. The PRV accountant (Gopi et al. 2021)
gives a tighter numerical bound from the same history.

Every ε fedmm prints is :func:`epsilon_for_history` applied to the history the site recorded for the
steps it actually ran. Opacus (and so torch) is imported inside the functions: processes that only
validate data or move messages stay light.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_json
from common.config import ConfigError

HistoryEntry = tuple[float, float, int]


def normalise_history(history: Iterable[Sequence[float]]) -> list[HistoryEntry]:
    """Validate and merge neighbouring entries with the same (σ, q)."""
    merged: list[HistoryEntry] = []
    for entry in history:
        if len(entry) != 3:
            raise ValueError(f"history entry {list(entry)} must be [sigma, sample_rate, steps]")
        sigma, rate, steps = float(entry[0]), float(entry[1]), int(entry[2])
        if not (sigma >= 0 and 0 < rate <= 1 and steps >= 0) or math.isnan(sigma):
            raise ValueError(f"history entry {list(entry)} is out of range")
        if steps == 0:
            continue
        if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((sigma, rate, steps))
    return merged


def epsilon_for_history(
    history: Iterable[Sequence[float]], *, delta: float, accountant: str = "rdp"
) -> float:
    """ε spent at ``delta`` by the steps in ``history``; 0 for no steps, ∞ when σ = 0.

    Both accountants compose commutatively (RDP adds ε_α per step; PRV convolves the privacy
    loss distributions), so the steps of one (σ, q) count together wherever they sit in the
    history: a site alternating training with evaluation releases costs the accountant two
    mechanisms, not two a round."""
    return _epsilon(composed(normalise_history(history)), delta, accountant)


def composed(entries: Iterable[HistoryEntry]) -> tuple[HistoryEntry, ...]:
    """The steps of each distinct (σ, q), in a canonical order."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, rate, count in entries:
        steps[(sigma, rate)] = steps.get((sigma, rate), 0) + count
    return tuple(sorted((sigma, rate, count) for (sigma, rate), count in steps.items()))


@functools.lru_cache(maxsize=256)
def _epsilon(entries: tuple[HistoryEntry, ...], delta: float, accountant: str) -> float:
    """Memoised: one round asks for the same history's ε in its policy check, its ledger entry
    and its reply, and the next round starts from it (each evaluation takes ~0.2 s)."""
    if not entries:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in entries):
        return math.inf
    if accountant == "rdp":
        return _rdp_epsilon(entries, delta)
    from opacus.accountants import create_accountant

    engine = create_accountant(mechanism=accountant)
    engine.history = list(entries)
    return float(engine.get_epsilon(delta=delta))


def _rdp_epsilon(entries: tuple[HistoryEntry, ...], delta: float) -> float:
    """What :class:`opacus.accountants.RDPAccountant` gives for ``entries``, bit for bit, with
    each (σ, q)'s per-step RDP curve computed once: RDP is linear in the steps,
    ε_α(σ, q, T) = T·ε_α(σ, q, 1), and Opacus itself multiplies that one-step curve by T. A
    site's history grows by a step count every round while its (σ, q) stay the same, so each
    round costs a product instead of a fresh curve (~0.2 s of CPU)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = sum([_rdp_curve(sigma, rate) * steps for sigma, rate, steps in entries])
    epsilon, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)


@functools.lru_cache(maxsize=1024)
def _rdp_curve(sigma: float, rate: float) -> Any:
    """One step's RDP at each of Opacus' default orders (its ``compute_rdp`` with 1 step)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    curve = compute_rdp(q=rate, noise_multiplier=sigma, steps=1,
                        orders=RDPAccountant.DEFAULT_ALPHAS)
    curve.setflags(write=False)  # shared by every caller
    return curve


@functools.lru_cache(maxsize=64)
def noise_for_budget(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp",
    extra: tuple[HistoryEntry, ...] = (),
) -> float:
    """Smallest σ (to Opacus' tolerance) such that ``steps`` steps at ``sample_rate``, composed
    with the mechanisms in ``extra`` (a site's planned evaluation releases), spend at most
    ``target_epsilon``. A bisection over accountant evaluations (seconds): memoised."""
    if not extra:
        from opacus.accountants.utils import get_noise_multiplier

        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )
    fixed = list(extra)
    if epsilon_for_history(fixed, delta=delta, accountant=accountant) >= target_epsilon:
        raise ConfigError(f"the planned evaluation releases alone spend ε ≥ {target_epsilon:g}; "
                          "raise privacy.target_epsilon, evaluate less often "
                          "(training.evaluate_every) or raise the site's "
                          "evaluation_noise_multiplier")

    def spent(sigma: float) -> float:
        return epsilon_for_history([[sigma, sample_rate, steps], *fixed], delta=delta,
                                   accountant=accountant)

    low, high = 0.0, 10.0
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ConfigError(f"no noise multiplier reaches ε = {target_epsilon:g}")
    while spent(high) < target_epsilon - 0.01:  # Opacus' tolerance
        middle = (low + high) / 2
        if spent(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


class NoiseMemo:
    """``noise_for_budget`` remembered in a JSON file, for processes that live one message.

    Only a cache: a missing or unreadable file just means computing σ again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __call__(self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                 accountant: str = "rdp", extra: tuple[HistoryEntry, ...] = ()) -> float:
        key = json.dumps([target_epsilon, delta, sample_rate, steps, accountant,
                          *([list(map(list, extra))] if extra else [])])
        try:
            known = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
        if not isinstance(known, dict):
            known = {}
        if isinstance(known.get(key), float):
            return known[key]
        sigma = noise_for_budget(target_epsilon=target_epsilon, delta=delta,
                                 sample_rate=sample_rate, steps=steps, accountant=accountant,
                                 extra=extra)
        known[key] = sigma
        atomic_write_json(self.path, known)
        return sigma
