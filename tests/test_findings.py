"""Multi-label findings: the label cell, the config, the loss under DP-SGD, the metrics, and a
round of two hospitals with several findings per patient (real Opacus, real secure
aggregation), evaluated on a held-out test folder with per-finding figures."""

from __future__ import annotations

import math
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from common.config import DataConfig, RunConfig
from common.evaluation import auroc, finding_metrics, held_out_figures
from common.findings import LabelError, label_counts, parse_label
from common.models.losses import MultiLabelLoss, row_losses, training_loss

FINDINGS = ("effusion", "edema", "cardiomegaly", "atelectasis")
MULTILABEL = DataConfig(labels="multilabel", label_names=FINDINGS)


def as_findings(site: Path) -> Path:
    """A demo site whose class c becomes finding c, and odd classes also finding c + 1: rows
    with one finding, rows with two, written as indices and as names."""
    manifest = site / "manifest.csv"
    header, *rows = manifest.read_text().splitlines()
    lines = [header]
    for n, row in enumerate(rows):
        sample, label, rest = row.split(",", 2)
        found = [int(label)] + ([(int(label) + 1) % 4] if int(label) % 2 else [])
        cells = [FINDINGS[k] if n % 3 == 0 else str(k) for k in found]
        lines.append(f"{sample},{';'.join(cells)},{rest}")
    manifest.write_text("\n".join(lines) + "\n")
    return site


def test_a_label_cell_holds_findings_by_index_or_name() -> None:
    assert parse_label("0;Edema", MULTILABEL).tolist() == [1, 1, 0, 0]
    assert parse_label(" cardiomegaly ", MULTILABEL).tolist() == [0, 0, 1, 0]
    assert parse_label("", MULTILABEL).tolist() == [0, 0, 0, 0]  # no finding
    assert parse_label("3;3", MULTILABEL).tolist() == [0, 0, 0, 1]
    with pytest.raises(LabelError, match=r"finding 'pneumonia' is neither an integer nor "
                                         r"a name.*known names: effusion, edema"):
        parse_label("0;pneumonia", MULTILABEL)
    with pytest.raises(LabelError, match=r"finding 4 outside 0\.\.3"):
        parse_label("4", MULTILABEL)
    assert parse_label("2", DataConfig()) == 2
    assert parse_label("edema", DataConfig(label_names=FINDINGS)) == 1
    with pytest.raises(LabelError, match=r"several classes; set data\.labels"):
        parse_label("1;2", DataConfig())
    counts = label_counts(np.stack([parse_label(c, MULTILABEL) for c in ("0;1", "1", "")]))
    assert counts == {0: 1, 1: 2, 2: 0, 3: 0}
    assert label_counts(np.array([2, 0, 2])) == {0: 1, 2: 2}


@pytest.mark.parametrize(("fields", "message"), [
    ({"labels": "binary", "num_classes": 3}, "binary\" needs num_classes = 2"),
    ({"label_names": ("a", "b")}, "label_names names 2 labels; num_classes is 4"),
    ({"label_names": ("a", "B", "b", "c")}, "names a label twice"),
    ({"label_names": ("a", "b", "c", "7")}, "'7' is empty, a number"),
    ({"label_names": ("a", "b", "c", "+1")}, "'\\+1' is empty, a number"),
    ({"label_names": ("a", "b", "c", "1_0")}, "'1_0' is empty, a number"),
    ({"label_names": ("a", "b", "c;d", "e")}, "holds ';' or ','"),
])
def test_the_config_refuses_labels_it_could_not_read(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DataConfig(**fields)


def test_a_multilabel_site_loads_counts_findings_and_reports_bad_cells(
        site_copy: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from common.sitedata import load_site
    from fedmm.cli import app

    site = as_findings(site_copy)
    manifest = site / "manifest.csv"
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].split(",", 2)[0] + ",pneumonia," + lines[1].split(",", 2)[2]
    manifest.write_text("\n".join(lines) + "\n")
    data = load_site(site, MULTILABEL)
    assert data.labels.shape == (59, 4) and data.labels.dtype == np.float32
    assert set(np.unique(data.labels)) == {0.0, 1.0} and (data.labels.sum(axis=1) >= 1).all()
    [issue] = data.issues
    assert issue.column == "label" and issue.line == 2 and "'pneumonia'" in issue.reason
    assert data.label_counts() == {k: int(data.labels[:, k].sum()) for k in range(4)}
    config = tmp_path / "run.toml"
    config.write_text('[data]\nlabels = "multilabel"\n'
                      'label_names = ["effusion", "edema", "cardiomegaly", "atelectasis"]\n')
    shown = CliRunner().invoke(app, ["validate-data", str(site), "--config", str(config)])
    counts = data.label_counts()
    assert (f"findings (rows with each): 0 (effusion): {counts[0]}, 1 (edema): {counts[1]}, "
            f"2 (cardiomegaly): {counts[2]}" in shown.output), shown.output
    assert "line 2" in shown.output and "pneumonia" in shown.output


def test_the_loss_is_one_number_per_row_the_mean_over_its_findings() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def bce(z: float, y: float) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = [np.mean([bce(z, y) for z, y in zip(row_z, row_y, strict=True)])
                for row_z, row_y in zip(logits.tolist(), targets.tolist(), strict=True)]
    config = DataConfig(labels="multilabel", num_classes=3)
    assert row_losses(logits, targets, config).tolist() == pytest.approx(expected)
    assert float(MultiLabelLoss()(logits, targets)) == pytest.approx(np.mean(expected))
    assert float(MultiLabelLoss(reduction="sum")(logits, targets)) == pytest.approx(
        sum(expected))
    assert isinstance(training_loss(DataConfig()), torch.nn.CrossEntropyLoss)


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ghost"])
def test_each_patients_gradient_is_still_clipped_to_c_under_every_mode(
        mode: str, demo_root: Path, tmp_path: Path) -> None:
    """DP-SGD's gradient with the multi-label loss, in each Opacus mode, is the mean of the
    per-patient gradients each clipped to C, computed one patient at a time: at C and at
    C/100 (every patient clipped) the sensitivity is what it is for one class a patient."""
    from client.grad_sample import private_gradient, reference_gradient, relative_error
    from common.evaluation import dataset_of
    from common.models import build_model
    from common.sitedata import load_site

    shutil.copytree(demo_root / "site-01", tmp_path / "site")
    config = RunConfig.model_validate({"data": MULTILABEL.model_dump(),
                                       "model": {"embed_dim": 8, "hidden_dim": 16}})
    data = load_site(as_findings(tmp_path / "site"), config.data).subset(np.arange(12))
    batch = dataset_of(data).batch(range(len(data)))
    loss = partial(training_loss, config.data)

    def build() -> torch.nn.Module:
        return build_model(data=config.data, model=config.model, seed=3).train()

    for clip in (1.0, 0.01):
        expected = reference_gradient(build(), batch, clip, loss=loss)
        assert relative_error(private_gradient(build, mode, batch, clip, loss=loss),
                              expected) < 1e-3
        # teeth: the step wired to the multi-class loss (what training used before the findings
        # loss existed) is caught by the same comparison
        assert relative_error(private_gradient(build, mode, batch, clip),
                              expected) > 1e-3


def test_per_finding_auroc_and_f1_and_their_macro_means() -> None:
    scores = np.array([[0.9, 0.2, 0.6], [0.8, 0.7, 0.4], [0.3, 0.1, 0.2], [0.1, 0.6, 0.1]])
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=np.float32)
    figures = finding_metrics(scores, targets)
    assert figures["auroc-by-finding"][:2] == [1.0, 1.0]
    assert math.isnan(figures["auroc-by-finding"][2])  # no positive row: not defined
    assert figures["macro-auroc"] == 1.0  # over the findings where it is defined
    # finding 2: no positive row, one positive prediction: F1 0; findings 0 and 1: perfect
    assert figures["f1-by-finding"] == [1.0, 1.0, 0.0]
    assert figures["macro-f1"] == pytest.approx(2 / 3)
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    shown = held_out_figures({"loss": math.inf, "accuracy": 0.25, **figures})
    assert shown["test_auroc_by_finding"][2] is None and shown["test_macro_f1"] == figures[
        "macro-f1"]
    assert shown["test_loss"] is None  # a diverged model's loss: not Infinity in the JSON
    # a row the model cannot score counts at 0 on every finding, not as NaN
    scores[0, 0] = np.nan
    worse = finding_metrics(scores, targets, finite=np.isfinite(scores).all(axis=1))
    assert worse["auroc-by-finding"][0] == 0.5 and worse["f1-by-finding"][0] == pytest.approx(
        2 / 3)


def test_two_hospitals_train_a_private_securely_aggregated_multilabel_round(
        demo_root: Path, tmp_path: Path) -> None:
    """Two hospitals with several findings a patient: one round of real DP-SGD (Opacus) at
    both through the real ClientApp, masked and summed by secure aggregation (X25519, AES-GCM,
    Shamir); the server evaluates the new model on its held-out folder with per-finding and
    macro figures, and the report shows them by name."""
    from client.ledger import PrivacyLedger
    from common.evaluation import evaluate_weights
    from common.sitedata import load_site
    from server.callbacks import build_summary
    from server.report import write_report
    from server.run_folder import RoundRecord, RunFolder
    from tests.inprocess import one_secure_round

    sites = []
    for name in ("site-01", "site-02"):
        shutil.copytree(demo_root / name, tmp_path / name)
        sites.append(as_findings(tmp_path / name))
    shutil.copytree(demo_root / "test", tmp_path / "test")
    config = RunConfig.model_validate({
        "model_id": "findings", "data": MULTILABEL.model_dump(),
        "model": {"embed_dim": 8, "hidden_dim": 16},
        "training": {"rounds": 1, "local_epochs": 1, "batch_size": 16},
        "privacy": {"noise_multiplier": 1.0}})
    weights, outcome = one_secure_round(sites, config)
    assert outcome.mean is not None and outcome.details["survivors"] == 2, outcome
    assert all(np.isfinite(v).all() for v in outcome.mean.values())
    for site in sites:
        spend = PrivacyLedger(site / ".fedmm").spend("findings")
        assert spend is not None and spend.rounds_served == 1 and spend.epsilon > 0
    released = {k: weights[k] + outcome.mean[k] for k in weights}
    test = load_site(as_findings(tmp_path / "test"), config.data)
    figures = held_out_figures(evaluate_weights(config, released, test))
    assert len(figures["test_auroc_by_finding"]) == 4
    assert all(0.0 <= a <= 1.0 for a in figures["test_auroc_by_finding"])
    assert 0.0 <= figures["test_macro_auroc"] <= 1.0 and 0.0 <= figures["test_macro_f1"] <= 1.0
    record = RoundRecord(round=1, sites_ok=2, aggregated=True, **figures)
    folder = RunFolder(tmp_path / "run")

    class State:  # what build_summary reads of a run's state
        def __init__(self) -> None:
            self.round, self.stop_reason, self.rounds = 1, None, [record]
            self.config, self.folder, self.weights = config, folder, released

        def sites_json(self) -> dict:
            return {}

    summary = build_summary(State())  # type: ignore[arg-type]
    assert summary["labels"] == "multilabel" and summary["label_names"] == list(FINDINGS)
    assert summary["final_metrics"]["test_macro_auroc"] == figures["test_macro_auroc"]
    write_report(folder, [record], summary)
    report = folder.report.read_text()
    assert "test macro AUROC | test macro F1" in report
    assert "## Findings (held-out test, round 1)" in report
    assert f"| 1 (edema) | {figures['test_auroc_by_finding'][1]:.4f} |" in report


def test_a_binary_run_reports_the_held_out_auroc(site_copy: Path) -> None:
    from common.evaluation import evaluate_weights
    from common.models import build_model
    from common.serialization import model_weights
    from common.sitedata import load_site

    manifest = site_copy / "manifest.csv"
    header, *rows = manifest.read_text().splitlines()
    rows = [f"{r.split(',', 2)[0]},{int(r.split(',', 2)[1]) % 2},{r.split(',', 2)[2]}"
            for r in rows]
    manifest.write_text("\n".join([header, *rows]) + "\n")
    config = RunConfig.model_validate({"data": {"labels": "binary", "num_classes": 2},
                                       "model": {"embed_dim": 8, "hidden_dim": 16}})
    data = load_site(site_copy, config.data)
    weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
    figures = held_out_figures(evaluate_weights(config, weights, data))
    assert 0.0 <= figures["test_auroc"] <= 1.0 and "test_macro_auroc" not in figures
