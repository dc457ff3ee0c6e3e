import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from common import sitecache
from common.config import DataConfig
from common.evaluation import dataset_of
from common.rowstore import DiskRows
from common.sitecache import load_site_cached
from common.sitedata import SiteDataError, load_site

CONFIG = DataConfig()


def test_second_read_comes_from_the_cache(site_copy: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = load_site_cached(site_copy, CONFIG, cache)

    def must_not_decode(*args: object) -> None:
        raise AssertionError("decoded the files again")

    monkeypatch.setattr(sitecache, "load_site", must_not_decode)
    second = load_site_cached(site_copy, CONFIG, cache)
    assert second.sample_ids == first.sample_ids
    for name in ("labels", "images", "tokens", "signals", "masks"):
        assert np.array_equal(getattr(second, name), getattr(first, name))
    assert len(list(cache.iterdir())) == 1


def test_a_changed_file_or_config_is_read_afresh(site_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_site_cached(site_copy, CONFIG, cache)
    image = next((site_copy / "images").iterdir())
    image.write_bytes(image.read_bytes()[:30])
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    data = load_site_cached(site_copy, CONFIG, cache)
    assert len(data.issues) == 1 and "truncated" in data.issues[0].reason
    other = load_site_cached(site_copy, DataConfig(image_size=16), cache)
    assert other.images.shape[2:] == (16, 16)
    assert len(list(cache.iterdir())) == 1  # old entries are dropped


@pytest.mark.parametrize("damage", ["garbage meta", "cut row file", "no meta", "a file"])
def test_corrupt_cache_entry_is_rebuilt_and_folder_errors_still_raise(
        site_copy: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    expected = load_site_cached(site_copy, CONFIG, cache).images[:]
    entry = next(cache.iterdir())
    if damage == "garbage meta":
        (entry / sitecache.META_FILE).write_bytes(b"garbage")
    elif damage == "cut row file":
        images = entry / sitecache.ROW_FILES["images"]
        images.write_bytes(images.read_bytes()[:-7])
    elif damage == "no meta":
        (entry / sitecache.META_FILE).unlink()
    else:
        shutil.rmtree(entry)
        entry.write_bytes(b"garbage")
    again = load_site_cached(site_copy, CONFIG, cache)
    assert np.array_equal(again.images[:], expected)
    assert [path.name for path in cache.iterdir()] == [entry.name]
    (site_copy / "manifest.csv").unlink()
    with pytest.raises(SiteDataError, match="missing"):
        load_site_cached(site_copy, CONFIG, cache)


def test_cached_rows_are_the_decoded_ones_in_float16_read_a_batch_at_a_time(
        site_copy: Path, tmp_path: Path) -> None:
    fresh = load_site(site_copy, CONFIG)
    cached = load_site_cached(site_copy, CONFIG, tmp_path / "cache")
    assert isinstance(cached.images, DiskRows) and isinstance(cached.signals, DiskRows)
    for name in ("images", "signals"):
        assert np.array_equal(getattr(cached, name)[:],
                              getattr(fresh, name).astype(np.float16).astype(np.float32))
    assert np.array_equal(cached.tokens[:], fresh.tokens) and cached.tokens.dtype == np.int64
    assert np.array_equal(cached.labels, fresh.labels)
    assert np.array_equal(cached.masks, fresh.masks)
    assert cached.rows == fresh.rows and cached.issues == fresh.issues
    subset = cached.subset(np.array([4, 1]))
    assert isinstance(subset.images, DiskRows)  # nothing read yet
    batch = dataset_of(subset).batch([1, 0])
    assert np.array_equal(batch[0].numpy(), cached.images[[1, 4]])


def test_a_crash_while_building_leaves_no_entry(site_copy: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    appended: list[int] = []
    real = sitecache.DiskSink.append

    def dies_at_the_third_row(self, *arrays):
        appended.append(1)
        if len(appended) == 3:
            raise KeyboardInterrupt
        real(self, *arrays)

    monkeypatch.setattr(sitecache.DiskSink, "append", dies_at_the_third_row)
    with pytest.raises(KeyboardInterrupt):
        load_site_cached(site_copy, CONFIG, cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(sitecache.DiskSink, "append", real)
    assert len(load_site_cached(site_copy, CONFIG, cache)) == 60


def test_a_full_disk_is_one_line_naming_the_folder_and_the_space(
        site_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from common.rowstore import RowWriter

    def full(self, stored) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RowWriter, "append_stored", full)
    cache = tmp_path / "cache"
    with pytest.raises(SiteDataError) as caught:
        load_site_cached(site_copy, CONFIG, cache)
    message = str(caught.value)
    assert "\n" not in message and str(cache) in message
    assert "No space left on device" in message and "GB for this site" in message
    assert list(cache.iterdir()) == []


def test_a_load_reads_the_manifest_once(site_copy, monkeypatch) -> None:
    from pathlib import Path

    from common.config import RunConfig
    from common.model_inputs import load_model_inputs

    reads: list[str] = []
    real_text, real_bytes = Path.read_text, Path.read_bytes

    def text(path: Path, *args, **kwargs):
        if path.name == "manifest.csv":
            reads.append("text")
        return real_text(path, *args, **kwargs)

    def raw(path: Path):
        if path.name == "manifest.csv":
            reads.append("bytes")
        return real_bytes(path)

    monkeypatch.setattr(Path, "read_text", text)
    monkeypatch.setattr(Path, "read_bytes", raw)
    for _ in range(2):  # a fresh read, then one from the cache
        reads.clear()
        load_model_inputs(site_copy, RunConfig())
        assert reads == ["text"]


def test_training_reads_the_site_from_its_row_files(site_copy: Path) -> None:
    from common.config import RunConfig
    from common.model_inputs import load_model_inputs

    data = load_model_inputs(site_copy, RunConfig())
    assert all(isinstance(rows, DiskRows) for rows in (data.images, data.tokens, data.signals))
