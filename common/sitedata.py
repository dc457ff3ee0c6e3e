"""Site folder format: ``manifest.csv`` plus the files it names, read and validated in one pass.

``manifest.csv`` has exactly the columns ``sample_id,label,image,text,audio``, one row a sample
(``signal`` may stand for ``audio``: any biosignal).
An empty cell means that modality is missing for that sample; a row must have at least one.
Paths are relative to the site folder and may not leave it. ``label`` is a class in
``[0, num_classes)`` or, with ``data.labels = "multilabel"``, the row's findings separated by
``;`` (indices or ``data.label_names``; :mod:`common.findings`).

:func:`load_site` reads every row, keeps the usable ones as arrays and lists each bad row with the
reason (:class:`RowIssue`). Whatever goes wrong reading one row (a file over the site's
:class:`~common.read_limits.ReadLimits`, a decoder that crashes or runs out of memory) is that
row's issue; the site trains on the rest. The same code serves ``fedmm validate-data`` and
training, so what the validator accepts is exactly what training uses.

Where the accepted rows' arrays go is a :class:`RowSink`'s business: memory
(:class:`MemorySink`, the default), row files on disk (:class:`common.sitecache.DiskSink`) or
nowhere (:class:`common.sitecache.ValidationSink`: checked and counted),
so that a site larger than memory is read one row at a time and served a batch at a time
(:mod:`common.rowstore`). ``images``, ``tokens`` and ``signals`` are then lazy rows: index them
(``data.images[index]``) to read.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from common.config import MODALITIES, DataConfig
from common.findings import LabelError, label_counts, parse_label, stack_labels
from common.preprocess import (
    SampleError,
    describe_image,
    read_image,
    read_signal,
    read_text,
    resolve_inside,
    signal_shape,
)
from common.read_limits import DEFAULT_READ_LIMITS, ReadLimits, over_limit
from common.rowstore import RowFileError, Rows, select

MANIFEST_NAME = "manifest.csv"
SPLIT_SEED = 20_240_101  # train/validation split of every site, fixed across rounds and runs
COLUMNS: tuple[str, ...] = ("sample_id", "label", *MODALITIES)
COLUMN_ALIASES = {"signal": "audio"}  # any biosignal, not only sound


class SiteDataError(ValueError):
    """The site folder as a whole cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ManifestRow:
    line: int
    sample_id: str
    label: str
    image: str
    text: str
    audio: str
    problem: str = ""

    def cell(self, modality: str) -> str:
        return str(getattr(self, modality))


@dataclass(frozen=True)
class RowIssue:
    line: int
    sample_id: str
    column: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line} (sample '{self.sample_id}'), {self.column}: {self.reason}"


@dataclass
class SiteData:
    """Usable samples as arrays (``images``, ``tokens``, ``signals``: in memory or lazy rows on
    disk, :mod:`common.rowstore`); ``masks[i, m]`` is True when modality ``m`` is present.
    ``rows[i]`` is sample i's manifest row (where its files are), so nothing reads the manifest
    again to find them; ``limits``: what its files were read under (anything reading them again
    reads them the same way)."""

    site_dir: Path
    sample_ids: list[str]
    labels: np.ndarray
    images: Rows
    tokens: Rows
    signals: Rows
    masks: np.ndarray
    issues: list[RowIssue] = field(default_factory=list)
    total_rows: int = 0
    rows: list[ManifestRow] = field(default_factory=list)
    limits: ReadLimits = DEFAULT_READ_LIMITS

    def __len__(self) -> int:
        return len(self.sample_ids)

    def label_counts(self) -> dict[int, int]:
        """Rows per class, or (multi-label) rows with each finding."""
        return label_counts(self.labels)

    def modality_coverage(self) -> dict[str, int]:
        return {m: int(self.masks[:, i].sum()) for i, m in enumerate(MODALITIES)}

    def subset(self, index: np.ndarray) -> SiteData:
        """Samples ``index``; rows on disk stay on disk (nothing is read)."""
        return SiteData(
            site_dir=self.site_dir,
            sample_ids=[self.sample_ids[i] for i in index],
            labels=self.labels[index],
            images=select(self.images, index),
            tokens=select(self.tokens, index),
            signals=select(self.signals, index),
            masks=self.masks[index],
            total_rows=len(index),
            rows=[self.rows[i] for i in index] if self.rows else [],
            limits=self.limits,
        )


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """Write a manifest (used by the demo generator and tests)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in COLUMNS})


def read_manifest(site_dir: Path, limits: ReadLimits = DEFAULT_READ_LIMITS
                  ) -> list[ManifestRow]:
    """Parse ``manifest.csv``; raises :class:`SiteDataError` for file-level problems."""
    path = site_dir / MANIFEST_NAME
    if not site_dir.is_dir():
        raise SiteDataError(f"{site_dir}: not a folder; pass a site folder holding {MANIFEST_NAME}")
    if not path.is_file():
        raise SiteDataError(f"{path}: missing; a site folder needs {MANIFEST_NAME}")
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise SiteDataError(f"{path}: " + over_limit("manifest is", size, limits,
                                                     "max_file_bytes", "bytes"))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SiteDataError(f"{path}: not UTF-8 text; save the manifest as UTF-8 CSV") from None
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [COLUMN_ALIASES.get(name.strip(), name.strip()) for name in next(reader, [])]
    if tuple(header) != COLUMNS:
        raise SiteDataError(
            f"{path}: columns are {','.join(header) or '(none)'}; "
            f"expected exactly {','.join(COLUMNS)}"
        )
    rows: list[ManifestRow] = []
    try:
        for line, cells in enumerate(reader, start=2):
            _append_row(rows, line, cells)
    except csv.Error as error:
        raise SiteDataError(f"{path}: line {reader.line_num}: {error}; a note longer than that "
                            "belongs in a .txt file the row names") from None
    return rows


def _append_row(rows: list[ManifestRow], line: int, cells: list[str]) -> None:
    if any(cell.strip() for cell in cells):
        problem = ""
        if len(cells) != len(COLUMNS):
            problem = f"{len(cells)} cells, expected {len(COLUMNS)}"
        values = [cell.strip() for cell in [*cells, *[""] * len(COLUMNS)][: len(COLUMNS)]]
        rows.append(ManifestRow(line, *values, problem=problem))


class RowSink(Protocol):
    """Where :func:`load_site` puts each accepted row's image, token ids and signal."""

    def append(self, image: np.ndarray, tokens: np.ndarray, signal: np.ndarray) -> None:
        """Keep one row's arrays; raises :class:`~common.rowstore.RowFileError` (the row's
        issue, nothing kept) for values it cannot store."""

    def finish(self) -> tuple[Rows, Rows, Rows]:
        """Every kept row: images, tokens, signals."""


class MemorySink:
    """Rows kept in memory, stacked at the end."""

    def __init__(self, config: DataConfig) -> None:
        self.blanks = _blank_arrays(config)
        self.kept: tuple[list[np.ndarray], ...] = ([], [], [])

    def append(self, image: np.ndarray, tokens: np.ndarray, signal: np.ndarray) -> None:
        for kept, array in zip(self.kept, (image, tokens, signal), strict=True):
            kept.append(array)

    def finish(self) -> tuple[Rows, Rows, Rows]:
        images, tokens, signals = (np.stack(kept) if kept else blank[None][:0]
                                   for kept, blank in zip(self.kept, self.blanks, strict=True))
        return images, tokens, signals


def row_shapes(config: DataConfig) -> dict[str, tuple[int, ...]]:
    """One sample's ``images``, ``tokens`` and ``signals`` row as preprocessing makes it."""
    return {"images": (config.image_channels, config.image_size, config.image_size),
            "tokens": (config.max_text_tokens,), "signals": tuple(signal_shape(config))}


def _blank_arrays(config: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shapes = row_shapes(config)
    return (np.zeros(shapes["images"], np.float32), np.zeros(shapes["tokens"], np.int64),
            np.zeros(shapes["signals"], np.float32))


def _read_modalities(
    row: ManifestRow, site_dir: Path, config: DataConfig, blanks: tuple[np.ndarray, ...],
    limits: ReadLimits,
) -> tuple[np.ndarray, ...] | RowIssue:
    """The row's image, tokens and signal (a blank where the cell is empty), or its first issue:
    a :class:`SampleError`'s reason, or whatever else reading that one file raised."""
    readers = {
        "image": lambda cell: read_image(resolve_inside(site_dir, cell), config, limits=limits),
        "text": lambda cell: read_text(cell, site_dir, config, limits=limits),
        "audio": lambda cell: read_signal(resolve_inside(site_dir, cell), config,
                                          limits=limits),
    }
    arrays = []
    for modality, blank in zip(MODALITIES, blanks, strict=True):
        cell = row.cell(modality)
        try:
            arrays.append(readers[modality](cell) if cell else blank)
        except Exception as error:  # one file's failure is one row's issue
            column = "text" if modality == "text" else f"{modality} '{cell}'"
            return RowIssue(row.line, row.sample_id, column, _reason(error))
    return tuple(arrays)


def _reason(error: Exception) -> str:
    """A row issue's reason: a :class:`SampleError` says it; anything else (a decoder's crash,
    memory or arithmetic errors) is named with what to do."""
    if isinstance(error, SampleError):
        return str(error)
    kind = "ran out of memory" if isinstance(error, MemoryError) else type(error).__name__
    return f"could not be read ({kind}: {str(error)[:200] or 'no detail'}); check or re-export " \
           "this file"


def load_site(site_dir: Path, config: DataConfig, rows: list[ManifestRow] | None = None, *,
              limits: ReadLimits = DEFAULT_READ_LIMITS, sink: RowSink | None = None
              ) -> SiteData:
    """Read, validate and preprocess every row (``rows``: the manifest, when already read) under
    the site's ``limits``; bad rows become :class:`RowIssue` entries. The accepted rows'
    arrays go to ``sink`` (default: memory), one row at a time."""
    site_dir = Path(site_dir)
    rows = read_manifest(site_dir, limits) if rows is None else rows
    blanks = _blank_arrays(config)
    sink = sink if sink is not None else MemorySink(config)
    seen: set[str] = set()
    ids: list[str] = []
    usable_rows: list[ManifestRow] = []
    labels, masks = [], []
    issues: list[RowIssue] = []
    for row in rows:
        if row.problem:
            issues.append(RowIssue(row.line, row.sample_id, "row", row.problem))
            continue
        if not row.sample_id:
            issues.append(RowIssue(row.line, "", "sample_id", "empty sample id"))
            continue
        if row.sample_id in seen:
            issues.append(RowIssue(row.line, row.sample_id, "sample_id", "duplicate sample id"))
            continue
        seen.add(row.sample_id)
        try:
            label = parse_label(row.label, config)
        except LabelError as error:
            issues.append(RowIssue(row.line, row.sample_id, "label", str(error)))
            continue
        present = [bool(row.cell(m)) for m in MODALITIES]
        if not any(present):
            issues.append(RowIssue(row.line, row.sample_id, "row", "no modality present"))
            continue
        arrays = _read_modalities(row, site_dir, config, blanks, limits)
        if isinstance(arrays, RowIssue):
            issues.append(arrays)
            continue
        try:
            sink.append(*arrays)
        except RowFileError as error:
            issues.append(RowIssue(row.line, row.sample_id, "row", f"cannot be kept: {error}"))
            continue
        ids.append(row.sample_id)
        usable_rows.append(row)
        labels.append(label)
        masks.append(present)
    count = len(ids)
    images, tokens, signals = sink.finish()
    return SiteData(
        site_dir=site_dir,
        sample_ids=ids,
        labels=stack_labels(labels, config),
        images=images,
        tokens=tokens,
        signals=signals,
        masks=np.asarray(masks, dtype=bool).reshape(count, len(MODALITIES)),
        issues=issues,
        total_rows=len(rows),
        rows=usable_rows,
        limits=limits,
    )


def image_readings(data: SiteData, config: DataConfig) -> dict[str, int]:
    """How the usable rows' images were read (:func:`common.preprocess.describe_image`, from
    each file's header), most common first, with how many files each: ``fedmm validate-data``
    shows it, so that a site sees which window, frame and scaling its scans got."""
    readings = Counter(
        describe_image(resolve_inside(data.site_dir, row.image), config.dicom_window,
                       limits=data.limits) or "not described"
        for row in data.rows if row.image)
    return dict(readings.most_common())


def require_usable(data: SiteData, config: DataConfig) -> SiteData:
    """Stop with a clear message when too few rows remain after validation."""
    if len(data) < config.min_usable_rows:
        raise SiteDataError(
            f"{data.site_dir}: only {len(data)} usable rows of {data.total_rows} "
            f"({len(data.issues)} bad); at least {config.min_usable_rows} needed. "
            f"Run 'fedmm validate-data {data.site_dir}' to see each bad row."
        )
    return data


def split_train_validation(
    data: SiteData, fraction: float, *, seed: int = SPLIT_SEED
) -> tuple[SiteData, SiteData]:
    """Deterministic split by a seeded permutation of the sample order."""
    order = np.random.default_rng(seed).permutation(len(data))
    cut = round(len(data) * fraction)
    if fraction > 0 and len(data) > 1:
        cut = min(max(cut, 1), len(data) - 1)
    return data.subset(np.sort(order[cut:])), data.subset(np.sort(order[:cut]))
