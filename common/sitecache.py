"""On-disk cache of a site's preprocessed arrays, so each round (and each process of a
simulation) does not decode every image and WAV again, and the arrays of a site larger than
memory are read a batch at a time (:mod:`common.rowstore`).

The cache key is a SHA-256 over the manifest's rows, the data config, the site's read limits,
and the size and modification time of every file the manifest names: change any of them and the
site is read afresh. The cache lives in the site's *state* folder (never the data folder, which
may be read-only) and is written atomically; an unreadable cache entry is ignored and rebuilt.

An entry is a folder ``site-<key>/``: one row file per array (``images.rows``, ``tokens.rows``,
``signals.rows``, in the :data:`FORMATS` below) and ``meta.npz`` (labels, masks, sample ids, the
manifest rows and row issues). Shapes and formats come from the data config (in the key), never
from the entry. It is built row by row in a ``.building-`` folder and renamed into place, under
the cache folder's lock (one build at a time; another process waits, then opens it), so memory
holds one row while it is built and a crash leaves no half entry. Disk: 2 bytes per pixel and
per signal value, 4 per token. An entry that is not whole is built again; one that cannot be
read for another reason (permissions, no descriptors left) is a one-line error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_bytes, fsync_dir
from common.biosignals import WFDB_HEADER_SUFFIX, wfdb_data_files
from common.config import MODALITIES, DataConfig
from common.preprocess import note_is_a_file
from common.read_limits import DEFAULT_READ_LIMITS, ReadLimits
from common.rowstore import (
    DiskRows,
    RowFileError,
    RowFormat,
    Rows,
    RowWriter,
    UnkeptRows,
    open_plain_file,
)
from common.sitedata import (
    ManifestRow,
    RowIssue,
    SiteData,
    SiteDataError,
    load_site,
    read_manifest,
    row_shapes,
)

# 6: row files on disk (uint16 fixed-point pictures, float16 signals); 5: multi-label rows
# (float32 findings); 4: DICOM windowed, 16-bit grey
CACHE_VERSION = "6"


def cache_key(site_dir: Path, config: DataConfig, rows: list[ManifestRow],
              limits: ReadLimits = DEFAULT_READ_LIMITS) -> str:
    """SHA-256 over the manifest (its parsed rows), the data config, the read limits (they
    decide which rows are usable) and every named file's size and modification time."""
    hasher = hashlib.sha256(CACHE_VERSION.encode())
    hasher.update(json.dumps([dataclasses.astuple(row) for row in rows]).encode())
    hasher.update(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    hasher.update(limits.model_dump_json().encode())
    root = site_dir.resolve()
    for row in rows:
        for modality in MODALITIES:
            cell = row.cell(modality)
            if not cell or (modality == "text" and not note_is_a_file(cell)):
                continue
            try:
                stat = (root / cell).stat()
                hasher.update(f"{cell}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            except OSError:
                hasher.update(f"{cell}:missing".encode())
            if modality == "audio" and cell.endswith(WFDB_HEADER_SUFFIX):  # and its data files
                header = (root / cell).resolve()
                # a header outside the site is refused anyway: nothing of it is read here
                names = wfdb_data_files(header) if header.is_relative_to(root) else []
                for name in names:
                    try:
                        stat = header.parent.joinpath(name).stat()
                        hasher.update(f"+{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
                    except OSError:
                        hasher.update(f"+{name}:missing".encode())
    return hasher.hexdigest()


ROW_FILES = {"images": "images.rows", "tokens": "tokens.rows", "signals": "signals.rows"}
# pictures are standardised into [-2, 2] (common.preprocess): uint16 fixed-point keeps every
# level of a 16-bit scan; signals are z-scored (unbounded): float16, about 3 significant digits
FORMATS = {
    "images": RowFormat(stored="uint16", served="float32", scale=4 / 65535, offset=-2.0),
    "tokens": RowFormat(stored="int32", served="int64"),
    "signals": RowFormat(stored="float16", served="float32"),
}
META_FILE = "meta.npz"
ENTRY_PREFIX = "site-"  # an entry: a folder site-<key>/ holding the row files and META_FILE
BUILDING_PREFIX = ".building-"
LOCK_FILE = ".lock"  # held while an entry is looked up and built: one build at a time


class DiskSink:
    """Accepted rows written to row files in ``folder`` as they are read (one row in memory at
    a time), each in its :data:`FORMATS` entry."""

    def __init__(self, folder: Path, config: DataConfig) -> None:
        self.writers: dict[str, RowWriter] = {}
        try:
            for name, shape in row_shapes(config).items():
                self.writers[name] = RowWriter(Path(folder) / ROW_FILES[name], row_shape=shape,
                                               form=FORMATS[name])
        except BaseException:
            self.close(sync=False)
            raise

    def append(self, image: np.ndarray, tokens: np.ndarray, signal: np.ndarray) -> None:
        arrays = {"images": image, "tokens": tokens, "signals": signal}
        stored = {name: writer.stored_form(arrays[name])  # all checked before any is written
                  for name, writer in self.writers.items()}
        for name, writer in self.writers.items():
            writer.append_stored(stored[name])

    def finish(self) -> tuple[Rows, Rows, Rows]:
        images, tokens, signals = (self.writers[name].rows()
                                   for name in ("images", "tokens", "signals"))
        return images, tokens, signals

    def close(self, *, sync: bool) -> None:
        for writer in self.writers.values():
            writer.close(sync=sync)


class ValidationSink:
    """Rows checked as :class:`DiskSink` checks them (a row it could not store is the same
    row issue), counted, not kept: ``fedmm validate-data`` and ``fedmm client``'s check, in
    memory that does not grow with the site."""

    def __init__(self, config: DataConfig) -> None:
        self.shapes = row_shapes(config)
        self.count = 0

    def append(self, image: np.ndarray, tokens: np.ndarray, signal: np.ndarray) -> None:
        for name, array in (("images", image), ("tokens", tokens), ("signals", signal)):
            FORMATS[name].encode(array, row_shape=self.shapes[name])
        self.count += 1

    def finish(self) -> tuple[Rows, Rows, Rows]:
        images, tokens, signals = (
            UnkeptRows(count=self.count, row_shape=self.shapes[name],
                       served=FORMATS[name].served_dtype)
            for name in ("images", "tokens", "signals"))
        return images, tokens, signals


def _write_meta(folder: Path, data: SiteData) -> None:
    meta = {"total_rows": data.total_rows, "issues": [i.__dict__ for i in data.issues],
            "rows": [dataclasses.asdict(row) for row in data.rows]}
    buffer = io.BytesIO()
    np.savez(buffer, labels=data.labels, masks=data.masks,
             sample_ids=np.asarray(data.sample_ids, dtype=np.str_),
             meta=np.asarray(json.dumps(meta)))
    atomic_write_bytes(folder / META_FILE, buffer.getvalue())


# what an entry that is not whole raises when opened: it is then built again
DAMAGED_ENTRY = (RowFileError, ValueError, KeyError, TypeError, AttributeError, EOFError,
                 zipfile.BadZipFile, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _open_entry(site_dir: Path, folder: Path, config: DataConfig,
                limits: ReadLimits) -> SiteData:
    """A cache entry as site data, its arrays lazy rows on disk (shapes and formats from
    ``config``, never from the entry); raises one of :data:`DAMAGED_ENTRY` when it is not a
    whole entry, another ``OSError`` when it cannot be read now."""
    with open_plain_file(folder / META_FILE) as handle, \
            np.load(handle, allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
        labels, masks = arrays["labels"], arrays["masks"]
        sample_ids = [str(s) for s in arrays["sample_ids"]]
    count = len(sample_ids)
    rows = [ManifestRow(**row) for row in meta["rows"]]
    if len(labels) != count or masks.shape != (count, len(MODALITIES)) or len(rows) != count:
        raise ValueError(f"{folder}: {count} samples, {len(labels)} labels, "
                         f"{masks.shape} masks, {len(rows)} manifest rows")
    arrays_on_disk = {name: DiskRows(folder / ROW_FILES[name], form=FORMATS[name],
                                     row_shape=shape, count=count)
                      for name, shape in row_shapes(config).items()}
    return SiteData(
        site_dir=site_dir, sample_ids=sample_ids, labels=labels, masks=masks,
        images=arrays_on_disk["images"], tokens=arrays_on_disk["tokens"],
        signals=arrays_on_disk["signals"],
        issues=[RowIssue(**issue) for issue in meta["issues"]],
        total_rows=int(meta["total_rows"]), rows=rows, limits=limits,
    )


def _build_entry(site_dir: Path, config: DataConfig, rows: list[ManifestRow],
                 limits: ReadLimits, cache_dir: Path, name: str) -> Path:
    """Read the site into a fresh folder beside the entry, then rename it into place (a crash
    leaves no half entry: only a ``.building-`` folder, removed by the next build)."""
    building = Path(tempfile.mkdtemp(prefix=f"{BUILDING_PREFIX}{name}-", dir=cache_dir))
    try:
        sink = DiskSink(building, config)
        try:
            data = load_site(site_dir, config, rows, limits=limits, sink=sink)
        except BaseException:
            sink.close(sync=False)
            raise
        _write_meta(building, data)
        fsync_dir(building)
        entry = cache_dir / name
        building.rename(entry)
        fsync_dir(cache_dir)
        return entry
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _drop_other_entries(cache_dir: Path, keep: str) -> None:
    """Entries of an older key (the site or config changed), old single-file entries, and
    builds a crash left behind (called under the lock: no build is under way). A process
    still reading a dropped entry keeps its open files."""
    for old in cache_dir.iterdir():
        if old.name == keep or not old.name.startswith((ENTRY_PREFIX, BUILDING_PREFIX)):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def _build_lock(cache_dir: Path) -> Iterator[None]:
    """The cache folder's lock: held while one process looks an entry up and builds it, so
    that a second one waits and then opens the entry, and any ``.building-`` folder found
    under it is a crash's leftover. Something else planted where the lock file goes (a link,
    a folder) is removed; on a filesystem without locks the build goes on unlocked (its folder
    is its own and lands with one rename)."""
    path = cache_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)


def _check_free_space(cache_dir: Path, config: DataConfig, rows: int) -> None:
    needed = _entry_bytes(config, rows)
    free = shutil.disk_usage(cache_dir).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{_size(free)} free, about {_size(needed)} needed")


def load_site_cached(site_dir: Path, config: DataConfig, cache_dir: Path | None, *,
                     limits: ReadLimits = DEFAULT_READ_LIMITS) -> SiteData:
    """:func:`load_site`, served from ``cache_dir`` when nothing changed since the last read,
    its arrays read from disk a batch at a time (memory does not grow with the site). The
    manifest is read once. Without ``cache_dir``, in memory."""
    site_dir = Path(site_dir)
    rows = read_manifest(site_dir, limits)  # folder-level errors first, with their own message
    if cache_dir is None:
        return load_site(site_dir, config, rows, limits=limits)
    cache_dir = Path(cache_dir)
    name = f"{ENTRY_PREFIX}{cache_key(site_dir, config, rows, limits)[:32]}"
    try:
        opened = _open_existing(site_dir, cache_dir / name, config, limits, remove=False)
        if opened is not None:
            return opened
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _build_lock(cache_dir):
            opened = _open_existing(site_dir, cache_dir / name, config, limits, remove=True)
            if opened is not None:  # another process built it while this one waited
                return opened
            _drop_other_entries(cache_dir, keep=name)
            _check_free_space(cache_dir, config, len(rows))
            entry = _build_entry(site_dir, config, rows, limits, cache_dir, name)
            return _open_entry(site_dir, entry, config, limits)
    except OSError as error:
        needed = _size(_entry_bytes(config, len(rows)))
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = (f"they need about {needed} of free disk there: free it, or point the "
                      "site's state folder elsewhere")
        else:
            advice = ("check the folder (its owner and permissions) and this process's limits, "
                      "then start again")
        raise SiteDataError(
            f"{cache_dir}: could not write or read the site's preprocessed arrays "
            f"({error.strerror or error}"
            f"{f': {error.filename}' if error.filename else ''}); {advice}") from None


def _open_existing(site_dir: Path, entry: Path, config: DataConfig, limits: ReadLimits, *,
                   remove: bool) -> SiteData | None:
    """The entry, or None when there is none or it is not whole; ``remove`` (only under the
    lock: no build is landing meanwhile) removes a damaged one."""
    if not (entry.exists() or entry.is_symlink()):
        return None
    if entry.is_dir() and not entry.is_symlink():
        try:
            return _open_entry(site_dir, entry, config, limits)
        except DAMAGED_ENTRY:
            if remove:
                shutil.rmtree(entry, ignore_errors=True)
            return None
    if remove:
        entry.unlink()
    return None


def _size(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def _entry_bytes(config: DataConfig, rows: int) -> int:
    per_row = sum(FORMATS[name].stored_dtype.itemsize * int(np.prod(shape))
                  for name, shape in row_shapes(config).items())
    return per_row * rows
