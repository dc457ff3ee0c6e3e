"""Multichannel biosignals: which channels of a recording the model gets, and the 12-lead ECG
as DICOM waveform.

**Channels.** ``data.signal_channels`` (C, default 1) channels go to the signal encoder, in
one order for every site:

- with ``data.signal_leads`` (C names, e.g. ``["I", "II", "V1", ...]``) a file that names its
  channels (DICOM waveform) gives exactly those, found by name (:func:`lead_key`: ``"Lead I
  (Einthoven)"``, ``"lead i"`` and ``"I"`` are one lead), whatever order it stores them in;
  a file that names none (WAV, ``.npy``) must hold exactly C channels, taken in its order;
- without names, the first C channels of any file.

A recording with fewer channels than needed, or without a named lead, is that row's error.

**DICOM waveform** (an ECG exported by the cart or the PACS): the first multiplex group
labelled ``RHYTHM``, else the first group; its channel sensitivity applied by pydicom
(``waveform_array``); its sampling frequency from the file. **EDF, EDF+ and BDF** (sleep
labs, Holter and EEG exports) through the optional ``pyedflib``: only the chosen channels are
read, in physical units. **WFDB** (PhysioNet's format: PTB-XL, MIMIC-IV-ECG) through the
optional ``wfdb``: the manifest names the ``.hea`` header; the data files it names must sit
beside it (a name, not a path; inside the site folder once links are resolved) and stay
under the file limit; single-segment records only; only the chosen channels are read, in
physical units (a sample the record marks invalid is NaN: the row's "NaN or infinite" issue).
In all three, channels, samples and rate are checked against the site's read limits from the
header before the data is decoded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import lead_key
from common.dicom import DicomError, read_dataset
from common.read_limits import ReadLimits, over_limit


class SignalError(ValueError):
    """This recording cannot give the channels the run needs; the message says why."""


@dataclass(frozen=True)
class Recording:
    """Channels × samples at ``rate`` Hz, with the channels' names where the file has them."""

    samples: np.ndarray  # float64, channels × samples
    rate: float
    leads: tuple[str, ...] = ()


def channel_indices(available: int, names: tuple[str, ...], *, channels: int,
                    leads: tuple[str, ...]) -> list[int]:
    """Which of a recording's ``available`` channels (called ``names``, or unnamed) the run's
    ``channels`` / ``leads`` take, in the run's order."""
    if leads and names:
        keys = [lead_key(n) for n in names]
        missing = [lead for lead in leads if lead_key(lead) not in keys]
        if missing:
            raise SignalError(f"lead{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                              f"(data.signal_leads) not in this recording, which has "
                              f"{', '.join(names)}")
        return [keys.index(lead_key(lead)) for lead in leads]
    if leads and available != len(leads):
        raise SignalError(f"recording has {available} unnamed channel"
                          f"{'s' if available != 1 else ''}; data.signal_leads names "
                          f"{len(leads)}: an unnamed recording must hold exactly those, in "
                          "that order")
    if available < channels:
        raise SignalError(f"recording has {available} channel{'s' if available != 1 else ''}; "
                          f"data.signal_channels = {channels}")
    return list(range(channels))


def _waveform_group(dataset: Any) -> tuple[int, Any]:
    groups = list(dataset.get("WaveformSequence", []) or [])
    if not groups:
        raise SignalError("DICOM has no waveform (no WaveformSequence); is it an image?")
    for index, group in enumerate(groups):
        if str(group.get("MultiplexGroupLabel", "")).upper() == "RHYTHM":
            return index, group
    return 0, groups[0]


def _channel_name(channel: Any, number: int) -> str:
    source = channel.get("ChannelSourceSequence")
    if source and "CodeMeaning" in source[0]:
        return str(source[0].CodeMeaning)
    return str(channel.get("ChannelLabel", "") or f"channel {number + 1}")


def read_dicom_waveform(path: Path, limits: ReadLimits, *, channels: int,
                        leads: tuple[str, ...]) -> Recording:
    """The run's channels of the file's rhythm group (else its first), in the run's order;
    the header checked against ``limits`` before anything is decoded."""
    with warnings.catch_warnings():  # a broken file's warnings: the row issue says it all
        warnings.simplefilter("ignore")
        try:
            dataset = read_dataset(path, limits, defer_size="64 KB")  # data read on demand
            index, group = _waveform_group(dataset)
            count = int(group.NumberOfWaveformChannels)
            samples = int(group.NumberOfWaveformSamples)
            rate = float(group.SamplingFrequency)
            names = tuple(_channel_name(c, i) for i, c in
                          enumerate(group.get("ChannelDefinitionSequence", []) or []))
        except (SignalError, DicomError):
            raise
        except MemoryError:  # the row's issue says so (common.sitedata)
            raise
        except Exception as error:  # pydicom raises many unrelated types for bad files
            raise SignalError(f"unreadable DICOM waveform header ({type(error).__name__}: "
                              f"{error})") from None
        if not limits.min_signal_rate_hz <= rate <= limits.max_signal_rate_hz:
            raise SignalError(f"DICOM waveform rate {rate:g} Hz outside "
                              f"{limits.min_signal_rate_hz}..{limits.max_signal_rate_hz} Hz "
                              "(read_limits.min_signal_rate_hz/max_signal_rate_hz in the site "
                              "policy)")
        if not 1 <= count <= limits.max_signal_channels:
            raise SignalError(over_limit("DICOM waveform channels", count, limits,
                                         "max_signal_channels"))
        if samples * count > limits.max_signal_samples:
            raise SignalError(over_limit(f"DICOM waveform {samples:,} samples × {count} "
                                         "channels =", samples * count, limits,
                                         "max_signal_samples", "samples"))
        if samples == 0:
            raise SignalError("DICOM waveform has no samples")
        if len(names) != count:
            names = ()
        chosen = channel_indices(count, names, channels=channels, leads=leads)
        try:
            data = np.asarray(dataset.waveform_array(index), dtype=np.float64)
        except MemoryError:  # the row's issue says so (common.sitedata)
            raise
        except Exception as error:  # pydicom raises many unrelated types for bad files
            raise SignalError(f"unreadable DICOM waveform ({type(error).__name__}: "
                              f"{error})") from None
    if data.shape != (samples, count):
        raise SignalError(f"DICOM waveform decoded as {data.shape}, its header says "
                          f"{samples} × {count}; re-export it")
    return Recording(data.T[chosen], rate, tuple(names[i] for i in chosen) if names else ())


def read_edf(path: Path, limits: ReadLimits, *, channels: int,
             leads: tuple[str, ...]) -> Recording:
    """The run's channels of an EDF/EDF+/BDF file (optional extra ``pyedflib``), in the run's
    order, in physical units; only those channels are read, after the header's channel count,
    rates and samples are checked against ``limits``. The chosen channels must share one
    rate (EDF lets each channel have its own)."""
    try:
        import pyedflib
    except ImportError:
        raise SignalError("EDF/BDF needs the optional extra: pip install 'fedmm[edf]'") from None
    try:
        reader = pyedflib.EdfReader(str(path))
    except MemoryError:  # the row's issue says so (common.sitedata)
        raise
    except Exception as error:  # edflib's reasons arrive as OSError text
        raise SignalError(f"unreadable EDF/BDF ({str(error).strip() or type(error).__name__})"
                          ) from None
    try:
        count = int(reader.signals_in_file)
        if not 1 <= count <= limits.max_signal_channels:
            raise SignalError(over_limit("EDF channels", count, limits, "max_signal_channels"))
        names = tuple(str(label).strip() for label in reader.getSignalLabels())
        chosen = channel_indices(count, names, channels=channels, leads=leads)
        rates = sorted({float(reader.getSampleFrequency(i)) for i in chosen})
        if len(rates) > 1:
            shown = ", ".join(f"{r:g}" for r in rates)
            raise SignalError(f"the chosen EDF channels are sampled at {shown} Hz; export them "
                              "at one rate")
        rate = rates[0]
        if not limits.min_signal_rate_hz <= rate <= limits.max_signal_rate_hz:
            raise SignalError(f"EDF rate {rate:g} Hz outside {limits.min_signal_rate_hz}.."
                              f"{limits.max_signal_rate_hz} Hz (read_limits.min_signal_rate_hz/"
                              "max_signal_rate_hz in the site policy)")
        samples = [int(n) for n in np.asarray(reader.getNSamples())[chosen]]
        if sum(samples) > limits.max_signal_samples:
            raise SignalError(over_limit(f"EDF {max(samples):,} samples × {len(chosen)} "
                                         "channels =", sum(samples), limits,
                                         "max_signal_samples", "samples"))
        if min(samples) == 0:
            raise SignalError("EDF channel has no samples")
        data = np.stack([np.asarray(reader.readSignal(i), dtype=np.float64)[:min(samples)]
                         for i in chosen])
    except SignalError:
        raise
    except MemoryError:  # the row's issue says so (common.sitedata)
        raise
    except Exception as error:  # edflib and numpy errors of a broken file
        raise SignalError(f"unreadable EDF/BDF ({type(error).__name__}: {error})") from None
    finally:
        reader.close()
    return Recording(data, rate, tuple(names[i] for i in chosen))


MAX_WFDB_HEADER_BYTES = 1 << 20  # a 64-lead header with long comments is a few kB
WFDB_HEADER_SUFFIX = ".hea"  # what the manifest names; wfdb appends it to the record name


def read_wfdb(path: Path, limits: ReadLimits, *, channels: int,
              leads: tuple[str, ...]) -> Recording:
    """The run's channels of the WFDB record whose header is ``path`` (optional extra
    ``wfdb``), in the run's order and physical units. The header is screened first as text
    (:func:`_screen_wfdb_header`), then parsed; its channels, rate, length, skew and data files
    are checked against ``limits`` before any sample is read, counting every sample wfdb
    decodes (all channels of the record, not only the chosen ones)."""
    try:
        import wfdb
    except ImportError:
        raise SignalError("WFDB needs the optional extra: pip install 'fedmm[wfdb]'") from None
    _screen_wfdb_header(path, limits)
    record_name = str(path.with_suffix(""))  # wfdb opens record_name + the suffix: this file
    try:
        header = wfdb.rdheader(record_name)
    except MemoryError:  # the row's issue says so (common.sitedata)
        raise
    except Exception as error:  # wfdb's parse errors of a broken header
        raise SignalError(f"unreadable WFDB header ({type(error).__name__}: {error})") from None
    if getattr(header, "seg_name", None) is not None or not hasattr(header, "sig_name"):
        raise SignalError("multi-segment WFDB record: not supported; export it as one segment")
    count = int(header.n_sig or 0)
    if not 1 <= count <= limits.max_signal_channels:
        raise SignalError(over_limit("WFDB channels", count, limits, "max_signal_channels"))
    if any(int(n or 1) != 1 for n in header.samps_per_frame or []):
        raise SignalError("multi-frequency WFDB record (samples per frame > 1): not "
                          "supported; export every channel at one rate")
    _check_wfdb_files(path, [str(name) for name in header.file_name or []], limits)
    names = tuple(str(name).strip() for name in header.sig_name)
    chosen = channel_indices(count, names, channels=channels, leads=leads)
    rate = float(header.fs or 0)
    if not limits.min_signal_rate_hz <= rate <= limits.max_signal_rate_hz:
        raise SignalError(f"WFDB rate {rate:g} Hz outside {limits.min_signal_rate_hz}.."
                          f"{limits.max_signal_rate_hz} Hz (read_limits.min_signal_rate_hz/"
                          "max_signal_rate_hz in the site policy)")
    length = int(header.sig_len or 0)
    if length <= 0:
        raise SignalError("WFDB record has no samples")
    skews = [int(k or 0) for k in header.skew or []]
    if any(k < 0 for k in skews):
        raise SignalError("WFDB header has a negative skew")
    decoded = (length + max(skews, default=0)) * count  # wfdb decodes every channel
    if decoded > limits.max_signal_samples:
        raise SignalError(over_limit(f"WFDB {length:,} samples × {count} channels =",
                                     decoded, limits, "max_signal_samples", "samples"))
    try:
        record = wfdb.rdrecord(record_name, channels=list(chosen), physical=True)
        data = np.asarray(record.p_signal, dtype=np.float64).T
    except MemoryError:  # the row's issue says so (common.sitedata)
        raise
    except Exception as error:  # a data file shorter or other than the header says
        raise SignalError(f"unreadable WFDB data ({type(error).__name__}: {error})") from None
    if data.shape != (len(chosen), length):
        raise SignalError(f"WFDB data gave {data.shape[1]} samples × {data.shape[0]} channels; "
                          f"the header says {length} × {len(chosen)}")
    return Recording(data, rate, tuple(names[i] for i in chosen))


def _screen_wfdb_header(path: Path, limits: ReadLimits) -> None:
    """What wfdb's parser is not asked to judge: the name ends in ``.hea`` exactly (wfdb
    appends it to the record name, so ``.HEA`` would have it open another file), a regular
    file of at most ``MAX_WFDB_HEADER_BYTES``, ASCII (wfdb drops other bytes, and with them
    the file names they spell), a signal count within the limit with that many signal lines
    and no more (wfdb parses each line slowly), and a rate that is a positive number."""
    if path.suffix != WFDB_HEADER_SUFFIX:
        raise SignalError(f"WFDB header '{path.name}' must end in '{WFDB_HEADER_SUFFIX}' (lower "
                          "case), as the wfdb reader opens it; rename it and its manifest cell")
    if not path.is_file():
        raise SignalError("WFDB header is not a regular file")
    if path.stat().st_size > MAX_WFDB_HEADER_BYTES:
        raise SignalError(f"WFDB header is {path.stat().st_size:,} bytes; a header is at most "
                          f"{MAX_WFDB_HEADER_BYTES:,}")
    raw = path.read_bytes()[:MAX_WFDB_HEADER_BYTES + 1]
    if not raw.isascii():
        raise SignalError("WFDB header holds non-ASCII bytes; WFDB headers are ASCII")
    lines = _header_lines(raw.decode("ascii"))
    if not lines or len(lines[0]) < 2:
        raise SignalError("unreadable WFDB header (no record line)")
    try:
        signals = int(lines[0][1])
    except ValueError:
        raise SignalError(f"unreadable WFDB header (signal count '{lines[0][1]}')") from None
    if "/" not in lines[0][0]:
        if not 1 <= signals <= limits.max_signal_channels:
            raise SignalError(over_limit("WFDB channels", signals, limits,
                                         "max_signal_channels"))
        if len(lines) - 1 > signals:
            raise SignalError(f"WFDB header has {len(lines) - 1} signal lines for {signals} "
                              "signals")
    if len(lines[0]) > 2:
        rate = lines[0][2].split("/")[0]
        try:
            valid = math.isfinite(float(rate)) and float(rate) > 0
        except ValueError:
            valid = False
        if not valid:
            raise SignalError(f"unreadable WFDB rate '{rate}' in the header's record line")


def _header_lines(text: str) -> list[list[str]]:
    """A header's record and signal lines, split into fields (comments and blanks out)."""
    return [line.split() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _check_wfdb_files(header: Path, files: list[str], limits: ReadLimits) -> None:
    """Every data file the header names: a plain name, beside the header once links are
    resolved, present and under the file limit (a header may name anything)."""
    folder = header.resolve().parent
    for name in sorted(set(files)):
        target = (header.parent / name)
        if Path(name).name != name or name in (".", "..") or target.resolve().parent != folder:
            raise SignalError(f"WFDB header names data file '{name}' outside its folder; "
                              "data files must sit beside the header")
        if not target.is_file():
            raise SignalError(f"WFDB data file '{name}' not found beside the header")
        size = target.stat().st_size
        if size > limits.max_file_bytes:
            raise SignalError(over_limit(f"WFDB data file '{name}' is", size, limits,
                                         "max_file_bytes", "bytes"))


def wfdb_data_files(header: Path) -> list[str]:
    """The data files a WFDB header names (the first field of each signal line), read as
    text without the ``wfdb`` package; [] for a header that is not a regular file or cannot
    be read. The site cache keys a record on them (a changed ``.dat`` is a changed
    recording)."""
    try:
        if not header.is_file():  # never open a FIFO or a device
            return []
        with header.open("rb") as handle:
            text = handle.read(MAX_WFDB_HEADER_BYTES).decode("latin-1")
    except OSError:
        return []
    lines = _header_lines(text)
    if not lines or len(lines[0]) < 2 or "/" in lines[0][0]:
        return []
    try:
        signals = int(lines[0][1])
    except ValueError:
        return []
    return sorted({fields[0] for fields in lines[1:1 + signals]})

