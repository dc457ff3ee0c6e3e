"""Shared fixtures: small demo sites written once per session, and a small run config; the
order the tests run in: the unit tests first, with the README's main job beside them, then the
end-to-end tests on a machine of their own."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from simulations.demo_data import generate_demo
from simulations.fashion_mnist import FILES
from simulations.scenarios import Scenario
from tests.e2e import MainJob, RayCluster

MAIN_JOB_TEST = "test_default_simulation_beats_chance_and_reports"
_MAIN_JOB = pytest.StashKey[MainJob]()
_THREADS = pytest.StashKey[tuple[int, "str | None"]]()


DEADLINE_FIXTURES = {"deployment", "weakened"}  # real deployments: round timeouts, kills


def needs_a_quiet_machine(item: pytest.Item) -> bool:
    """Tests on deadlines (round timeouts, a kill mid-round, "stops within 10 s"): they run
    last, alone, after the main job has ended."""
    fixtures = set(getattr(item, "fixturenames", ())) - direct_parameters(item)
    return item.get_closest_marker("deadlines") is not None or bool(DEADLINE_FIXTURES & fixtures)


def direct_parameters(item: pytest.Item) -> set[str]:
    """The names ``parametrize`` gives values to directly: they are no fixture, whatever they
    are called (an indirect one is: its fixture runs)."""
    names: set[str] = set()
    for marker in item.iter_markers("parametrize"):
        argnames = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = [name.strip() for name in argnames.split(",") if name.strip()]
        indirect = marker.kwargs.get("indirect", False)
        names |= {name for name in argnames
                  if not (indirect is True or (isinstance(indirect, list | tuple)
                                               and name in indirect))}
    return names


def run_order(items: list[pytest.Item]) -> dict[str, int]:
    """Per file: 0, unit tests; 1, end-to-end tests without deadlines (a busier machine only
    makes them slower); 2, files with a test on deadlines (a file stays in one piece: its
    module fixtures, such as a reference run, are set up once)."""
    order: dict[str, int] = {}
    for item in items:
        group = 2 if needs_a_quiet_machine(item) else int(
            item.get_closest_marker("slow") is not None)
        order[item.module.__name__] = max(order.get(item.module.__name__, 0), group)
    return order


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches what the tests start however pytest was started: a shell starts a
    background job with SIGINT ignored, its children inherit that, and the Ctrl-C tests would
    see their command shrug the signal off (a Python handler is reset to the default on exec,
    an ignored signal stays ignored)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what does not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests first, then the end-to-end tests without deadlines, then the files with tests
    on deadlines (each group in file order, but the README main job's test last in its
    group). When the README's main job is among the tests and others run before the deadline
    group, it starts now, at the lowest priority, in the CPU time pytest leaves idle (it runs
    on one core); the first test on deadlines waits for it to end."""
    order = run_order(items)
    # within its group, the file with the main job's test last, and that test last in it:
    # what runs before it shares the machine with the main job
    main_job_file = {item.module.__name__ for item in items if item.name == MAIN_JOB_TEST}
    items.sort(key=lambda item: (order[item.module.__name__],
                                 item.module.__name__ in main_job_file,
                                 item.name == MAIN_JOB_TEST))
    if (not config.option.collectonly and any(item.name == MAIN_JOB_TEST for item in items)
            and not all(needs_a_quiet_machine(item) for item in items)):
        folder = Path(tempfile.mkdtemp(prefix="fmmainjob", dir="/tmp"))
        config.stash[_MAIN_JOB] = MainJob(folder, background=True)
        config.stash[_THREADS] = _one_thread_each()


def _one_thread_each() -> tuple[int, str | None]:
    """torch in this process, and what the tests start, on one thread while the main job runs:
    an OpenMP team of two waits at every barrier for its thread the main job preempted (unit
    tests ran up to 8× slower beside it, even at nice 19). Returns what to restore."""
    import torch

    saved = (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    return saved


def _restore_threads(saved: tuple[int, str | None]) -> None:
    import torch

    threads, variable = saved
    torch.set_num_threads(threads)
    if variable is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = variable


def pytest_runtest_setup(item: pytest.Item) -> None:
    if needs_a_quiet_machine(item) and (job := item.config.stash.get(_MAIN_JOB, None)):
        job.result()
        if (saved := item.config.stash.get(_THREADS, None)) is not None:
            _restore_threads(saved)
            del item.config.stash[_THREADS]


def pytest_unconfigure(config: pytest.Config) -> None:
    if job := config.stash.get(_MAIN_JOB, None):
        job.stop()
        shutil.rmtree(job.folder, ignore_errors=True)


@pytest.fixture
def main_job(request: pytest.FixtureRequest, tmp_path: Path) -> MainJob:
    """The README's main job: the one started beside the unit tests, or one started now."""
    return request.config.stash.get(_MAIN_JOB, None) or MainJob(tmp_path, background=False)


@pytest.fixture(scope="module")
def ray() -> Iterator[RayCluster]:
    """One :class:`RayCluster` per test file, for the simulations that only have to run. Not
    for what is typed as the README says, runs stopped to check that their own Ray is gone, or
    runs whose environment matters in the actors."""
    cluster = RayCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three iid demo hospitals of 60 patients and a 120-patient test folder (read-only use)."""
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, sites=3, samples_per_site=60, seed=7, scenario=Scenario.IID,
                  test_samples=120)
    return root


@pytest.fixture
def site_copy(demo_root: Path, tmp_path: Path) -> Path:
    """A writable copy of one demo site."""
    target = tmp_path / "site"
    shutil.copytree(demo_root / "site-01", target)
    return target


@pytest.fixture
def site_copy_factory(demo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Fresh writable copies of one demo site, as many as a test needs (property tests)."""
    def copy() -> Path:
        target = tmp_path_factory.mktemp("site") / "site"
        shutil.copytree(demo_root / "site-01", target)
        return target

    return copy


@pytest.fixture
def small_config() -> RunConfig:
    return RunConfig.model_validate({
        "model": {"embed_dim": 8, "hidden_dim": 16},
        "training": {"rounds": 2, "local_epochs": 1, "batch_size": 16},
    })


@pytest.fixture(scope="session")
def deployment():
    """The README's deployment (tests/deployment.py), attacked while it runs: one for the
    deployment end-to-end tests and every attack test."""
    from tests.deployment import readme_deployment

    yield from readme_deployment()


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def fashion_source(tmp_path: Path) -> Path:
    """A Fashion-MNIST look-alike in the real IDX format: ten classes × 80 train and 110 test
    pictures, each picture's first pixel = its class and second its index, so a written PNG
    says where it came from."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    for split, per_class in (("train", 80), ("test", 110)):
        labels = np.repeat(np.arange(10), per_class)
        images = np.random.default_rng(0).integers(0, 256, (len(labels), 28, 28))
        images[:, 0, 0] = labels
        images[:, 0, 1] = np.arange(len(labels)) % 256
        images_file, labels_file = FILES[split]
        write_idx(folder / images_file, images)
        write_idx(folder / labels_file, labels)
    return folder
