"""A server that renames the model to start a site's patients again at ε = 0 is refused once
the site's total over all models would pass its ``max_total_epsilon``; with only the per-model
limit (the weakened policy: a total too large to bind), the renamed model trains on and the
patients' real spend passes what the hospital set."""

from __future__ import annotations

from pathlib import Path

from client.local_round import RoundInputs, train_round
from client.privacy_report import site_total
from client.site import resolve_site
from common import wire
from common.config import RunConfig
from common.models import build_model
from common.serialization import model_weights

LIMIT = 3.0


def config(model_id: str) -> RunConfig:
    return RunConfig.model_validate({
        "model_id": model_id, "model": {"embed_dim": 8, "hidden_dim": 16},
        "training": {"batch_size": 16}, "privacy": {"noise_multiplier": 3.0}})


def policy(site: Path, total: float, extra: str = "") -> None:
    (site / "policy.toml").write_text(
        f"max_epsilon = {LIMIT}\nmax_total_epsilon = {total}\nmin_noise_multiplier = 0.5\n"
        f"require_secure_aggregation = false\n{extra}", encoding="utf-8")


def train_until_refused(site_dir: Path, model_id: str, *, rounds: int = 30) -> list:
    site = resolve_site({"data-dir": str(site_dir)}, None)
    run = config(model_id)
    weights = model_weights(build_model(data=run.data, model=run.model, seed=0))
    results = []
    for number in range(1, rounds + 1):
        result = train_round(RoundInputs(number, f"run-{model_id}", weights), site, run)
        results.append(result)
        if result.status != "ok":
            break
    return results


def test_a_new_model_id_does_not_reset_the_budget(site_copy) -> None:
    policy(site_copy, total=LIMIT)
    first = train_until_refused(site_copy, "model-a")
    assert first[-1].code == wire.BUDGET_EXHAUSTED and len(first) > 1
    [renamed] = train_until_refused(site_copy, "model-b")
    assert renamed.status == "refused" and renamed.code == wire.BUDGET_EXHAUSTED
    assert "max_total_epsilon" in renamed.reason
    total = site_total(site_copy / ".fedmm", resolve_site({"data-dir": str(site_copy)},
                                                            None).policy)
    assert total is not None and total["epsilon"] <= LIMIT and total["models"] == 1


def test_with_only_a_per_model_limit_the_renamed_model_overspends(site_copy) -> None:
    policy(site_copy, total=1e4)  # the weakened policy: the per-model limit alone binds
    train_until_refused(site_copy, "model-a")
    renamed = train_until_refused(site_copy, "model-b")
    assert len(renamed) > 1 and renamed[0].status == "ok"
    total = site_total(site_copy / ".fedmm", resolve_site({"data-dir": str(site_copy)},
                                                            None).policy)
    assert total is not None and total["epsilon"] > LIMIT


def test_a_model_outside_allowed_model_ids_is_refused(site_copy) -> None:
    policy(site_copy, total=LIMIT, extra='allowed_model_ids = ["model-a"]\n')
    [result] = train_until_refused(site_copy, "model-b")
    assert result.code == wire.MODEL_NOT_ALLOWED
