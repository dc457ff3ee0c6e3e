"""Reference points: the same model trained on all sites' training splits pooled in one place.

Two references, trained side by side for the same number of epochs as the federation (local
epochs × rounds), from the same initial model:

- **non-private**: the non-private optimiser (``non_private_optimizer``), no clipping, no noise;
- **DP**: DP-SGD with the run's ε, δ, clipping norm, step size and accountant over all those
  epochs of the pooled data (σ from :func:`client.training.plan_round` for that plan; the
  pooled data's smaller sampling rate is what a central curator would get), without momentum.
  A site's momentum restarts every round, a few steps in; over hundreds of uninterrupted steps
  momentum 0.9 makes each step ten times the step size, and on the demo task (384 steps) the
  reference then stayed at chance (test accuracy 0.297, against 0.853 without momentum and
  0.783 with momentum at a fifth of the step size; seed 0). It makes no evaluation releases,
  so all of ε goes to training.

Ratios of test accuracy then separate the two costs:
``federated_dp / centralized_dp`` is the cost of federation under privacy, and
``centralized_dp / centralized_non_private`` the cost of privacy itself.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunConfig
from common.model_inputs import load_model_inputs
from common.rowstore import concatenate
from common.sitedata import SiteData


def pool(parts: Sequence[SiteData]) -> SiteData:
    return SiteData(
        site_dir=Path("pooled"),
        sample_ids=[i for p in parts for i in p.sample_ids],
        labels=np.concatenate([p.labels for p in parts]),
        images=concatenate([p.images for p in parts]),
        tokens=concatenate([p.tokens for p in parts]),
        signals=concatenate([p.signals for p in parts]),
        masks=np.concatenate([p.masks for p in parts]),
        total_rows=sum(len(p) for p in parts),
    )


def pooled_config(config: RunConfig, *, private: bool) -> RunConfig:
    """One "round" of every epoch the federation trains, FedAvg (a single party), DP on or
    off (on: SGD without momentum); everything else as the run's."""
    training = config.training
    return config.model_copy(update={
        "privacy": config.privacy.model_copy(update={"enabled": private}),
        "training": training.model_copy(update={
            "local_epochs": training.local_epochs * training.rounds, "rounds": 1,
            "strategy": "fedavg", **({"momentum": 0.0} if private else {})}),
    })


def train_pooled(*, config: RunConfig, data: SiteData, test: SiteData | None,
                 private: bool) -> dict[str, Any]:
    """Train the reference on ``data``; its epochs, seconds, test metrics and, with DP, σ
    and the ε the accountant gives for the steps taken."""
    import torch

    from client.training import plan_round, train_local
    from common.evaluation import evaluate_weights, held_out_figures
    from common.models import build_model
    from common.privacy import epsilon_for_history
    from common.randomness import RandomStream
    from common.serialization import model_weights

    pooled = pooled_config(config, private=private)
    seed = config.training.seed
    torch.manual_seed(seed)
    weights = model_weights(build_model(data=config.data, model=config.model, seed=seed))
    plan = plan_round(len(data), pooled)
    result = train_local(config=pooled, global_weights=weights, data=data, plan=plan,
                         history=[], stream=RandomStream.from_seed(seed, "centralized"))
    summary: dict[str, Any] = {"examples": len(data), "epochs": pooled.training.local_epochs,
                               "seconds": round(result.seconds, 2)}
    if private:
        privacy = pooled.privacy
        summary.update(
            noise_multiplier=plan.noise_multiplier, steps=result.steps,
            delta=privacy.delta, epsilon=epsilon_for_history(
                result.history, delta=privacy.delta, accountant=privacy.accountant))
    if test is not None and len(test):
        summary.update(held_out_figures(evaluate_weights(config, result.weights, test)))
    return summary


def train_centralized(*, config: RunConfig, site_dirs: Sequence[Path],
                      test_dir: Path | None, cores: int | None = None) -> dict[str, Any]:
    """``{"non_private": …, "dp": …}`` (``dp`` only when the run is private), each from
    :func:`train_pooled` on the sites' pooled training splits. With two references and two
    or more ``cores`` (default: this process's), they train at once, each in its own process
    on its share of the cores (small models gain little from a second thread: one after the
    other, the main job's two took 129 s)."""
    from client.validation import simulated_site_split

    pooled = pool([simulated_site_split(d, config, load_model_inputs(d, config))[0]
                   for d in site_dirs])
    test = (load_model_inputs(test_dir, config, check_usable=False)
            if test_dir is not None else None)
    kinds = {"non_private": False, **({"dp": True} if config.privacy.enabled else {})}
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    if len(kinds) == 1 or cores < 2:
        return {name: train_pooled(config=config, data=pooled, test=test, private=private)
                for name, private in kinds.items()}
    context = multiprocessing.get_context("spawn")  # no fork of a process that ran threads
    with ProcessPoolExecutor(max_workers=len(kinds), mp_context=context,
                             initializer=_use_threads, initargs=(cores // len(kinds),)) as side:
        futures = {name: side.submit(train_pooled, config=config, data=pooled, test=test,
                                     private=private) for name, private in kinds.items()}
        return {name: future.result() for name, future in futures.items()}


def _use_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def cost_ratios(references: dict[str, Any], federated_accuracy: float | None
                ) -> dict[str, float]:
    """Test-accuracy ratios: ``federation_under_dp`` = DP-FL ÷ centralized DP (the cost of
    federation under privacy), ``privacy`` = centralized DP ÷ centralized non-private (the
    cost of privacy), ``federation`` = FL ÷ centralized non-private when the run is not
    private. Only those whose figures exist."""
    plain = references.get("non_private", {}).get("test_accuracy")
    private = references.get("dp", {}).get("test_accuracy")
    ratios: dict[str, float] = {}
    if private is not None and plain:
        ratios["privacy"] = round(private / plain, 4)
    if federated_accuracy is not None and "dp" in references and private:
        ratios["federation_under_dp"] = round(federated_accuracy / private, 4)
    elif federated_accuracy is not None and "dp" not in references and plain:
        ratios["federation"] = round(federated_accuracy / plain, 4)
    return ratios
