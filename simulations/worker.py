"""The simulation's own process: runs one :class:`~simulations.supervisor.SimulationJob` and reports
to the supervisor that started it.

``python -m simulations.worker FD`` reads the job (JSON) from stdin and writes events, one JSON
object per line, to file descriptor FD: ``round`` (a finished round's record), ``warning`` (a
fedmm warning for the screen), ``done`` (with the stop reason) or ``error`` (a one-line message for
a person). Its own stdout and stderr (Flower's, Ray's, any traceback) go to the run folder's log,
or stay on the terminal with ``verbose``. It runs in its own session, so a terminal's Ctrl-C
reaches only the supervisor, which decides how this process and Ray stop.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import IO, Any

from simulations.supervisor import DONE, ERROR, ROUND, WARNING, SimulationJob


class _Events:
    """The event pipe to the supervisor."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def send(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()


class _WarningsToSupervisor(logging.Handler):
    def __init__(self, events: _Events) -> None:
        super().__init__(logging.WARNING)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.send(WARNING, message=f"{record.levelname} {record.name}: "
                                            f"{record.getMessage()}")


def _redirect_output(log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _configure_logging(events: _Events, verbose: bool) -> None:
    """fedmm's warnings to the supervisor's screen; Flower's and Ray's chatter only with
    ``verbose`` (to the log otherwise)."""
    import flwr.common.logger  # noqa: F401 - configures the 'flwr' logger on import

    ours = logging.getLogger("fedmm")
    ours.handlers[:] = [_WarningsToSupervisor(events)]
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    ours.propagate = False
    logging.getLogger("flwr").setLevel(logging.DEBUG if verbose else logging.ERROR)


def run(job: SimulationJob, events: _Events) -> None:
    from common.config import ConfigError
    from common.sitedata import SiteDataError
    from server.callbacks import OutputWriteError
    from server.federation import FederationError
    from simulations.runner import run_federated_simulation

    try:
        state = run_federated_simulation(
            config=job.run_config(), run_dir=job.run_dir, site_dirs=job.site_dirs,
            test_dir=job.test_dir, resume=job.resume, parallel=job.parallel,
            ray_address=job.ray_address, short_dir=job.short_dir,
            show=lambda record: events.send(ROUND, record=record.model_dump(mode="json")))
    except (FederationError, SiteDataError, ConfigError, OutputWriteError) as error:
        events.send(ERROR, message=str(error))
        return
    except RuntimeError as error:
        traceback.print_exc()
        events.send(ERROR, message=f"simulation failed: {error.__cause__ or error}; "
                                     f"full detail in {job.log}")
        return
    events.send(DONE, stop_reason=state.stop_reason)


def main() -> None:
    events = _Events(os.fdopen(int(sys.argv[1]), "w", encoding="utf-8"))
    job = SimulationJob.model_validate_json(sys.stdin.read())
    if not job.verbose:
        _redirect_output(job.log)
    _configure_logging(events, job.verbose)
    try:
        run(job, events)
    except Exception as error:  # anything unforeseen: the detail to the log, one line out
        traceback.print_exc()
        events.send(ERROR, message=f"simulation failed ({type(error).__name__}: {error}); "
                                     f"full detail in {job.log}")
    sys.stdout.flush()
    sys.stderr.flush()
    # Flower's ServerApp thread is not a daemon and Ray's may linger: leave without waiting on them
    os._exit(0)


if __name__ == "__main__":
    main()
