import os
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from common.config import DataConfig
from common.sitedata import (
    COLUMNS,
    SiteDataError,
    load_site,
    read_manifest,
    require_usable,
    split_train_validation,
    write_manifest,
)

CONFIG = DataConfig()


def _rows(site: Path) -> list[dict[str, str]]:
    return [{c: getattr(r, c) for c in COLUMNS} for r in read_manifest(site)]


def test_manifest_round_trip(site_copy: Path) -> None:
    rows = _rows(site_copy)
    rows[0]["text"] = 'a note, with "quotes" and commas'
    write_manifest(site_copy / "manifest.csv", rows)
    assert _rows(site_copy) == rows
    data = load_site(site_copy, CONFIG)
    assert len(data) == len(rows) and not data.issues
    assert data.images.shape[1:] == (1, 32, 32)
    assert data.tokens.shape[1:] == (CONFIG.max_text_tokens,)
    assert data.signals.shape[1:] == (1, CONFIG.signal_length)
    assert data.masks.all()


def _issue_for(site: Path, sample_id: str) -> str:
    data = load_site(site, CONFIG)
    found = [str(i) for i in data.issues if i.sample_id == sample_id]
    assert len(found) == 1, [str(i) for i in data.issues]
    assert sample_id not in data.sample_ids
    return found[0]


def test_every_row_error_class_is_named(site_copy: Path) -> None:
    rows = _rows(site_copy)
    ids = [r["sample_id"] for r in rows]
    # missing file
    rows[0]["image"] = "images/nope.png"
    # truncated image
    image = site_copy / rows[1]["image"]
    image.write_bytes(image.read_bytes()[:40])
    # non-finite signal
    np.save(site_copy / "signals" / "nan.npy", np.array([1.0, np.inf, 0.0]))
    rows[2]["audio"] = "signals/nan.npy"
    # unknown label (out of range) and wrong type
    rows[3]["label"] = "7"
    rows[4]["label"] = "pneumonia"
    # duplicate id
    rows[6]["sample_id"] = rows[5]["sample_id"]
    # non-PCM / empty WAV
    (site_copy / "signals" / "empty.wav").write_bytes(b"")
    rows[7]["audio"] = "signals/empty.wav"
    # path escaping the site
    rows[8]["image"] = "../outside.png"
    # no modality at all
    rows[9].update(image="", text="", audio="")
    write_manifest(site_copy / "manifest.csv", rows)
    assert "file 'images/nope.png' not found" in _issue_for(site_copy, ids[0])
    assert "unreadable or truncated image" in _issue_for(site_copy, ids[1])
    assert "NaN or infinite" in _issue_for(site_copy, ids[2])
    assert "label 7 outside 0..3" in _issue_for(site_copy, ids[3])
    assert ("'pneumonia' is neither an integer nor a name in data.label_names"
            in _issue_for(site_copy, ids[4]))
    data = load_site(site_copy, CONFIG)
    duplicate = [i for i in data.issues if "duplicate sample id" in i.reason]
    assert len(duplicate) == 1 and duplicate[0].line == 8
    assert "empty (0 bytes)" in _issue_for(site_copy, ids[7])
    assert "leaves the site folder" in _issue_for(site_copy, ids[8])
    assert "no modality present" in _issue_for(site_copy, ids[9])
    assert len(data) == len(rows) - 9  # rows 0-4 and 6-9 bad; row 5 keeps its id


def test_wrong_columns_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match=r"manifest\.csv: missing"):
        load_site(tmp_path, CONFIG)
    (tmp_path / "manifest.csv").write_text("id,label,image\n1,0,a.png\n")
    with pytest.raises(SiteDataError, match="expected exactly sample_id,label,image,text,audio"):
        load_site(tmp_path, CONFIG)
    with pytest.raises(SiteDataError, match="not a folder"):
        load_site(tmp_path / "nowhere", CONFIG)


def test_bom_and_semicolon_manifest_is_read(site_copy: Path) -> None:
    text = (site_copy / "manifest.csv").read_text()
    rows = _rows(site_copy)
    for row in rows:
        row["text"] = row["text"].replace(";", " ")
    lines = [";".join(COLUMNS)] + [";".join(r[c] for c in COLUMNS) for r in rows]
    (site_copy / "manifest.csv").write_text("\ufeff" + "\n".join(lines) + "\n")
    assert len(load_site(site_copy, CONFIG)) == len(rows)
    assert text  # original was comma-separated


def test_missing_modalities_are_masked(site_copy: Path) -> None:
    rows = _rows(site_copy)
    rows[0]["image"] = ""
    rows[1]["audio"] = ""
    rows[2]["text"] = ""
    write_manifest(site_copy / "manifest.csv", rows)
    data = load_site(site_copy, CONFIG)
    assert data.masks[:3].tolist() == [[False, True, True], [True, True, False],
                                       [True, False, True]]
    assert data.modality_coverage() == {"image": len(rows) - 1, "text": len(rows) - 1,
                                        "audio": len(rows) - 1}


def test_too_few_usable_rows_stop_with_a_clear_message(site_copy: Path) -> None:
    rows = _rows(site_copy)[:12]
    for row in rows[:5]:
        row["label"] = "-1"
    write_manifest(site_copy / "manifest.csv", rows)
    data = load_site(site_copy, CONFIG)
    with pytest.raises(SiteDataError, match=r"only 7 usable rows of 12 \(5 bad\); at least 10"):
        require_usable(data, CONFIG)


def test_split_is_deterministic_and_disjoint(demo_root: Path) -> None:
    data = load_site(demo_root / "site-02", CONFIG)
    train, validation = split_train_validation(data, 0.2)
    again, _ = split_train_validation(data, 0.2)
    assert train.sample_ids == again.sample_ids
    assert not set(train.sample_ids) & set(validation.sample_ids)
    assert len(train) + len(validation) == len(data) and len(validation) == 12


def test_wav_with_other_rate_is_accepted(site_copy: Path) -> None:
    rows = _rows(site_copy)
    with wave.open(str(site_copy / "signals" / "fast.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(np.zeros(16000, "<i2").tobytes())
    rows[0]["audio"] = "signals/fast.wav"
    write_manifest(site_copy / "manifest.csv", rows)
    assert not load_site(site_copy, CONFIG).issues
    shutil.rmtree(site_copy / "images")
    assert len(load_site(site_copy, CONFIG).issues) == len(rows)


def test_any_failure_reading_one_file_is_that_rows_issue(site_copy: Path, monkeypatch) -> None:
    """A decoder that runs out of memory or divides by zero costs its row, not the site."""
    import common.sitedata as sitedata

    real = sitedata.read_image
    failures = iter([MemoryError("Unable to allocate 1.49 GiB"), ZeroDivisionError()])

    def flaky(path, config, **kwargs):
        if path.name.endswith(("00001.png", "00002.png")):
            raise next(failures)
        return real(path, config, **kwargs)

    monkeypatch.setattr(sitedata, "read_image", flaky)
    data = load_site(site_copy, DataConfig())
    reasons = [issue.reason for issue in data.issues]
    assert reasons == ["could not be read (ran out of memory: Unable to allocate 1.49 GiB); "
                       "check or re-export this file",
                       "could not be read (ZeroDivisionError: no detail); check or re-export "
                       "this file"]
    assert len(data) == data.total_rows - 2


def test_a_policy_moves_the_read_limits_and_a_run_config_cannot(site_copy: Path) -> None:
    from pydantic import ValidationError

    from client.policy import SitePolicy
    from common.config import RunConfig
    from common.read_limits import ReadLimits

    strict = load_site(site_copy, DataConfig(), limits=ReadLimits(max_image_pixels=100))
    assert strict.issues and all("read_limits.max_image_pixels" in issue.reason
                                 for issue in strict.issues if "image" in issue.column)
    policy = SitePolicy.model_validate({"read_limits": {"max_image_pixels": 100}})
    assert policy.read_limits == ReadLimits(max_image_pixels=100)
    with pytest.raises(ValidationError):
        RunConfig.model_validate({"data": {"read_limits": {"max_image_pixels": 10**12}}})


def test_validation_keeps_no_rows_and_counts_what_training_keeps(site_copy: Path,
                                                                 tmp_path: Path,
                                                                 monkeypatch) -> None:
    import common.sitedata as sitedata
    from common.rowstore import RowFileError
    from common.sitecache import ValidationSink, load_site_cached

    (site_copy / "images" / os.listdir(site_copy / "images")[0]).write_bytes(b"not a png")
    real = sitedata._read_modalities

    def one_signal_too_loud(row, *args):  # beyond float16: the cache cannot keep it
        arrays = real(row, *args)
        if row.sample_id == read_manifest(site_copy)[5].sample_id:
            image, tokens, signal = arrays
            return image, tokens, signal + 1e5
        return arrays

    monkeypatch.setattr(sitedata, "_read_modalities", one_signal_too_loud)
    kept = load_site_cached(site_copy, CONFIG, tmp_path / "cache")  # as training keeps them
    checked = load_site(site_copy, CONFIG, sink=ValidationSink(CONFIG))
    assert len(checked) == len(kept) == 58 and checked.issues == kept.issues
    assert any("cannot be kept: a value beyond what float16 holds" in str(issue)
               for issue in kept.issues)
    assert checked.images.shape == kept.images.shape
    assert checked.label_counts() == kept.label_counts()
    assert checked.modality_coverage() == kept.modality_coverage()
    with pytest.raises(RowFileError, match="validated, not kept"):
        checked.images[0]


def test_a_row_its_sink_cannot_keep_is_that_rows_issue(site_copy: Path) -> None:
    from common.rowstore import RowFileError
    from common.sitedata import MemorySink

    class RefusesTheThird(MemorySink):
        def append(self, image, tokens, signal) -> None:
            self.seen = getattr(self, "seen", 0) + 1
            if self.seen == 3:
                raise RowFileError("a value beyond what float16 holds")
            super().append(image, tokens, signal)

    data = load_site(site_copy, CONFIG, sink=RefusesTheThird(CONFIG))
    assert len(data) == 59 and len(data.images) == 59
    assert [issue.column for issue in data.issues] == ["row"]
    assert "cannot be kept: a value beyond what float16 holds" in str(data.issues[0])
