"""Sites that do not fit in memory: peak memory and DP-SGD throughput of one site of 5,000 and
of 50,000 patients at ``image_size = 224``.

Each size is measured in a fresh process (``python -m benchmarks.big_site SITE STEPS``), so
that its peak resident memory (``ru_maxrss``) is its own: the site is read into its array cache
(row files on disk, :mod:`common.sitecache`), then trains a fixed number of DP-SGD steps with
Poisson batches (hooks mode; no calibration), as a hospital's round does. Disk: the cache's
size. The site is built from the demo generator's patients, each drawn several times under its
own sample id (the files are shared; every row is decoded, resized to 224 and stored on its own).
For comparison, the same process also reports what the arrays of the site would take in memory
as float32 (what reading a site took before the cache held row files), and the 5,000-patient
site is also read the old way (every array in memory) in a process of its own.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import machine

IMAGE_SIZE = 224
DISTINCT_PATIENTS = 1000  # drawn again under new ids up to the site's size
STEPS = 8
BATCH = 64


def build_site(folder: Path, patients: int, *, distinct: int = DISTINCT_PATIENTS) -> Path:
    """A site of ``patients`` rows over ``distinct`` patients of the demo generator."""
    from common.sitedata import COLUMNS, MANIFEST_NAME
    from simulations.demo_data import generate_demo
    from simulations.scenarios import Scenario

    base = folder / "base"
    if not (base / "site-01" / MANIFEST_NAME).is_file():
        generate_demo(base, sites=1, samples_per_site=distinct, seed=0,
                      scenario=Scenario.IID, test_samples=0)
    source = base / "site-01"
    with (source / MANIFEST_NAME).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    site = folder / f"site-{patients}"
    site.mkdir(exist_ok=True)
    for name in ("images", "signals"):  # copies: a path may not leave its site
        if not (site / name).exists():
            shutil.copytree(source / name, site / name)
    shutil.copy(source / "policy.toml", site / "policy.toml")
    with (site / MANIFEST_NAME).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        for number in range(patients):
            row = dict(rows[number % len(rows)])
            writer.writerow({**row, "sample_id": f"p{number:06d}"})
    return site


def config_for_benchmark(image_size: int = IMAGE_SIZE):
    from common.config import RunConfig

    return RunConfig.model_validate({
        "data": {"image_size": image_size},
        "training": {"batch_size": BATCH, "local_epochs": 1},
        "privacy": {"grad_sample_mode": "hooks", "noise_multiplier": 1.0},
    })


def measure(site: Path, steps: int, *, in_memory: bool, image_size: int = IMAGE_SIZE) -> dict:
    """Read ``site`` (into its row-file cache, or all in memory) and train ``steps`` DP-SGD
    steps; peak memory of this process."""
    import numpy as np
    import torch

    from client.training import PoissonBatches, RoundPlan, train_local
    from common.evaluation import dataset_of
    from common.features import model_inputs
    from common.models import build_model
    from common.randomness import RandomStream
    from common.serialization import model_weights
    from common.site_state import SiteState
    from common.sitecache import ENTRY_PREFIX, load_site_cached
    from common.sitedata import load_site

    torch.manual_seed(0)
    config = config_for_benchmark(image_size)
    state = SiteState(site.parent / f"state-{site.name}")
    reused = state.cache_dir.is_dir() and any(
        path.name.startswith(ENTRY_PREFIX) for path in state.cache_dir.iterdir())
    started = time.perf_counter()
    if in_memory:
        data = load_site(site, config.data)
    else:
        data = load_site_cached(site, config.data, state.cache_dir)
    data = model_inputs(data, config.model, None)
    read_seconds = time.perf_counter() - started
    rss_after_read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    plan = RoundPlan(sample_rate=BATCH / len(data), steps=steps, noise_multiplier=1.0,
                     steps_per_epoch=steps)
    weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
    reading = dataset_of(data)
    draws = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(20):
        reading.__getitems__(np.sort(draws.choice(len(data), min(BATCH, len(data)),
                                                 replace=False)).tolist())
    batch_read_ms = (time.perf_counter() - started) / 20 * 1e3
    # the same seeded stream for every row: the in-memory and on-disk runs of a size draw the
    # same batches, and the samples trained are counted, not taken as steps × expected batch
    started = time.perf_counter()
    result = train_local(config=config, global_weights=weights, data=data, plan=plan,
                         history=[], stream=RandomStream.from_seed(0, "big-site"))
    train_seconds = time.perf_counter() - started
    samples = sum(len(batch) for batch in PoissonBatches(
        num_samples=len(data), sample_rate=plan.sample_rate, steps=steps,
        stream=RandomStream.from_seed(0, "big-site")))
    cache_bytes = sum(path.stat().st_size for path in state.cache_dir.rglob("*")
                      if path.is_file()) if not in_memory else 0
    in_memory_bytes = sum(np.dtype(np.float32).itemsize * int(np.prod(rows.shape))
                          for rows in (data.images, data.signals)) + 8 * int(
        np.prod(data.tokens.shape))
    return {
        "benchmark": "big_site", "patients": len(data),
        "arrays": "in memory" if in_memory else
        "row files, cache reused" if reused else "row files, cache built here",
        "read_seconds": round(read_seconds, 1),
        "peak_rss_after_read_mib": round(rss_after_read / 2**20),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "steps": result.steps, "samples": samples, "train_seconds": round(train_seconds, 1),
        "samples_per_second": round(samples / train_seconds, 1),
        "batch_read_ms": round(batch_read_ms, 1),
        "cache_mb": round(cache_bytes / 1e6, 1),
        "float32_arrays_mb": round(in_memory_bytes / 1e6, 1),
    }


def _measure_in_child(site: Path, steps: int, *, in_memory: bool) -> dict:
    command = [sys.executable, "-m", "benchmarks.big_site", str(site), str(steps)]
    if in_memory:
        command.append("--in-memory")
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    if done.returncode != 0:
        raise RuntimeError(f"big_site {site.name} failed:\n{done.stderr[-2000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def big_site(*, quick: bool) -> list[dict]:
    sizes = (500, 5000) if quick else (5000, 50000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fmbig", dir=os.environ.get("FEDMM_BIG_SITE_DIR")
                                     ) as folder:
        root = Path(folder)
        for patients in sizes:
            site = build_site(root, patients)
            rows.append(_measure_in_child(site, STEPS, in_memory=False))  # builds the cache
            rows.append(_measure_in_child(site, STEPS, in_memory=False))  # as each round
            if patients == sizes[0]:
                rows.append(_measure_in_child(site, STEPS, in_memory=True))
    return rows


def markdown(rows: list[dict], command: str) -> list[str]:
    lines = [
        "## Sites that do not fit in memory", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}", "",
        f"One site at `image_size = {IMAGE_SIZE}` (one grey channel), read into its array cache, "
        f"then {STEPS} DP-SGD steps with Poisson batches of {BATCH} expected (hooks mode), each "
        "size in a process of its own (first the process that builds the site's cache, then "
        "one that reuses it, as every later round does), every row drawing its batches from "
        "the same seeded "
        "stream (samples per second counts the samples drawn). The site's patients are the "
        "demo generator's "
        f"{DISTINCT_PATIENTS}, each drawn again under a new id (each row is decoded, resized "
        "and stored on its own). Peak memory is the process's `ru_maxrss`.", "",
        "| patients | arrays | read (s) | peak memory after reading (MiB) | peak memory "
        "(MiB) | samples / s | one batch read (ms) | cache on disk (MB) | the arrays as "
        "float32 (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cache = f"{row['cache_mb']:,}" if row["cache_mb"] else "–"
        lines.append(
            f"| {row['patients']:,} | {row['arrays']} | {row['read_seconds']} | "
            f"{row['peak_rss_after_read_mib']:,} | {row['peak_rss_mib']:,} | "
            f"{row['samples_per_second']} | {row['batch_read_ms']} | {cache} | "
            f"{row['float32_arrays_mb']:,} |")
    disk = [row for row in rows if row["arrays"] == "row files, cache reused"]
    if len(disk) == 2:
        small, large = disk
        per_patient = ((large["peak_rss_after_read_mib"] - small["peak_rss_after_read_mib"])
                       * 2**20 / (large["patients"] - small["patients"]) / 1e3)
        lines += ["", f"{large['patients'] // small['patients']}× the patients (cache "
                  "reused): peak memory "
                  f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}×, throughput "
                  f"{large['samples_per_second'] / small['samples_per_second']:.2f}×, cache "
                  f"{large['cache_mb'] / small['cache_mb']:.1f}× on disk (2 bytes a pixel or "
                  "signal value, 4 a token). What grows is the memory after reading, by "
                  f"{per_patient:.1f} kB a patient: the manifest rows, sample ids, labels and "
                  "masks kept in memory; the pictures, notes and signals are read a batch at a "
                  "time. Peak memory is DP-SGD's own (per-sample gradients at 224 × 224, "
                  "for the largest Poisson batch drawn)."]
    return lines


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]), int(sys.argv[2]),
                             in_memory="--in-memory" in sys.argv)))
