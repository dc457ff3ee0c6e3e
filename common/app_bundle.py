"""The Flower App bundle (FAB) that names fedmm's apps, and the check that a run brings exactly it.

``fedmm server`` submits :data:`APP_DIR` with ``flwr run``; the bundle holds only a
``pyproject.toml`` naming ``server.deployment:app`` and ``client.app:app``, whose code is the
installed fedmm package on both sides. A hospital never runs code from a bundle: its executor
(:mod:`client.executor`) runs the ClientApp of the fedmm it installed, and only for runs whose
bundle is, file for file, the one this installation would build (:func:`check_bundle`). Any
other bundle, a foreign app or another fedmm version, is refused before anything of it runs.

The comparison is of the files inside the bundle (names and bytes), not of the archive's bytes,
so that two machines whose zlib compresses differently still agree.
"""

from __future__ import annotations

import io
import zipfile
from functools import cache
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "flower_app"
MAX_BUNDLE_BYTES = 1 << 20  # fedmm's bundle is a few kB; refuse to unpack anything larger


class ForeignAppError(ValueError):
    """The run's bundle is not this installation's fedmm; the message says how it differs."""


def _files(content: bytes) -> dict[str, bytes]:
    """The files of a FAB (a zip archive). Only stored or deflated entries are read, each with
    at most :data:`MAX_BUNDLE_BYTES` of output whatever its header declares; anything else a
    bundle could hold is a refusal, never an exception."""
    if len(content) > MAX_BUNDLE_BYTES:
        raise ForeignAppError(f"the bundle is {len(content)} bytes; fedmm's is a few kB")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            entries = archive.infolist()
            if len(entries) > 64:
                raise ForeignAppError(f"the bundle holds {len(entries)} entries; fedmm's two")
            files: dict[str, bytes] = {}
            budget = MAX_BUNDLE_BYTES
            for entry in entries:
                if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise ForeignAppError(f"entry {entry.filename!r} uses compression "
                                          f"{entry.compress_type}; fedmm's bundle deflates")
                if entry.flag_bits & 0x1:
                    raise ForeignAppError(f"entry {entry.filename!r} is encrypted")
                if entry.is_dir():
                    continue
                if entry.filename in files:
                    raise ForeignAppError(f"entry {entry.filename!r} appears twice")
                with archive.open(entry) as handle:
                    data = handle.read(budget + 1)
                budget -= len(data)
                if budget < 0:
                    raise ForeignAppError(f"the bundle unpacks to more than "
                                          f"{MAX_BUNDLE_BYTES} bytes; fedmm's is a few kB")
                files[entry.filename] = data
            return files
    except ForeignAppError:
        raise
    except Exception as error:  # any way a hostile archive fails to read is a refusal
        raise ForeignAppError(f"the bundle is not a readable archive ({type(error).__name__}: "
                              f"{error})"[:300]) from None


@cache
def expected_files() -> dict[str, bytes]:
    """The files of the bundle this installation builds from :data:`APP_DIR`."""
    from flwr.cli.build import build_fab_from_disk

    return _files(build_fab_from_disk(APP_DIR))


def check_bundle(content: bytes) -> None:
    """Raise :class:`ForeignAppError` unless ``content`` is this installation's bundle."""
    received, expected = _files(content), expected_files()
    if received == expected:
        return
    extra = sorted(set(received) - set(expected))
    missing = sorted(set(expected) - set(received))
    changed = sorted(n for n in set(received) & set(expected) if received[n] != expected[n])
    parts = [f"{label} {', '.join(names[:3])}" for label, names in
             (("foreign files", extra), ("missing", missing), ("changed", changed)) if names]
    raise ForeignAppError("not this installation's fedmm bundle (" + "; ".join(parts) + ")")
