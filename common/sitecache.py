"""On-disk cache of a site's preprocessed arrays, so each round (and each process of a
simulation) does not decode every image and WAV again, and the arrays of a site larger than
memory are read a batch at a time (:mod:`common.rowstore`).

The cache key is a SHA-256 over the manifest's rows, the data config, the site's read limits,
and the size and modification time of every file the manifest names: change any of them and the
site is read afresh. The cache lives in the site's *state* folder (never the data folder, which
may be read-only) and is written atomically; an unreadable cache entry is ignored and rebuilt.

An entry is a folder ``site-<key>/``: one row file per array (``images.rows``, ``tokens.rows``,
``signals.rows``: float16, int32, float16) and ``meta.npz`` (labels, masks, sample ids, the
manifest rows and row issues, each row file's shape and dtypes). It is built row by row in a
``.building-`` folder and renamed into place, so memory holds one row while it is built and a
crash leaves no half entry. Disk: 2 bytes per pixel and per signal value, 4 per token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_bytes, fsync_dir
from common.biosignals import WFDB_HEADER_SUFFIX, wfdb_data_files
from common.config import MODALITIES, DataConfig
from common.preprocess import note_is_a_file
from common.read_limits import DEFAULT_READ_LIMITS, ReadLimits
from common.rowstore import DiskRows, Rows, RowWriter
from common.sitedata import (
    ManifestRow,
    RowIssue,
    SiteData,
    SiteDataError,
    load_site,
    read_manifest,
)

# 6: row files on disk (float16 pictures and signals); 5: multi-label rows (float32 findings);
# 4: DICOM windowed, 16-bit grey
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
STORED = {"images": "float16", "tokens": "int32", "signals": "float16"}  # compact on disk
SERVED = {"images": "float32", "tokens": "int64", "signals": "float32"}  # what the model takes
META_FILE = "meta.npz"
ENTRY_PREFIX = "site-"  # an entry: a folder site-<key>/ holding the row files and META_FILE


class DiskSink:
    """Accepted rows written to row files in ``folder`` as they are read (one row in memory at
    a time); pictures and signals as float16 (about 3 significant digits: a grey level of an
    8-bit picture is 1/255), token ids as int32."""

    def __init__(self, folder: Path, config: DataConfig) -> None:
        from common.preprocess import signal_shape

        shapes = {"images": (config.image_channels, config.image_size, config.image_size),
                  "tokens": (config.max_text_tokens,), "signals": signal_shape(config)}
        self.writers = {name: RowWriter(Path(folder) / ROW_FILES[name], row_shape=shape,
                                        stored=STORED[name]) for name, shape in shapes.items()}

    def append(self, image: np.ndarray, tokens: np.ndarray, signal: np.ndarray) -> None:
        arrays = {"images": image, "tokens": tokens, "signals": signal}
        stored = {name: writer.stored_form(arrays[name])  # all checked before any is written
                  for name, writer in self.writers.items()}
        for name, writer in self.writers.items():
            writer.append_stored(stored[name])

    def finish(self) -> tuple[Rows, Rows, Rows]:
        images, tokens, signals = (self.writers[name].rows(served=SERVED[name])
                                   for name in ("images", "tokens", "signals"))
        return images, tokens, signals

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _write_meta(folder: Path, data: SiteData) -> None:
    meta = {"total_rows": data.total_rows, "issues": [i.__dict__ for i in data.issues],
            "rows": [dataclasses.asdict(row) for row in data.rows],
            "row_files": {name: {"shape": list(getattr(data, name).shape[1:]),
                                 "stored": STORED[name], "served": SERVED[name]}
                          for name in ROW_FILES}}
    buffer = io.BytesIO()
    np.savez(buffer, labels=data.labels, masks=data.masks,
             sample_ids=np.asarray(data.sample_ids, dtype=np.str_),
             meta=np.asarray(json.dumps(meta)))
    atomic_write_bytes(folder / META_FILE, buffer.getvalue())


def _open_entry(site_dir: Path, folder: Path, limits: ReadLimits) -> SiteData:
    """A cache entry as site data, its arrays lazy rows on disk; raises ``OSError``,
    ``ValueError`` (:class:`RowFileError` included), ``KeyError`` or ``TypeError`` when it
    is not a complete entry."""
    with np.load(folder / META_FILE, allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
        labels, masks = arrays["labels"], arrays["masks"]
        sample_ids = [str(s) for s in arrays["sample_ids"]]
    rows = {name: DiskRows(folder / ROW_FILES[name], stored=spec["stored"],
                           served=spec["served"], row_shape=tuple(spec["shape"]),
                           count=len(sample_ids))
            for name, spec in meta["row_files"].items()}
    if len(labels) != len(sample_ids) or len(masks) != len(sample_ids):
        raise ValueError(f"{folder}: {len(sample_ids)} samples but {len(labels)} labels")
    return SiteData(
        site_dir=site_dir, sample_ids=sample_ids, labels=labels, masks=masks,
        images=rows["images"], tokens=rows["tokens"], signals=rows["signals"],
        issues=[RowIssue(**issue) for issue in meta["issues"]],
        total_rows=int(meta["total_rows"]),
        rows=[ManifestRow(**row) for row in meta["rows"]], limits=limits,
    )


def _build_entry(site_dir: Path, config: DataConfig, rows: list[ManifestRow],
                 limits: ReadLimits, cache_dir: Path, name: str) -> Path:
    """Read the site into a fresh folder beside the entry, then rename it into place (a crash
    leaves no half entry: only a ``.building-`` folder, removed by the next build)."""
    building = Path(tempfile.mkdtemp(prefix=f".building-{name}-", dir=cache_dir))
    try:
        sink = DiskSink(building, config)
        try:
            data = load_site(site_dir, config, rows, limits=limits, sink=sink)
        finally:
            sink.close()
        _write_meta(building, data)
        entry = cache_dir / name
        try:
            building.rename(entry)
        except OSError:
            if not (entry / META_FILE).is_file():  # not another process's finished entry
                raise
            shutil.rmtree(building, ignore_errors=True)
        fsync_dir(cache_dir)
        return entry
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _drop_other_entries(cache_dir: Path, keep: str) -> None:
    """Entries of an older key (the site or config changed), old single-file entries, and
    builds a crash left behind. A process still reading a dropped entry keeps its open files."""
    for old in cache_dir.iterdir():
        if old.name == keep or not old.name.startswith((ENTRY_PREFIX, ".building-")):
            continue
        if old.name.startswith(".building-") and _recent(old):
            continue  # another process may be building it now
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _recent(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < 3600
    except OSError:
        return False


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
    entry = cache_dir / name
    if entry.is_dir() and not entry.is_symlink():
        try:
            return _open_entry(site_dir, entry, limits)
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(entry, ignore_errors=True)  # not a complete entry: rebuilt below
    elif entry.exists() or entry.is_symlink():
        entry.unlink()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        entry = _build_entry(site_dir, config, rows, limits, cache_dir, name)
        _drop_other_entries(cache_dir, keep=name)
    except OSError as error:
        raise SiteDataError(
            f"{cache_dir}: could not write the site's preprocessed arrays "
            f"({error.strerror or error}); free disk space there (about "
            f"{_entry_bytes(config, len(rows)) / 1e9:.1f} GB for this site) or point the "
            "site's state folder elsewhere") from None
    return _open_entry(site_dir, entry, limits)


def _entry_bytes(config: DataConfig, rows: int) -> int:
    from common.preprocess import signal_shape

    per_row = (2 * config.image_channels * config.image_size ** 2 + 4 * config.max_text_tokens
               + 2 * int(np.prod(signal_shape(config))))
    return per_row * rows
