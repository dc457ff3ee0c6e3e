"""Reference point: the same model trained on all sites' data pooled in one place.

No federation and (by default) no DP: the gap between this and the federated run is the cost of
keeping data at the hospitals; the gap to the DP run is the cost of privacy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunConfig
from common.model_inputs import load_model_inputs
from common.sitedata import SiteData


def pool(parts: Sequence[SiteData]) -> SiteData:
    return SiteData(
        site_dir=Path("pooled"),
        sample_ids=[i for p in parts for i in p.sample_ids],
        labels=np.concatenate([p.labels for p in parts]),
        images=np.concatenate([p.images for p in parts]),
        tokens=np.concatenate([p.tokens for p in parts]),
        signals=np.concatenate([p.signals for p in parts]),
        masks=np.concatenate([p.masks for p in parts]),
        total_rows=sum(len(p) for p in parts),
    )


def train_centralized(*, config: RunConfig, site_dirs: Sequence[Path],
                      test_dir: Path | None) -> dict[str, Any]:
    import torch

    from client.training import plan_round, train_local
    from common.evaluation import evaluate_weights
    from common.models import build_model
    from common.serialization import model_weights

    plain = config.model_copy(update={
        "privacy": config.privacy.model_copy(update={"enabled": False}),
        "training": config.training.model_copy(update={
            "local_epochs": config.training.local_epochs * config.training.rounds,
            "strategy": "fedavg"}),
    })
    from client.validation import simulated_site_split

    train_parts = [simulated_site_split(d, config, load_model_inputs(d, config))[0]
                   for d in site_dirs]
    pooled = pool(train_parts)
    torch.manual_seed(config.training.seed)
    weights = model_weights(build_model(data=config.data, model=config.model,
                                        seed=config.training.seed))
    plan = plan_round(len(pooled), plain)
    result = train_local(config=plain, global_weights=weights, data=pooled, plan=plan,
                         history=[])
    summary: dict[str, Any] = {"examples": len(pooled), "epochs": plain.training.local_epochs,
                               "seconds": round(result.seconds, 2)}
    if test_dir is not None:
        test = load_model_inputs(test_dir, config, check_usable=False)
        metrics = evaluate_weights(config, result.weights, test)
        summary.update(test_accuracy=metrics["accuracy"], test_loss=metrics["loss"])
    return summary
