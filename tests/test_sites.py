"""Which site folders a simulation trains on."""

import pytest

from common.sitedata import SiteDataError
from simulations.scenarios import Scenario
from simulations.sites import find_sites, simulation_sites
from simulations.tasks import Task


def test_sites_are_the_folders_with_a_manifest_and_test_is_apart(demo_root) -> None:
    sites, test = find_sites(demo_root)
    assert [p.name for p in sites] == ["site-01", "site-02", "site-03"]
    assert test == demo_root / "test"


def test_a_folder_without_sites_is_named(tmp_path) -> None:
    with pytest.raises(SiteDataError, match="no site folders"):
        find_sites(tmp_path)
    with pytest.raises(SiteDataError, match="not a folder"):
        find_sites(tmp_path / "missing")


def test_demo_sites_are_written_once_and_found_again_on_resume(tmp_path) -> None:
    options = {"data": None, "task": Task.DEMO, "sites": 2, "samples_per_site": 12, "seed": 1,
               "scenario": Scenario.IID}
    sites, test = simulation_sites(run_dir=tmp_path, resume=False, **options)
    manifest = (sites[0] / "manifest.csv").stat().st_mtime_ns
    again, _ = simulation_sites(run_dir=tmp_path, resume=True, **options)
    assert again == sites and (sites[0] / "manifest.csv").stat().st_mtime_ns == manifest
    assert test == tmp_path / "data" / "test"
