"""What a site has spent, per model and in total, against its own policy: the data behind
``fedmm privacy``.

ε is recomputed from the recorded accountant history (never just read back), so a hand-edited or
stale ``epsilon`` field in the ledger cannot mislead; a disagreement is reported. The total
composes every model's history (the same patients answer for all of them) and is reported at
the smallest δ any model used, the most conservative reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.ledger import PrivacyLedger
from client.policy import SitePolicy
from common.privacy import epsilon_for_history


def site_privacy_report(state_dir: Path, policy: SitePolicy) -> list[dict[str, Any]]:
    rows = []
    for spend in PrivacyLedger(state_dir).models():
        epsilon = epsilon_for_history(spend.history, delta=spend.delta,
                                      accountant=spend.accountant)
        last = spend.history[-1] if spend.history else [0.0, 0.0, 0]
        rows.append({
            "model_id": spend.model_id,
            "accountant": spend.accountant,
            "delta": spend.delta,
            "epsilon": epsilon,
            "epsilon_recorded": spend.epsilon,
            "consistent": abs(epsilon - spend.epsilon) <= 1e-9 * max(1.0, epsilon),
            "max_epsilon": policy.max_epsilon,
            "epsilon_left": max(0.0, policy.max_epsilon - epsilon),
            "rounds_served": spend.rounds_served,
            "evaluations_released": spend.evaluations_released,
            "rounds_interrupted": sum(1 for r in spend.rounds if r.get("status") == "reserved"),
            "noise_multiplier": float(last[0]),
            "sample_rate": float(last[1]),
            "steps": int(sum(int(h[2]) for h in spend.history)),
            "history": spend.history,
        })
    return rows


def site_total(state_dir: Path, policy: SitePolicy) -> dict[str, Any] | None:
    """ε over all models together, against ``max_total_epsilon``; None before any spend."""
    ledger = PrivacyLedger(state_dir)
    models = ledger.models()
    if not models:
        return None
    accountants = {spend.accountant for spend in models}
    accountant = accountants.pop() if len(accountants) == 1 else "rdp"
    delta = min(spend.delta for spend in models)
    epsilon = epsilon_for_history(ledger.total_history(), delta=delta, accountant=accountant)
    return {"epsilon": epsilon, "delta": delta, "accountant": accountant,
            "models": len(models), "max_total_epsilon": policy.max_total_epsilon,
            "epsilon_left": max(0.0, policy.max_total_epsilon - epsilon)}
