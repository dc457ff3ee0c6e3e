"""DICOM reading (common/dicom.py) on the real files pydicom ships: a CT slice in Hounsfield
units, an MR slice with its own window, a 15-frame RT dose grid, a JPEG 2000 nuclear-medicine
image and an RGB ultrasound frame; each read checked against the DICOM standard's arithmetic
done here by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from common.config import DataConfig  # noqa: E402
from common.dicom import CT_WINDOWS, apply_window, plan_reading  # noqa: E402
from common.preprocess import SampleError, describe_image, read_image_pixels  # noqa: E402
from common.read_limits import ReadLimits  # noqa: E402

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def pydicom_file(name: str) -> Path:
    """One of the files pydicom's wheel holds (never its download of the others)."""
    path = TEST_FILES / name
    assert path.exists(), path
    return path


def stored(name: str, index: int | None = None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    return np.asarray(pixel_array(str(pydicom_file(name)), index=index))


def standard_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out case by case."""
    out = np.empty(values.shape, np.float64)
    low = values <= centre - 0.5 - (width - 1) / 2
    high = values > centre - 0.5 + (width - 1) / 2
    middle = ~(low | high)
    out[low], out[high] = 0.0, 1.0
    out[middle] = (values[middle] - (centre - 0.5)) / (width - 1) + 0.5
    return out


def test_the_window_is_the_standards() -> None:
    values = np.linspace(-1200, 1200, 2401)
    for centre, width in [*CT_WINDOWS.values(), (0.5, 1.0), (600, 1600)]:
        np.testing.assert_allclose(apply_window(values, centre, width),
                                   standard_window(values, centre, width), atol=1e-6)


def test_ct_in_hounsfield_units_through_a_preset() -> None:
    """CT_small: HU = stored − 1024 (its rescale), then the soft-tissue window 40/400."""
    pixels = read_image_pixels(pydicom_file("CT_small.dcm"), window="soft_tissue")
    hu = stored("CT_small.dcm").astype(np.float64) - 1024
    np.testing.assert_allclose(pixels[:, :, 0], standard_window(hu, 40, 400), atol=1e-6)
    lung = read_image_pixels(pydicom_file("CT_small.dcm"), window="lung")
    np.testing.assert_allclose(lung[:, :, 0], standard_window(hu, -600, 1500), atol=1e-6)
    assert describe_image(pydicom_file("CT_small.dcm"), "soft_tissue") == (
        "DICOM CT MONOCHROME2: HU = 1·stored − 1024, window 40/400 (preset soft_tissue)")


def test_a_file_without_a_window_is_read_over_its_own_range() -> None:
    pixels = read_image_pixels(pydicom_file("CT_small.dcm"), window="file")
    hu = stored("CT_small.dcm").astype(np.float64) - 1024
    np.testing.assert_allclose(pixels[:, :, 0], (hu - hu.min()) / (hu.max() - hu.min()),
                               atol=1e-6)
    assert describe_image(pydicom_file("CT_small.dcm")).endswith("the image's own range (min-max)")


def test_mr_uses_its_own_window_unless_told_otherwise() -> None:
    """MR_small carries WindowCenter 600 / WindowWidth 1600 and no rescale."""
    values = stored("MR_small.dcm").astype(np.float64)
    own = read_image_pixels(pydicom_file("MR_small.dcm"))
    np.testing.assert_allclose(own[:, :, 0], standard_window(values, 600, 1600), atol=1e-6)
    assert describe_image(pydicom_file("MR_small.dcm")) == (
        "DICOM MR MONOCHROME2: window 600/1600 (the file's)")
    ranged = read_image_pixels(pydicom_file("MR_small.dcm"), window="min_max")
    assert ranged.min() == 0.0 and ranged.max() == 1.0


def test_a_ct_preset_on_an_mr_file_is_that_rows_error() -> None:
    with pytest.raises(SampleError, match=r"window preset 'lung' \(data.dicom_window\) is for "
                                          r"CT numbers; this file is MR"):
        read_image_pixels(pydicom_file("MR_small.dcm"), window="lung")


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    """The same CT slice stored as MONOCHROME1 (low values white) reads as 1 − the original,
    so that bright means dense in both."""
    dataset = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "inverted.dcm")
    original = read_image_pixels(pydicom_file("CT_small.dcm"), window="bone")
    inverted = read_image_pixels(tmp_path / "inverted.dcm", window="bone")
    np.testing.assert_allclose(inverted, 1.0 - original, atol=1e-6)
    assert describe_image(tmp_path / "inverted.dcm", "bone").endswith(
        "window 400/1800 (preset bone), inverted (MONOCHROME1)")


def test_a_multi_frame_file_gives_its_middle_frame_only() -> None:
    """rtdose.dcm: 15 frames of 10×10 dose values; frame 7 (from 0) is read, over its range."""
    frame = stored("rtdose.dcm", index=7).astype(np.float64)
    pixels = read_image_pixels(pydicom_file("rtdose.dcm"))
    np.testing.assert_allclose(pixels[:, :, 0], (frame - frame.min()) / np.ptp(frame),
                               atol=1e-6)
    assert "frame 7 of 15 (the middle one)" in describe_image(pydicom_file("rtdose.dcm"))


def test_the_pixel_limit_counts_the_frame_that_is_decoded() -> None:
    """15 frames of 10×10: one frame of 100 values is decoded; a limit under that refuses it."""
    assert read_image_pixels(pydicom_file("rtdose.dcm"),
                             limits=ReadLimits(max_image_pixels=100)).shape == (10, 10, 1)
    with pytest.raises(SampleError, match=r"image 10×10×1 = 100 pixel values > limit 99"):
        read_image_pixels(pydicom_file("rtdose.dcm"), limits=ReadLimits(max_image_pixels=99))


def test_compressed_and_colour_files() -> None:
    nm = read_image_pixels(pydicom_file("JPEG2000.dcm"))  # NM, JPEG 2000, no window: its range
    assert nm.shape == (1024, 256, 1) and nm.min() == 0.0 and nm.max() == 1.0
    rgb = read_image_pixels(pydicom_file("ExplVR_BigEnd.dcm"))  # US, RGB, big endian
    np.testing.assert_allclose(rgb, stored("ExplVR_BigEnd.dcm") / 255.0, atol=1e-6)
    assert describe_image(pydicom_file("ExplVR_BigEnd.dcm")) == (
        "DICOM US RGB: colour, scaled by bit depth")


def test_a_window_of_no_width_is_refused(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    dataset.WindowWidth = 0
    dataset.save_as(tmp_path / "flat.dcm")
    with pytest.raises(SampleError, match="window 600/0 is not a window"):
        read_image_pixels(tmp_path / "flat.dcm")


def test_every_choice_of_the_config_is_one_the_reader_knows() -> None:
    from typing import get_args

    field = DataConfig.model_fields["dicom_window"]
    assert set(get_args(field.annotation)) == {"file", "min_max", *CT_WINDOWS}
    header = pydicom.dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)
    for choice in get_args(field.annotation):
        plan_reading(header, choice)
