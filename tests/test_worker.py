"""The hospital's warm training worker, in a real second process: jobs go there and back as
plain data, only holders of the state folder's key get in, and without a worker the ClientApp
trains itself."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client.ledger import PrivacyLedger
from client.local_round import LocalRound, RoundInputs
from client.site import resolve_site
from client.worker import KEY_NAME, TrainingWorker, WorkerError, call_worker
from common.config import RunConfig
from common.models import build_model
from common.serialization import model_weights
from common.sitedata import SiteDataError

REPO = Path(__file__).resolve().parent.parent
WORKER = """
import sys, time
from pathlib import Path
from client.worker import TrainingWorker
worker = TrainingWorker(Path(sys.argv[1]), threads=1)
worker.start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
worker.stop()
"""


@pytest.fixture
def worker(site_copy: Path):
    state = site_copy / ".fedmm"
    process = subprocess.Popen([sys.executable, "-c", WORKER, str(state)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield process, state
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _inputs(config: RunConfig) -> RoundInputs:
    weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
    return RoundInputs(round_number=1, run_id="r", global_weights=weights)


def test_a_round_trains_in_the_worker_and_is_marked_sent_here(worker, site_copy,
                                                                small_config) -> None:
    _, state = worker
    assert stat.S_IMODE(os.stat(state / KEY_NAME).st_mode) == 0o600
    site = resolve_site({"data-dir": str(site_copy)}, None)
    config = small_config.model_copy(update={"privacy": small_config.privacy.model_copy(
        update={"noise_multiplier": 1.0})})
    inputs = _inputs(config)
    done, result = call_worker(state, "train", inputs=inputs, site=site, config=config)
    assert done and isinstance(result, LocalRound) and result.status == "ok", result
    assert set(result.update) == set(inputs.global_weights)
    assert all(np.isfinite(v).all() for v in result.update.values())
    spend = PrivacyLedger(state).spend(config.model_id)
    assert spend is not None and [r["status"] for r in spend.rounds] == ["reserved"]
    result.mark_sent("ab" * 32)
    assert PrivacyLedger(state).spend(config.model_id).rounds_served == 1
    done, metrics = call_worker(state, "evaluate", weights=inputs.global_weights, site=site,
                                config=config)
    assert done and set(metrics) >= {"loss", "accuracy", "num-examples"}


def test_an_error_in_the_worker_is_raised_in_the_caller(worker, site_copy, small_config) -> None:
    _, state = worker
    (site_copy / "manifest.csv").write_text("sample_id,label,image,text,audio\n")
    site = resolve_site({"data-dir": str(site_copy)}, None)
    with pytest.raises(SiteDataError, match="usable rows"):
        call_worker(state, "evaluate", weights=_inputs(small_config).global_weights, site=site,
                    config=small_config)


def test_a_wrong_key_gets_nothing_and_the_worker_serves_on(worker, site_copy,
                                                           small_config) -> None:
    process, state = worker
    real = (state / KEY_NAME).read_bytes()
    (state / KEY_NAME).write_bytes(b"\0" * 32)
    site = resolve_site({"data-dir": str(site_copy)}, None)
    weights = _inputs(small_config).global_weights
    assert call_worker(state, "evaluate", weights=weights, site=site,
                       config=small_config) == (False, None)
    (state / KEY_NAME).write_bytes(real)
    done, _ = call_worker(state, "evaluate", weights=weights, site=site, config=small_config)
    assert done and process.poll() is None


def test_without_a_worker_the_caller_does_the_job(tmp_path: Path) -> None:
    assert call_worker(tmp_path, "train") == (False, None)  # no key file
    (tmp_path / KEY_NAME).write_bytes(b"k" * 32)  # a stale key from a stopped worker
    assert call_worker(tmp_path, "train") == (False, None)


def test_a_second_worker_for_the_same_state_folder_is_refused(worker) -> None:
    _, state = worker
    second = TrainingWorker(state)
    with pytest.raises(WorkerError, match="another fedmm client already serves"):
        second.start()
    second.stop()
    assert (state / KEY_NAME).exists()  # the running worker's key stays


def test_a_broken_request_does_not_stop_the_worker(worker, site_copy, small_config) -> None:
    process, state = worker
    from multiprocessing.connection import Client

    from client.worker import worker_address

    with Client(worker_address(state), family="AF_UNIX",
                authkey=(state / KEY_NAME).read_bytes()) as connection:
        connection.send("not a (kind, arguments) pair")
    with pytest.raises(KeyError):
        call_worker(state, "no-such-job")
    site = resolve_site({"data-dir": str(site_copy)}, None)
    done, _ = call_worker(state, "evaluate", weights=_inputs(small_config).global_weights,
                          site=site, config=small_config)
    assert done and process.poll() is None
