"""Fixed, deterministic preprocessing of one sample's files into arrays.

Every reader raises :class:`SampleError` with a short reason a person can act on; the manifest
validator turns those into one line per bad row. NumPy only (no torch): validation runs in
processes that never train.

- image: PNG/JPEG (grey or RGB) via Pillow, ``.npy`` (H×W, H×W×C or C×H×W), DICOM via the optional
  ``pydicom`` extra; resized to ``image_size``², scaled to [0, 1] (8-bit: /255; 16-bit, CT numbers
  and floats: per-image min-max), then standardised around 0.5 with scale 0.25 → about [-2, 2].
- text: lower-cased word pieces ``[a-z0-9]+`` hashed by CRC-32 into ``vocab_size - 1`` buckets
  (id 0 is padding); truncated / padded to ``max_text_tokens``. No vocabulary file, no download.
- audio / biosignal: PCM WAV (8/16/24/32-bit integer, mono or first channel) resampled linearly to
  ``signal_sample_rate``, or ``.npy`` 1-D (taken to be at ``signal_sample_rate`` already); centre-
  cropped or zero-padded to ``signal_length``; standardised per sample (z-score). Optionally a
  log-mel spectrogram (``signal_features = "log_mel"``).
"""

from __future__ import annotations

import re
import wave
import zlib
from pathlib import Path

import numpy as np

from common.config import DataConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".npy", ".dcm"}
SIGNAL_SUFFIXES = {".wav", ".npy"}
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # ~6300²: larger pictures are refused before they are decoded
N_MELS = 32
LOG_MEL_FFT = 64
LOG_MEL_HOP = 16
_WORD = re.compile(r"[a-z0-9]+")


class SampleError(ValueError):
    """One file or cell of one sample cannot be used; the message says why."""


def _check_size(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        raise SampleError("file is empty (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise SampleError(f"file is {size} bytes, over the {MAX_FILE_BYTES} byte limit")


def _resize_and_standardise(pixels: np.ndarray, config: DataConfig) -> np.ndarray:
    """``pixels``: float array H×W×C in [0, 1] → C×S×S float32, standardised."""
    from PIL import Image

    size = config.image_size
    channels = []
    for c in range(pixels.shape[2]):
        plane = Image.fromarray(pixels[:, :, c].astype(np.float32), mode="F")
        channels.append(np.asarray(plane.resize((size, size), Image.Resampling.BILINEAR)))
    stacked = np.stack(channels, axis=0)
    if config.image_channels == 1 and stacked.shape[0] == 3:
        stacked = (0.299 * stacked[0] + 0.587 * stacked[1] + 0.114 * stacked[2])[None]
    elif config.image_channels == 3 and stacked.shape[0] == 1:
        stacked = np.repeat(stacked, 3, axis=0)
    return ((stacked - 0.5) / 0.25).astype(np.float32)


def _scale_unit(array: np.ndarray) -> np.ndarray:
    """8-bit pixels: /255. Anything else (16-bit scans, CT numbers, floats): per-image min-max."""
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    values = array.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high <= low else (values - low) / (high - low)


def _as_hwc(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return array[:, :, :3] if array.shape[2] == 4 else array
    if array.ndim == 3 and array.shape[0] in (1, 3):
        return np.moveaxis(array, 0, 2)
    raise SampleError(f"image array has shape {array.shape}; expected H×W, H×W×C or C×H×W")


def read_image(path: Path, config: DataConfig) -> np.ndarray:
    """Read and preprocess one image file → float32 array C×S×S."""
    return _resize_and_standardise(read_image_pixels(path), config)


def read_image_pixels(path: Path) -> np.ndarray:
    """Read one image file → float64 array H×W×C (C = 1 or 3) scaled to [0, 1], unresized."""
    _check_size(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise SampleError(f"image type '{suffix}' not supported; use PNG, JPEG, .npy or .dcm")
    if suffix == ".npy":
        array = _load_npy(path)
    elif suffix == ".dcm":
        array = _read_dicom(path)
    else:
        array = _read_picture(path)
    hwc = _as_hwc(array)
    if not np.all(np.isfinite(hwc)):
        raise SampleError("image contains NaN or infinite values")
    return _scale_unit(hwc)


def _read_picture(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as probe:
            width, height = probe.size
            if width * height > MAX_IMAGE_PIXELS:
                raise SampleError(f"image is {width}×{height} pixels, over the "
                                  f"{MAX_IMAGE_PIXELS} pixel limit; downscale it")
            probe.verify()
        with Image.open(path) as img:
            img.load()
            mode = "RGB" if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else "L"
            return np.asarray(img.convert(mode))
    except SampleError:
        raise
    except Image.DecompressionBombError as error:
        raise SampleError(f"{error}; downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise SampleError(f"unreadable or truncated image ({error})") from None


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise SampleError("DICOM needs the optional extra: pip install 'fedmm[dicom]'") from None
    try:
        dataset = pydicom.dcmread(path)
        pixels = np.asarray(dataset.pixel_array)
    except Exception as error:  # pydicom raises many unrelated types for bad files
        raise SampleError(f"unreadable DICOM ({type(error).__name__}: {error})") from None
    if pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4):
        pixels = pixels[pixels.shape[0] // 2]  # a volume: take the middle slice
    return pixels


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise SampleError(f"unreadable .npy file ({error})") from None
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise SampleError(f".npy array has dtype {array.dtype}; expected real numbers")
    return array


def tokenize(text: str, config: DataConfig) -> np.ndarray:
    """Hash word pieces into ``[1, vocab_size)``; 0 pads. Returns int64 array of fixed length."""
    words = _WORD.findall(text.lower())[: config.max_text_tokens]
    ids = np.zeros(config.max_text_tokens, dtype=np.int64)
    for i, word in enumerate(words):
        ids[i] = 1 + zlib.crc32(word.encode("utf-8")) % (config.vocab_size - 1)
    return ids


def note_is_a_file(cell: str) -> bool:
    """A text cell ending in ``.txt`` names a file; anything else is the note itself."""
    return cell.lower().endswith(".txt")


def read_note(cell: str, site_dir: Path) -> str:
    """The note of a manifest cell (:func:`note_is_a_file`)."""
    if not note_is_a_file(cell):
        return cell
    path = resolve_inside(site_dir, cell)
    _check_size(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SampleError("text file is not UTF-8") from None


def read_text(cell: str, site_dir: Path, config: DataConfig) -> np.ndarray:
    """The note of a manifest cell (:func:`read_note`) as hashed token ids."""
    ids = tokenize(read_note(cell, site_dir), config)
    if not ids.any():
        raise SampleError("text has no words")
    return ids


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    try:
        with wave.open(str(path), "rb") as handle:
            width, channels, rate = (
                handle.getsampwidth(),
                handle.getnchannels(),
                handle.getframerate(),
            )
            frames = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError, OSError) as error:
        raise SampleError(f"not a PCM WAV file ({error})") from None
    if width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8)
        raw = raw[: len(raw) // 3 * 3].reshape(-1, 3)
        ints = (raw[:, 0].astype(np.int32) | raw[:, 1].astype(np.int32) << 8
                | raw[:, 2].astype(np.int32) << 16)
        samples = np.where(ints >= 1 << 23, ints - (1 << 24), ints).astype(np.float64) / (1 << 23)
    elif width in (1, 2, 4):
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
        samples = np.frombuffer(frames[: len(frames) // width * width], dtype=dtype)
        samples = samples.astype(np.float64)
        samples = (samples - 128) / 128 if width == 1 else samples / np.iinfo(dtype).max
    else:
        raise SampleError(f"WAV sample width {width} bytes not supported")
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels)[:, 0]
    if samples.size == 0:
        raise SampleError("WAV file has no samples")
    return samples, rate


def _resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return samples
    duration = samples.size / source_rate
    count = max(1, round(duration * target_rate))
    source_times = np.arange(samples.size) / source_rate
    return np.interp(np.arange(count) / target_rate, source_times, samples)


def _fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    if samples.size >= length:
        start = (samples.size - length) // 2
        return samples[start : start + length]
    return np.pad(samples, (0, length - samples.size))


def read_signal(path: Path, config: DataConfig) -> np.ndarray:
    """Read and preprocess one signal → float32 array 1×L (raw) or N_MELS×frames (log-mel)."""
    _check_size(path)
    suffix = path.suffix.lower()
    if suffix not in SIGNAL_SUFFIXES:
        raise SampleError(f"signal type '{suffix}' not supported; use PCM .wav or 1-D .npy")
    if suffix == ".npy":
        array = _load_npy(path)
        if array.ndim != 1:
            raise SampleError(f"signal .npy has shape {array.shape}; expected a 1-D array")
        samples = array.astype(np.float64)
    else:
        raw, rate = _read_wav(path)
        samples = _resample(raw, rate, config.signal_sample_rate)
    if not np.all(np.isfinite(samples)):
        bad = int(np.size(samples) - np.isfinite(samples).sum())
        raise SampleError(f"signal has {bad} NaN or infinite values; clean or drop this recording")
    fitted = _fit_length(samples, config.signal_length)
    std = float(fitted.std())
    standardised = (fitted - fitted.mean()) / (std if std > 1e-8 else 1.0)
    if config.signal_features == "log_mel":
        return log_mel(standardised, config.signal_sample_rate)
    return standardised.astype(np.float32)[None, :]


def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular mel filters, shape ``n_mels × (n_fft // 2 + 1)`` (HTK mel scale)."""

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (mel / 2595.0) - 1.0)

    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(0, hz_to_mel(np.array(sample_rate / 2)), n_mels + 2))
    bank = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        low, centre, high = edges[m], edges[m + 1], edges[m + 2]
        rising = (bins - low) / max(centre - low, 1e-9)
        falling = (high - bins) / max(high - centre, 1e-9)
        bank[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


def signal_shape(config: DataConfig) -> tuple[int, int]:
    """The array one signal becomes: 1×L (raw) or N_MELS×frames (log-mel)."""
    if config.signal_features == "log_mel":
        return N_MELS, config.signal_length // LOG_MEL_HOP + 1
    return 1, config.signal_length


def log_mel(samples: np.ndarray, sample_rate: int, n_fft: int = LOG_MEL_FFT,
            hop: int = LOG_MEL_HOP) -> np.ndarray:
    """Log-mel spectrogram (Hann window, power spectrum) → float32 ``N_MELS × frames``."""
    padded = np.pad(samples, (n_fft // 2, n_fft // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2
    mel = spectrum @ mel_filterbank(n_fft, sample_rate).T
    return np.log(mel + 1e-6).T.astype(np.float32)


def resolve_inside(site_dir: Path, cell: str) -> Path:
    """Resolve a manifest path relative to the site folder; refuse anything that escapes it."""
    relative = Path(cell)
    if relative.is_absolute():
        raise SampleError(f"absolute path '{cell}' refused; paths must be inside the site folder")
    root = site_dir.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise SampleError(f"path '{cell}' leaves the site folder; refused")
    if not target.is_file():
        raise SampleError(f"file '{cell}' not found")
    return target
