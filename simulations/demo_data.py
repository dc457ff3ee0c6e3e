"""Synthetic demo hospitals: a cardiopulmonary triage task that is genuinely multimodal.

Each patient has two hidden findings: lung opacity (``A``) and an irregular heart rhythm (``B``).
The label is one of four classes, ``2·B + A``::

    0 no finding   1 pneumonia (A)   2 arrhythmia (B)   3 pneumonia + arrhythmia

Each modality carries only part of the evidence, so a fused model beats any single modality:

- **image** (chest-film-like 32×32 PNG): two dark lung fields, rib shadows, noise; opacity adds a
  bright blob of varying (sometimes faint) contrast inside a lung. Says much about A, nothing of B.
- **audio** (ECG-like 16-bit WAV, 5 s at 200 Hz): QRS spikes at regular intervals, or at
  irregular intervals with ectopic wide beats and a fibrillatory
  baseline of varying (sometimes faint) amplitude when B; baseline wander and noise. Says much about
  B, nothing of A.
- **text** (templated clinical note with noise): symptom words correlated with A (cough, fever,
  crackles) and with B (palpitations, dizziness), each present only with some probability, plus
  distractors. Weak evidence of both.

Sites follow a scenario (:mod:`simulations.scenarios`): iid, Dirichlet label skew, quantity skew,
or missing modalities. Everything is drawn from ``numpy.random.default_rng(seed)``: same seed,
same bytes.
"""

from __future__ import annotations

import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.sitedata import write_manifest
from simulations.scenarios import Scenario, site_plan

CLASS_NAMES = ("no finding", "pneumonia", "arrhythmia", "pneumonia + arrhythmia")
IMAGE_SIZE = 32
SIGNAL_RATE = 200
SIGNAL_SECONDS = 5.0

_A_WORDS = ("cough", "fever", "crackles", "sputum", "dyspnea")
_B_WORDS = ("palpitations", "dizziness", "syncope", "irregular pulse", "fatigue")
_NEUTRAL = ("headache", "back pain", "nausea", "rash", "insomnia", "sore throat", "fatigue")
_OPENERS = (
    "Patient presents with",
    "Pt reports",
    "Seen in clinic for",
    "Admitted with",
    "Referred because of",
)
_CLOSERS = (
    "Vitals stable.",
    "No known allergies.",
    "Follow up in two weeks.",
    "History of hypertension.",
    "Non smoker.",
    "Lives alone.",
)


@dataclass(frozen=True)
class DemoSample:
    label: int
    image: np.ndarray  # uint8 H×W
    text: str
    signal: np.ndarray  # int16


def _lung_image(rng: np.random.Generator, opacity: bool) -> np.ndarray:
    size = IMAGE_SIZE
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    body = 0.55 + 0.05 * rng.standard_normal()
    image = np.full((size, size), body)
    centres = ((0.3, 0.5), (0.7, 0.5))
    lungs = np.zeros_like(image, dtype=bool)
    for cx, cy in centres:
        lung = ((x - cx) / 0.17) ** 2 + ((y - cy) / 0.32) ** 2 <= 1.0
        lungs |= lung
    image[lungs] = 0.25 + 0.05 * rng.standard_normal()
    ribs = (np.sin(y * np.pi * 9 + rng.uniform(0, np.pi)) > 0.85) & lungs
    image[ribs] += 0.12
    if opacity:
        cx, cy = centres[rng.integers(2)]
        bx = cx + rng.uniform(-0.08, 0.08)
        by = cy + rng.uniform(-0.2, 0.2)
        radius = rng.uniform(0.06, 0.14)
        contrast = rng.uniform(0.15, 0.6)
        image += contrast * np.exp(-(((x - bx) ** 2 + (y - by) ** 2) / (2 * radius**2)))
    image += 0.08 * rng.standard_normal(image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _ecg_signal(rng: np.random.Generator, irregular: bool) -> np.ndarray:
    count = int(SIGNAL_RATE * SIGNAL_SECONDS)
    t = np.arange(count) / SIGNAL_RATE
    heart_period = rng.uniform(0.65, 1.0)
    beats, time = [], rng.uniform(0, heart_period)
    while time < SIGNAL_SECONDS:
        wide = bool(irregular and rng.random() < 0.2)
        beats.append((time, wide))
        jitter = rng.uniform(0.55, 1.45) if irregular else rng.uniform(0.96, 1.04)
        time += heart_period * jitter
    signal = 0.15 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, np.pi))
    for beat, wide in beats:
        width = 0.035 if wide else 0.012
        signal += (0.7 if wide else 1.0) * np.exp(-((t - beat) ** 2) / (2 * width**2))
        signal += 0.15 * np.exp(-((t - beat - 0.25) ** 2) / (2 * 0.04**2))  # T wave
    if irregular:  # fibrillatory baseline: small fast waves instead of a calm baseline
        amplitude = rng.uniform(0.15, 0.4)
        signal += amplitude * np.sin(2 * np.pi * rng.uniform(5.0, 8.0) * t + rng.uniform(0, 6.3))
    signal += 0.2 * rng.standard_normal(count)
    return (np.clip(signal / 2.0, -1, 1) * 32000).astype(np.int16)


def _note(rng: np.random.Generator, a: bool, b: bool) -> str:
    words = []
    for word in _A_WORDS:
        if rng.random() < (0.35 if a else 0.1):
            words.append(word)
    for word in _B_WORDS:
        if rng.random() < (0.35 if b else 0.1):
            words.append(word)
    for word in _NEUTRAL:
        if rng.random() < 0.2:
            words.append(word)
    if not words:
        words.append(str(rng.choice(_NEUTRAL)))
    order = rng.permutation(len(words))
    symptoms = ", ".join(words[i] for i in order)
    age = int(rng.integers(18, 95))
    sex = "male" if rng.random() < 0.5 else "female"
    opener = _OPENERS[rng.integers(len(_OPENERS))]
    closer = _CLOSERS[rng.integers(len(_CLOSERS))]
    return f"{age} year old {sex}. {opener} {symptoms}. {closer}"


def make_sample(rng: np.random.Generator, label: int) -> DemoSample:
    a, b = bool(label & 1), bool(label & 2)
    return DemoSample(label, _lung_image(rng, a), _note(rng, a, b), _ecg_signal(rng, b))


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels, mode="L").save(path, format="PNG")


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SIGNAL_RATE)
        handle.writeframes(samples.astype("<i2").tobytes())


# Draws the image of a patient with this label: (label, rng) -> uint8 H×W. ``None`` draws the
# synthetic chest film; :mod:`simulations.fashion_mnist` supplies real pictures instead.
PictureSource = Callable[[int, np.random.Generator], np.ndarray]


def write_site(
    site_dir: Path,
    *,
    labels: list[int],
    missing: dict[str, float],
    rng: np.random.Generator,
    prefix: str,
    pictures: PictureSource | None = None,
) -> None:
    """Write one hospital folder: ``manifest.csv``, ``images/``, ``signals/``, ``policy.toml``."""
    (site_dir / "images").mkdir(parents=True, exist_ok=True)
    (site_dir / "signals").mkdir(exist_ok=True)
    rows = []
    for index, label in enumerate(labels):
        sample = make_sample(rng, label)
        sample_id = f"{prefix}-{index:05d}"
        drop = {m: rng.random() < p for m, p in missing.items()}
        if all(drop.get(m, False) for m in ("image", "text", "audio")):
            drop[("image", "text", "audio")[rng.integers(3)]] = False
        row = {"sample_id": sample_id, "label": str(label)}
        if not drop.get("image", False):
            image = sample.image if pictures is None else pictures(label, rng)
            _write_png(site_dir / "images" / f"{sample_id}.png", image)
            row["image"] = f"images/{sample_id}.png"
        if not drop.get("text", False):
            row["text"] = sample.text
        if not drop.get("audio", False):
            _write_wav(site_dir / "signals" / f"{sample_id}.wav", sample.signal)
            row["audio"] = f"signals/{sample_id}.wav"
        rows.append(row)
    write_manifest(site_dir / "manifest.csv", rows)


DEMO_POLICY = """\
# Site privacy policy. The hospital owns this file; the server cannot override it.
# This folder holds SYNTHETIC demo data (no patients), so non-private training
# and plaintext aggregation are allowed here for comparison runs. A real site should keep
# allow_non_private = false and require_secure_aggregation = true.
max_epsilon = 10.0
max_total_epsilon = 10.0
max_delta = 1e-5
min_noise_multiplier = 0.3
max_grad_norm = 10.0
allowed_modalities = ["image", "text", "audio"]
allow_non_private = true
require_secure_aggregation = false
# validation metrics in DP runs: Gaussian noise of sd 10·√3 ≈ 17 rows on each sum, about
# +0.02 ε a round at the demo's settings (the default, none, sends no metrics under DP)
evaluation_noise_multiplier = 10.0
# secure rounds: the public keys of the sites this one aggregates with (roster/*.pub)
max_colluding_sites = 0
"""


def generate_demo(
    out_dir: Path,
    *,
    sites: int,
    samples_per_site: int,
    seed: int,
    scenario: Scenario,
    test_samples: int = 400,
    pictures: PictureSource | None = None,
    test_pictures: PictureSource | None = None,
) -> list[Path]:
    """Write ``sites`` hospital folders ``site-01 ...`` and a held-out ``test`` folder.

    ``pictures`` / ``test_pictures`` replace the synthetic chest films of the sites / the test
    folder (real images drawn per label); text and signals stay the demo's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    plan = site_plan(scenario, sites=sites, samples_per_site=samples_per_site,
                     classes=len(CLASS_NAMES), rng=rng)
    site_dirs = []
    for index, site in enumerate(plan, start=1):
        site_dir = out_dir / f"site-{index:02d}"
        write_site(site_dir, labels=site.labels, missing=site.missing, rng=rng,
                   prefix=f"s{index:02d}", pictures=pictures)
        (site_dir / "policy.toml").write_text(DEMO_POLICY, encoding="utf-8")
        site_dirs.append(site_dir)
    if test_samples:
        test_labels = [int(x) for x in rng.integers(0, len(CLASS_NAMES), size=test_samples)]
        write_site(out_dir / "test", labels=test_labels, missing={}, rng=rng, prefix="test",
                   pictures=test_pictures)
    return site_dirs
