import pickle
from pathlib import Path

import numpy as np
import pytest

from common.rowstore import (
    ChainedRows,
    DiskRows,
    RowFileError,
    RowWriter,
    UnkeptRows,
    concatenate,
    select,
    take,
)


def written(tmp_path: Path, array: np.ndarray, *, stored: str = "float16",
            name: str = "rows") -> DiskRows:
    writer = RowWriter(tmp_path / name, row_shape=array.shape[1:], stored=stored)
    for row in array:
        writer.append(row)
    return writer.rows(served=np.float32 if stored.startswith("float") else np.int64)


@pytest.fixture
def array() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(23, 2, 3, 3)).astype(np.float32)


def test_rows_read_back_as_their_stored_values_in_the_served_dtype(tmp_path, array) -> None:
    rows = written(tmp_path, array)
    expected = array.astype(np.float16).astype(np.float32)
    assert rows.shape == array.shape and len(rows) == 23 and rows.dtype == np.float32
    assert np.array_equal(rows[:], expected)
    assert np.array_equal(np.asarray(rows), expected)
    assert (tmp_path / "rows").stat().st_size == 23 * 2 * 3 * 3 * 2  # 2 bytes a value


@pytest.mark.parametrize("key", [
    5, -1, slice(3, 9), slice(None, None, -2), [7, 2, 2, 19, 0], np.array([], np.int64),
    np.arange(23) % 3 == 0])
def test_indexing_is_numpys(tmp_path, array, key) -> None:
    rows = written(tmp_path, array)
    expected = array.astype(np.float16).astype(np.float32)
    assert np.array_equal(rows[key], expected[key])
    assert np.array_equal(take(rows, np.arange(23)[key]), expected[key])


def test_a_view_reads_nothing_until_indexed_and_composes(tmp_path, array, monkeypatch) -> None:
    rows = written(tmp_path, array)
    reads: list[int] = []
    real = DiskRows._read_base
    monkeypatch.setattr(DiskRows, "_read_base",
                        lambda self, base: reads.append(len(base)) or real(self, base))
    view = select(rows, [20, 3, 4, 5, 11]).view([4, 1, 2])
    assert reads == [] and len(view) == 3 and view.shape == (3, 2, 3, 3)
    expected = array.astype(np.float16).astype(np.float32)
    assert np.array_equal(view[:], expected[[11, 3, 4]])
    assert reads == [3]
    with pytest.raises(IndexError):
        view[[3]]


def test_consecutive_rows_are_one_read_each_run(tmp_path, array, monkeypatch) -> None:
    import os

    rows = written(tmp_path, array)
    calls: list[tuple[int, int]] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: calls.append((n, at)) or real(fd, n, at))
    rows[[9, 2, 3, 4, 10, 15]]
    row = rows.row_bytes
    assert calls == [(3 * row, 2 * row), (2 * row, 9 * row), (row, 15 * row)]


def test_the_file_is_never_mapped_into_memory(tmp_path, array) -> None:
    """Read with pread: a map's touched pages would count in the process's memory."""
    rows = written(tmp_path, array)
    for start in range(0, 23, 4):
        rows[start:start + 4]
    maps = Path("/proc/self/maps").read_text()
    assert str(tmp_path / "rows") not in maps


def test_a_cut_or_grown_file_is_refused(tmp_path, array) -> None:
    rows = written(tmp_path, array)
    path = tmp_path / "rows"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(RowFileError, match="bytes, expected 23 rows"):
        DiskRows(path, stored="float16", served="float32", row_shape=(2, 3, 3), count=23)
    with pytest.raises(RowFileError, match="cut short"):  # changed under an open reader
        rows[22]


def test_values_the_stored_dtype_cannot_hold_are_refused_and_nothing_written(tmp_path) -> None:
    writer = RowWriter(tmp_path / "f", row_shape=(2,), stored="float16")
    with pytest.raises(RowFileError, match="beyond what float16 holds"):
        writer.append(np.array([1.0, 7e4], np.float32))
    with pytest.raises(RowFileError, match="shape"):
        writer.append(np.zeros(3, np.float32))
    tokens = RowWriter(tmp_path / "t", row_shape=(2,), stored="int32")
    with pytest.raises(RowFileError, match="int32"):
        tokens.append(np.array([1, 2**40], np.int64))
    assert writer.rows(served="float32").shape == (0, 2)
    assert (tmp_path / "f").stat().st_size == 0


def test_rows_survive_pickling_into_another_process(tmp_path, array) -> None:
    rows = written(tmp_path, array).view([5, 6])
    again = pickle.loads(pickle.dumps(rows))
    assert np.array_equal(again[:], rows[:]) and again._file is not rows._file


def test_pooled_rows_read_each_part_lazily(tmp_path, array) -> None:
    disk = written(tmp_path, array)
    memory = np.random.default_rng(1).normal(size=(4, 2, 3, 3)).astype(np.float32)
    pooled = concatenate([memory, disk.view([1, 2]), memory])
    assert isinstance(pooled, ChainedRows) and pooled.shape == (10, 2, 3, 3)
    expected = np.concatenate([memory, np.asarray(disk)[[1, 2]], memory])
    assert np.array_equal(pooled[[9, 0, 4, 5, 6]], expected[[9, 0, 4, 5, 6]])
    assert np.array_equal(pooled.view([5, 4])[:], expected[[5, 4]])
    assert isinstance(concatenate([memory, memory]), np.ndarray)


def test_unkept_rows_have_a_length_and_refuse_to_be_read() -> None:
    rows = UnkeptRows(count=7, row_shape=(1, 4, 4), served="float32")
    assert len(rows) == 7 and len(select(rows, [1, 2])) == 2
    with pytest.raises(RowFileError, match="validated, not kept"):
        rows[0]
