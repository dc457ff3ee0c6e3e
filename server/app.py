"""The aggregation server's ServerApp (Flower Message API).

``make_server_app`` builds the app around a validated :class:`RunConfig` and a run folder, for
the simulation runner. Deployments run :mod:`server.deployment`, which reads the same settings
from the run folder at start; both use :func:`default_callbacks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from server.callbacks import Callback, Checkpointer, FinalOutputs, MetricsLog, Progress
from server.federation import Federation
from server.run_folder import RoundRecord
from server.run_state import RunState


def default_callbacks(show: Callable[[RoundRecord], None] | None = None) -> list[Callback]:
    callbacks: list[Callback] = [MetricsLog(), Checkpointer()]
    if show is not None:
        callbacks.append(Progress(show))
    callbacks.append(FinalOutputs())
    return callbacks


def make_server_app(
    *,
    config: RunConfig,
    run_dir: Path,
    resume: bool = False,
    test_dir: Path | None = None,
    callbacks: Sequence[Callback] | None = None,
    result: list[RunState] | None = None,
) -> ServerApp:
    """A ServerApp bound to ``config``; the final state is appended to ``result`` if given."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        state = Federation(
            grid=grid, config=config, run_dir=run_dir, resume=resume, test_dir=test_dir,
            callbacks=callbacks if callbacks is not None else default_callbacks(),
        ).run()
        if result is not None:
            result.append(state)

    return app

