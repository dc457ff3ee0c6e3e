"""Per-sample arrays kept on disk and read a batch at a time: a site's preprocessed samples
when the site does not fit in memory (numpy only).

A row file is a raw C-order file of ``count`` rows of ``row_shape``, each value stored as its
:class:`RowFormat` says: a compact dtype, optionally fixed-point (``served = stored · scale +
offset``), e.g. standardised pictures in [-2, 2] as uint16 (every level of a 16-bit scan kept),
z-scored signals as float16, token ids as int32. :class:`DiskRows` serves it like a read-only
array: ``rows[i]``, ``rows[index_array]``, ``rows[mask]`` and ``rows[a:b]`` return rows in the
dtype the model takes (float32, int64), ``rows.view(index)`` is a subset without reading
anything, and ``len`` and ``shape`` are what an array's would be. Reads use ``pread`` per run
of consecutive rows (in pieces of at most 16 MiB), never a memory map: the pages of a map a
process has touched count in its resident memory, so one epoch over a mapped file would grow
the process by the file's size; read this way, memory holds one batch. ``np.asarray(rows)``
reads every row (for what needs the whole array at once, e.g. scattering features of small
pictures).

:func:`take` and :func:`select` treat an in-memory array and on-disk rows alike;
:func:`concatenate` pools sites without reading them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

READ_PIECE_BYTES = 16 * 2**20  # one pread at most: Linux reads at most ~2 GiB in one call


class RowFileError(ValueError):
    """A row file does not hold what its description says (truncated, wrong size)."""


class LazyRows(ABC):
    """Rows ``base[index]`` of a row source that reads on demand; ``index`` None: all of them
    in order. Indexing returns a numpy array of ``dtype``; :meth:`view` a lazy subset."""

    def __init__(self, *, row_shape: tuple[int, ...], served: np.dtype,
                 index: np.ndarray | None) -> None:
        self.row_shape = tuple(int(n) for n in row_shape)
        self.dtype = np.dtype(served)
        self.index = None if index is None else np.asarray(index, dtype=np.int64)

    @property
    @abstractmethod
    def base_length(self) -> int:
        """Rows in the underlying source."""

    @abstractmethod
    def _read_base(self, rows: np.ndarray) -> np.ndarray:
        """Base rows ``rows`` (any order, repeats allowed) as a ``dtype`` array."""

    @abstractmethod
    def _with_index(self, index: np.ndarray) -> LazyRows:
        """The same source with another index."""

    def __len__(self) -> int:
        return self.base_length if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def _base_rows(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        positions = np.where(positions < 0, positions + len(self), positions)
        return positions if self.index is None else self.index[positions]

    def _positions(self, key: Any) -> np.ndarray:
        """Positions for a slice, a 1-D integer array or list, or a 1-D mask (rows are
        indexed along their first axis only)."""
        if isinstance(key, slice):
            return np.arange(len(self))[key]
        if isinstance(key, tuple):
            raise IndexError("rows are indexed along their first axis only")
        key = np.asarray(key)
        if key.ndim != 1:
            raise IndexError(f"rows are indexed by one integer, a slice, a 1-D index or mask; "
                             f"got a {key.ndim}-D index")
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for {len(self)} rows")
            return np.flatnonzero(key)
        if not np.issubdtype(key.dtype, np.integer) and key.size:
            raise IndexError(f"rows are indexed by integers, slices or masks, not {key.dtype}")
        return key.astype(np.int64)

    def __getitem__(self, key: Any) -> np.ndarray:
        if (isinstance(key, int | np.integer) and not isinstance(key, bool)) or (
                isinstance(key, np.ndarray) and key.ndim == 0
                and np.issubdtype(key.dtype, np.integer)):  # one row
            return self._read_base(self._base_rows(np.asarray([key], dtype=np.int64)))[0]
        return self._read_base(self._base_rows(self._positions(key)))

    def view(self, key: Any) -> LazyRows:
        """Rows ``key`` (indices, a slice or a mask) as lazy rows: nothing is read."""
        return self._with_index(self._base_rows(self._positions(key)))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)


@dataclass(frozen=True)
class RowFormat:
    """How values are stored: ``stored`` dtype, served as ``served``; with ``scale``,
    fixed-point: ``stored = round((value − offset) / scale)``, within the stored dtype's
    range."""

    stored: str
    served: str
    scale: float | None = None
    offset: float = 0.0

    @property
    def stored_dtype(self) -> np.dtype:
        return np.dtype(self.stored)

    @property
    def served_dtype(self) -> np.dtype:
        return np.dtype(self.served)

    def encode(self, row: np.ndarray, *, row_shape: tuple[int, ...] | None = None
               ) -> np.ndarray:
        """``row`` as stored; raises :class:`RowFileError` for a row not of ``row_shape`` (when
        given) or with a value the format cannot hold (nothing is stored then)."""
        if row_shape is not None and tuple(row.shape) != tuple(row_shape):
            raise RowFileError(f"row of shape {row.shape}, expected {tuple(row_shape)}")
        dtype = self.stored_dtype
        if (dtype.kind == "f" or self.scale is not None) and not np.isfinite(row).all():
            raise RowFileError("a value that is NaN or infinite")
        if self.scale is not None:
            levels = np.rint((row.astype(np.float64) - self.offset) / self.scale)
            info = np.iinfo(dtype)
            if levels.size and (levels.min() < info.min or levels.max() > info.max):
                low = self.offset + info.min * self.scale
                high = self.offset + info.max * self.scale
                raise RowFileError(f"a value outside [{low:g}, {high:g}], what {self.stored} "
                                   "fixed-point holds here")
            return np.ascontiguousarray(levels, dtype=dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            stored = np.ascontiguousarray(row, dtype=dtype)
        if dtype.kind == "f" and not np.isfinite(stored).all():
            raise RowFileError(f"a value beyond what {self.stored} holds (largest "
                               f"{np.finfo(dtype).max:.0f})")
        if dtype.kind in "iu" and not np.array_equal(stored, row):
            raise RowFileError(f"a value beyond what {self.stored} holds")
        return stored

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Stored values as served."""
        if self.scale is None:
            return stored.astype(self.served_dtype)
        return (stored.astype(np.float64) * self.scale + self.offset).astype(self.served_dtype)


def _open_plain(path: Path) -> int:
    """A read-only descriptor on ``path`` if it is a plain file; a link, a FIFO, a socket or a
    folder is :class:`RowFileError` (opening never blocks, a link is never followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise RowFileError(f"{path}: not a plain file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RowFileError(f"{path}: not a plain file")
    return fd


class _OpenFile:
    """One read-only descriptor, shared by a file's views, closed with the last of them."""

    def __init__(self, path: Path) -> None:
        self.fd = _open_plain(path)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError, TypeError):
            os.close(self.fd)


def open_plain_file(path: Path) -> Any:
    """``path`` opened for binary reading if it is a plain file (no link, no FIFO: opening
    never blocks); :class:`RowFileError` otherwise."""
    return os.fdopen(_open_plain(path), "rb")


class DiskRows(LazyRows):
    """Rows of a raw row file (see the module docstring), read with ``pread``."""

    def __init__(self, path: Path, *, form: RowFormat, row_shape: tuple[int, ...], count: int,
                 index: np.ndarray | None = None, _file: _OpenFile | None = None) -> None:
        super().__init__(row_shape=row_shape, served=form.served_dtype, index=index)
        self.path = Path(path)
        self.form = form
        self.count = int(count)
        self.row_bytes = form.stored_dtype.itemsize * int(np.prod(self.row_shape,
                                                                  dtype=np.int64))
        self._file = _file or self._open()

    def _open(self) -> _OpenFile:
        try:
            opened = _OpenFile(self.path)
        except FileNotFoundError:
            raise RowFileError(f"{self.path}: gone (the site's array cache was rebuilt); "
                               "load the site again") from None
        size = os.fstat(opened.fd).st_size
        if size != self.count * self.row_bytes:
            raise RowFileError(f"{self.path}: {size} bytes, expected {self.count} rows × "
                               f"{self.row_bytes} bytes")
        return opened

    @property
    def base_length(self) -> int:
        return self.count

    def _with_index(self, index: np.ndarray) -> DiskRows:
        return DiskRows(self.path, form=self.form, row_shape=self.row_shape, count=self.count,
                        index=index, _file=self._file)

    def _read_base(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        # runs of consecutive rows, each read in pieces of at most READ_PIECE_BYTES
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        per_piece = max(1, READ_PIECE_BYTES // max(self.row_bytes, 1))
        for run_start, run_end in zip(np.r_[0, breaks], np.r_[breaks, len(ordered)],
                                      strict=True):
            for start in range(int(run_start), int(run_end), per_piece):
                end = min(start + per_piece, int(run_end))
                first, count = int(ordered[start]), end - start
                stored = np.frombuffer(self._pread(first, count), self.form.stored_dtype)
                out[order[start:end]] = self.form.decode(stored.reshape(count, *self.row_shape))
        return out

    def _pread(self, first: int, count: int) -> bytes:
        """Rows ``first`` … ``first + count − 1``; a short read is retried, an empty one
        means the file was cut."""
        wanted, offset = count * self.row_bytes, first * self.row_bytes
        pieces, got = [], 0
        while got < wanted:
            piece = os.pread(self._file.fd, wanted - got, offset + got)
            if not piece:
                raise RowFileError(f"{self.path}: rows {first}–{first + count - 1} are cut "
                                   "short; the file changed while in use")
            pieces.append(piece)
            got += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_file")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._file = self._open()


class ChainedRows(LazyRows):
    """Several row sources one after the other (sites pooled), read without copying them."""

    def __init__(self, parts: Sequence[Rows], *, index: np.ndarray | None = None) -> None:
        shapes = {tuple(part.shape[1:]) for part in parts}
        dtypes = {np.dtype(part.dtype) for part in parts}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(f"rows of different shapes or dtypes: {shapes}, {dtypes}")
        super().__init__(row_shape=shapes.pop(), served=dtypes.pop(), index=index)
        self.parts = list(parts)
        self.starts = np.cumsum([0, *(len(part) for part in self.parts)])

    @property
    def base_length(self) -> int:
        return int(self.starts[-1])

    def _with_index(self, index: np.ndarray) -> ChainedRows:
        return ChainedRows(self.parts, index=index)

    def _read_base(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        for number, part in enumerate(self.parts):
            where = np.flatnonzero(part_of == number)
            if where.size:
                out[where] = take(part, rows[where] - self.starts[number])
        return out


class UnkeptRows(LazyRows):
    """As many rows as were read, none of them kept (a site validated, not loaded for
    training): ``len`` and ``shape`` answer, reading raises :class:`RowFileError`."""

    def __init__(self, *, count: int, row_shape: tuple[int, ...], served: str | np.dtype,
                 index: np.ndarray | None = None) -> None:
        super().__init__(row_shape=row_shape, served=np.dtype(served), index=index)
        self.count = int(count)

    @property
    def base_length(self) -> int:
        return self.count

    def _with_index(self, index: np.ndarray) -> UnkeptRows:
        return UnkeptRows(count=self.count, row_shape=self.row_shape, served=self.dtype,
                          index=index)

    def _read_base(self, rows: np.ndarray) -> np.ndarray:
        raise RowFileError("these rows were validated, not kept; load the site to train on it")


Rows = np.ndarray | LazyRows


def _index(index: Any) -> np.ndarray:
    index = np.asarray(index)
    return index if index.dtype == bool else index.astype(np.int64)


def take(rows: Rows, index: Any) -> np.ndarray:
    """``rows[index]`` (indices or a mask) as an array, read now."""
    return rows[_index(index)]


def select(rows: Rows, index: Any) -> Rows:
    """``rows[index]`` (indices or a mask): a copy of an in-memory array, a lazy view of rows
    on disk."""
    if isinstance(rows, LazyRows):
        return rows.view(_index(index))
    return rows[_index(index)]


def concatenate(parts: Sequence[Rows]) -> Rows:
    """The rows of ``parts`` one after the other: an array when all are in memory."""
    if all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts)
    return ChainedRows(parts)


class RowWriter:
    """Appends rows to a new row file in ``form``."""

    def __init__(self, path: Path, *, row_shape: tuple[int, ...], form: RowFormat) -> None:
        self.path = Path(path)
        self.row_shape = tuple(int(n) for n in row_shape)
        self.form = form
        self.count = 0
        # patients' data: 0600, never through a link, never over another file
        self._handle = os.fdopen(os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")

    def stored_form(self, row: np.ndarray) -> np.ndarray:
        """``row`` as it will be stored; raises :class:`RowFileError` for a row of another
        shape or with a value the format cannot hold."""
        return self.form.encode(row, row_shape=self.row_shape)

    def append(self, row: np.ndarray) -> None:
        self.append_stored(self.stored_form(row))

    def append_stored(self, stored: np.ndarray) -> None:
        """Append a row :meth:`stored_form` returned."""
        self._handle.write(stored.tobytes())
        self.count += 1

    def close(self, *, sync: bool = True) -> None:
        """Flush to disk (``sync``; the caller renames the folder into place after), or only
        close (a build given up)."""
        if self._handle.closed:
            return
        if sync:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        else:  # given up (maybe for a full disk): what is buffered may not fit either
            with contextlib.suppress(OSError):
                self._handle.close()

    def rows(self) -> DiskRows:
        self.close()
        return DiskRows(self.path, form=self.form, row_shape=self.row_shape, count=self.count)
