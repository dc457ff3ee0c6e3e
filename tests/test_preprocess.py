import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import DataConfig
from common.preprocess import (
    SampleError,
    describe_image,
    read_image,
    read_image_pixels,
    read_signal,
    read_text,
    resolve_inside,
    tokenize,
)
from common.read_limits import DEFAULT_READ_LIMITS

CONFIG = DataConfig()


def _wav(path: Path, samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}[width]
        handle.writeframes(samples.astype(dtype).tobytes())


def test_png_grey_and_rgb_and_npy_become_standardised_squares(tmp_path: Path) -> None:
    grey = (np.arange(64 * 48) % 255).reshape(48, 64).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "c.jpg")
    np.save(tmp_path / "a.npy", grey.astype(np.float32))
    for name in ("g.png", "c.jpg", "a.npy"):
        image = read_image(tmp_path / name, CONFIG)
        assert image.shape == (1, 32, 32) and image.dtype == np.float32
        assert image.min() >= -2.1 and image.max() <= 2.1
    rgb = read_image(tmp_path / "c.jpg", DataConfig(image_channels=3))
    assert rgb.shape == (3, 32, 32)


def test_truncated_image_is_a_clear_error(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleError, match="unreadable or truncated image"):
        read_image(tmp_path / "t.png", CONFIG)
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(SampleError, match="empty"):
        read_image(tmp_path / "e.png", CONFIG)


def test_huge_files_and_decompression_bombs_are_refused_before_decoding(tmp_path: Path) -> None:
    with (tmp_path / "huge.npy").open("wb") as handle:  # sparse: costs no disk
        handle.truncate(DEFAULT_READ_LIMITS.max_file_bytes + 1)
    too_big = (r"file is 268,435,457 bytes > limit 268,435,456 bytes "
               r"\(read_limits.max_file_bytes in the site policy\)")
    with pytest.raises(SampleError, match=too_big):
        read_image(tmp_path / "huge.npy", CONFIG)
    with pytest.raises(SampleError, match=too_big):
        read_signal(tmp_path / "huge.npy", CONFIG)
    Image.new("1", (8000, 8000)).save(tmp_path / "bomb.png")  # a few KB on disk, 64 M pixels
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(SampleError, match="image 8000×8000×1 = 64 M pixel values > limit 40 M"):
        read_image(tmp_path / "bomb.png", CONFIG)


def test_tokenizer_is_deterministic_and_pads() -> None:
    ids = tokenize("Cough, fever; COUGH", CONFIG)
    assert ids.shape == (CONFIG.max_text_tokens,)
    assert ids[0] == ids[2] != ids[1]
    assert (ids[3:] == 0).all() and (ids[:3] > 0).all()
    assert (tokenize("cough fever cough", CONFIG) == ids).all()


def test_text_from_file_and_inline(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("chest pain")
    assert (read_text("note.txt", tmp_path, CONFIG) == read_text("chest pain", tmp_path,
                                                                CONFIG)).all()
    with pytest.raises(SampleError, match="no words"):
        read_text("...", tmp_path, CONFIG)


def test_wav_is_resampled_cropped_and_standardised(tmp_path: Path) -> None:
    t = np.arange(8000 * 6) / 8000
    _wav(tmp_path / "s.wav", 10000 * np.sin(2 * np.pi * 5 * t), 8000)
    signal = read_signal(tmp_path / "s.wav", CONFIG)
    assert signal.shape == (1, CONFIG.signal_length)
    assert abs(float(signal.mean())) < 1e-3 and abs(float(signal.std()) - 1) < 1e-3
    _wav(tmp_path / "st.wav", np.zeros(400), 200, width=1, channels=2)
    assert read_signal(tmp_path / "st.wav", CONFIG).shape == (1, CONFIG.signal_length)


def test_log_mel_features(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.random.default_rng(0).standard_normal(1000))
    features = read_signal(tmp_path / "s.npy", DataConfig(signal_features="log_mel"))
    assert features.shape == (32, 1000 // 16 + 1)
    assert np.isfinite(features).all()


def test_bad_signals_are_named(tmp_path: Path) -> None:
    np.save(tmp_path / "nan.npy", np.array([0.0, np.nan, 1.0]))
    with pytest.raises(SampleError, match="1 NaN or infinite"):
        read_signal(tmp_path / "nan.npy", CONFIG)
    np.save(tmp_path / "cube.npy", np.zeros((3, 3, 3)))
    with pytest.raises(SampleError, match=r"expected samples \(1-D\) or channels × samples"):
        read_signal(tmp_path / "cube.npy", CONFIG)
    np.save(tmp_path / "two.npy", np.zeros((2, 300)))
    with pytest.raises(SampleError, match=r"recording has 2 channels; data\.signal_channels = 3"):
        read_signal(tmp_path / "two.npy", DataConfig(signal_channels=3))
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEfmt garbage")
    with pytest.raises(SampleError, match="not a PCM WAV"):
        read_signal(tmp_path / "bad.wav", CONFIG)


def test_paths_may_not_leave_the_site(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (site / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(SampleError, match="leaves the site folder"):
        resolve_inside(site, "../secret.png")
    with pytest.raises(SampleError, match="leaves the site folder"):
        resolve_inside(site, "link.png")
    with pytest.raises(SampleError, match="absolute path"):
        resolve_inside(site, str(tmp_path / "secret.png"))
    with pytest.raises(SampleError, match="not found"):
        resolve_inside(site, "missing.png")


def test_real_dicom_ct_and_mr_slices() -> None:
    """pydicom ships small real CT and MR files; they must load like any other image (how
    each is windowed: tests/test_dicom.py)."""
    from tests.test_dicom import pydicom_file

    for name in ("CT_small.dcm", "MR_small.dcm"):
        image = read_image(pydicom_file(name), DataConfig(dicom_window="min_max"))
        assert image.shape == (1, 32, 32)
        assert image.min() < -1.5  # min-max scaled to [0, 1], standardised, then resized
        assert image.max() > 1.0


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grey_keeps_every_level(tmp_path: Path, suffix: str) -> None:
    """A 16-bit scan's levels all count (min-max over its own range); converting it to 8-bit
    grey first would have clipped everything above 255 to white."""
    levels = np.linspace(0, 60_000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / f"scan{suffix}")
    pixels = read_image_pixels(tmp_path / f"scan{suffix}")
    assert pixels.shape == (64, 64, 1)
    np.testing.assert_allclose(pixels[:, :, 0], levels / 60_000, atol=1e-6)
    assert "÷ 255" not in describe_image(tmp_path / f"scan{suffix}")
    Image.fromarray((levels // 256).astype(np.uint8)).save(tmp_path / "eight.png")
    assert describe_image(tmp_path / "eight.png") == "PNG L: ÷ 255"


def test_unreadable_dicom_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(SampleError, match="unreadable DICOM"):
        read_image(tmp_path / "bad.dcm", CONFIG)


def _resampled_whole(samples: np.ndarray, rate: int, config: DataConfig) -> np.ndarray:
    """What reading a WAV did before the crop moved ahead of the resampling: all of it resampled,
    then centre-cropped or padded."""
    target = config.signal_sample_rate
    if rate != target:
        count = max(1, round(samples.size / rate * target))
        samples = np.interp(np.arange(count) / target, np.arange(samples.size) / rate, samples)
    length = config.signal_length
    if samples.size >= length:
        start = (samples.size - length) // 2
        return samples[start : start + length]
    return np.pad(samples, (0, length - samples.size))


@pytest.mark.parametrize(("rate", "seconds"), [(8000, 6.0), (44100, 7.3), (200, 9.0), (200, 2.0),
                                              (333, 12.7), (1, 4000.0), (97, 3.0), (16000, 0.01)])
def test_wav_cropped_before_resampling_gives_the_same_numbers(tmp_path: Path, rate: int,
                                                              seconds: float) -> None:
    rng = np.random.default_rng(rate)
    samples = rng.integers(-30000, 30000, max(1, round(rate * seconds)))
    _wav(tmp_path / "s.wav", samples, rate)
    expected = _resampled_whole(samples / np.iinfo(np.int16).max, rate, CONFIG)
    expected = (expected - expected.mean()) / (expected.std() if expected.std() > 1e-8 else 1.0)
    assert np.array_equal(read_signal(tmp_path / "s.wav", CONFIG)[0], expected.astype(np.float32))


def test_read_limits_are_the_sites_and_name_themselves(tmp_path: Path) -> None:
    from common.read_limits import ReadLimits

    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png", CONFIG).shape == (1, 32, 32)
    with pytest.raises(SampleError, match=r"image 40×30×1 = 1,200 pixel values > limit 1,000 "
                       r"pixel values \(read_limits.max_image_pixels in the site policy\)"):
        read_image(tmp_path / "p.png", CONFIG, limits=ReadLimits(max_image_pixels=1000))
    np.save(tmp_path / "s.npy", np.zeros(5000))
    with pytest.raises(SampleError, match="signal array 5000 = 5,000 values > limit 4,096"):
        read_signal(tmp_path / "s.npy", CONFIG, limits=ReadLimits(max_signal_samples=4096))
    _wav(tmp_path / "fast.wav", np.zeros(100), 96_000)
    with pytest.raises(SampleError, match=r"WAV sample rate 96000 Hz outside 1\.\.48000 Hz"):
        read_signal(tmp_path / "fast.wav", CONFIG, limits=ReadLimits(max_signal_rate_hz=48_000))
    (tmp_path / "n.txt").write_text("chest pain " * 100)
    with pytest.raises(SampleError, match=r"read_limits\.max_note_bytes"):
        read_text("n.txt", tmp_path, CONFIG, limits=ReadLimits(max_note_bytes=100))


def test_tokenizer_looks_only_for_the_words_it_keeps() -> None:
    ids = tokenize("a " * 5_000_000, CONFIG)  # 5 M words: the first max_text_tokens are kept
    assert ids.shape == (CONFIG.max_text_tokens,) and ids.all()


@pytest.mark.parametrize("values", [
    np.random.default_rng(0).uniform(10_000, 10_050, (16, 16)),  # float64 far from zero
    np.array([[16_777_217, 16_777_218], [16_777_219, 16_777_217]], np.int64)])  # past 2^24
def test_pictures_far_from_zero_stay_in_the_unit_range(tmp_path: Path, values) -> None:
    """float32 rounds such values; the picture still lands in [0, 1] (standardised [-2, 2]),
    what the site cache's format holds."""
    from common.sitecache import FORMATS

    path = tmp_path / "far.npy"
    np.save(path, values)
    pixels = read_image_pixels(path)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    FORMATS["images"].encode(read_image(path, DataConfig()))  # kept, not refused
