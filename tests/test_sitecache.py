import os
from pathlib import Path

import numpy as np
import pytest

from common import sitecache
from common.config import DataConfig
from common.sitecache import load_site_cached
from common.sitedata import SiteDataError

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


def test_corrupt_cache_entry_is_rebuilt_and_folder_errors_still_raise(
        site_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_site_cached(site_copy, CONFIG, cache)
    entry = next(cache.iterdir())
    entry.write_bytes(b"garbage")
    assert len(load_site_cached(site_copy, CONFIG, cache)) > 0
    (site_copy / "manifest.csv").unlink()
    with pytest.raises(SiteDataError, match="missing"):
        load_site_cached(site_copy, CONFIG, cache)


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
