"""Demo hospitals with real images: Fashion-MNIST pictures in place of the synthetic chest films.

Debian's ``dataset-fashion-mnist`` ships the 70,000 real 28×28 grey images (60,000 train, 10,000
test) as gzipped IDX files under ``/usr/share/datasets/fashion-mnist``. The four demo classes
(``2·B + A``, see :mod:`simulations.demo_data`) are paired with four garments that are hard to
tell apart — T-shirt/top, pullover, coat, shirt — so the picture alone names the class, but only
a good image model reads it well; each patient's note and ECG-like signal are the demo's, drawn
for the same class (weak evidence of A and B). Hospitals draw from the train split without
replacement, the test folder from the test split; ``--scenario label-skew`` makes them non-IID.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from common.sitedata import write_manifest
from simulations.demo_data import DEMO_POLICY, generate_demo
from simulations.scenarios import Scenario, site_plan

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SOURCE_VARIABLE = "FEDMM_FASHION_MNIST_DIR"  # where the IDX files are, if not in FASHION_DIR
CLASSES_10 = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
              "sneaker", "bag", "ankle boot")  # Fashion-MNIST's classes, in label order
GARMENTS = (0, 2, 4, 6)  # demo class k ↔ Fashion-MNIST class GARMENTS[k]
GARMENT_NAMES = tuple(CLASSES_10[g] for g in GARMENTS)
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
INSTALL_HINT = ("install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                f"or point {SOURCE_VARIABLE} at a folder holding its four IDX files")


class FashionDataError(ValueError):
    """The Fashion-MNIST files are missing or unreadable; the message says what to do."""


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not): big-endian magic ``0x0000 08 D``, D dimension sizes, bytes."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise FashionDataError(f"{path}: not found; {INSTALL_HINT}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise FashionDataError(f"{path}: unreadable ({error}); reinstall the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise FashionDataError(f"{path}: not an IDX file of unsigned bytes")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise FashionDataError(f"{path}: holds {body.size} bytes, its header says {shape}")
    return body.reshape(shape)


class GarmentPictures:
    """Draws, without replacement, a picture of the garment paired with a label (label k ↔
    Fashion-MNIST class ``garments[k]``)."""

    def __init__(self, source: Path, split: str, garments: tuple[int, ...] = GARMENTS) -> None:
        images_file, labels_file = FILES[split]
        images, labels = read_idx(source / images_file), read_idx(source / labels_file)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise FashionDataError(f"{source}: {split} images {images.shape} and labels "
                                   f"{labels.shape} do not match")
        self.images = images
        self.names = [CLASSES_10[g] for g in garments]
        self.unused = {k: list(np.flatnonzero(labels == g)) for k, g in enumerate(garments)}

    def __call__(self, label: int, rng: np.random.Generator) -> np.ndarray:
        pool = self.unused[label]
        if not pool:
            raise FashionDataError(f"not enough {self.names[label]} pictures left; ask for "
                                   "fewer patients")
        return self.images[pool.pop(int(rng.integers(len(pool))))]

    def balanced_labels(self, count: int, rng: np.random.Generator) -> list[int]:
        """``count`` labels in random order, as even over the classes as their pictures allow
        (the whole split when ``count`` is its size)."""
        available = {k: len(v) for k, v in self.unused.items()}
        if count > sum(available.values()):
            raise FashionDataError(f"the split holds {sum(available.values())} pictures; ask "
                                   f"for at most that many (got {count})")
        labels: list[int] = []
        while len(labels) < count:
            for k in available:
                if available[k] and len(labels) < count:
                    labels.append(k)
                    available[k] -= 1
        return [labels[i] for i in rng.permutation(len(labels))]


def generate_fashion_mnist(out_dir: Path, *, sites: int, samples_per_site: int, seed: int,
                           scenario: Scenario, test_samples: int = 400,
                           source: Path | None = None) -> list[Path]:
    """:func:`simulations.demo_data.generate_demo` with Fashion-MNIST pictures from ``source``
    (default: ``$FEDMM_FASHION_MNIST_DIR``, else Debian's folder)."""
    source = source or Path(os.environ.get(SOURCE_VARIABLE) or FASHION_DIR)
    return generate_demo(out_dir, sites=sites, samples_per_site=samples_per_site, seed=seed,
                         scenario=scenario, test_samples=test_samples,
                         pictures=GarmentPictures(source, "train"),
                         test_pictures=GarmentPictures(source, "test"))

# What a run on the ten-class, pictures-only task needs (the CLI applies it under --set).
CONFIG_10 = {"data.num_classes": 10, "data.image_size": 28, "model.modalities": ["image"]}
POLICY_10 = DEMO_POLICY.replace('allowed_modalities = ["image", "text", "audio"]',
                                'allowed_modalities = ["image"]')


def _write_pictures_site(site_dir: Path, *, labels: list[int], pictures: GarmentPictures,
                         rng: np.random.Generator, prefix: str) -> None:
    from PIL import Image

    (site_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, label in enumerate(labels):
        sample_id = f"{prefix}-{index:05d}"
        Image.fromarray(pictures(label, rng), mode="L").save(
            site_dir / "images" / f"{sample_id}.png", format="PNG")
        rows.append({"sample_id": sample_id, "label": str(label),
                     "image": f"images/{sample_id}.png"})
    write_manifest(site_dir / "manifest.csv", rows)


def generate_fashion_mnist_10(out_dir: Path, *, sites: int, samples_per_site: int, seed: int,
                              scenario: Scenario, test_samples: int = 400,
                              source: Path | None = None) -> list[Path]:
    """The ten Fashion-MNIST classes, pictures only (text and signal cells empty): hospitals
    draw from the train split without replacement (10 × 6,000 uses all of it), the test folder
    from the test split (up to 10,000). Runs need :data:`CONFIG_10`."""
    source = source or Path(os.environ.get(SOURCE_VARIABLE) or FASHION_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = GarmentPictures(source, "train", garments=tuple(range(10)))
    plan = site_plan(scenario, sites=sites, samples_per_site=samples_per_site, classes=10,
                     rng=rng)
    site_dirs = []
    for index, site in enumerate(plan, start=1):
        site_dir = out_dir / f"site-{index:02d}"
        # iid: classes as even as the pictures left allow, so 10 × 6,000 partitions the split
        labels = (train.balanced_labels(len(site.labels), rng) if scenario is Scenario.IID
                  else site.labels)
        _write_pictures_site(site_dir, labels=labels, pictures=train, rng=rng,
                             prefix=f"s{index:02d}")
        (site_dir / "policy.toml").write_text(POLICY_10, encoding="utf-8")
        site_dirs.append(site_dir)
    if test_samples:
        test = GarmentPictures(source, "test", garments=tuple(range(10)))
        _write_pictures_site(out_dir / "test", labels=test.balanced_labels(test_samples, rng),
                             pictures=test, rng=rng, prefix="test")
    return site_dirs
