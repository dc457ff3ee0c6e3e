"""Which site folders a simulation trains on: the ones a researcher points at, or demo
hospitals written into the run folder (and found there again when the run resumes)."""

from __future__ import annotations

from pathlib import Path

from common.sitedata import MANIFEST_NAME, SiteDataError
from simulations.scenarios import Scenario
from simulations.tasks import Task, generate_task

TEST_DIR_NAME = "test"
DEMO_DIR_NAME = "data"  # inside the run folder


def find_sites(data_dir: Path) -> tuple[list[Path], Path | None]:
    """The site folders under ``data_dir`` (sub-folders with a manifest) and its ``test/``
    folder when there is one; :class:`SiteDataError` when there are none."""
    if not data_dir.is_dir():
        raise SiteDataError(f"--data {data_dir}: not a folder")
    sites = sorted(p for p in data_dir.iterdir()
                   if p.is_dir() and p.name != TEST_DIR_NAME and (p / MANIFEST_NAME).is_file())
    if not sites:
        raise SiteDataError(f"--data {data_dir}: no site folders (sub-folders with "
                            f"{MANIFEST_NAME}) found")
    test = data_dir / TEST_DIR_NAME
    return sites, test if (test / MANIFEST_NAME).is_file() else None


def simulation_sites(*, run_dir: Path, data: Path | None, resume: bool, task: Task,
                     sites: int, samples_per_site: int, seed: int, scenario: Scenario
                     ) -> tuple[list[Path], Path | None]:
    """``data``'s sites, or the demo hospitals of ``run_dir`` (written now, or on ``resume``
    the ones written when the run started)."""
    if data is not None:
        return find_sites(data)
    demo_dir = run_dir / DEMO_DIR_NAME
    if resume and demo_dir.is_dir():
        return find_sites(demo_dir)
    site_dirs = generate_task(task, demo_dir, sites=sites, samples_per_site=samples_per_site,
                              seed=seed, scenario=scenario)
    return site_dirs, demo_dir / TEST_DIR_NAME
