import pickle
from pathlib import Path

import numpy as np
import pytest

from common.rowstore import (
    ChainedRows,
    DiskRows,
    RowFileError,
    RowFormat,
    RowWriter,
    UnkeptRows,
    concatenate,
    select,
    take,
)

HALF = RowFormat(stored="float16", served="float32")
FIXED = RowFormat(stored="uint16", served="float32", scale=4 / 65535, offset=-2.0)


def written(tmp_path: Path, array: np.ndarray, *, form: RowFormat = HALF,
            name: str = "rows") -> DiskRows:
    writer = RowWriter(tmp_path / name, row_shape=array.shape[1:], form=form)
    for row in array:
        writer.append(row)
    return writer.rows()


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
        DiskRows(path, form=HALF, row_shape=(2, 3, 3), count=23)
    with pytest.raises(RowFileError, match="cut short"):  # changed under an open reader
        rows[22]


def test_values_the_stored_dtype_cannot_hold_are_refused_and_nothing_written(tmp_path) -> None:
    writer = RowWriter(tmp_path / "f", row_shape=(2,), form=HALF)
    with pytest.raises(RowFileError, match="beyond what float16 holds"):
        writer.append(np.array([1.0, 7e4], np.float32))
    with pytest.raises(RowFileError, match="NaN or infinite"):
        writer.append(np.array([1.0, np.nan], np.float32))
    with pytest.raises(RowFileError, match="shape"):
        writer.append(np.zeros(3, np.float32))
    tokens = RowWriter(tmp_path / "t", row_shape=(2,), form=RowFormat(stored="int32",
                                                                        served="int64"))
    with pytest.raises(RowFileError, match="int32"):
        tokens.append(np.array([1, 2**40], np.int64))
    fixed = RowWriter(tmp_path / "x", row_shape=(2,), form=FIXED)
    with pytest.raises(RowFileError, match=r"outside \[-2, 2\]"):
        fixed.append(np.array([0.0, 2.01], np.float32))
    assert writer.rows().shape == (0, 2) and fixed.rows().shape == (0, 2)
    assert (tmp_path / "f").stat().st_size == 0 == (tmp_path / "x").stat().st_size


def _read_in_this_process(rows: DiskRows) -> tuple[int, np.ndarray]:
    import os

    return os.getpid(), rows[:]


def test_rows_survive_pickling_into_another_process(tmp_path, array) -> None:
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    rows = written(tmp_path, array).view([5, 6])
    again = pickle.loads(pickle.dumps(rows))
    assert np.array_equal(again[:], rows[:]) and again._file is not rows._file
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pid, read = pool.submit(_read_in_this_process, rows).result(timeout=60)
    assert pid != os.getpid() and np.array_equal(read, rows[:])
    (tmp_path / "rows").unlink()  # the cache rebuilt meanwhile: a clear error, not a traceback
    with pytest.raises(RowFileError, match=r"gone .* load the site again"):
        pickle.loads(pickle.dumps(rows))


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


def test_fixed_point_keeps_every_level_of_a_16_bit_scan(tmp_path) -> None:
    """Standardised pictures, (x − 0.5) / 0.25 for x = k / 65535, come back within half a
    level: every one of the 65,536 levels stays distinct (float16 would keep about 12,000)."""
    levels = np.arange(65536, dtype=np.float64) / 65535
    pictures = ((levels.astype(np.float32) - 0.5) / 0.25).reshape(256, 1, 16, 16)
    rows = written(tmp_path, pictures, form=FIXED)
    back = rows[:]
    assert np.abs(back - pictures).max() <= 4 / 65535 / 2 + 1e-6
    assert len(np.unique(back)) == 65536
    assert len(np.unique(pictures.astype(np.float16))) < 20000
    edges = np.array([-2.0, np.nextafter(np.float32(-2), 0), -0.0, 0.0, 1e-40,
                      np.nextafter(np.float32(2), 0), 2.0, np.float32(2.0000002)], np.float32)
    back = FIXED.decode(FIXED.encode(edges))
    assert np.abs(back - np.clip(edges, -2, 2)).max() <= 4 / 65535 / 2 + 1e-6


def test_a_read_comes_in_pieces_and_short_reads_are_retried(tmp_path, array,
                                                            monkeypatch) -> None:
    import os

    from common import rowstore

    rows = written(tmp_path, array)
    monkeypatch.setattr(rowstore, "READ_PIECE_BYTES", 3 * rows.row_bytes)
    real, calls = os.pread, []

    def short(fd: int, n: int, at: int) -> bytes:  # the kernel may return less than asked
        calls.append(n)
        return real(fd, min(n, 100), at)

    monkeypatch.setattr(os, "pread", short)
    expected = array.astype(np.float16).astype(np.float32)
    assert np.array_equal(rows[:], expected)
    # 8 pieces of at most 3 rows (108 bytes), each but the last read in two calls
    assert max(calls) <= 3 * rows.row_bytes and len(calls) == 7 * 2 + 1


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_link_or_fifo_in_place_of_a_row_file_is_refused_without_blocking(
        tmp_path, array, kind) -> None:
    import os

    written(tmp_path, array)
    planted = tmp_path / "planted"
    if kind == "symlink":
        planted.symlink_to(tmp_path / "rows")
    else:
        os.mkfifo(planted)
    with pytest.raises(RowFileError, match="not a plain file"):
        DiskRows(planted, form=HALF, row_shape=(2, 3, 3), count=23)


@pytest.mark.parametrize("key", [1.5, True, (1, 2), np.zeros((2, 2), np.int64)])
def test_what_numpy_would_read_differently_is_refused(tmp_path, array, key) -> None:
    rows = written(tmp_path, array)
    with pytest.raises(IndexError):
        rows[key]


def test_take_and_select_pass_a_mask_through(tmp_path, array) -> None:
    rows = written(tmp_path, array)
    mask = np.arange(23) % 2 == 1
    assert np.array_equal(take(rows, mask), rows[:][mask])
    assert len(select(rows, mask)) == 11 == len(select(array, mask))
