"""The ServerApp that ``flwr run`` starts on a SuperLink (``fedmm server`` launches it).

Everything it needs comes through the run folder, which lives on the server's machine:
``fedmm server`` writes ``RUN_DIR/run_config.json`` (validated) and passes the folder, the
resume flag and how many hospitals to wait for as Flower run config (the keys below; their
defaults are in ``common/flower_app/pyproject.toml``). A run that cannot go on writes its
one-line reason to ``RUN_DIR/run_failed.txt`` for the launcher to print.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.atomic import atomic_write_text
from common.config import ConfigError, RunConfig
from server.app import default_callbacks
from server.federation import Federation, FederationError
from server.replies import patch_grid_object_pulls
from server.run_folder import RunFolder

# The Flower run config keys `fedmm server` sets (the contract with server/launcher.py).
OUT_DIR = "out-dir"
RESUME = "resume"
EXPECTED_SITES = "expected-sites"
WAIT_FOR_SITES_S = "wait-for-sites-s"
TEST_DIR = "test-dir"

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = context.run_config
    folder = RunFolder(Path(str(settings[OUT_DIR])))
    test_dir = str(settings.get(TEST_DIR, ""))
    log = logging.getLogger("fedmm.server")
    if not patch_grid_object_pulls():
        log.warning("Flower's grid no longer pulls objects as expected; its retries stay")
    try:
        config = RunConfig.from_json(folder.run_config.read_text(encoding="utf-8"))
        Federation(
            grid=grid, config=config, run_dir=folder.root, resume=bool(settings.get(RESUME)),
            test_dir=Path(test_dir) if test_dir else None, callbacks=default_callbacks(),
            expected_sites=int(settings.get(EXPECTED_SITES, 0)) or None,
            wait_for_sites_s=float(settings.get(WAIT_FOR_SITES_S, 300.0)),
        ).run()
    except (FederationError, ConfigError, OSError) as error:
        log.error("run stopped: %s", error)
        _write_failure(folder, f"{error}")
        raise
    except Exception as error:  # a bug: one line for the operator, the traceback in logs/
        with contextlib.suppress(OSError):
            folder.logs.mkdir(parents=True, exist_ok=True)
            folder.serverapp_error_log.write_text(traceback.format_exc(), encoding="utf-8")
        _write_failure(folder, f"the ServerApp stopped on {type(error).__name__}: {error} "
                               f"(traceback: {folder.serverapp_error_log})")
        raise


def _write_failure(folder: RunFolder, reason: str) -> None:
    with contextlib.suppress(OSError):  # the disk may be the very thing that failed
        atomic_write_text(folder.failed, f"{reason}\n")
