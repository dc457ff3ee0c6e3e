"""DICOM images as a clinician's viewer shows them: stored values → modality values → window.

What a file's header says is read first, with ``stop_before_pixels``, and turned into a
:class:`DicomReading` (which frame, which rescale, which window); only then is one frame
decoded. ``fedmm validate-data`` prints each reading's :meth:`DicomReading.describe`, so a site
sees how its files were read before it trains on them.

1. **Frame.** A multi-frame file (``NumberOfFrames`` > 1: a CT series in one file, a dose
   grid, a cine loop) gives its middle frame, ``frames // 2``, counted from 0; only that frame
   is decoded.
2. **Modality values.** ``v = RescaleSlope · stored + RescaleIntercept`` (Hounsfield units for
   CT), or the file's Modality LUT (``pydicom.pixels.apply_modality_lut``).
3. **Window** (``data.dicom_window``), DICOM PS3.3 C.11.2.1.2.1, linear, to [0, 1]::

       y = clip((v − (c − ½)) / (w − 1) + ½, 0, 1)

   ``"file"``: the file's first ``WindowCenter``/``WindowWidth``, else its VOI LUT, else the
   image's own range (min-max); ``"min_max"``: always the image's own range; a CT preset
   (:data:`CT_WINDOWS`, centre and width in HU) for CT files only.
4. **MONOCHROME1** (low values shown white): ``y → 1 − y``, so that bright means dense in
   every file, as in MONOCHROME2.

Colour files (``SamplesPerPixel`` 3, converted to RGB by pydicom) are scaled by their bit depth
and not windowed. The result is float32 in [0, 1], H×W or H×W×3.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import CT_WINDOWS
from common.read_limits import ReadLimits, over_limit


class DicomError(ValueError):
    """This file cannot be read as configured; the message says why."""


def import_pydicom() -> Any:
    """pydicom (the optional extra ``dicom``), or a :class:`DicomError` saying how to get it."""
    try:
        import pydicom
    except ImportError:
        raise DicomError("DICOM needs the optional extra: pip install 'fedmm[dicom]'") from None
    return pydicom


@dataclass(frozen=True)
class DicomReading:
    """How one file is read, from its header alone."""

    modality: str
    photometric: str
    rows: int
    columns: int
    samples: int
    frames: int
    rescale: tuple[float, float] | None  # (slope, intercept) of stored → modality values
    modality_lut: bool
    window: tuple[float, float] | None  # (centre, width) applied to modality values
    window_source: str  # "the file's", "preset NAME", "" (none)
    voi_lut: bool  # the file's VOI LUT, where it has one and no window

    @property
    def frame(self) -> int:
        return self.frames // 2

    @property
    def colour(self) -> bool:
        return self.samples > 1

    def describe(self) -> str:
        """One line, e.g. ``DICOM CT MONOCHROME2: HU = 1·stored − 1024, window 40/400
        (preset soft_tissue)``."""
        parts = [f"DICOM {self.modality or '?'} {self.photometric}"]
        steps = []
        if self.frames > 1:
            steps.append(f"frame {self.frame} of {self.frames} (the middle one)")
        if self.colour:
            steps.append("colour, scaled by bit depth")
        else:
            if self.modality_lut:
                steps.append("the file's modality LUT")
            elif self.rescale is not None:
                slope, intercept = self.rescale
                unit = "HU" if self.modality == "CT" else "value"
                sign = "−" if intercept < 0 else "+"
                steps.append(f"{unit} = {slope:g}·stored {sign} {abs(intercept):g}")
            if self.window is not None:
                centre, width = self.window
                steps.append(f"window {centre:g}/{width:g} ({self.window_source})")
            elif self.voi_lut:
                steps.append("the file's VOI LUT")
            else:
                steps.append("the image's own range (min-max)")
            if self.photometric == "MONOCHROME1":
                steps.append("inverted (MONOCHROME1)")
        return parts[0] + ": " + ", ".join(steps)


def _first(value: Any) -> float:
    """A multi-valued DICOM number's first value."""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def plan_reading(header: Any, window: str) -> DicomReading:
    """What :func:`read_dicom` will do with the file whose header (a pydicom dataset read with
    ``stop_before_pixels``) is ``header``, with ``data.dicom_window = window``."""
    if "Rows" not in header or "Columns" not in header:
        raise DicomError("DICOM has no image (no Rows/Columns); is it a report or a waveform?")
    modality = str(header.get("Modality", "") or "")
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2")
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    rescale = None
    if "RescaleSlope" in header or "RescaleIntercept" in header:
        rescale = (_first(header.get("RescaleSlope", 1.0) or 1.0),
                   _first(header.get("RescaleIntercept", 0.0) or 0.0))
    modality_lut = "ModalityLUTSequence" in header and rescale is None
    chosen, source = None, ""
    if samples == 1:
        if window in CT_WINDOWS:
            if modality != "CT":
                raise DicomError(f"window preset '{window}' (data.dicom_window) is for CT "
                                 f"numbers; this file is {modality or 'of no modality'}. "
                                 "Use \"file\" or \"min_max\" for a site with other images")
            chosen, source = CT_WINDOWS[window], f"preset {window}"
        elif (window == "file" and "WindowCenter" in header and "WindowWidth" in header
              and header.WindowCenter is not None and header.WindowWidth is not None):
            chosen, source = (_first(header.WindowCenter), _first(header.WindowWidth)), \
                "the file's"
        if chosen is not None and not (math.isfinite(chosen[0]) and chosen[1] >= 1.0):
            raise DicomError(f"window {chosen[0]:g}/{chosen[1]:g} is not a window (width must "
                             "be at least 1); fix the file or set data.dicom_window")
    return DicomReading(
        modality=modality, photometric=photometric, rows=int(header.Rows),
        columns=int(header.Columns), samples=samples,
        frames=max(int(header.get("NumberOfFrames", 1) or 1), 1), rescale=rescale,
        modality_lut=modality_lut, window=chosen, window_source=source,
        voi_lut=(samples == 1 and chosen is None and window == "file"
                 and "VOILUTSequence" in header))


def apply_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM's linear window (PS3.3 C.11.2.1.2.1) onto [0, 1], float32 (width 1: a step at
    ``centre − ½``)."""
    if width <= 1.0:
        return (values > centre - 0.5).astype(np.float32)
    scaled = values.astype(np.float32)  # a copy: one float32 picture at a time
    scaled -= np.float32(centre - 0.5)
    scaled /= np.float32(width - 1.0)
    scaled += np.float32(0.5)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def min_max(values: np.ndarray) -> np.ndarray:
    """The image's own range onto [0, 1], float32."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.float32)
    scaled = values.astype(np.float32)
    scaled -= np.float32(low)
    scaled /= np.float32(high - low)
    # float32 rounds values far from zero (CT numbers after a LUT, wide integers): clip the
    # last ulp back into [0, 1]
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def to_unit(stored: np.ndarray, header: Any, reading: DicomReading) -> np.ndarray:
    """One decoded frame's stored values → [0, 1] as ``reading`` says."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if reading.colour:
        bits = int(header.get("BitsStored", 8) or 8)
        return (stored.astype(np.float32) / np.float32((1 << bits) - 1)).clip(0.0, 1.0)
    if reading.modality_lut:
        values = apply_modality_lut(stored, header)
    elif reading.rescale is not None:
        slope, intercept = reading.rescale
        values = stored.astype(np.float32)
        values *= np.float32(slope)
        values += np.float32(intercept)
    else:
        values = stored
    if reading.window is not None:
        unit = apply_window(values, *reading.window)
    elif reading.voi_lut:
        unit = min_max(apply_voi_lut(values, header))
    else:
        unit = min_max(values)
    if not np.all(np.isfinite(unit)):
        raise DicomError("image contains NaN or infinite values")
    if reading.photometric == "MONOCHROME1":
        np.subtract(np.float32(1.0), unit, out=unit)
    return unit


def read_header(path: Path, limits: ReadLimits) -> Any:
    """The header without pixels, once :func:`check_inflated` has passed."""
    return read_dataset(path, limits, stop_before_pixels=True)


def read_dataset(path: Path, limits: ReadLimits, **options: Any) -> Any:
    """``pydicom.dcmread(path, **options)`` once :func:`check_inflated` has passed: every
    DICOM this project reads (images, waveforms) goes through here."""
    pydicom = import_pydicom()
    check_inflated(path, limits)
    return pydicom.dcmread(path, **options)


def check_inflated(path: Path, limits: ReadLimits) -> None:
    """A deflated file is inflated first, up to the file limit, in bounded pieces and thrown
    away (pydicom inflates it whole in memory: a few KB may inflate to gigabytes)."""
    pydicom = import_pydicom()
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    meta = pydicom.filereader.read_file_meta_info(path)
    if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        if "FileMetaInformationGroupLength" not in meta:
            raise DicomError("deflated DICOM without a file meta group length; re-export it")
        # preamble (128) + "DICM" (4) + the group length element (12) + the group it measures
        _check_inflated_size(path, 144 + int(meta.FileMetaInformationGroupLength), limits)


def _check_inflated_size(path: Path, offset: int, limits: ReadLimits) -> None:
    """The deflated dataset from ``offset`` on, inflated in bounded pieces and thrown away, is
    within the file limit."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with path.open("rb") as handle:
        handle.seek(offset)
        while (chunk := handle.read(1 << 20)) and not inflater.eof:
            while chunk and not inflater.eof:  # past the end: trailing bytes, not data
                total += len(inflater.decompress(chunk, 1 << 22))
                chunk = inflater.unconsumed_tail
                if total > limits.max_file_bytes:
                    raise DicomError(over_limit("deflated DICOM inflates to over", total,
                                                limits, "max_file_bytes", "bytes"))


def decode_frame(path: Path, reading: DicomReading) -> np.ndarray:
    """Only the frame ``reading`` names, decoded (colour as RGB)."""
    from pydicom.pixels import pixel_array

    return np.asarray(pixel_array(str(path), index=reading.frame if reading.frames > 1
                                  else None))
