"""Multichannel biosignals (common/biosignals.py, common/preprocess.read_signal): pydicom's real
12-lead ECG (DICOM waveform, 10 s at 1000 Hz) by lead name, multichannel WAV and 2-D ``.npy``,
each channel checked against reading it alone; the limits checked before decoding; a site
whose manifest names the column ``signal``."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from common.biosignals import SignalError, channel_indices, lead_key
from common.config import DataConfig, ModelConfig
from common.preprocess import SampleError, log_mel, read_signal
from common.read_limits import ReadLimits

pydicom = pytest.importorskip("pydicom")
ECG = Path(pydicom.__file__).parent / "data" / "test_files" / "waveform_ecg.dcm"
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
ECG_CONFIG = DataConfig(signal_channels=12, signal_leads=LEADS, signal_sample_rate=500,
                        signal_length=5000)


def by_hand(channel: np.ndarray, rate: float, config: DataConfig) -> np.ndarray:
    """One channel resampled linearly, centre-cropped or padded, standardised."""
    count = round(channel.size / rate * config.signal_sample_rate)
    times = np.arange(count) / config.signal_sample_rate
    resampled = np.interp(times, np.arange(channel.size) / rate, channel)
    start = max(0, (count - config.signal_length) // 2)
    resampled = resampled[start:start + config.signal_length]
    resampled = np.pad(resampled, (0, config.signal_length - resampled.size))
    return (resampled - resampled.mean()) / resampled.std()


def test_lead_names_compare_as_clinicians_write_them() -> None:
    assert lead_key("Lead I (Einthoven)") == lead_key("I") == lead_key(" lead i ") == "i"
    assert lead_key("aVR") == lead_key("Lead AVR") and lead_key("V1") != lead_key("V10")


def test_channels_are_chosen_by_name_or_by_position() -> None:
    names = ("Lead II", "Lead I (Einthoven)", "Lead V1")
    assert channel_indices(3, names, channels=2, leads=("I", "II")) == [1, 0]
    with pytest.raises(SignalError, match=r"leads V5, V6 \(data.signal_leads\) not in this "
                                          r"recording, which has Lead II, Lead I"):
        channel_indices(3, names, channels=3, leads=("I", "V5", "V6"))
    assert channel_indices(4, (), channels=2, leads=()) == [0, 1]
    with pytest.raises(SignalError, match=r"recording has 3 unnamed channels; data\.signal_leads "
                                          r"names 2"):
        channel_indices(3, (), channels=2, leads=("I", "II"))
    with pytest.raises(SignalError, match=r"recording has 1 channel; data\.signal_channels = 12"):
        channel_indices(1, (), channels=12, leads=())


def test_the_real_12_lead_ecg_is_read_lead_by_lead() -> None:
    raw = pydicom.dcmread(ECG).waveform_array(0)  # 10,000 samples × 12 leads at 1000 Hz
    signal = read_signal(ECG, ECG_CONFIG)
    assert signal.shape == (12, 5000) and signal.dtype == np.float32
    for k in range(12):
        np.testing.assert_allclose(signal[k], by_hand(raw[:, k], 1000.0, ECG_CONFIG),
                                   atol=1e-5)
    backwards = read_signal(ECG, ECG_CONFIG.model_copy(
        update={"signal_leads": LEADS[::-1]}))
    np.testing.assert_array_equal(backwards, signal[::-1])
    three = read_signal(ECG, DataConfig(signal_channels=3, signal_leads=("V6", "II", "aVF"),
                                        signal_sample_rate=500, signal_length=5000))
    np.testing.assert_array_equal(three, signal[[11, 1, 5]])


def test_log_mel_is_per_channel() -> None:
    config = ECG_CONFIG.model_copy(update={"signal_features": "log_mel"})
    features = read_signal(ECG, config)
    raw = read_signal(ECG, ECG_CONFIG).astype(np.float64)
    assert features.shape == (12 * 32, 5000 // 16 + 1)
    np.testing.assert_allclose(features[32:64], log_mel(raw[1], 500), atol=1e-4)


def test_the_waveforms_limits_hold_before_it_is_decoded() -> None:
    with pytest.raises(SampleError, match=r"DICOM waveform channels 12 > limit 11 "
                                          r"\(read_limits.max_signal_channels"):
        read_signal(ECG, ECG_CONFIG, limits=ReadLimits(max_signal_channels=11))
    with pytest.raises(SampleError, match=r"DICOM waveform 10,000 samples × 12 channels = "
                                          r"120,000 samples > limit 100,000"):
        read_signal(ECG, ECG_CONFIG, limits=ReadLimits(max_signal_samples=100_000))
    with pytest.raises(SampleError, match=r"DICOM waveform rate 1000 Hz outside 1\.\.999 Hz"):
        read_signal(ECG, ECG_CONFIG, limits=ReadLimits(max_signal_rate_hz=999))
    image = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    with pytest.raises(SampleError, match="DICOM has no waveform"):
        read_signal(image, DataConfig())


def _wav(path: Path, channels: np.ndarray, rate: int) -> None:
    """channels × frames in [-1, 1] → 16-bit PCM."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(len(channels))
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((channels.T * 32_000).astype("<i2").tobytes())


def test_multichannel_wav_and_npy_give_what_each_channel_alone_gives(tmp_path: Path) -> None:
    times = np.arange(8_000) / 4_000
    channels = np.stack([np.sin(2 * np.pi * f * times) * (0.2 + 0.2 * k)
                         for k, f in enumerate((3.0, 7.0, 11.0))])
    _wav(tmp_path / "three.wav", channels, 4_000)
    config = DataConfig(signal_channels=2, signal_sample_rate=200, signal_length=300)
    both = read_signal(tmp_path / "three.wav", config)
    assert both.shape == (2, 300)
    for k in range(2):
        _wav(tmp_path / f"alone{k}.wav", channels[k:k + 1], 4_000)
        alone = read_signal(tmp_path / f"alone{k}.wav", DataConfig(
            signal_sample_rate=200, signal_length=300))
        np.testing.assert_array_equal(both[k], alone[0])
    np.save(tmp_path / "two.npy", channels[:2])
    from_npy = read_signal(tmp_path / "two.npy", DataConfig(signal_channels=2,
                                                            signal_sample_rate=4_000,
                                                            signal_length=300))
    for k in range(2):
        np.save(tmp_path / f"one{k}.npy", channels[k])
        np.testing.assert_array_equal(from_npy[k], read_signal(
            tmp_path / f"one{k}.npy", DataConfig(signal_sample_rate=4_000,
                                                 signal_length=300))[0])


def test_the_config_names_as_many_leads_as_channels() -> None:
    with pytest.raises(ValueError, match="signal_leads names 2 leads; signal_channels is 3"):
        DataConfig(signal_channels=3, signal_leads=("I", "II"))
    with pytest.raises(ValueError, match="names a lead twice"):
        DataConfig(signal_channels=2, signal_leads=("V1", "v1"))


def test_a_site_of_ecgs_under_a_signal_column_trains_a_12_channel_encoder(tmp_path: Path
                                                                          ) -> None:
    import torch

    from common.models import build_model
    from common.sitedata import load_site

    site = tmp_path / "site"
    (site / "ecg").mkdir(parents=True)
    shutil.copy(ECG, site / "ecg" / "a.dcm")
    rows = [f"p{i},{i % 2},,sinus rhythm,ecg/a.dcm" for i in range(10)]
    (site / "manifest.csv").write_text("sample_id,label,image,text,signal\n"
                                       + "\n".join(rows) + "\n")
    data = load_site(site, ECG_CONFIG)
    assert len(data) == 10 and data.signals.shape == (10, 12, 5000)
    model = build_model(data=ECG_CONFIG, model=ModelConfig(modalities=("text", "audio")))
    logits = model(torch.from_numpy(data.images[:2]), torch.from_numpy(data.tokens[:2]),
                   torch.from_numpy(data.signals[:2]), torch.from_numpy(data.masks[:2]))
    assert logits.shape == (2, ECG_CONFIG.num_classes)


def test_bad_waveform_files_are_their_rows_issues(tmp_path: Path) -> None:
    """Truncated data, a header that lies about its samples, a rate out of bounds: each a
    reason, never a crash."""

    data = ECG.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleError, match="DICOM waveform"):
        read_signal(tmp_path / "cut.dcm", ECG_CONFIG)
    dataset = pydicom.dcmread(ECG)
    dataset.WaveformSequence[0].NumberOfWaveformSamples = 20_000  # the data holds 10,000
    dataset.save_as(tmp_path / "lying.dcm")
    with pytest.raises(SampleError, match=r"unreadable DICOM waveform|decoded as"):
        read_signal(tmp_path / "lying.dcm", ECG_CONFIG)
    dataset = pydicom.dcmread(ECG)
    dataset.WaveformSequence[0].SamplingFrequency = 0
    dataset.save_as(tmp_path / "no-rate.dcm")
    with pytest.raises(SampleError, match=r"DICOM waveform rate 0 Hz outside 1\.\.1000000 Hz"):
        read_signal(tmp_path / "no-rate.dcm", ECG_CONFIG)


def _edf_from_the_ecg(path: Path, *, order: list[int], rates: list[float] | None = None) -> None:
    """pydicom's ECG written as EDF with pyedflib (16-bit samples, labels "ECG <lead>"), its
    leads stored in ``order``."""
    pyedflib = pytest.importorskip("pyedflib")
    raw = pydicom.dcmread(ECG).waveform_array(0)
    headers, signals = [], []
    for position, k in enumerate(order):
        rate = (rates or [1000.0] * len(order))[position]
        channel = raw[:, k] if rate == 1000.0 else raw[::2, k]
        headers.append({"label": f"ECG {LEADS[k]}", "dimension": "uV", "sample_frequency": rate,
                        "physical_min": -5000.0, "physical_max": 5000.0,
                        "digital_min": -32768, "digital_max": 32767})
        signals.append(np.ascontiguousarray(channel))
    with pyedflib.EdfWriter(str(path), len(order), file_type=pyedflib.FILETYPE_EDFPLUS) as out:
        out.setSignalHeaders(headers)
        out.writeSamples(signals)


def test_an_edf_recording_gives_the_same_leads_as_the_dicom_it_came_from(tmp_path: Path
                                                                         ) -> None:
    """The ECG as EDF+ with its leads stored backwards: by name, every lead reads as from the
    DICOM, to within EDF's 16-bit step (10,000 µV / 65,535)."""
    _edf_from_the_ecg(tmp_path / "ecg.edf", order=list(range(12))[::-1])
    from_edf = read_signal(tmp_path / "ecg.edf", ECG_CONFIG)
    from_dicom = read_signal(ECG, ECG_CONFIG)
    assert from_edf.shape == (12, 5000)
    raw = pydicom.dcmread(ECG).waveform_array(0)
    for k in range(12):
        step = 10_000 / 65_535 / raw[:, k].std()  # one 16-bit step, standardised
        assert np.max(np.abs(from_edf[k] - from_dicom[k])) <= 2 * step, LEADS[k]


def test_bad_edf_files_are_their_rows_issues(tmp_path: Path) -> None:
    _edf_from_the_ecg(tmp_path / "mixed.edf", order=[0, 1], rates=[1000.0, 500.0])
    with pytest.raises(SampleError, match="the chosen EDF channels are sampled at 500, 1000 Hz"):
        read_signal(tmp_path / "mixed.edf", DataConfig(signal_channels=2))
    _edf_from_the_ecg(tmp_path / "two.edf", order=[0, 1])
    with pytest.raises(SampleError, match=r"lead V1 \(data\.signal_leads\) not in this "
                                          r"recording, which has ECG I, ECG II"):
        read_signal(tmp_path / "two.edf", DataConfig(signal_channels=2,
                                                     signal_leads=("I", "V1")))
    with pytest.raises(SampleError, match=r"EDF 10,000 samples × 2 channels = 20,000 samples "
                                          r"> limit 1,000"):
        read_signal(tmp_path / "two.edf", DataConfig(signal_channels=2),
                    limits=ReadLimits(max_signal_samples=1_000))
    data = (tmp_path / "two.edf").read_bytes()
    (tmp_path / "cut.edf").write_bytes(data[: len(data) // 3])
    with pytest.raises(SampleError, match="unreadable EDF/BDF"):
        read_signal(tmp_path / "cut.edf", DataConfig(signal_channels=2))
    (tmp_path / "junk.edf").write_bytes(b"0       " + b"x" * 500)
    with pytest.raises(SampleError, match="unreadable EDF/BDF"):
        read_signal(tmp_path / "junk.edf", DataConfig())


def _wfdb_from_the_ecg(folder: Path, name: str, *, order: list[int]) -> Path:
    """pydicom's ECG written as a WFDB record with ``wfdb.wrsamp`` (format 16, in mV, leads
    stored in ``order``); returns its ``.hea`` header."""
    wfdb = pytest.importorskip("wfdb")
    raw = pydicom.dcmread(ECG).waveform_array(0)  # µV
    signal = np.ascontiguousarray(raw[:, order] / 1000.0)
    wfdb.wrsamp(name, fs=1000, units=["mV"] * len(order), sig_name=[LEADS[k] for k in order],
                p_signal=signal, fmt=["16"] * len(order), write_dir=str(folder))
    return folder / f"{name}.hea"


def test_a_wfdb_record_gives_the_same_leads_as_the_dicom_it_came_from(tmp_path: Path) -> None:
    """The ECG as a WFDB record (PTB-XL's format) with its leads stored backwards: by name,
    every lead reads as from the DICOM, to within the record's 16-bit step."""
    header = _wfdb_from_the_ecg(tmp_path, "ecg", order=list(range(12))[::-1])
    from_wfdb = read_signal(header, ECG_CONFIG)
    from_dicom = read_signal(ECG, ECG_CONFIG)
    assert from_wfdb.shape == (12, 5000)
    raw = pydicom.dcmread(ECG).waveform_array(0)
    for k in range(12):
        step = np.ptp(raw[:, k]) / 65_535 / raw[:, k].std()  # wrsamp's gain: the lead's range
        assert np.max(np.abs(from_wfdb[k] - from_dicom[k])) <= 2 * step, LEADS[k]


def test_bad_wfdb_records_are_their_rows_issues(tmp_path: Path) -> None:
    """A truncated data file, a header naming a file outside its folder or none at all, too
    few leads, invalid (non-finite) samples, a rate out of bounds, a header declaring more
    samples than the limit: each a reason, checked before any sample is read, never a crash."""
    from common.biosignals import wfdb_data_files

    two = DataConfig(signal_channels=2)
    header = _wfdb_from_the_ecg(tmp_path, "two", order=[0, 1])
    assert wfdb_data_files(header) == ["two.dat"]
    text = header.read_text()

    def variant(name: str, new_text: str) -> Path:
        (tmp_path / f"{name}.hea").write_text(new_text.replace("two", name, 1))
        return tmp_path / f"{name}.hea"

    data = (tmp_path / "two.dat").read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[: len(data) // 3])
    with pytest.raises(SampleError, match=r"unreadable WFDB data|WFDB data gave"):
        read_signal(variant("cut", text.replace("two.dat", "cut.dat")), two)
    with pytest.raises(SampleError, match="unreadable WFDB header"):  # a path: wfdb refuses
        read_signal(variant("escape", text.replace("two.dat", "../two.dat")), two)
    (tmp_path / "elsewhere").mkdir()  # a plain name that is a link to another folder
    (tmp_path / "elsewhere" / "real.dat").write_bytes(data)
    (tmp_path / "linked.dat").symlink_to(tmp_path / "elsewhere" / "real.dat")
    with pytest.raises(SampleError, match=r"WFDB header names data file 'linked\.dat' "
                                          r"outside its folder"):
        read_signal(variant("linked", text.replace("two.dat", "linked.dat")), two)
    with pytest.raises(SampleError, match=r"WFDB data file 'gone\.dat' not found beside"):
        read_signal(variant("gone", text.replace("two.dat", "gone.dat")), two)
    with pytest.raises(SampleError, match=r"lead V1 \(data\.signal_leads\) not in this "
                                          r"recording, which has I, II"):
        read_signal(header, DataConfig(signal_channels=2, signal_leads=("I", "V1")))
    with pytest.raises(SampleError, match=r"WFDB rate 0\.5 Hz outside 1\.\.1000000 Hz"):
        read_signal(variant("slow", text.replace(" 1000 ", " 0.5 ", 1)), two)
    huge = variant("huge", text.replace(" 10000", " 1000000000", 1))
    with pytest.raises(SampleError, match=r"WFDB 1,000,000,000 samples × 2 channels = "
                                          r"2,000 M samples > limit 32 M samples"):
        read_signal(huge, two)
    invalid = bytearray(data)
    invalid[20_000:20_002] = (-32768).to_bytes(2, "little", signed=True)  # "no sample", 5 s in
    (tmp_path / "gap.dat").write_bytes(bytes(invalid))
    with pytest.raises(SampleError, match="1 NaN or infinite values"):
        read_signal(variant("gap", text.replace("two.dat", "gap.dat")), two)
    (tmp_path / "junk.hea").write_text("this is not a header\n")
    with pytest.raises(SampleError, match="unreadable WFDB header"):
        read_signal(tmp_path / "junk.hea", two)
    (tmp_path / "multi.hea").write_text("multi/2 2 1000 20000\ntwo 10000\ntwo 10000\n")
    with pytest.raises(SampleError, match="multi-segment WFDB record"):
        read_signal(tmp_path / "multi.hea", two)


def test_wfdb_headers_are_screened_before_wfdb_parses_them(tmp_path: Path) -> None:
    """What a hostile header could make the wfdb package do, refused from the header alone:
    open another file (an upper-case suffix), read a file a dropped byte spells, parse a
    megabyte of signal lines, allocate for a skew, decode more channels or frames than the
    sample limit counts, or take an unreadable rate for its 250 Hz default."""
    import shutil as files

    two = DataConfig(signal_channels=2)
    header = _wfdb_from_the_ecg(tmp_path, "two", order=[0, 1])
    text = header.read_text()
    record, first, second = text.splitlines()[:3]

    def refused(name: str, content: str, pattern: str, config: DataConfig = two,
                limits: ReadLimits | None = None) -> None:
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(SampleError, match=pattern):
            read_signal(tmp_path / name, config, **({"limits": limits} if limits else {}))

    files.copy(tmp_path / "two.dat", tmp_path / "UP.dat")
    refused("UP.HEA", text.replace("two", "UP"), r"must end in '\.hea' \(lower case\)")
    refused("accent.hea", text.replace("two", "accent", 1).replace("two.dat", "twé.dat"),
            "non-ASCII bytes")
    refused("lines.hea", text.replace("two", "lines", 1) + (first + "\n") * 500,
            "502 signal lines for 2 signals")
    refused("big.hea", text.replace("two", "big", 1) + "#" * (1 << 20) + "\n",
            r"WFDB header is 1,048,\d{3} bytes; a header is at most 1,048,576")
    refused("fs.hea", text.replace("two", "fs", 1).replace(" 1000 ", " -100 ", 1),
            "unreadable WFDB rate '-100'")
    refused("nan.hea", text.replace("two", "nan", 1).replace(" 1000 ", " nan ", 1),
            "unreadable WFDB rate 'nan'")
    skewed = record.replace("two", "skew") + "\n" + "\n".join(
        line.replace("two.dat 16", "two.dat 16:250000000") for line in (first, second)) + "\n"
    refused("skew.hea", skewed, r"WFDB 10,000 samples × 2 channels = 500 M samples > limit")
    framed = record.replace("two", "frames") + "\n" + "\n".join(
        line.replace("two.dat 16", "two.dat 16x1000") for line in (first, second)) + "\n"
    refused("frames.hea", framed, r"multi-frequency WFDB record \(samples per frame > 1\)")
    # one channel chosen of two in one file: wfdb decodes both, and both count
    refused("wide.hea", text.replace("two", "wide", 1),
            r"WFDB 10,000 samples × 2 channels = 20,000 samples > limit 15,000",
            config=DataConfig(signal_channels=1),
            limits=ReadLimits(max_signal_samples=15_000))


def test_a_fifo_named_like_a_header_is_a_missing_file_cached_or_not(tmp_path: Path) -> None:
    """Nothing opens a FIFO the manifest names (it would block the load): not the reader,
    not the site cache's key."""
    import os

    from common.sitecache import load_site_cached
    from common.sitedata import load_site

    site = tmp_path / "site"
    (site / "ecg").mkdir(parents=True)
    os.mkfifo(site / "ecg" / "a.hea")
    (site / "manifest.csv").write_text("sample_id,label,image,text,signal\n"
                                       "p0,0,,,ecg/a.hea\np1,1,,a note,\n")
    config = DataConfig(min_usable_rows=1)
    for data in (load_site(site, config), load_site_cached(site, config, tmp_path / "cache")):
        [issue] = data.issues
        assert issue.sample_id == "p0" and "not found" in issue.reason, issue


def test_values_too_large_to_standardise_are_the_rows_issue(tmp_path: Path) -> None:
    np.save(tmp_path / "huge.npy", np.full(1000, 1e300) * np.linspace(1, 2, 1000))
    with pytest.raises(SampleError, match="too large to standardise"):
        read_signal(tmp_path / "huge.npy", DataConfig())


def test_three_ecg_hospitals_train_a_private_securely_aggregated_round(tmp_path: Path) -> None:
    """One hospital's ECGs as DICOM waveforms, one's as EDF+ (leads stored backwards), one's as
    WFDB records (limb leads last), each with its notes: validated, then one round of real
    DP-SGD (Opacus) at each, masked and summed by secure aggregation (real X25519, AES-GCM,
    Shamir) through the real ClientApp, with the 12-lead model."""
    from client.ledger import PrivacyLedger
    from common.config import RunConfig
    from simulations.demo_data import DEMO_POLICY
    from tests.inprocess import one_secure_round

    sites = []
    for name, suffix in (("dicom-site", ".dcm"), ("edf-site", ".edf"), ("wfdb-site", ".hea")):
        site = tmp_path / name
        (site / "ecg").mkdir(parents=True)
        if suffix == ".dcm":
            shutil.copy(ECG, site / "ecg" / "a.dcm")
        elif suffix == ".edf":
            _edf_from_the_ecg(site / "ecg" / "a.edf", order=list(range(12))[::-1])
        else:
            _wfdb_from_the_ecg(site / "ecg", "a", order=[*range(6, 12), *range(6)])
        rows = [f"p{i},{i % 2},,{'atrial fibrillation' if i % 2 else 'sinus rhythm'},"
                f"ecg/a{suffix}" for i in range(24)]
        (site / "manifest.csv").write_text("sample_id,label,image,text,signal\n"
                                           + "\n".join(rows) + "\n")
        (site / "policy.toml").write_text(DEMO_POLICY)
        sites.append(site)
    config = RunConfig.model_validate({
        "model_id": "ecg12",
        "data": {**ECG_CONFIG.model_dump(), "num_classes": 2},
        "model": {"modalities": ["text", "audio"], "embed_dim": 8, "hidden_dim": 16},
        "training": {"rounds": 1, "local_epochs": 1, "batch_size": 8},
        "privacy": {"noise_multiplier": 1.0}})
    for site in sites:
        result = runner_validate(site, config, tmp_path)
        assert "24 rows, 24 usable, 0 bad" in result, result
    _, outcome = one_secure_round(sites, config)
    assert outcome.mean is not None and outcome.details["survivors"] == 3, outcome
    assert outcome.mean["encoders.audio.features.0.weight"].shape[1] == 12
    assert all(np.isfinite(v).all() for v in outcome.mean.values())
    for site in sites:
        spend = PrivacyLedger(site / ".fedmm").spend("ecg12")
        assert spend is not None and spend.rounds_served == 1 and spend.epsilon > 0


def runner_validate(site: Path, config, tmp_path: Path) -> str:
    from typer.testing import CliRunner

    from fedmm.cli import app

    path = tmp_path / f"{site.name}.toml"
    path.write_text(config_toml(config))
    return CliRunner().invoke(app, ["validate-data", str(site), "--config", str(path)]).output


def config_toml(config) -> str:
    """The run config as TOML (sections of scalars and lists only)."""
    import json

    lines = [f"model_id = {json.dumps(config.model_id)}"]
    for section, values in config.model_dump(mode="json").items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()
                      if value is not None and not isinstance(value, dict)]
    return "\n".join(lines) + "\n"


def test_the_readmes_study_folder_loads_as_written(tmp_path: Path) -> None:
    """README "Bringing your hospital's data": its manifest and [data] keys, typed as written,
    with pydicom's MR and CT slices standing in for the chest films and its ECG (as DICOM and
    as EDF+) for the patients' ECGs."""
    import tomllib

    from PIL import Image

    from common.sitedata import load_site

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Bringing your hospital's data", 1)[1]
    blocks = section.split("```")
    folder, config_block = blocks[1], blocks[3]  # the folder, then the [data] keys
    manifest = "\n".join(line.strip() for line in folder.splitlines()[2:] if line.strip())
    data = DataConfig(**tomllib.loads(config_block.removeprefix("toml"))["data"])
    site = tmp_path / "study"
    for sub in ("cxr", "reports", "ecg"):
        (site / sub).mkdir(parents=True)
    (site / "manifest.csv").write_text(manifest + "\n")
    films = Path(pydicom.__file__).parent / "data" / "test_files"
    shutil.copy(films / "MR_small.dcm", site / "cxr" / "p0001.dcm")
    shutil.copy(films / "CT_small.dcm", site / "cxr" / "p0002.dcm")
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(
        site / "cxr" / "p0003.png")
    for patient in ("p0001", "p0002"):
        (site / "reports" / f"{patient}.txt").write_text("heart size normal, lungs clear")
    shutil.copy(ECG, site / "ecg" / "p0001.dcm")
    _edf_from_the_ecg(site / "ecg" / "p0002.edf", order=list(range(12)))
    loaded = load_site(site, data)
    assert not loaded.issues, loaded.issues
    assert loaded.images.shape == (3, 1, 128, 128) and loaded.signals.shape == (3, 12, 5000)
    assert loaded.labels.tolist() == [[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]  # findings
    assert loaded.masks.tolist() == [[True, True, True], [True, True, True],
                                     [True, True, False]]


def test_a_wfdb_records_data_file_is_part_of_the_site_caches_key(tmp_path: Path) -> None:
    """The manifest names the header; a new data file beside the same header is a new
    recording, so the cached arrays of the site are not used for it."""
    import os

    from common.sitecache import cache_key
    from common.sitedata import read_manifest

    site = tmp_path / "site"
    (site / "ecg").mkdir(parents=True)
    _wfdb_from_the_ecg(site / "ecg", "a", order=[0, 1])
    (site / "manifest.csv").write_text("sample_id,label,image,text,signal\np1,0,,,ecg/a.hea\n")
    config = DataConfig(signal_channels=2)
    before = cache_key(site, config, read_manifest(site))
    data = site / "ecg" / "a.dat"
    data.write_bytes(data.read_bytes()[::-1])  # same size
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache_key(site, config, read_manifest(site)) != before
