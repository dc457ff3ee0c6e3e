"""A server cannot read a patient out of what a site reports about a model.

The attack (found in review): all-zero weights and a large output bias on class k make the
model answer k for every row, so accuracy on a one-patient validation set is 1 exactly when
that patient's label is k. Against fedmm's sites it gets nothing: the validation split is the
site's own (size from its policy, order from its secret), metrics in DP runs travel only
through the policy's Gaussian mechanism (charged to the ledger), and the default policy sends
none. Weakened — a policy that evaluates one patient and sends exact metrics — the same
attack reads the label. The exact training loss is the same channel in a weaker form: DP
rounds do not send it; a non-private round's exact loss gives the count of a label. With several
findings a patient (multi-label), one crafted model per combination of findings makes the same
attack read all of a patient's findings at once from exact metrics, and gets nothing from the
Gaussian release, which stays the same (rows, rows right, clipped loss).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from client.app import make_client_app
from client.ledger import PrivacyLedger
from client.private_evaluation import ValidationSums, gaussian_release
from client.site import resolve_site
from client.validation import site_split
from common import wire
from common.config import RunConfig, apply_overrides
from common.evaluation import evaluate_weights
from common.model_inputs import load_model_inputs
from common.models import build_model
from common.privacy import epsilon_for_history
from common.randomness import RandomStream
from common.serialization import model_weights
from simulations.ecg12 import FINDINGS, generate_ecg12
from simulations.scenarios import Scenario
from simulations.tasks import Task, task_config
from tests.inprocess import InProcessSites

CLASSES = 4
ONE_PATIENT = "validation_fraction = 0.02\nmin_eval_rows = 1\n"  # 60 rows: one in validation


def run_config(*, private: bool, **training) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"embed_dim": 8, "hidden_dim": 16},
        "training": {"batch_size": 64, **training},
        "privacy": {"enabled": private, "noise_multiplier": 1.0},
        "secure_aggregation": {"enabled": False}})


def zeros_and_output_bias(config: RunConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model's weights, all zero, and its output layer's bias (the one bias with a value
    per class or finding: with every other weight zero, the model answers it for every row)."""
    weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
    out = {name: np.zeros_like(value) for name, value in weights.items()}
    outputs = config.data.num_classes
    [bias] = [value for name, value in out.items()
              if name.endswith("bias") and value.shape == (outputs,)]
    return out, bias


def crafted(config: RunConfig, label: int) -> dict[str, np.ndarray]:
    """Zero weights; the output bias one-hot on ``label``."""
    out, bias = zeros_and_output_bias(config)
    bias[label] = 10.0
    return out


def site_with(site_copy: Path, policy: str) -> InProcessSites:
    (site_copy / "policy.toml").write_text(policy, encoding="utf-8")
    return InProcessSites(make_client_app(), [site_copy], run_config(private=True))


def evaluate(sites: InProcessSites, config: RunConfig, weights) -> wire.EvaluationReport | None:
    sites.config = config
    [reply] = sites.exchange(sites.nodes, wire.EVALUATE, weights)
    return reply.read(wire.EvaluationReport) if reply.status == "ok" else reply


def validation_labels(site_copy: Path, config: RunConfig) -> np.ndarray:
    site = resolve_site({"data-dir": str(site_copy)}, None)
    _, validation = site_split(site, config, load_model_inputs(site_copy, config, site.state))
    return validation.labels


def test_the_weakened_site_gives_away_its_one_validation_patients_label(site_copy) -> None:
    policy = ONE_PATIENT + "allow_non_private = true\nrequire_secure_aggregation = false\n"
    sites = site_with(site_copy, policy)
    config = run_config(private=False)
    answers = {k: evaluate(sites, config, crafted(config, k)) for k in range(CLASSES)}
    assert all(a.count == 1 and not a.private for a in answers.values())
    guessed = [k for k, a in answers.items() if a.correct == 1]
    assert guessed == list(validation_labels(site_copy, config))


def test_the_default_policy_sends_nothing_the_attack_can_use(site_copy) -> None:
    sites = site_with(site_copy, "")  # the built-in policy
    private, plain = run_config(private=True), run_config(private=False)
    refused = evaluate(sites, private, crafted(private, 0))
    assert refused.status == "refused" and refused.code == wire.EVALUATION_NOT_PRIVATE
    assert refused.read(wire.EvaluationReport) is None
    refused = evaluate(sites, plain, crafted(plain, 0))
    assert refused.code == wire.NON_PRIVATE_REFUSED
    assert not PrivacyLedger(site_copy / ".fedmm").models()  # nothing released, nothing spent


def test_the_server_cannot_size_the_validation_split(site_copy) -> None:
    sites = site_with(site_copy, "allow_non_private = true\nmin_eval_rows = 1\n")
    config = run_config(private=False)
    payload = json.loads(config.to_json())
    payload["data"]["validation_fraction"] = 0.02  # what the old run config allowed
    sites.config = type("Raw", (), {"to_json": lambda self: json.dumps(payload)})()
    [reply] = sites.exchange(sites.nodes, wire.EVALUATE, crafted(config, 0))
    assert reply.status == "failed" and reply.code == wire.BAD_CONFIG
    assert "validation_fraction" in reply.reason
    honest = evaluate(sites, config, crafted(config, 0))
    assert honest.count == len(validation_labels(site_copy, config)) == 12  # the site's 0.2


def test_a_dp_release_hides_the_one_patient_and_is_charged(site_copy) -> None:
    sites = site_with(site_copy, ONE_PATIENT + "evaluation_noise_multiplier = 10.0\n")
    config = run_config(private=True)
    report = evaluate(sites, config, crafted(config, 0))
    assert report.private and report.noise_multiplier == 10.0
    assert report.count != round(report.count)  # noisy, not the exact 1
    [spend] = PrivacyLedger(site_copy / ".fedmm").models()
    assert spend.history == [[10.0, 1.0, 1]] and spend.evaluations_released == 1
    assert report.epsilon == pytest.approx(epsilon_for_history([[10.0, 1.0, 1]],
                                                               delta=config.privacy.delta))


def released_sums(site_copy: Path, config: RunConfig, guesses: list[dict[str, np.ndarray]]
                  ) -> list[ValidationSums]:
    """The sums a site would release for each crafted model on its one-patient split (the
    site's own code computes them; the noise is added by :func:`guess_rate`)."""
    site = resolve_site({"data-dir": str(site_copy)}, None)
    _, validation = site_split(site, config, load_model_inputs(site_copy, config, site.state))
    sums = []
    for weights in guesses:
        metrics = evaluate_weights(config, weights, validation, loss_bound=5.0)
        sums.append(ValidationSums(float(metrics["num-examples"]), float(metrics["correct"]),
                                   float(metrics["clipped-loss-sum"])))
    return sums


def guess_rate(noise_multiplier: float, sums: list[ValidationSums], truth: int,
               trials: int = 4000) -> float:
    """How often the attacker names the patient's label from one release per guess: the
    guess whose noisy 'correct' is largest, over ``trials`` independent releases."""
    stream = RandomStream.from_seed("attack")
    hits = 0
    for _ in range(trials):
        noisy = [gaussian_release(s, noise_multiplier=noise_multiplier, stream=stream).correct
                 for s in sums]
        hits += int(np.argmax(noisy) == truth)
    return hits / trials


def test_the_gaussian_release_leaves_the_attacker_near_chance(site_copy) -> None:
    (site_copy / "policy.toml").write_text(ONE_PATIENT, encoding="utf-8")
    config = run_config(private=True)
    sums = released_sums(site_copy, config, [crafted(config, k) for k in range(CLASSES)])
    truth = int(validation_labels(site_copy, config)[0])
    # chance is 0.25; the best attacker's rate at z = 10 is 0.265 (∫φ(x)Φ(x + 1/(z√3))³dx: its
    # count noise has sd z·√3): 0.29 is 3.6 sd of 4000 trials above it; at z = 3 it is 0.302
    assert guess_rate(10.0, sums, truth) < 0.29
    assert guess_rate(1e-3, sums, truth) == 1.0  # weakened: no real noise


# -- several findings a patient: the same attack, one crafted model per combination ---------
PATTERNS = list(itertools.product([False, True], repeat=len(FINDINGS)))  # all 8 combinations
# what an evaluation reply may carry: the (exact or released) sums, and for a release its noise
# and accounting; spelled out here so that a new field, per finding or not, fails the tests
EXACT_KEYS = {"count", "correct", "loss_sum", "loss_bound", "private"}
PRIVATE_KEYS = EXACT_KEYS | {"noise_multiplier", "epsilon", "history"}


def findings_config(*, private: bool) -> RunConfig:
    """The read-out's small run on the ``ecg12`` task's data keys (``--task ecg12``)."""
    return RunConfig.model_validate(apply_overrides({
        "model": {"embed_dim": 8, "hidden_dim": 16},
        "training": {"batch_size": 64},
        "privacy": {"enabled": private, "noise_multiplier": 1.0},
        "secure_aggregation": {"enabled": False}}, task_config(Task.ECG12)))


def crafted_findings(config: RunConfig, pattern: tuple[bool, ...]) -> dict[str, np.ndarray]:
    """Zero weights; each finding's output bias +10 where ``pattern`` has it, -10 where not:
    the model predicts exactly ``pattern`` for every patient."""
    out, bias = zeros_and_output_bias(config)
    bias[:] = np.where(pattern, 10.0, -10.0)
    return out


@pytest.fixture
def findings_site(tmp_path: Path) -> Path:
    """A hospital of 60 patients with any of three findings each (``--task ecg12``)."""
    [site] = generate_ecg12(tmp_path / "sites", sites=1, samples_per_site=60, seed=2,
                            scenario=Scenario.IID, test_samples=0)
    return site


def test_the_weakened_site_gives_away_its_one_validation_patients_findings(
        findings_site: Path) -> None:
    """Exact metrics: the one crafted model that scores its patient right names all three of
    the patient's findings at once."""
    policy = ONE_PATIENT + "allow_non_private = true\nrequire_secure_aggregation = false\n"
    sites = site_with(findings_site, policy)
    config = findings_config(private=False)
    answers = {p: evaluate(sites, config, crafted_findings(config, p)) for p in PATTERNS}
    assert all(a.count == 1 and not a.private for a in answers.values())
    [truth] = validation_labels(findings_site, config)
    assert [p for p, a in answers.items() if a.correct == 1] == [tuple(truth > 0.5)]
    assert released(sites, config, crafted_findings(config, PATTERNS[0])) == EXACT_KEYS


def test_a_dp_release_hides_the_one_patients_findings(findings_site: Path) -> None:
    """What a multi-label site releases is the same (rows, rows right, clipped loss) under the
    Gaussian mechanism, no per-finding figure: the attacker is near chance (1 in 8); without
    real noise it is certain."""
    (findings_site / "policy.toml").write_text(ONE_PATIENT, encoding="utf-8")
    config = findings_config(private=True)
    sums = released_sums(findings_site, config,
                         [crafted_findings(config, p) for p in PATTERNS])
    [labels] = validation_labels(findings_site, config)
    truth = PATTERNS.index(tuple(labels > 0.5))
    # chance is 0.125; the best attacker's rate at z = 10 is 0.136 (as above, Φ(·)⁷): 0.16
    # is 4.5 sd of 4000 trials above it; at z = 3 it is 0.163
    assert guess_rate(10.0, sums, truth) < 0.16
    assert guess_rate(1e-3, sums, truth) == 1.0  # weakened: no real noise
    sites = site_with(findings_site, ONE_PATIENT + "evaluation_noise_multiplier = 10.0\n")
    report = evaluate(sites, config, crafted_findings(config, PATTERNS[truth]))
    assert report.private and report.noise_multiplier == 10.0
    assert report.count != round(report.count)  # noisy, not the exact 1
    [spend] = PrivacyLedger(findings_site / ".fedmm").models()
    assert spend.history == [[10.0, 1.0, 1]] and spend.evaluations_released == 1
    # what left the site: the release and its accounting, nothing per finding
    assert released(sites, config, crafted_findings(config, PATTERNS[0])) == PRIVATE_KEYS


def released(sites: InProcessSites, config: RunConfig, weights) -> set[str]:
    """Every key of the evaluation record a site's reply carried."""
    sites.config = config
    [reply] = sites.exchange(sites.nodes, wire.EVALUATE, weights)
    assert reply.status == "ok", reply.reason
    assert set(reply.content.keys()) == {"status", wire.EvaluationReport.RECORD}
    return set(reply.content[wire.EvaluationReport.RECORD].keys())


def train_report(sites: InProcessSites, config: RunConfig, weights) -> wire.TrainReport:
    sites.config = config
    [reply] = sites.exchange(sites.nodes, wire.TRAIN, weights)
    assert reply.status == "ok", reply.reason
    report = reply.read(wire.TrainReport)
    assert report is not None
    return report


def test_dp_rounds_do_not_send_the_exact_training_loss(site_copy) -> None:
    sites = site_with(site_copy, "require_secure_aggregation = false\n")
    config = run_config(private=True)
    assert train_report(sites, config, crafted(config, 0)).train_loss is None


def test_a_non_private_rounds_exact_loss_counts_a_label(site_copy) -> None:
    sites = site_with(site_copy, "allow_non_private = true\nrequire_secure_aggregation = "
                                 "false\n")
    config = run_config(private=False, non_private_learning_rate=1e-9)
    site = resolve_site({"data-dir": str(site_copy)}, None)
    train, _ = site_split(site, config, load_model_inputs(site_copy, config, site.state))
    loss = train_report(sites, config, crafted(config, 2)).train_loss
    assert loss is not None
    right = np.log1p(3 * np.exp(-10.0))  # the loss of a row labelled 2
    count = round(len(train) * (1 - (loss - right) / 10.0))
    assert count == int(np.sum(train.labels == 2))


def poisoned(config: RunConfig, token: int) -> dict[str, np.ndarray]:
    """Finite weights that make every row containing ``token`` score NaN (its embedding
    overflows), so that a NaN could answer 'is a row with this token here?'."""
    weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
    [name] = [n for n in weights if n.endswith("text.embedding.weight")]
    weights[name] = weights[name].copy()
    weights[name][token] = 3e38
    return weights


def tokens_in_exactly_one_row(rows) -> list[int]:
    counts = {int(k): int(sum((row == k).any() for row in rows.tokens))
              for k in np.unique(rows.tokens) if k}
    return [k for k, c in counts.items() if c == 1]


def test_a_row_that_scores_nan_moves_the_release_by_a_bounded_amount(site_copy) -> None:
    import torch

    (site_copy / "policy.toml").write_text("evaluation_noise_multiplier = 10.0\n"
                                           "min_eval_rows = 10\n")
    config = run_config(private=True)
    site = resolve_site({"data-dir": str(site_copy)}, None)
    _, validation = site_split(site, config, load_model_inputs(site_copy, config, site.state))
    token = tokens_in_exactly_one_row(validation)[0]
    metrics = evaluate_weights(config, poisoned(config, token), validation, loss_bound=5.0)
    assert np.isfinite(metrics["clipped-loss-sum"])
    assert metrics["clipped-loss-sum"] <= 5.0 * len(validation)
    sites = site_with(site_copy, "evaluation_noise_multiplier = 10.0\nmin_eval_rows = 10\n")
    assert np.isfinite(evaluate(sites, config, poisoned(config, token)).loss_sum)
    # weakened: clipping the loss alone lets the NaN through
    model = build_model(data=config.data, model=config.model)
    from common.evaluation import dataset_of
    from common.serialization import load_weights

    load_weights(model, poisoned(config, token))
    *inputs, labels = dataset_of(validation).batch(range(len(validation)))
    with torch.no_grad():
        naive = torch.nn.functional.cross_entropy(model.eval()(*inputs), labels,
                                                  reduction="none").clamp(max=5.0).sum()
    assert torch.isnan(naive)


@pytest.mark.parametrize("sanitising_off", [False, True])  # True: the weakened site
def test_a_row_with_a_nan_gradient_does_not_show_in_the_reply(site_copy, monkeypatch,
                                                              sanitising_off) -> None:
    if sanitising_off:  # the sanitising of per-sample gradients switched off
        import client.training

        monkeypatch.setattr(client.training, "_drop_non_finite_samples", lambda optimizer: None)
    sites = site_with(site_copy, "require_secure_aggregation = false\n")
    config = run_config(private=True, batch_size=1000)  # every row in every batch
    site = resolve_site({"data-dir": str(site_copy)}, None)
    train, _ = site_split(site, config, load_model_inputs(site_copy, config, site.state))
    token = tokens_in_exactly_one_row(train)[0]
    sites.config = config
    [reply] = sites.exchange(sites.nodes, wire.TRAIN, poisoned(config, token))
    if sanitising_off:
        assert reply.status == "failed" and reply.code == wire.DIVERGED  # the patient shows
    else:
        assert reply.status == "ok" and reply.update is not None
        assert all(np.all(np.isfinite(v)) for v in reply.update.values())
