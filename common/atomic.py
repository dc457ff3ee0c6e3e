"""Durable writes: a file is either its old content or its complete new content, never half.

Write to a temporary file in the same folder, flush and fsync it, rename it over the target
(atomic on POSIX), then fsync the folder so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse to open folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _durable_temporary(path: Path, data: bytes, *, mode: int = 0o600) -> str:
    """A temporary file beside ``path`` holding ``data``, flushed and fsynced; its name.

    It is created with ``O_EXCL | O_NOFOLLOW`` and mode 0600 (``mkstemp``), so secrets never
    sit under a wider mode and a planted symlink is never followed; ``mode`` is set on it
    before it is linked or renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if mode != 0o600:
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return temp_name


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """``path`` holds ``data`` afterwards, or (after a crash) what it held before."""
    path = Path(path)
    temp_name = _durable_temporary(path, data, mode=mode)
    try:
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    fsync_dir(path.parent)


def create_once(path: Path, data: bytes) -> bytes:
    """``path``'s content: ``data`` when this call creates the file (complete, mode 0600, in
    one link), else whatever an earlier or concurrent creator wrote; never overwritten."""
    path = Path(path)
    temp_name = _durable_temporary(path, data)
    try:
        try:
            os.link(temp_name, path)
        except FileExistsError:
            return path.read_bytes()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
    fsync_dir(path.parent)
    return data


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files a process killed mid-write left in ``folder``; returns how
    many. Only run it where no other process is writing."""
    removed = 0
    for temp in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed += 1
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def append_line_durably(path: Path, line: str) -> None:
    """Append one line and fsync; a reader never sees a partial line followed by more data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())
