"""Fault injection for crash tests: a process that dies, or finds its disk full, in the middle of
one durable write.

``install("die:GLOB:N")`` makes the Nth :func:`common.atomic.atomic_write_bytes` whose target name
matches GLOB write half of its bytes into the temporary file and then SIGKILL its own process
(a power cut mid-write). ``install("full:GLOB:N")`` makes the Nth matching write run with
RLIMIT_FSIZE at 0, so the kernel refuses to grow the file (EFBIG, as on a full disk); the limit is
lifted again afterwards. Install before anything imports ``common.atomic``'s functions by name.

``python -m tests.crash FAULT [fedmm arguments...]`` runs the real ``fedmm`` CLI with one fault.
"""

from __future__ import annotations

import fnmatch
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path

import common.atomic as atomic


def install(fault: str) -> None:
    kind, pattern, nth = fault.split(":")
    if kind not in ("die", "full"):
        raise ValueError(f"unknown fault {kind!r}; use die or full")
    real_write = atomic.atomic_write_bytes
    seen = 0

    def faulty_write(path: Path, data: bytes) -> None:
        nonlocal seen
        if fnmatch.fnmatch(Path(path).name, pattern):
            seen += 1
            if seen == int(nth):
                if kind == "die":
                    _die_halfway(Path(path), data)
                _write_on_a_full_disk(real_write, Path(path), data)
                return
        real_write(path, data)

    atomic.atomic_write_bytes = faulty_write


def _die_halfway(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.write(fd, data[: len(data) // 2])
    os.fsync(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _write_on_a_full_disk(real_write, path: Path, data: bytes) -> None:
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, limits[1]))
    try:
        real_write(path, data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)


if __name__ == "__main__":
    install(sys.argv[1])
    from fedmm.cli import main

    sys.argv = ["fedmm", *sys.argv[2:]]
    main()
