"""A bad-file battery: memory bombs and broken files of every format, one per manifest row, loaded
under a 2 GiB address-space limit. Each row is reported with its reason, none aborts the site, and
the load's peak memory stays bounded. With the limits taken off (the weakened setup) the same
files make the load use gigabytes or run out of memory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.read_limits import ReadLimits
from common.sitedata import COLUMNS, MANIFEST_NAME
from tests.attacks.file_bombs import build_bombs
from tests.e2e import REPO

ADDRESS_SPACE = 2 * 1024**3

# Runs in a fresh interpreter under RLIMIT_AS: loads the site and reports its issues and memory.
LOADER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from pathlib import Path
from common.config import DataConfig
from common.read_limits import ReadLimits
from common.sitedata import load_site
import pydicom, PIL.Image, wfdb  # readers' imports before the baseline

def high_water_mib():  # this process's peak resident memory (ru_maxrss survives exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

before = high_water_mib()
limits = ReadLimits.model_validate_json(sys.argv[2])
data = load_site(Path(sys.argv[1]), DataConfig(), limits=limits)
after = high_water_mib()
print(json.dumps({{"usable": data.sample_ids, "issues": {{i.sample_id: i.reason
                   for i in data.issues}}, "baseline_mib": before, "peak_mib": after}}))
"""

LIMITS_OFF = ReadLimits(max_file_bytes=2**40, max_image_pixels=2**40, max_signal_samples=2**40,
                        max_signal_channels=2**16, max_note_bytes=2**40)


def _load(site: Path, limits: ReadLimits) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", LOADER.format(limit=ADDRESS_SPACE), str(site),
         limits.model_dump_json()], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def bomb_site(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    import shutil

    site = tmp_path_factory.mktemp("bombs") / "site"
    shutil.copytree(demo_root / "site-01", site)
    bombs = build_bombs(site)
    with (site / MANIFEST_NAME).open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        for bomb in bombs:
            writer.writerow({column: bomb.row.get(column, "") for column in COLUMNS})
    return site, bombs


@pytest.fixture(scope="module")
def loaded(bomb_site: tuple[Path, list]) -> dict:
    return _load(bomb_site[0], ReadLimits())


def test_every_bad_file_is_its_rows_issue_with_its_reason(bomb_site, loaded) -> None:
    _, bombs = bomb_site
    for bomb in bombs:
        sample = bomb.row["sample_id"]
        if bomb.reason:
            assert sample in loaded["issues"], bomb.name
            assert bomb.reason in loaded["issues"][sample], (bomb.name, loaded["issues"][sample])
        else:
            assert sample in loaded["usable"], (bomb.name, loaded["issues"].get(sample))


def test_no_bomb_aborts_the_site_and_every_good_row_is_kept(bomb_site, loaded) -> None:
    site, bombs = bomb_site
    good = [row for row in csv.DictReader((site / MANIFEST_NAME).open(encoding="utf-8"))
            if not row["sample_id"].startswith("bomb-")]
    assert set(loaded["usable"]) >= {row["sample_id"] for row in good}
    assert len(loaded["issues"]) == sum(1 for bomb in bombs if bomb.reason)


def test_the_loads_peak_memory_stays_bounded_and_without_limits_it_does_not(bomb_site,
                                                                            loaded) -> None:
    """Measured: the load adds a few hundred MiB at most over the interpreter's own (the header
    read of the deflated DICOM, bounded by the file limit). Weakened (limits off, the reader
    decodes what the header declares: the 67 M pixel DICOM frame, the 64 M pixel PNG, the 600 MB
    WFDB data file, ...) the same battery takes over 640 MiB or runs out of memory under the
    same 2 GiB limit."""
    bounded = loaded["peak_mib"] - loaded["baseline_mib"]
    assert bounded < 512, loaded
    weakened = _load(bomb_site[0], LIMITS_OFF)
    out_of_memory = [reason for reason in weakened["issues"].values()
                     if "ran out of memory" in reason]
    assert out_of_memory or weakened["peak_mib"] - weakened["baseline_mib"] > 640, weakened
    # the deflated ECG: refused above before pydicom inflated it; here inflated whole, then
    # its 1.8 GiB of samples do not fit
    assert "ran out of memory" in weakened["issues"]["bomb-ecg-deflate-480mb"], weakened
    # the sparse WFDB record: refused above from the data file's size; here read whole, its
    # 300 M samples do not fit as physical units
    assert "ran out of memory" in weakened["issues"]["bomb-wfdb-sparse-600mb"], weakened
    assert weakened["peak_mib"] - weakened["baseline_mib"] > 2 * bounded
