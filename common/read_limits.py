"""How much one site file may make fedmm decode: checked from the file's header, *before* decoding.

A small file can declare a huge picture (a deflated DICOM, a PNG), a recording of billions of
samples (a WAV at 1 Hz), or be a note of a hundred megabytes. Each reader of
:mod:`common.preprocess` checks what the header declares against these limits first and refuses
the row with the limit's name when it is over, so one hostile or broken file costs one row,
never the site's memory.

The limits are the *hospital's*: a site raises them in its own policy (``[read_limits]`` in
``policy.toml``), never through the run configuration the server sends. A server that could move
a limit could bisect one patient's file size from the count of skipped rows.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MIB = 1024 * 1024


class ReadLimits(BaseModel):
    """Per-file limits; every field is named in the row message that refuses a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_file_bytes: int = Field(256 * MIB, ge=1, description="any file the manifest names")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="pixel values one image decodes to: rows × columns × "
        "frames × samples per pixel (an RGB pixel counts three)")
    max_signal_samples: int = Field(
        32_000_000, ge=1, description="samples one recording declares: frames × channels")
    max_signal_channels: int = Field(64, ge=1, description="channels of one recording")
    min_signal_rate_hz: int = Field(1, ge=1, description="slowest sample rate accepted")
    max_signal_rate_hz: int = Field(1_000_000, ge=1, description="fastest sample rate accepted")
    max_note_bytes: int = Field(1 * MIB, ge=1, description="one clinical note file")


DEFAULT_READ_LIMITS = ReadLimits()


def amount(count: int, unit: str = "") -> str:
    """``67108864`` → ``"67.1 M"`` for counts a person reads; bytes exactly, with separators."""
    exact = unit == "bytes" or count < 1_000_000
    text = f"{count:,}" if exact else f"{count / 1e6:,.1f}".removesuffix(".0") + " M"
    return f"{text} {unit}" if unit else text


def over_limit(what: str, count: int, limits: ReadLimits, field: str, unit: str = "") -> str:
    """The row message for ``count`` over ``limits.<field>``: what it is, the limit by name, and
    where a site that really needs more raises it."""
    limit = getattr(limits, field)
    return (f"{what} {amount(count, unit)} > limit {amount(limit, unit)} (read_limits.{field} "
            "in the site policy)")
