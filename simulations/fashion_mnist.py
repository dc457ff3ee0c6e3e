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

from simulations.demo_data import generate_demo
from simulations.scenarios import Scenario

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SOURCE_VARIABLE = "FEDMM_FASHION_MNIST_DIR"  # where the IDX files are, if not in FASHION_DIR
GARMENTS = (0, 2, 4, 6)  # demo class k ↔ Fashion-MNIST class GARMENTS[k]
GARMENT_NAMES = ("T-shirt/top", "pullover", "coat", "shirt")
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
    """Draws, without replacement, a picture of the garment paired with a demo label."""

    def __init__(self, source: Path, split: str) -> None:
        images_file, labels_file = FILES[split]
        images, labels = read_idx(source / images_file), read_idx(source / labels_file)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise FashionDataError(f"{source}: {split} images {images.shape} and labels "
                                   f"{labels.shape} do not match")
        self.images = images
        self.unused = {k: list(np.flatnonzero(labels == g)) for k, g in enumerate(GARMENTS)}

    def __call__(self, label: int, rng: np.random.Generator) -> np.ndarray:
        pool = self.unused[label]
        if not pool:
            raise FashionDataError(f"not enough {GARMENT_NAMES[label]} pictures left; ask for "
                                   "fewer patients")
        return self.images[pool.pop(int(rng.integers(len(pool))))]


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
