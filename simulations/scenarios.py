"""How demo hospitals differ from each other: label mix, size and missing modalities.

- ``iid``: every site draws labels uniformly and has the same size.
- ``label-skew``: each site's class proportions come from Dirichlet(α) (small α ⇒ strong skew).
- ``quantity-skew``: site sizes follow Dirichlet(α)·total, each at least 10 % of the mean.
- ``missing-modality``: each site lacks some modalities for a share of its patients
  (site k drops modality k mod 3 for 70 % of rows, and every modality for 10 % of rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Scenario(StrEnum):
    IID = "iid"
    LABEL_SKEW = "label-skew"
    QUANTITY_SKEW = "quantity-skew"
    MISSING_MODALITY = "missing-modality"


@dataclass(frozen=True)
class SitePlan:
    labels: list[int]
    missing: dict[str, float] = field(default_factory=dict)


def site_plan(
    scenario: Scenario,
    *,
    sites: int,
    samples_per_site: int,
    classes: int,
    rng: np.random.Generator,
    alpha: float = 0.5,
) -> list[SitePlan]:
    """Labels and missing-modality rates for each site under ``scenario``."""
    sizes = [samples_per_site] * sites
    if scenario is Scenario.QUANTITY_SKEW:
        total = samples_per_site * sites
        shares = rng.dirichlet([alpha] * sites)
        floor = max(1, samples_per_site // 10)
        sizes = [max(floor, round(s * total)) for s in shares]
    plans = []
    modalities = ("image", "text", "audio")
    for index, size in enumerate(sizes):
        if scenario is Scenario.LABEL_SKEW:
            proportions = rng.dirichlet([alpha] * classes)
        else:
            proportions = np.full(classes, 1.0 / classes)
        labels = [int(x) for x in rng.choice(classes, size=size, p=proportions)]
        missing: dict[str, float] = {}
        if scenario is Scenario.MISSING_MODALITY:
            missing = {m: 0.1 for m in modalities}
            missing[modalities[index % 3]] = 0.7
        plans.append(SitePlan(labels=labels, missing=missing))
    return plans
