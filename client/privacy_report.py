"""What a site has spent, per model, against its own policy: the data behind ``fedmm privacy``.

ε is recomputed from the recorded accountant history (never just read back), so a hand-edited or
stale ``epsilon`` field in the ledger cannot mislead; a disagreement is reported.
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
            "rounds_interrupted": sum(1 for r in spend.rounds if r.get("status") == "reserved"),
            "noise_multiplier": float(last[0]),
            "sample_rate": float(last[1]),
            "steps": int(sum(int(h[2]) for h in spend.history)),
            "history": spend.history,
        })
    return rows
