"""End to end through the CLI and Flower's real simulation engine (Ray): privacy accounting,
site policies, the ledger across runs, the live view, secure against plaintext aggregation,
pretrained encoders, and last the README's main job (started beside the unit tests: the runs
here share the machine with it). Stopped and resumed runs: tests/test_resume_e2e.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from client.ledger import PrivacyLedger
from client.training import plan_round
from common.config import load_config
from common.privacy import epsilon_for_history, noise_for_budget
from common.sitedata import load_site, split_train_validation
from simulations.demo_data import DEMO_POLICY, generate_demo
from simulations.scenarios import Scenario
from tests.e2e import CliRun, MainJob, RayCluster, read_jsonl, run_cli, write_run_config
from tests.test_dashboard_browser import CHROMEDRIVER, RunWatch

pytestmark = pytest.mark.slow

def _epsilon_after_rounds(site: Path, config_path: Path, rounds: int) -> float:
    config = load_config(config_path)
    train, _ = split_train_validation(load_site(site, config.data), 0.2)
    plan = plan_round(len(train), config, noise_for_budget=noise_for_budget)
    return epsilon_for_history([[plan.noise_multiplier, plan.sample_rate, plan.steps * rounds]],
                               delta=config.privacy.delta)


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory: pytest.TempPathFactory, ray: RayCluster) -> dict:
    """One securely aggregated run, four sites: site-01 and site-04 follow the demo policy,
    site-02's policy demands more noise than the run uses, site-03's budget lasts one round
    (their refusals are dropouts the protocol recovers from); only site-04 has enough
    validation rows to release metrics (DP-noised). Then a second run of the same model."""
    root = tmp_path_factory.mktemp("policy")
    data = root / "data"
    generate_demo(data, sites=4, samples_per_site=70, seed=11, scenario=Scenario.IID,
                  test_samples=60)
    config_path = write_run_config(root)
    one = _epsilon_after_rounds(data / "site-03", config_path, 1)
    two = _epsilon_after_rounds(data / "site-03", config_path, 2)
    (data / "site-02" / "policy.toml").write_text("min_noise_multiplier = 50.0\n")
    manifest = data / "site-01" / "manifest.csv"  # two bad rows: skipped and counted
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].replace(",images/", ",images/missing-")
    lines[2] = lines[2].split(",", 2)[0] + ",9," + lines[2].split(",", 2)[2]
    manifest.write_text("\n".join(lines) + "\n")
    (data / "site-03" / "policy.toml").write_text(f"max_epsilon = {(one + two) / 2}\n")
    # site-04 releases its validation figures through the Gaussian mechanism (14 rows)
    (data / "site-04" / "policy.toml").write_text(DEMO_POLICY + "min_eval_rows = 10\n")
    first = _run_watched(["simulate", "--data", str(data), "--config", str(config_path),
                          "--out", str(root / "run1"), *ray.address], root, root / "run1")
    second = run_cli(["simulate", "--data", str(data), "--config", str(config_path), "--out",
                      str(root / "run2"), *ray.address], cwd=root)
    return {"root": root, "data": data, "first": first[:2], "second": second, "one": one,
            "watch": first[2]}


def _run_watched(args: list[str], cwd: Path, out: Path) -> tuple[int, str, RunWatch | None]:
    """``fedmm ARGS`` with the run view of ``out`` open in headless Chromium from before the
    run starts until after it ends (``test_the_live_view_followed_the_run_in_a_browser``);
    without chromium-driver, only the run (that test then fails, the others go on)."""
    if not CHROMEDRIVER.exists():
        return (*run_cli(args, cwd=cwd), None)
    watch = RunWatch(out)
    try:
        run = CliRun(args, cwd=cwd)
        deadline = time.monotonic() + 600
        while run.process.poll() is None and time.monotonic() < deadline:
            watch.look()
            time.sleep(0.5)
        if run.process.poll() is not None:
            watch.after()
    finally:
        watch.close()
    code = run.wait(10)
    return code, run.output(), watch


def test_run_writes_everything_and_epsilon_is_the_accountants(policy_run: dict) -> None:
    code, output = policy_run["first"]
    assert code == 0, output
    run = policy_run["root"] / "run1"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert summary["secure_aggregation"] is True and summary["strategy"] == "fedavg"
    assert set(summary["final_metrics"]) >= {"accuracy", "loss", "test_accuracy"}
    assert summary["final_metrics"]["evaluation_private"] is True
    privacy = summary["privacy"]
    assert privacy["delta"] == 1e-5 and privacy["accountant"] == "rdp"
    for site, info in privacy["sites"].items():
        recomputed = epsilon_for_history(info["history"], delta=privacy["delta"])
        assert info["epsilon"] == pytest.approx(recomputed, rel=1e-9), site
        assert info["max_grad_norm"] == 1.0
    assert privacy["sites"]["site-01"]["epsilon"] <= 4.0 + 1e-6
    weights = load_file(str(run / "model.safetensors"))
    assert summary["model"]["parameters"] == sum(v.size for v in weights.values())
    assert json.loads((run / "model_config.json").read_text())["model_id"] == "e2e-model"
    for name in ("accuracy.png", "loss.png", "epsilon.png", "report.md"):
        assert (run / "report" / name).stat().st_size > 0
    records = read_jsonl(run / "metrics.jsonl")
    assert len(records) == 3 and "round 3/3" in output
    assert all(r["sites"]["site-01"]["skipped_rows"] == 2 for r in records)
    assert records[0]["sites"]["site-01"]["num_examples"] == round((70 - 2) * 0.8)
    assert "| site-01 | ok | 54 | 2 |" in (run / "report" / "report.md").read_text()
    assert "site site-01: 2 bad rows skipped" in output


def test_the_live_view_followed_the_run_in_a_browser(policy_run: dict) -> None:
    """Issue 23: headless Chromium on ``fedmm dashboard run1`` during the run and after it;
    the rounds and each site's status it showed are what ``metrics.jsonl`` holds."""
    watch = policy_run["watch"]
    if watch is None:
        pytest.fail("chromium-driver is not installed; `make test` installs it")
    assert watch.waiting_at_start  # opened before the run wrote anything
    assert watch.while_running, "the page never showed the run going on"
    for shown, recorded in watch.while_running:  # the page may lag, never invent
        assert sorted(shown) == list(range(1, len(shown) + 1))
        assert all(shown[number] == recorded[number] for number in shown)
    shown, recorded = watch.done
    records = read_jsonl(policy_run["root"] / "run1" / "metrics.jsonl")
    assert shown == recorded == {r["round"]: {name: site["status"] for name, site in
                                             r["sites"].items()} for r in records}
    assert len(shown) == 3 and shown[1]["site-02"] == "refused" and shown[1]["site-01"] == "ok"
    assert "| site-01 | ok |" in watch.report and watch.charts >= 3
    origin = watch.dashboard.url.rstrip("/")
    assert watch.requests and all(name.startswith(origin + "/") for name in watch.requests)


def test_policy_violation_is_refused_with_its_reason(policy_run: dict) -> None:
    records = read_jsonl(policy_run["root"] / "run1" / "metrics.jsonl")
    site = records[0]["sites"]["site-02"]
    assert site["status"] == "refused" and site["code"] == "noise-too-small"
    assert "< policy 50.000" in site["reason"]
    assert all("site-02" not in r["sites"] for r in records[1:])  # not asked again
    assert "site-02 refused (noise-too-small)" in policy_run["first"][1]
    assert not PrivacyLedger(policy_run["data"] / "site-02" / ".fedmm").history("e2e-model")


def test_small_budget_is_refused_once_spent_and_the_run_goes_on(policy_run: dict) -> None:
    records = read_jsonl(policy_run["root"] / "run1" / "metrics.jsonl")
    assert records[0]["sites"]["site-03"]["status"] == "ok"
    assert records[1]["sites"]["site-03"]["code"] == "budget-exhausted"
    assert "site-03" not in records[2]["sites"]  # not asked again
    assert all(r["sites"]["site-01"]["status"] == "ok" for r in records)
    assert all(r["aggregated"] for r in records)
    assert [r["secure_aggregation"]["survivors"] for r in records] == [3, 2, 2]
    assert all(r["sites"]["site-01"]["secagg_clipped"] == 0 for r in records)
    summary = json.loads((policy_run["root"] / "run1" / "summary.json").read_text())
    assert summary["privacy"]["sites"]["site-03"]["epsilon"] == pytest.approx(
        policy_run["one"], rel=1e-6)


def test_ledger_carries_over_to_a_second_run(policy_run: dict) -> None:
    code, output = policy_run["second"]
    assert code == 0, output
    first = json.loads((policy_run["root"] / "run1" / "summary.json").read_text())
    second = json.loads((policy_run["root"] / "run2" / "summary.json").read_text())
    history_one = first["privacy"]["sites"]["site-01"]["history"]
    history_two = second["privacy"]["sites"]["site-01"]["history"]
    assert history_two[0][2] == 2 * history_one[0][2]
    assert second["privacy"]["sites"]["site-01"]["epsilon"] > first["privacy"]["sites"][
        "site-01"]["epsilon"]
    records = read_jsonl(policy_run["root"] / "run2" / "metrics.jsonl")
    assert records[0]["sites"]["site-03"]["code"] == "budget-exhausted"
    code, report = run_cli(["privacy", str(policy_run["data"] / "site-01"), "--json"],
                           cwd=policy_run["root"])
    assert code == 0, report
    [model] = json.loads(report)["models"]
    assert model["epsilon"] == pytest.approx(second["privacy"]["sites"]["site-01"]["epsilon"])
    assert model["rounds_served"] == 6 and model["max_epsilon"] == 10.0
    spend = PrivacyLedger(policy_run["data"] / "site-01" / ".fedmm").spend("e2e-model")
    assert spend is not None and spend.rounds_served == 6
    assert spend.history == history_two
    assert all(len(entry["sha256"]) == 64 for entry in spend.rounds)
    assert spend.epsilon == pytest.approx(second["privacy"]["sites"]["site-01"]["epsilon"])


def test_secure_aggregation_gives_the_plaintext_model_within_the_quantisation_step(
        tmp_path: Path, ray: RayCluster) -> None:
    """Two runs on the same sites, one securely aggregated, one not (both without DP, which
    each run says plainly; DP's seeded noise would be the same in both)."""
    from common.secagg.encoding import RingEncoding

    generate_demo(tmp_path / "data", sites=3, samples_per_site=50, seed=3,
                  scenario=Scenario.MISSING_MODALITY, test_samples=0)
    config_path = write_run_config(tmp_path, rounds=1)
    models, outputs = {}, {}
    for name, flags in (("secure", []), ("plain", ["--no-secure-agg"])):
        code, outputs[name] = run_cli(["simulate", "--data", str(tmp_path / "data"),
                                       "--config", str(config_path), "--no-dp", "--out",
                                       str(tmp_path / name), *flags, *ray.address],
                                      cwd=tmp_path)
        assert code == 0, outputs[name]
        models[name] = load_file(str(tmp_path / name / "model.safetensors"))
    assert "the server sees each site's update" in outputs["plain"]
    [record] = read_jsonl(tmp_path / "secure" / "metrics.jsonl")
    assert record["secure_aggregation"]["survivors"] == 3
    config = load_config(config_path).secure_aggregation
    step = RingEncoding(clip_range=config.clip_range, max_weight=config.max_weight,
                        max_clients=3).tolerance(record["secure_aggregation"]["total_weight"], 3)
    gap = max(float(np.max(np.abs(models["secure"][k] - models["plain"][k])))
              for k in models["plain"])
    assert 0 < gap <= step + 1e-6  # + float32 rounding of the weights
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert plain["secure_aggregation"] is False
    # a non-private run says so, on screen, in its summary and in its report
    summary = json.loads((tmp_path / "secure" / "summary.json").read_text())
    assert summary["dp_enabled"] is False and summary["privacy"]["sites"] == {}
    assert "DP was off" in outputs["secure"] and "DP off" in outputs["secure"]
    assert "DP-SGD: OFF" in (tmp_path / "secure" / "report" / "report.md").read_text()


def test_pretrained_encoders_on_real_pictures_run_offline_and_cache_features_per_site(
        tmp_path: Path, fashion_source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMM_FASHION_MNIST_DIR", str(fashion_source))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched
    config_path = write_run_config(tmp_path, rounds=2)
    code, output = run_cli(["simulate", "--task", "fashion-mnist", "--encoders", "pretrained",
                            "--sites", "2", "--samples-per-site", "30", "--config",
                            str(config_path), "--out", str(tmp_path / "run")], cwd=tmp_path)
    assert code == 0, output
    assert "on frozen pretrained features" in output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert "test_accuracy" in summary["final_metrics"]
    for site in ("site-01", "site-02"):
        caches = sorted(p.name.split("-")[0] for p in
                        (tmp_path / "run" / "data" / site / ".fedmm" / "features").iterdir())
        assert caches == ["image", "text"]
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert weights["encoders.image.project.weight"].shape == (8, 1280)
    assert weights["encoders.text.project.weight"].shape == (8, 384)


def test_default_simulation_beats_chance_and_reports(main_job: MainJob) -> None:
    """The README's main job, as is, with the centralized references beside it (started
    beside the unit tests when they run too: tests/conftest.py)."""
    code, output = main_job.result()
    assert code == 0, output
    out = main_job.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 24 and summary["dp_enabled"]
    assert summary["final_metrics"]["test_accuracy"] > 0.45  # 4 balanced classes: chance 0.25
    assert all(0 < s["epsilon"] <= 8.0 + 1e-6 for s in summary["privacy"]["sites"].values())
    reference = json.loads((out / "centralized.json").read_text())
    plain, dp = reference["non_private"], reference["dp"]
    assert plain["test_accuracy"] > summary["final_metrics"]["test_accuracy"]
    assert plain["test_accuracy"] >= dp["test_accuracy"] > 0.45
    assert 0 < dp["epsilon"] <= 8.0 + 1e-6  # the same ε, all of it on training
    ratios = reference["ratios"]
    assert ratios["federation_under_dp"] == pytest.approx(
        summary["final_metrics"]["test_accuracy"] / dp["test_accuracy"], abs=1e-4)
    assert ratios["privacy"] == pytest.approx(dp["test_accuracy"] / plain["test_accuracy"],
                                              abs=1e-4)
    assert summary["centralized"] == reference  # the summary carries them too
    report = (out / "report" / "report.md").read_text()
    assert "## Centralized references" in report and "cost of privacy" in report
    assert "centralized DP-SGD (ε=" in output and "cost of federation under DP" in output
