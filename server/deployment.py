"""The ServerApp that ``flwr run`` starts on a SuperLink (``fedmm server`` launches it).

Everything it needs comes through the run folder, which lives on the server's machine:
``fedmm server`` writes ``RUN_DIR/run_config.json`` (validated) and passes the folder, the
resume flag and how many hospitals to wait for as Flower run config (``out-dir``, ``resume``,
``expected-sites``, ``wait-for-sites-s``, ``test-dir``). A run that cannot go on writes its
one-line reason to ``RUN_DIR/run_failed.txt`` for the launcher to print.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.atomic import atomic_write_text
from common.config import ConfigError, RunConfig
from server.app import default_callbacks
from server.federation import Federation, FederationError

RUN_CONFIG_NAME = "run_config.json"
FAILED_NAME = "run_failed.txt"

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = context.run_config
    run_dir = Path(str(settings["out-dir"]))
    test_dir = str(settings.get("test-dir", ""))
    try:
        config = RunConfig.from_json((run_dir / RUN_CONFIG_NAME).read_text(encoding="utf-8"))
        Federation(
            grid=grid, config=config, run_dir=run_dir, resume=bool(settings.get("resume")),
            test_dir=Path(test_dir) if test_dir else None, callbacks=default_callbacks(),
            expected_sites=int(settings.get("expected-sites", 0)) or None,
            wait_for_sites_s=float(settings.get("wait-for-sites-s", 300.0)),
        ).run()
    except (FederationError, ConfigError, OSError) as error:
        logging.getLogger("fedmm.server").error("run stopped: %s", error)
        with contextlib.suppress(OSError):  # the disk may be the very thing that failed
            atomic_write_text(run_dir / FAILED_NAME, f"{error}\n")
        raise
