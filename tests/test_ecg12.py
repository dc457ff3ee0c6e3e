"""The ``ecg12`` demo task: several findings a patient, a 12-lead ECG, and each modality
carrying its own part of the evidence."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from common.config import RunConfig, apply_overrides
from common.evaluation import auroc
from simulations.demo_data import _lung_image
from simulations.ecg12 import ANTERIOR, CONFIG, FINDINGS, LEADS, RATE, ecg12, generate_ecg12
from simulations.scenarios import Scenario


def _digest(folder: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        hasher.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return hasher.hexdigest()


def test_the_task_writes_multilabel_12_lead_sites_that_load_with_its_keys(tmp_path: Path
                                                                          ) -> None:
    from typer.testing import CliRunner

    from common.sitedata import load_site
    from fedmm.cli import app

    generate_ecg12(tmp_path / "a", sites=2, samples_per_site=30, seed=3,
                   scenario=Scenario.MISSING_MODALITY, test_samples=20)
    generate_ecg12(tmp_path / "b", sites=2, samples_per_site=30, seed=3,
                   scenario=Scenario.MISSING_MODALITY, test_samples=20)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")  # same seed, same bytes
    config = RunConfig.model_validate(apply_overrides({}, CONFIG))
    data = load_site(tmp_path / "a" / "site-01", config.data)
    assert not data.issues and len(data) == 30
    assert data.labels.shape == (30, 3) and data.signals.shape == (30, 12, 1000)
    assert data.masks.sum() < 90  # modalities missing at some patients
    assert 0 < data.labels.sum() < 90  # some findings, not all
    written = CliRunner().invoke(app, ["demo-data", str(tmp_path / "c"), "--task", "ecg12",
                                       "--sites", "1", "--samples-per-site", "12",
                                       "--test-samples", "0"])
    assert written.exit_code == 0, written.output
    shown = CliRunner().invoke(app, ["validate-data", str(tmp_path / "c" / "site-01"),
                                     "--config", str(tmp_path / "c" / "run.toml")])
    assert "12 rows, 12 usable, 0 bad" in shown.output, shown.output
    assert "findings (rows with each): 0 (pneumonia)" in shown.output


def test_each_modality_shows_its_own_findings_and_not_the_others() -> None:
    """Simple read-outs of 300 patients: the anterior leads' level shows an infarction (and
    not fibrillation), 5-8 Hz power shows fibrillation, how uneven the lung fields are shows
    pneumonia (and not fibrillation): only a model that fuses them sees every finding."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:32, 0:32] / 31
    lung_fields = (((x - 0.3) / 0.17) ** 2 + ((y - 0.5) / 0.32) ** 2 <= 1) | (
        ((x - 0.7) / 0.17) ** 2 + ((y - 0.5) / 0.32) ** 2 <= 1)
    findings = rng.random((300, 3)) < 0.5
    st, fibrillatory, lungs = [], [], []
    frequencies = np.fft.rfftfreq(int(RATE * 10), 1 / RATE)
    band = (frequencies >= 5) & (frequencies <= 8)
    for pneumonia, fibrillation, infarction in findings:
        leads = ecg12(rng, fibrillation=bool(fibrillation), infarction=bool(infarction))
        st.append(float(np.median(leads[list(ANTERIOR)]) - np.median(leads[10:])))
        fibrillatory.append(float((np.abs(np.fft.rfft(leads[1])) ** 2)[band].sum()))
        lungs.append(float(_lung_image(rng, bool(pneumonia))[lung_fields].std()))
    st_level, f_power, brightness = np.array(st), np.array(fibrillatory), np.array(lungs)
    assert auroc(st_level, findings[:, 2].astype(int)) > 0.85
    assert abs(auroc(st_level, findings[:, 1].astype(int)) - 0.5) < 0.12
    assert auroc(f_power, findings[:, 1].astype(int)) > 0.85
    assert abs(auroc(f_power, findings[:, 0].astype(int)) - 0.5) < 0.12
    assert auroc(brightness, findings[:, 0].astype(int)) > 0.85
    assert abs(auroc(brightness, findings[:, 1].astype(int)) - 0.5) < 0.12
    assert len(LEADS) == 12 and len(FINDINGS) == 3
