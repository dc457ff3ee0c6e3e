"""Synthetic demo hospitals with a 12-lead ECG and several findings a patient (``--task ecg12``).

Each patient has any of three findings, drawn independently (a patient may have none, one, two
or all three; under label skew the sites differ in how often each combination occurs):

    0 pneumonia   1 atrial fibrillation   2 anterior myocardial infarction

Each modality carries part of the evidence, so the fused model needs all three:

- **image** (the demo's chest film, :mod:`simulations.demo_data`): a bright opacity in a lung
  with pneumonia. Nothing of the heart.
- **signal** (12-lead ECG, 10 s at 100 Hz, ``.npy`` 12 × 1000 in the manifest's ``signal``
  column, leads I, II, III, aVR, aVL, aVF, V1-V6 in that order): one heart's beats seen from
  twelve directions (each lead its own gain); atrial fibrillation makes the rhythm irregular
  with a fibrillatory baseline in every lead; an anterior infarction raises the ST segment in
  V1-V4 only, so only a model that tells the leads apart sees it. Nothing of the lungs.
- **text** (templated note): cough and fever with pneumonia, palpitations with atrial
  fibrillation, chest pain and sweating with an infarction, each only sometimes; distractors.

The run config the data needs is :data:`CONFIG` (``simulate --task ecg12`` sets it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.sitedata import write_manifest
from simulations.demo_data import DEMO_POLICY, _lung_image, _write_png
from simulations.scenarios import Scenario, site_plan

FINDINGS = ("pneumonia", "atrial fibrillation", "anterior infarction")
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
ANTERIOR = (6, 7, 8, 9)  # V1-V4: where an anterior infarction shows
RATE = 100
SECONDS = 10.0
# each lead's view of the heart's depolarisation (QRS) and repolarisation (T) amplitudes
LEAD_GAINS = np.array([0.8, 1.2, 0.5, -1.0, 0.4, 0.9, -0.6, 0.3, 1.0, 1.4, 1.2, 1.0])

CONFIG: dict[str, object] = {
    "data.labels": "multilabel",
    "data.num_classes": len(FINDINGS),
    "data.label_names": list(FINDINGS),
    "data.signal_channels": len(LEADS),
    "data.signal_leads": list(LEADS),
    "data.signal_sample_rate": RATE,
    "data.signal_length": int(RATE * SECONDS),
}

_WORDS = (("cough", "fever", "crackles", "sputum"),
          ("palpitations", "irregular pulse", "dizziness"),
          ("chest pain", "sweating", "pain radiating to the left arm", "nausea"))
_NEUTRAL = ("headache", "back pain", "rash", "insomnia", "sore throat", "fatigue")


def findings_of(pattern: int) -> tuple[bool, ...]:
    """A combination number 0..7 as its three findings (bit k: finding k)."""
    return tuple(bool(pattern >> k & 1) for k in range(len(FINDINGS)))


def ecg12(rng: np.random.Generator, *, fibrillation: bool, infarction: bool) -> np.ndarray:
    """Twelve leads × ``RATE·SECONDS`` samples (float32, mV-like)."""
    count = int(RATE * SECONDS)
    t = np.arange(count) / RATE
    period = rng.uniform(0.65, 1.0)
    beats, time = [], rng.uniform(0, period)
    while time < SECONDS:
        beats.append(time)
        time += period * (rng.uniform(0.55, 1.45) if fibrillation else rng.uniform(0.96, 1.04))
    qrs, st, wave_t = (np.zeros(count) for _ in range(3))
    for beat in beats:
        qrs += np.exp(-((t - beat) ** 2) / (2 * 0.015**2))
        st += (t > beat + 0.04) & (t < beat + 0.2)  # the ST segment
        wave_t += 0.25 * np.exp(-((t - beat - 0.3) ** 2) / (2 * 0.05**2))
    leads = np.outer(LEAD_GAINS, qrs + wave_t)
    if fibrillation:  # fibrillatory waves instead of a calm baseline, in every lead
        f_waves = rng.uniform(0.08, 0.2) * np.sin(2 * np.pi * rng.uniform(5, 8) * t
                                                    + rng.uniform(0, 6.3))
        leads += np.outer(np.abs(LEAD_GAINS), f_waves)
    if infarction:
        elevation = rng.uniform(0.15, 0.35)
        leads[list(ANTERIOR)] += elevation * st
    leads += 0.1 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4, size=(12, 1)) * t)  # wander
    leads += 0.08 * rng.standard_normal(leads.shape)
    return leads.astype(np.float32)


def note(rng: np.random.Generator, findings: tuple[bool, ...]) -> str:
    words = [word for present, group in zip(findings, _WORDS, strict=True) for word in group
             if rng.random() < (0.35 if present else 0.08)]
    words += [word for word in _NEUTRAL if rng.random() < 0.2]
    words = [str(words[i]) for i in rng.permutation(len(words))] or [str(rng.choice(_NEUTRAL))]
    age, sex = int(rng.integers(30, 95)), ("male" if rng.random() < 0.5 else "female")
    return f"{age} year old {sex}. Presents with {', '.join(words)}."


def write_ecg12_site(site_dir: Path, *, patterns: list[int], missing: dict[str, float],
                     rng: np.random.Generator, prefix: str) -> None:
    """One hospital folder: ``manifest.csv`` (findings by name), ``images/``, ``ecg/``."""
    (site_dir / "images").mkdir(parents=True, exist_ok=True)
    (site_dir / "ecg").mkdir(exist_ok=True)
    rows = []
    for index, pattern in enumerate(patterns):
        pneumonia, fibrillation, infarction = findings = findings_of(pattern)
        sample_id = f"{prefix}-{index:05d}"
        drop = {m: rng.random() < p for m, p in missing.items()}
        if all(drop.get(m, False) for m in ("image", "text", "audio")):
            drop[("image", "text", "audio")[rng.integers(3)]] = False
        row = {"sample_id": sample_id,
               "label": ";".join(name for name, on in zip(FINDINGS, findings, strict=True)
                                 if on)}
        image = _lung_image(rng, pneumonia)
        text = note(rng, findings)
        signal = ecg12(rng, fibrillation=fibrillation, infarction=infarction)
        if not drop.get("image", False):
            _write_png(site_dir / "images" / f"{sample_id}.png", image)
            row["image"] = f"images/{sample_id}.png"
        if not drop.get("text", False):
            row["text"] = text
        if not drop.get("audio", False):
            np.save(site_dir / "ecg" / f"{sample_id}.npy", signal)
            row["audio"] = f"ecg/{sample_id}.npy"
        rows.append(row)
    write_manifest(site_dir / "manifest.csv", rows)


def generate_ecg12(out_dir: Path, *, sites: int, samples_per_site: int, seed: int,
                   scenario: Scenario, test_samples: int = 400) -> list[Path]:
    """``sites`` hospital folders ``site-01 ...`` and a held-out ``test`` folder; the same
    seed writes the same bytes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    combinations = 2 ** len(FINDINGS)
    plan = site_plan(scenario, sites=sites, samples_per_site=samples_per_site,
                     classes=combinations, rng=rng)
    site_dirs = []
    for index, site in enumerate(plan, start=1):
        site_dir = out_dir / f"site-{index:02d}"
        write_ecg12_site(site_dir, patterns=site.labels, missing=site.missing, rng=rng,
                         prefix=f"s{index:02d}")
        (site_dir / "policy.toml").write_text(DEMO_POLICY, encoding="utf-8")
        site_dirs.append(site_dir)
    if test_samples:
        write_ecg12_site(out_dir / "test", missing={}, rng=rng, prefix="test",
                         patterns=[int(x) for x in rng.integers(0, combinations,
                                                                size=test_samples)])
    return site_dirs
