"""Fault injection for crash tests: a process that dies, or finds its disk full, in the middle of
one durable write.

``install("die:GLOB:N")`` makes the Nth :func:`common.atomic.atomic_write_bytes` whose target name
matches GLOB write half of its bytes into the temporary file and then SIGKILL its own process
(a power cut mid-write). ``install("full:GLOB:N")`` makes the Nth matching write run with
RLIMIT_FSIZE at 0, so the kernel refuses to grow the file (EFBIG, as on a full disk); the limit is
lifted again afterwards. Install before anything imports ``common.atomic``'s functions by name.

``install("pause:GLOB:N")`` makes the Nth matching write put half of its bytes into the temporary
file and then wait there (for a test to interrupt the process mid-write).

``python -m tests.crash FAULT [fedmm arguments...]`` runs the real ``fedmm`` CLI with one fault,
in the process that writes: ``fedmm simulate``'s worker is started through this module too.
"""

from __future__ import annotations

import fnmatch
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import common.atomic as atomic


def install(fault: str) -> None:
    kind, pattern, nth = fault.split(":")
    if kind not in ("die", "full", "pause"):
        raise ValueError(f"unknown fault {kind!r}; use die, full or pause")
    real_write = atomic.atomic_write_bytes
    seen = 0

    def faulty_write(path: Path, data: bytes) -> None:
        nonlocal seen
        if fnmatch.fnmatch(Path(path).name, pattern):
            seen += 1
            if seen == int(nth):
                if kind in ("die", "pause"):
                    _halfway(Path(path), data, kind)
                _write_on_a_full_disk(real_write, Path(path), data)
                return
        real_write(path, data)

    atomic.atomic_write_bytes = faulty_write


def _halfway(path: Path, data: bytes, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.write(fd, data[: len(data) // 2])
    os.fsync(fd)
    if kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    while True:
        time.sleep(1)


def _write_on_a_full_disk(real_write, path: Path, data: bytes) -> None:
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, limits[1]))
    try:
        real_write(path, data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)


if __name__ == "__main__":
    if sys.argv[1] == "--worker":  # fedmm simulate's worker, with the fault
        install(sys.argv[2])
        from simulations.worker import main as worker_main

        sys.argv = ["worker", *sys.argv[3:]]
        worker_main()
    else:
        install(sys.argv[1])
        import simulations.supervisor as supervisor
        from fedmm.cli import main

        supervisor.WORKER_COMMAND = [sys.executable, "-m", "tests.crash", "--worker",
                                     sys.argv[1]]
        sys.argv = ["fedmm", *sys.argv[2:]]
        main()
