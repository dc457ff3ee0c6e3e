"""Hostile and broken site files, one per manifest row, for the bad-file battery.

Each builder writes its file under ``site/bombs/`` and returns the manifest row that names it,
with what the reader must say about it. The bombs are the ones found by hand: a WAV declaring 0 Hz,
a WAV of a million frames at 1 Hz (resampling it whole needs gigabytes), a 131 KB deflated DICOM
that decodes to 67 M pixels (and one of three such frames), a ``.npy`` whose header declares 10¹⁰
values, a 100 MB note; a 0.5 MB deflated ECG waveform inflating to 480 MB (pydicom inflates a
deflated file whole); the rest are truncated and malformed variants of every format the loader
reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Bomb:
    name: str
    row: dict[str, str]  # manifest cells (sample_id, label and one modality)
    reason: str  # a fragment the row's issue must contain; "" when the row is usable


def _wav_bytes(*, rate: int, channels: int = 1, width: int = 2, frames: bytes = b"\0\0" * 64,
               declared: int | None = None) -> bytes:
    """A RIFF/WAVE file written field by field, so that any header value can be a lie."""
    data_size = len(frames) if declared is None else declared
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * width % 2**32,
                      channels * width % 2**16, 8 * width)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
        struct.pack("<I", data_size) + frames
    return b"RIFF" + struct.pack("<I", 4 + len(body) - 4) + body


def _dataset(sop_class: str, *, deflated: bool) -> Any:
    """An empty DICOM dataset of ``sop_class`` with its file meta (deflated or not)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else \
        ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = (meta.MediaStorageSOPClassUID,
                                                   meta.MediaStorageSOPInstanceUID)
    return dataset


def _dicom(path: Path, *, rows: int, columns: int, deflated: bool, frames: int = 1) -> None:
    from pydicom.uid import SecondaryCaptureImageStorage

    dataset = _dataset(SecondaryCaptureImageStorage, deflated=deflated)
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = rows, columns, 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit, dataset.PixelRepresentation = 15, 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    dataset.PixelData = bytes(frames * rows * columns * 2)
    dataset.save_as(path, enforce_file_format=True)


def _waveform(path: Path, *, samples: int, channels: int, deflated: bool,
              declared: int | None = None) -> None:
    """A 16-bit DICOM waveform (12-lead ECG storage) of zeros; ``declared``: the sample count
    its header claims, when that is a lie."""
    from pydicom.dataset import Dataset
    from pydicom.uid import TwelveLeadECGWaveformStorage

    dataset = _dataset(TwelveLeadECGWaveformStorage, deflated=deflated)
    group = Dataset()
    group.MultiplexGroupLabel = "RHYTHM"
    group.NumberOfWaveformChannels = channels
    group.NumberOfWaveformSamples = declared or samples
    group.SamplingFrequency = 500
    group.WaveformBitsAllocated, group.WaveformSampleInterpretation = 16, "SS"
    group.WaveformData = bytes(samples * channels * 2)
    dataset.WaveformSequence = [group]
    dataset.save_as(path, enforce_file_format=True)


def _wfdb(path: Path, *, samples: int, data_bytes: int) -> None:
    """A one-lead WFDB record (16-bit samples at 500 Hz) whose header declares ``samples`` and
    whose data file is ``data_bytes`` of zeros, written sparse."""
    record = path.stem
    path.write_text(f"{record} 1 500 {samples}\n{record}.dat 16 200/mV 16 0 0 0 0 II\n",
                    encoding="ascii")
    with path.with_suffix(".dat").open("wb") as handle:
        handle.truncate(data_bytes)


def _npy_header_only(path: Path, shape: tuple[int, ...]) -> None:
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f8", "fortran_order": False, "shape": shape})


def build_bombs(site: Path) -> list[Bomb]:
    folder = site / "bombs"
    folder.mkdir()
    bombs: list[Bomb] = []

    def add(name: str, modality: str, reason: str, write: Callable[[Path], None],
            suffix: str) -> None:
        path = folder / f"{name}{suffix}"
        write(path)
        bombs.append(Bomb(name, {"sample_id": f"bomb-{name}", "label": "0",
                                 modality: f"bombs/{path.name}"}, reason))

    # WAV
    add("wav-rate-0", "audio", "WAV sample rate 0 Hz outside 1..1000000 Hz",
        lambda p: p.write_bytes(_wav_bytes(rate=0)), ".wav")
    add("wav-1hz-2mb", "audio", "",  # only the frames the crop needs are read and resampled
        lambda p: p.write_bytes(_wav_bytes(rate=1, frames=np.arange(1_000_000, dtype="<i2")
                                           .tobytes())), ".wav")
    add("wav-channels", "audio", "WAV channels 65,535 > limit 64",
        lambda p: p.write_bytes(_wav_bytes(rate=8000, channels=65535)), ".wav")
    add("wav-declares-billions", "audio", "WAV 2,147,483,647 frames × 1 channels = 2,147.5 M "
        "samples > limit 32 M samples",
        lambda p: p.write_bytes(_wav_bytes(rate=8000, declared=2**32 - 2)), ".wav")
    add("wav-truncated", "audio", "WAV file is truncated",
        lambda p: p.write_bytes(_wav_bytes(rate=8000, frames=b"\1\0" * 800,
                                           declared=2 * 16_000)), ".wav")
    add("wav-width-5", "audio", "WAV sample width 5 bytes not supported",
        lambda p: p.write_bytes(_wav_bytes(rate=8000, width=5)), ".wav")
    add("wav-garbage", "audio", "not a PCM WAV file",
        lambda p: p.write_bytes(b"RIFF\xff\xff\xff\xffWAVEjunkjunkjunk" * 4), ".wav")
    # DICOM
    add("dicom-deflate-67m", "image", "image 8192×8192×1 = 67.1 M pixel values > limit 40 M",
        lambda p: _dicom(p, rows=8192, columns=8192, deflated=True), ".dcm")
    add("dicom-deflate-frames", "image", "deflated DICOM inflates to over",
        lambda p: _dicom(p, rows=8192, columns=8192, deflated=True, frames=3), ".dcm")
    add("dicom-garbage", "image", "DICOM has no image (no Rows/Columns)",
        lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300), ".dcm")

    def truncated_dicom(path: Path) -> None:
        _dicom(path, rows=64, columns=64, deflated=False)
        path.write_bytes(path.read_bytes()[:-3000])

    add("dicom-truncated", "image", "unreadable DICOM", truncated_dicom, ".dcm")
    # biosignals: DICOM waveform, EDF
    add("ecg-deflate-480mb", "audio", "deflated DICOM inflates to over",  # ~0.5 MB on disk
        lambda p: _waveform(p, samples=20_000_000, channels=12, deflated=True), ".dcm")
    add("ecg-declares-billions", "audio", "DICOM waveform 1,000,000,000 samples × 12 channels "
        "= 12,000 M samples > limit 32 M samples",
        lambda p: _waveform(p, samples=100, channels=12, deflated=False,
                            declared=1_000_000_000), ".dcm")
    add("ecg-lying-header", "audio", "DICOM waveform",
        lambda p: _waveform(p, samples=100, channels=12, deflated=False, declared=5_000),
        ".dcm")
    add("edf-garbage", "audio", "unreadable EDF/BDF",
        lambda p: p.write_bytes(b"0       " + b"\xff" * 2000), ".edf")
    # WFDB: the header says how much to read, the data file holds it (sparse: costs no disk)
    add("wfdb-sparse-600mb", "audio", "WFDB data file 'wfdb-sparse-600mb.dat' is "
        "629,145,600 bytes > limit 268,435,456 bytes",
        lambda p: _wfdb(p, samples=300 * 2**20, data_bytes=600 * 2**20), ".hea")
    add("wfdb-declares-billions", "audio", "WFDB 1,000,000,000 samples × 1 channels = "
        "1,000 M samples > limit 32 M samples",
        lambda p: _wfdb(p, samples=1_000_000_000, data_bytes=2_000), ".hea")
    # .npy
    add("npy-declares-1e10", "image", "image array 100000×100000 = 10,000 M values > limit 40 M",
        lambda p: _npy_header_only(p, (100_000, 100_000)), ".npy")
    add("npy-truncated", "image", ".npy file is truncated",
        lambda p: _npy_header_only(p, (64, 64)), ".npy")
    add("npy-object", "image", "dtype object",
        lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), ".npy")
    add("npy-bad-magic", "image", "unreadable .npy file",
        lambda p: p.write_bytes(b"\x93NUMPY\x09\x00junk"), ".npy")
    add("signal-npy-declares-1e10", "audio",
        "signal array 10000000000 = 10,000 M values > limit 32 M",
        lambda p: _npy_header_only(p, (10_000_000_000,)), ".npy")
    # pictures
    add("png-bomb", "image", "image 8000×8000×1 = 64 M pixel values > limit 40 M",
        lambda p: Image.new("1", (8000, 8000)).save(p), ".png")

    def truncated_png(path: Path) -> None:
        noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        path.write_bytes(path.read_bytes()[:2000])

    add("png-truncated", "image", "unreadable or truncated image", truncated_png, ".png")
    add("jpeg-garbage", "image", "unreadable or truncated image",
        lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50), ".jpg")
    # notes
    add("note-100mb", "text", "file is 104,857,600 bytes > limit 1,048,576 bytes "
        "(read_limits.max_note_bytes in the site policy)",
        lambda p: p.open("wb").truncate(100 * 1024 * 1024), ".txt")  # sparse: costs no disk
    add("note-not-utf8", "text", "text file is not UTF-8",
        lambda p: p.write_bytes(b"\xff\xfe\xfa chest pain"), ".txt")
    add("note-empty", "text", "file is empty", lambda p: p.write_bytes(b""), ".txt")
    return bombs
