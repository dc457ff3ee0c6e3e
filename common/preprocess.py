"""Fixed, deterministic preprocessing of one sample's files into arrays.

Every reader raises :class:`SampleError` with a short reason a person can act on; the manifest
validator turns those into one line per bad row. NumPy only (no torch): validation runs in
processes that never train.

Every reader checks what a file's header declares against the site's
:class:`~common.read_limits.ReadLimits` before it decodes anything.

- image: PNG/JPEG/TIFF (grey or RGB; 16-bit grey keeps every level; a TIFF's first page) via
  Pillow, ``.npy`` (H×W, H×W×C or C×H×W), DICOM via the optional ``pydicom`` extra (one frame,
  rescaled and windowed as :mod:`common.dicom` says); scaled to [0, 1] (8-bit: /255; 16-bit
  and floats: per-image min-max; DICOM: its window), resized to ``image_size``², then
  standardised around 0.5 with scale 0.25 → about [-2, 2].
- text: lower-cased word pieces ``[a-z0-9]+`` hashed by CRC-32 into ``vocab_size - 1`` buckets
  (id 0 is padding); truncated / padded to ``max_text_tokens``. No vocabulary file, no download.
- audio / biosignal: ``signal_channels`` channels (chosen as :mod:`common.biosignals` says)
  of a PCM WAV (8/16/24/32-bit integer), a DICOM waveform (a 12-lead ECG) or an EDF/BDF
  recording (optional ``pyedflib``), each resampled
  linearly to ``signal_sample_rate``, or of a ``.npy`` (samples, or channels × samples, taken
  to be at ``signal_sample_rate`` already); centre-cropped (a WAV is cropped to the frames the
  crop needs *before* it is read and resampled) or zero-padded to ``signal_length``; each
  channel standardised alone (z-score). Optionally a log-mel spectrogram per channel
  (``signal_features = "log_mel"``).
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
import wave
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.biosignals import (
    WFDB_HEADER_SUFFIX,
    SignalError,
    channel_indices,
    read_dicom_waveform,
    read_edf,
    read_wfdb,
)
from common.config import DataConfig
from common.dicom import DicomError
from common.read_limits import DEFAULT_READ_LIMITS, ReadLimits, over_limit

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".dcm"}
_COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr")
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_EIGHT_BIT_MODES = ("L", "1", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")
# the readers of recordings that carry their own rate and channel names (common.biosignals)
RECORDING_READERS = {".dcm": read_dicom_waveform, ".edf": read_edf, ".bdf": read_edf,
                     WFDB_HEADER_SUFFIX: read_wfdb}
SIGNAL_SUFFIXES = {".wav", ".npy", *RECORDING_READERS}
N_MELS = 32
LOG_MEL_FFT = 64
LOG_MEL_HOP = 16
_WORD = re.compile(r"[a-z0-9]+")


class SampleError(ValueError):
    """One file or cell of one sample cannot be used; the message says why."""


def _check_size(path: Path, limits: ReadLimits, field: str = "max_file_bytes") -> int:
    size = path.stat().st_size
    if size == 0:
        raise SampleError("file is empty (0 bytes)")
    if size > getattr(limits, field):
        raise SampleError(over_limit("file is", size, limits, field, "bytes"))
    return size


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
    """8-bit pixels: /255. Anything else (16-bit scans, CT numbers, floats): per-image min-max.
    float32, in place: one copy of the picture at most."""
    values = array.astype(np.float32)
    if array.dtype == np.uint8:
        values /= 255.0
        return values
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros_like(values)
    values -= np.float32(low)
    values /= np.float32(high - low)
    # float32 rounds values far from zero (float64 or wide integer arrays): clip the last ulp
    # back into [0, 1], where every later step (and the site cache's format) expects them
    return np.clip(values, 0.0, 1.0, out=values)


def _as_hwc(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return array[:, :, :3] if array.shape[2] == 4 else array
    if array.ndim == 3 and array.shape[0] in (1, 3):
        return np.moveaxis(array, 0, 2)
    raise SampleError(f"image array has shape {array.shape}; expected H×W, H×W×C or C×H×W")


def read_image(path: Path, config: DataConfig, *,
               limits: ReadLimits = DEFAULT_READ_LIMITS) -> np.ndarray:
    """Read and preprocess one image file → float32 array C×S×S."""
    return _resize_and_standardise(
        read_image_pixels(path, limits=limits, window=config.dicom_window), config)


def read_image_pixels(path: Path, *, limits: ReadLimits = DEFAULT_READ_LIMITS,
                      window: str = "file") -> np.ndarray:
    """Read one image file → float32 array H×W×C (C = 1 or 3) scaled to [0, 1], unresized
    (``window``: ``data.dicom_window``, for DICOM files)."""
    _check_size(path, limits)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise SampleError(f"image type '{suffix}' not supported; use PNG, JPEG, TIFF, .npy "
                          "or .dcm")
    if suffix == ".dcm":  # windowed to [0, 1] already
        return _as_hwc(_read_dicom(path, window, limits))
    if suffix == ".npy":
        array = _load_npy(path, limits, "max_image_pixels", "image")
    else:
        array = _read_picture(path, limits)
    hwc = _as_hwc(array)
    if not np.all(np.isfinite(hwc)):
        raise SampleError("image contains NaN or infinite values")
    return _scale_unit(hwc)


def _check_pixels(shape: tuple[int, ...], limits: ReadLimits) -> None:
    values = math.prod(shape)
    if values > limits.max_image_pixels:
        raise SampleError(over_limit(f"image {'×'.join(map(str, shape))} =", values, limits,
                                     "max_image_pixels", "pixel values") + "; downscale it")


def _read_picture(path: Path, limits: ReadLimits) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as probe:
            width, height = probe.size
            _check_pixels((height, width, len(probe.getbands())), limits)
            probe.verify()
        with Image.open(path) as img:
            img.load()  # a multi-page TIFF: its first page
            if img.mode in _WIDE_GREY_MODES:  # 16-bit, 32-bit or float grey: every level kept
                return np.asarray(img)
            mode = "RGB" if img.mode in _COLOUR_MODES else "L"
            return np.asarray(img.convert(mode))
    except SampleError:
        raise
    except Image.DecompressionBombError as error:
        raise SampleError(f"{error}; downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise SampleError(f"unreadable or truncated image ({error})") from None


def _read_dicom(path: Path, window: str, limits: ReadLimits) -> np.ndarray:
    """One frame, in [0, 1], as :mod:`common.dicom` reads it."""
    from common import dicom

    with warnings.catch_warnings():  # a broken file's warnings: the row issue says it all
        warnings.simplefilter("ignore")
        try:
            header = dicom.read_header(path, limits)
            reading = dicom.plan_reading(header, window)
        except dicom.DicomError as error:
            raise SampleError(str(error)) from None
        except MemoryError:  # the row's issue says so (common.sitedata)
            raise
        except Exception as error:  # pydicom raises many unrelated types for bad files
            raise SampleError(f"unreadable DICOM header ({type(error).__name__}: "
                              f"{error})") from None
        _check_pixels((reading.rows, reading.columns, reading.samples), limits)
        try:
            stored = dicom.decode_frame(path, reading)
        except MemoryError:  # the row's issue says so (common.sitedata)
            raise
        except Exception as error:  # pydicom raises many unrelated types for bad files
            raise SampleError(f"unreadable DICOM ({type(error).__name__}: {error})") from None
    if stored.shape[:2] != (reading.rows, reading.columns):
        raise SampleError(f"DICOM frame decoded as {stored.shape}, its header says "
                          f"{reading.rows}×{reading.columns}; re-export it")
    try:
        return dicom.to_unit(stored, header, reading)
    except dicom.DicomError as error:
        raise SampleError(str(error)) from None


def describe_image(path: Path, window: str = "file", *,
                   limits: ReadLimits = DEFAULT_READ_LIMITS) -> str:
    """How :func:`read_image_pixels` reads this file, from its header alone (``fedmm
    validate-data``); "" where the header cannot be read (the row's issue says why)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".dcm":
            from common import dicom

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return dicom.plan_reading(dicom.read_header(path, limits), window).describe()
        if suffix == ".npy":
            _, dtype, _ = _npy_header(path)
            return f".npy {dtype}: " + ("÷ 255" if dtype == np.uint8 else
                                        "the image's own range (min-max)")
        from PIL import Image

        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            how = ("÷ 255" if img.mode in _EIGHT_BIT_MODES
                   else f"{img.mode}, the image's own range (min-max)")
            return (f"{img.format} {img.mode}: {how}"
                    + (f", page 1 of {frames}" if frames > 1 else ""))
    except Exception:  # a description only: reading the row says what is wrong
        return ""


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a ``.npy`` file, from its header alone."""
    with path.open("rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise SampleError(f".npy format version {version} not supported; save it with "
                                  "numpy.save (version 1 or 2)")
        except (ValueError, OSError, EOFError) as error:
            raise SampleError(f"unreadable .npy file ({error})") from None
        return tuple(shape), dtype, handle.tell()


def _load_npy(path: Path, limits: ReadLimits, field: str, what: str) -> np.ndarray:
    """A real-valued ``.npy`` array, its size checked against ``limits.<field>`` first."""
    shape, dtype, offset = _npy_header(path)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise SampleError(f".npy array has dtype {dtype}; expected real numbers")
    values = math.prod(shape)
    if values > getattr(limits, field):
        raise SampleError(over_limit(f"{what} array {'×'.join(map(str, shape))} =", values,
                                     limits, field, "values"))
    if path.stat().st_size < offset + values * dtype.itemsize:
        raise SampleError(f".npy file is truncated: its header declares {shape} {dtype}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise SampleError(f"unreadable .npy file ({error})") from None


def tokenize(text: str, config: DataConfig) -> np.ndarray:
    """Hash word pieces into ``[1, vocab_size)``; 0 pads. Returns int64 array of fixed length.
    Only the first ``max_text_tokens`` words are looked for."""
    words = [m.group() for m in itertools.islice(_WORD.finditer(text.lower()),
                                                 config.max_text_tokens)]
    ids = np.zeros(config.max_text_tokens, dtype=np.int64)
    for i, word in enumerate(words):
        ids[i] = 1 + zlib.crc32(word.encode("utf-8")) % (config.vocab_size - 1)
    return ids


def note_is_a_file(cell: str) -> bool:
    """A text cell ending in ``.txt`` names a file; anything else is the note itself."""
    return cell.lower().endswith(".txt")


def read_note(cell: str, site_dir: Path, *, limits: ReadLimits = DEFAULT_READ_LIMITS) -> str:
    """The note of a manifest cell (:func:`note_is_a_file`)."""
    if not note_is_a_file(cell):
        return cell
    path = resolve_inside(site_dir, cell)
    _check_size(path, limits, "max_note_bytes")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SampleError("text file is not UTF-8") from None


def read_text(cell: str, site_dir: Path, config: DataConfig, *,
              limits: ReadLimits = DEFAULT_READ_LIMITS) -> np.ndarray:
    """The note of a manifest cell (:func:`read_note`) as hashed token ids."""
    ids = tokenize(read_note(cell, site_dir, limits=limits), config)
    if not ids.any():
        raise SampleError("text has no words")
    return ids


@dataclass(frozen=True)
class _WavHeader:
    width: int
    channels: int
    rate: int
    frames: int


def _wav_header(handle: wave.Wave_read, limits: ReadLimits) -> _WavHeader:
    header = _WavHeader(handle.getsampwidth(), handle.getnchannels(), handle.getframerate(),
                        handle.getnframes())
    if not limits.min_signal_rate_hz <= header.rate <= limits.max_signal_rate_hz:
        raise SampleError(f"WAV sample rate {header.rate} Hz outside {limits.min_signal_rate_hz}"
                          f"..{limits.max_signal_rate_hz} Hz (read_limits.min_signal_rate_hz/"
                          "max_signal_rate_hz in the site policy)")
    if header.width not in (1, 2, 3, 4):
        raise SampleError(f"WAV sample width {header.width} bytes not supported")
    if not 1 <= header.channels <= limits.max_signal_channels:
        raise SampleError(over_limit("WAV channels", header.channels, limits,
                                     "max_signal_channels"))
    if header.frames * header.channels > limits.max_signal_samples:
        raise SampleError(over_limit(f"WAV {header.frames:,} frames × {header.channels} "
                                     "channels =", header.frames * header.channels, limits,
                                     "max_signal_samples", "samples"))
    if header.frames == 0:
        raise SampleError("WAV file has no samples")
    return header


def _decode_pcm(frames: bytes, header: _WavHeader) -> np.ndarray:
    """Interleaved PCM → channels × frames, float64 in [-1, 1]."""
    width = header.width
    if width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8)
        raw = raw[: len(raw) // 3 * 3].reshape(-1, 3)
        ints = (raw[:, 0].astype(np.int32) | raw[:, 1].astype(np.int32) << 8
                | raw[:, 2].astype(np.int32) << 16)
        samples = np.where(ints >= 1 << 23, ints - (1 << 24), ints).astype(np.float64) / (1 << 23)
    else:
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
        samples = np.frombuffer(frames[: len(frames) // width * width], dtype=dtype)
        samples = samples.astype(np.float64)
        samples = (samples - 128) / 128 if width == 1 else samples / np.iinfo(dtype).max
    channels = header.channels
    return samples[: len(samples) // channels * channels].reshape(-1, channels).T


def _read_wav(path: Path, config: DataConfig, limits: ReadLimits) -> np.ndarray:
    """The run's channels (:mod:`common.biosignals`) at ``signal_sample_rate``, centre-cropped
    to ``signal_length``: only the frames the crop needs are read and resampled (the same
    numbers as resampling it all)."""
    try:
        with wave.open(str(path), "rb") as handle:
            header = _wav_header(handle, limits)
            chosen = channel_indices(header.channels, (), channels=config.signal_channels,
                                     leads=config.signal_leads)
            window = _source_window(header.frames, header.rate, config)
            handle.setpos(window.start)
            frames = handle.readframes(window.stop - window.start)
    except (wave.Error, EOFError, OSError) as error:
        raise SampleError(f"not a PCM WAV file ({error})") from None
    samples = _decode_pcm(frames, header)
    if samples.shape[1] < window.stop - window.start:
        raise SampleError(f"WAV file is truncated: its header declares {header.frames:,} "
                          f"frames, the file holds fewer")
    return _resample(samples[chosen], header.rate, config, header.frames, window.start)


def _target_count(frames: int, rate: int, target_rate: int) -> int:
    return frames if rate == target_rate else max(1, round(frames / rate * target_rate))


def _source_window(frames: int, rate: int, config: DataConfig) -> range:
    """The source frames the centre crop of the resampled signal interpolates between (one
    extra on each side, so no rounding at the window's edge changes a value)."""
    target = config.signal_sample_rate
    count = _target_count(frames, rate, target)
    if count <= config.signal_length:
        return range(0, frames)
    first = (count - config.signal_length) // 2
    last = first + config.signal_length - 1
    low = first * rate // target - 1
    high = -(-last * rate // target) + 1
    return range(max(0, low), min(frames, high + 1))


def _resample(samples: np.ndarray, rate: float, config: DataConfig, frames: int,
              offset: int) -> np.ndarray:
    """Frames ``offset ..`` (channels × frames) of a ``frames``-long recording at ``rate``,
    each channel linearly resampled to ``signal_sample_rate`` and centre-cropped to
    ``signal_length`` (or shorter, padded later)."""
    target = config.signal_sample_rate
    count = _target_count(frames, rate, target)
    first = max(0, (count - config.signal_length) // 2)
    keep = np.arange(first, min(count, first + config.signal_length))
    if rate == target:
        return samples[:, keep - offset]
    source_times = (offset + np.arange(samples.shape[1])) / rate
    return np.stack([np.interp(keep / target, source_times, channel) for channel in samples])


def _fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Channels × n → channels × ``length``: centre-cropped or zero-padded at the end."""
    size = samples.shape[1]
    if size >= length:
        start = (size - length) // 2
        return samples[:, start : start + length]
    return np.pad(samples, ((0, 0), (0, length - size)))


def read_signal(path: Path, config: DataConfig, *,
                limits: ReadLimits = DEFAULT_READ_LIMITS) -> np.ndarray:
    """Read and preprocess one recording → float32 :func:`signal_shape`: C×L (raw) or
    C·N_MELS×frames (log-mel), C = ``signal_channels``, each channel standardised alone."""
    _check_size(path, limits)
    suffix = path.suffix.lower()
    if suffix not in SIGNAL_SUFFIXES:
        raise SampleError(f"signal type '{suffix}' not supported; use PCM .wav, .npy (samples, "
                          "or channels × samples), a DICOM waveform .dcm, EDF/BDF or a WFDB "
                          ".hea header")
    try:
        samples = _read_recording(path, suffix, config, limits)
    except (SignalError, DicomError) as error:
        raise SampleError(str(error)) from None
    if not np.all(np.isfinite(samples)):
        bad = int(np.size(samples) - np.isfinite(samples).sum())
        raise SampleError(f"signal has {bad} NaN or infinite values; clean or drop this recording")
    fitted = _fit_length(samples, config.signal_length)
    with np.errstate(over="ignore", invalid="ignore"):
        std = fitted.std(axis=1, keepdims=True)
    if not np.all(np.isfinite(std)):  # values near the float limit: their squares overflow
        raise SampleError("signal values too large to standardise (check the file's gain or "
                          "units)")
    standardised = (fitted - fitted.mean(axis=1, keepdims=True)) / np.where(std > 1e-8, std, 1.0)
    if config.signal_features == "log_mel":
        return np.concatenate([log_mel(channel, config.signal_sample_rate)
                               for channel in standardised])
    return standardised.astype(np.float32)


def _read_recording(path: Path, suffix: str, config: DataConfig,
                    limits: ReadLimits) -> np.ndarray:
    """The run's channels of one file at ``signal_sample_rate``, channels × samples."""
    if suffix == ".wav":
        return _read_wav(path, config, limits)
    if suffix in RECORDING_READERS:
        recording = RECORDING_READERS[suffix](path, limits, channels=config.signal_channels,
                                              leads=config.signal_leads)
        return _resample(recording.samples, recording.rate, config,
                         recording.samples.shape[1], 0)
    array = _load_npy(path, limits, "max_signal_samples", "signal")  # at the signal rate
    if array.ndim not in (1, 2):
        raise SampleError(f"signal .npy has shape {array.shape}; expected samples (1-D) or "
                          "channels × samples (2-D)")
    array = array.reshape(1, -1) if array.ndim == 1 else array
    chosen = channel_indices(len(array), (), channels=config.signal_channels,
                             leads=config.signal_leads)
    return array[chosen].astype(np.float64)


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
    """The array one recording becomes: C×L (raw) or C·N_MELS×frames (log-mel), C =
    ``signal_channels``."""
    if config.signal_features == "log_mel":
        return config.signal_channels * N_MELS, config.signal_length // LOG_MEL_HOP + 1
    return config.signal_channels, config.signal_length


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
