import os
import shutil
import time
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


def entries(cache: Path) -> list[Path]:
    """What the cache folder holds besides its lock."""
    return sorted(path for path in cache.iterdir() if path.name != sitecache.LOCK_FILE)


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
    assert len(entries(cache)) == 1


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
    assert len(entries(cache)) == 1  # old entries are dropped


@pytest.mark.parametrize("damage", ["garbage meta", "cut meta", "empty meta", "fifo meta",
                                    "symlink meta", "wrong counts", "cut row file", "no meta",
                                    "a file"])
def test_corrupt_cache_entry_is_rebuilt_and_folder_errors_still_raise(
        site_copy: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    expected = load_site_cached(site_copy, CONFIG, cache).images[:]
    entry = entries(cache)[0]
    meta = entry / sitecache.META_FILE
    if damage == "garbage meta":
        meta.write_bytes(b"garbage")
    elif damage == "cut meta":
        meta.write_bytes(meta.read_bytes()[:-200])
    elif damage == "empty meta":
        meta.write_bytes(b"")
    elif damage == "fifo meta":  # opening it must not block
        meta.unlink()
        os.mkfifo(meta)
    elif damage == "symlink meta":  # even to a whole copy: a link is not followed
        shutil.copy(meta, tmp_path / "elsewhere.npz")
        meta.unlink()
        meta.symlink_to(tmp_path / "elsewhere.npz")
    elif damage == "wrong counts":
        with np.load(meta) as stored:
            arrays = dict(stored)
        np.savez(meta, **{**arrays, "masks": arrays["masks"][:-1]})
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
    assert [path.name for path in entries(cache)] == [entry.name]
    (site_copy / "manifest.csv").unlink()
    with pytest.raises(SiteDataError, match="missing"):
        load_site_cached(site_copy, CONFIG, cache)


def test_cached_rows_are_the_decoded_ones_in_their_formats_read_a_batch_at_a_time(
        site_copy: Path, tmp_path: Path) -> None:
    fresh = load_site(site_copy, CONFIG)
    cached = load_site_cached(site_copy, CONFIG, tmp_path / "cache")
    assert isinstance(cached.images, DiskRows) and isinstance(cached.signals, DiskRows)
    assert np.abs(cached.images[:] - fresh.images).max() <= 2 / 65535 + 1e-6  # half a level
    assert np.array_equal(cached.signals[:], fresh.signals.astype(np.float16).astype(np.float32))
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
    assert entries(cache) == []
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
    assert "No space left on device" in message and "MB of free disk there" in message
    assert entries(cache) == []


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


def test_a_cache_that_cannot_be_read_now_is_kept_and_named(
        site_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    load_site_cached(site_copy, CONFIG, cache)
    entry = entries(cache)[0]

    def no_descriptors_left(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(sitecache, "_open_entry", no_descriptors_left)
    with pytest.raises(SiteDataError, match="Too many open files") as caught:
        load_site_cached(site_copy, CONFIG, cache)
    assert "free disk" not in str(caught.value)  # not the full-disk advice
    assert (entry / sitecache.META_FILE).is_file()  # not taken for a damaged entry


def test_two_processes_at_once_build_it_once_and_a_crashs_leftover_goes(
        site_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    cache = tmp_path / "cache"
    leftover = cache / f"{sitecache.BUILDING_PREFIX}site-killed-build"
    leftover.mkdir(parents=True)
    (leftover / "images.rows").write_bytes(b"\0" * 4096)
    builds: list[int] = []
    real = sitecache.load_site

    def counted(*args, **kwargs):
        builds.append(1)
        time.sleep(1.5)  # the second starts meanwhile and must wait on the lock
        return real(*args, **kwargs)

    monkeypatch.setattr(sitecache, "load_site", counted)
    loaded: list = []
    threads = [threading.Thread(  # separate lock descriptors: as two processes would hold
        target=lambda: loaded.append(load_site_cached(site_copy, CONFIG, cache)))
        for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(timeout=120)
    assert len(loaded) == 2 and builds == [1]
    assert np.array_equal(loaded[0].images[:], loaded[1].images[:])
    assert [path.name for path in entries(cache)] == [loaded[0].images.path.parent.name]


def test_too_little_disk_is_said_before_anything_is_read(
        site_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as shell

    cache = tmp_path / "cache"
    real = shell.disk_usage
    monkeypatch.setattr(sitecache.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=1000))
    monkeypatch.setattr(sitecache, "load_site", lambda *a, **k: pytest.fail("read the site"))
    with pytest.raises(SiteDataError) as caught:
        load_site_cached(site_copy, DataConfig(image_size=224), cache)
    # 60 rows × (224² pixels + 1,000 signal values) × 2 bytes + 48 tokens × 4 bytes
    assert "0.0 MB free, about 6.2 MB needed" in str(caught.value)
    assert "6.2 MB of free disk there" in str(caught.value)
    assert not any(path.name.startswith("site-") for path in cache.iterdir())


def test_training_and_evaluation_read_one_batch_at_a_time(
        site_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from client.training import RoundPlan, train_local
    from common.config import RunConfig
    from common.evaluation import evaluate_model
    from common.model_inputs import load_model_inputs
    from common.models import build_model
    from common.serialization import model_weights

    config = RunConfig.model_validate({
        "model": {"embed_dim": 8, "hidden_dim": 16},
        "training": {"batch_size": 8, "local_epochs": 1},
        "privacy": {"grad_sample_mode": "hooks", "noise_multiplier": 1.0}})
    data = load_model_inputs(site_copy, config)
    reads: list[int] = []
    real = DiskRows._read_base
    monkeypatch.setattr(DiskRows, "_read_base",
                        lambda self, rows: reads.append(len(rows)) or real(self, rows))
    model = build_model(data=config.data, model=config.model, seed=0)
    train_local(config=config, global_weights=model_weights(model), data=data,
                plan=RoundPlan(sample_rate=8 / 60, steps=6, noise_multiplier=1.0,
                               steps_per_epoch=6), history=[])
    assert len(reads) >= 3 * 6 and max(reads) < 30  # Poisson batches of 8 expected, of 60
    reads.clear()
    evaluate_model(model, data, data_config=config.data, batch_size=16)
    assert max(reads) == 16 and sum(reads) == 3 * 60


@pytest.mark.parametrize("planted", ["symlink", "folder"])
def test_something_planted_where_the_lock_goes_is_replaced(site_copy: Path, tmp_path: Path,
                                                          planted: str) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    lock = cache / sitecache.LOCK_FILE
    if planted == "symlink":
        (tmp_path / "elsewhere").write_text("x")
        lock.symlink_to(tmp_path / "elsewhere")
    else:
        (lock / "inside").mkdir(parents=True)
    assert len(load_site_cached(site_copy, CONFIG, cache)) == 60
    assert lock.is_file() and not lock.is_symlink()
    assert (tmp_path / "elsewhere").read_text() == "x" if planted == "symlink" else True


def test_an_entry_is_the_sites_own_account_only(site_copy: Path, tmp_path: Path) -> None:
    """Patients' preprocessed data: the entry folder 0700, every file in it 0600 (the state
    folder around it is 0700 too, tests/attacks/test_local_user.py)."""
    import stat

    cache = tmp_path / "cache"
    load_site_cached(site_copy, CONFIG, cache)
    entry = entries(cache)[0]
    assert stat.S_IMODE(entry.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in entry.iterdir()} == {0o600}
