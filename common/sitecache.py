"""On-disk cache of a site's preprocessed arrays, so each round (and each process of a
simulation) does not decode every image and WAV again.

The cache key is a SHA-256 over the manifest's rows, the data config, the site's read limits,
and the size and modification time of every file the manifest names: change any of them and the
site is read afresh. The cache lives in the site's *state* folder (never the data folder, which
may be read-only) and is written atomically; an unreadable cache entry is ignored and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_bytes
from common.biosignals import WFDB_HEADER_SUFFIX, wfdb_data_files
from common.config import MODALITIES, DataConfig
from common.preprocess import note_is_a_file
from common.read_limits import DEFAULT_READ_LIMITS, ReadLimits
from common.sitedata import (
    ManifestRow,
    RowIssue,
    SiteData,
    load_site,
    read_manifest,
)

CACHE_VERSION = "5"  # 5: multi-label rows (float32 findings); 4: DICOM windowed, 16-bit grey


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


def _encode(data: SiteData) -> bytes:
    buffer = io.BytesIO()
    meta = {"total_rows": data.total_rows, "issues": [i.__dict__ for i in data.issues],
            "rows": [dataclasses.asdict(row) for row in data.rows]}
    np.savez(buffer, labels=data.labels, images=data.images, tokens=data.tokens,
             signals=data.signals, masks=data.masks,
             sample_ids=np.asarray(data.sample_ids, dtype=np.str_),
             meta=np.asarray(json.dumps(meta)))
    return buffer.getvalue()


def _decode(site_dir: Path, raw: bytes, limits: ReadLimits) -> SiteData:
    with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
        return SiteData(
            site_dir=site_dir, sample_ids=[str(s) for s in arrays["sample_ids"]],
            labels=arrays["labels"], images=arrays["images"], tokens=arrays["tokens"],
            signals=arrays["signals"], masks=arrays["masks"],
            issues=[RowIssue(**issue) for issue in meta["issues"]],
            total_rows=int(meta["total_rows"]),
            rows=[ManifestRow(**row) for row in meta["rows"]], limits=limits,
        )


def load_site_cached(site_dir: Path, config: DataConfig, cache_dir: Path | None, *,
                     limits: ReadLimits = DEFAULT_READ_LIMITS) -> SiteData:
    """:func:`load_site`, served from ``cache_dir`` when nothing changed since the last read.
    The manifest is read once."""
    site_dir = Path(site_dir)
    rows = read_manifest(site_dir, limits)  # folder-level errors first, with their own message
    if cache_dir is None:
        return load_site(site_dir, config, rows, limits=limits)
    path = Path(cache_dir) / f"site-{cache_key(site_dir, config, rows, limits)[:32]}.npz"
    if path.is_file():
        try:
            return _decode(site_dir, path.read_bytes(), limits)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable entry: rebuild below
    data = load_site(site_dir, config, rows, limits=limits)
    for old in Path(cache_dir).glob("site-*.npz"):
        old.unlink(missing_ok=True)
    atomic_write_bytes(path, _encode(data))
    return data
