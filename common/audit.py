"""Empirical privacy lower bound from one training run (Steinke, Nasr & Jagielski 2023).

m canaries are each included in training independently with probability ½. After training the
auditor scores every canary, guesses "included" for the k₊ highest scores and "excluded" for the
k₋ lowest, and counts the correct guesses v among the r = k₊ + k₋ guesses. If training is
(ε, δ)-DP, then (Theorem 3.1 of the paper)

    P[v correct or more] ≤ P[Binomial(r, p_ε) ≥ v] + 2·m·δ·α,   p_ε = e^ε / (1 + e^ε),
    α = max_{1≤i≤v} P[v − i ≤ Binomial(r, p_ε) < v] / i.

ε_lb is the largest ε whose bound is below β (β = 0.05: 95 % confidence). An ε_lb above the
claimed ε means the claim is false, with that confidence. Pure Python (``math.lgamma``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _log_binomial_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def _pmf(k: int, n: int, p: float) -> float:
    return math.exp(_log_binomial_pmf(k, n, p))


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[≥ ``correct`` right guesses] for an (ε, δ)-DP training run."""
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError("need 0 ≤ correct ≤ guesses ≤ canaries")
    p = 1.0 / (1.0 + math.exp(-epsilon))
    tail = sum(_pmf(k, guesses, p) for k in range(correct, guesses + 1))
    alpha, window = 0.0, 0.0
    for i in range(1, correct + 1):
        window += _pmf(correct - i, guesses, p)
        alpha = max(alpha, window / i)
    return min(1.0, tail + 2.0 * canaries * delta * alpha)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float,
                        confidence: float = 0.95) -> float:
    """Largest ε (to 1e-6) that the observed guesses refute at ``confidence``; 0 if none."""
    beta = 1.0 - confidence

    def refuted(epsilon: float) -> bool:
        return p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=epsilon,
                       delta=delta) < beta

    if not refuted(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while refuted(high):
        low, high = high, high * 2
        if high > 1e3:
            return math.inf
    while high - low > 1e-6:
        middle = (low + high) / 2
        low, high = (middle, high) if refuted(middle) else (low, middle)
    return low


@dataclass(frozen=True)
class AuditResult:
    canaries: int
    guesses: int
    correct: int
    epsilon_lower_bound: float


def audit_scores(scores: Sequence[float], included: Sequence[bool], *, top: int, bottom: int,
                 delta: float, confidence: float = 0.95) -> AuditResult:
    """Guess "in" for the ``top`` highest scores and "out" for the ``bottom`` lowest."""
    if len(scores) != len(included) or top + bottom > len(scores):
        raise ValueError("scores and membership must match, and top + bottom ≤ canaries")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    correct = sum(1 for i in order[len(order) - top:] if included[i]) if top else 0
    correct += sum(1 for i in order[:bottom] if not included[i])
    guesses = top + bottom
    return AuditResult(len(scores), guesses, correct, epsilon_lower_bound(
        canaries=len(scores), guesses=guesses, correct=correct, delta=delta,
        confidence=confidence))
