"""Run configuration: pydantic models validated at the edge (TOML file, CLI flags).

A ``RunConfig`` is loaded from a TOML file (sections ``[data]``, ``[model]``, ``[training]``,
``[privacy]``, ``[secure_aggregation]``) and overridden by dotted ``key=value`` pairs from the CLI.
Any wrong value raises :class:`ConfigError` with one line naming the key, the value and what is
allowed. Inside the system the validated model is passed around as plain data
(``RunConfig.model_dump()`` travels in Flower ``ConfigRecord``s as one JSON string).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MODALITIES: tuple[str, ...] = ("image", "text", "audio")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line meant for a person."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# CT window presets, centre and width in Hounsfield units (the usual radiology ones), for
# data.dicom_window; common.dicom applies them.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (30.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
DicomWindow = Literal[("file", "min_max", *CT_WINDOWS)]  # type: ignore[valid-type]
LabelKind = Literal["multiclass", "multilabel", "binary"]
FINDING_SEPARATOR = ";"  # between a multi-label row's findings in the manifest's label cell


def lead_key(name: str) -> str:
    """A biosignal lead's name as compared: no "Lead " or "ECG " prefix, no parenthesised
    note, no case or spaces (``"Lead I (Einthoven)"``, ``"ECG I"`` → ``"i"``; ``"aVR"`` →
    ``"avr"``)."""
    name = re.sub(r"\(.*?\)", "", name)
    name = re.sub(r"^\s*(lead|ecg)\b", "", name.strip(), flags=re.IGNORECASE)
    return re.sub(r"\s+", "", name).lower()


class DataConfig(_Section):
    """Fixed preprocessing applied to every site's files."""

    num_classes: int = Field(4, ge=2, le=1000, description="classes, or findings when "
                             "labels is multilabel (the model's outputs)")
    labels: LabelKind = Field(
        "multiclass", description="multiclass: one class a row; binary: two (AUROC reported); "
        "multilabel: any number of findings a row, ';'-separated, binary cross-entropy "
        "(common.findings)")
    label_names: tuple[str, ...] = Field(
        (), description="the classes or findings by name, in index order; the label cell may "
        "then use names")
    image_size: int = Field(32, ge=8, le=512, description="images are resized to a square")
    image_channels: Literal[1, 3] = 1
    max_text_tokens: int = Field(48, ge=4, le=1024)
    vocab_size: int = Field(512, ge=64, le=1_000_000, description="hashed token buckets")
    signal_length: int = Field(1000, ge=64, le=1_000_000, description="samples after resampling")
    signal_sample_rate: int = Field(200, ge=1, le=192_000, description="Hz after resampling")
    signal_features: Literal["raw", "log_mel"] = "raw"
    signal_channels: int = Field(1, ge=1, le=64, description="channels of each recording the "
                                 "model gets (12 for a 12-lead ECG)")
    signal_leads: tuple[str, ...] = Field(
        (), description="the channels by name, in the model's order (e.g. the 12 ECG leads); "
        "as many as signal_channels (common.biosignals)")
    dicom_window: DicomWindow = Field(
        "file", description="DICOM grey levels shown: the file's own window (else its range), "
        "the image's range, or a CT preset in Hounsfield units (common.dicom)")
    min_usable_rows: int = Field(10, ge=1, description="a site with fewer usable rows stops")

    @model_validator(mode="after")
    def _check_leads(self) -> DataConfig:
        if self.signal_leads and len(self.signal_leads) != self.signal_channels:
            raise ValueError(f"signal_leads names {len(self.signal_leads)} leads; "
                             f"signal_channels is {self.signal_channels}: give as many names "
                             "as channels, or none")
        if len({lead_key(lead) for lead in self.signal_leads}) != len(self.signal_leads):
            raise ValueError("signal_leads names a lead twice")
        return self

    @model_validator(mode="after")
    def _check_labels(self) -> DataConfig:
        if self.labels == "binary" and self.num_classes != 2:
            raise ValueError(f"labels = \"binary\" needs num_classes = 2 (got "
                             f"{self.num_classes})")
        names = self.label_names
        if names and len(names) != self.num_classes:
            raise ValueError(f"label_names names {len(names)} labels; num_classes is "
                             f"{self.num_classes}: give as many names as classes, or none")
        if len({name.strip().lower() for name in names}) != len(names):
            raise ValueError("label_names names a label twice")
        bad = [n for n in names if not n.strip() or FINDING_SEPARATOR in n or "," in n
               or _reads_as_an_index(n)]
        if bad:
            raise ValueError(f"label_names: {bad[0]!r} is empty, a number or holds ';' or ','")
        return self


def _reads_as_an_index(name: str) -> bool:
    """A name a label cell would read as a number ("+1", "1_0", "١")."""
    try:
        int(name)
    except ValueError:
        return False
    return True


class ModelConfig(_Section):
    """Encoders and fusion head."""

    fusion: Literal["concat", "attention", "late"] = "concat"
    encoders: Literal["trainable", "pretrained", "scattering"] = Field(
        "trainable", description="pretrained: frozen MiniLM text and EfficientNet-lite0 image "
        "features (extra 'fedmm[pretrained]'), DP-SGD trains only what sits on top; "
        "scattering: fixed scattering-transform image features (no download), text and "
        "signal encoders trained")
    pretrained_image_size: int = Field(
        96, ge=32, le=512, description="images are resized to this square for EfficientNet")
    text_encoder: Literal["gru", "attention"] = "attention"
    embed_dim: int = Field(16, ge=4, le=1024)
    hidden_dim: int = Field(32, ge=4, le=4096)
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    modalities: tuple[Literal["image", "text", "audio"], ...] = MODALITIES
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check_modalities(self) -> ModelConfig:
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError("modalities must be a non-empty list without repeats")
        return self


SCATTERING_SCALES = 2  # J of common.scattering; image_size must be a multiple of 2^J
SCATTERING_STRIDE = 1 << SCATTERING_SCALES


class TrainingConfig(_Section):
    """Federated round loop and local training."""

    rounds: int = Field(24, ge=1, le=100_000)
    local_epochs: int = Field(2, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=100_000, description="expected Poisson batch size")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="local optimiser, DP-SGD")
    learning_rate: float = Field(0.5, gt=0.0, le=100.0, description="local step size, DP-SGD")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only")
    # DP-SGD's clipped, noised gradients want large SGD steps; raw gradients diverge with them.
    non_private_optimizer: Literal["sgd", "adam"] = Field(
        "adam", description="local optimiser when privacy is off")
    non_private_learning_rate: float = Field(
        3e-3, gt=0.0, le=100.0, description="local step size when privacy is off")
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    proximal_mu: float = Field(0.01, ge=0.0, description="FedProx only")
    server_learning_rate: float = Field(1.0, gt=0.0, description="1.0 for FedAvg/FedProx")
    server_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    server_beta2: float = Field(0.99, ge=0.0, lt=1.0)
    server_tau: float = Field(1e-3, gt=0.0)
    server_momentum: float = Field(
        0.0, ge=0.0, lt=1.0, description="FedAvg/FedProx server momentum β (FedAvgM): "
        "m ← βm + Δ̄, w ← w + η·m; 0: plain averaging")
    model_average: float = Field(
        0.9, ge=0.0, lt=1.0, description="decay of an exponential moving average of the "
        "global model, which is evaluated and published (post-processing: no privacy cost); "
        "0: off")
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    min_sites: int = Field(1, ge=1)
    round_timeout_s: float = Field(600.0, gt=0.0)
    evaluate_every: int = Field(
        1, ge=1, le=100_000, description="evaluate every N rounds (and always the last)")
    augmentation_multiplicity: int = Field(
        1, ge=1, le=64, description="K randomly augmented copies of each sample (images: "
        "shift; signals: time shift, gain); DP-SGD averages a sample's K gradients before "
        "clipping (client/multiplicity.py); 1: off")
    seed: int = Field(0, ge=0)


class PrivacyConfig(_Section):
    """Sample-level DP-SGD settings requested by the run (each site's policy may refuse them)."""

    enabled: bool = True
    target_epsilon: float = Field(8.0, gt=0.0, le=1e4)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    noise_multiplier: float | None = Field(
        None, ge=0.0, description="if set, used as is instead of deriving it from target_epsilon"
    )
    max_grad_norm: float = Field(1.0, gt=0.0)
    accountant: Literal["rdp", "prv"] = "rdp"
    grad_sample_mode: Literal["auto", "hooks", "ew", "functorch", "ghost"] = Field(
        "auto", description="Opacus per-sample gradients; auto: the fastest correct one, "
        "measured at the site (client/grad_sample.py)")


class SecureAggregationConfig(_Section):
    """SecAgg+ settings (:mod:`common.secagg`): the server learns only the sum of updates."""

    enabled: bool = True
    clip_range: float = Field(
        8.0, gt=0.0, le=1e6, description="each update element is clipped to ±clip_range")
    max_weight: int = Field(
        10_000, ge=1, le=1_000_000, description="example counts above this weigh as this")
    threshold_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="t = ⌊fraction × neighbourhood⌋ + 1 (at least 2) "
        "shares unmask; each site refuses a t below its own bound")
    neighbours: int | None = Field(
        None, ge=1, description="graph degree; default: all for ≤ 10 sites, else 2·⌈log2 n⌉ "
        "(sites refuse a smaller one)")


class RunConfig(_Section):
    """Everything a run needs; the server sends it to every site."""

    model_id: str = Field(
        "fedmm-default",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="names the model in each site's privacy ledger: same id, same budget",
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()

    @model_validator(mode="after")
    def _check_scattering_size(self) -> RunConfig:
        if self.model.encoders == "scattering" and self.data.image_size % SCATTERING_STRIDE:
            raise ValueError(f"model.encoders = 'scattering' needs data.image_size to be a "
                             f"multiple of {SCATTERING_STRIDE} (got {self.data.image_size})")
        return self

    @model_validator(mode="after")
    def _check_multiplicity(self) -> RunConfig:
        if self.training.augmentation_multiplicity > 1 and self.privacy.grad_sample_mode == "ghost":
            raise ValueError("training.augmentation_multiplicity > 1 needs per-sample gradients "
                             "to average; ghost clipping keeps none: use grad_sample_mode "
                             "'auto', 'hooks', 'ew' or 'functorch'")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return validate_config(json.loads(text))


def format_validation_error(error: ValidationError, *, source: str = "config") -> str:
    """One line per problem: ``source: key = value: what is allowed``."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'; remove it or check its spelling")
        elif isinstance(value, dict):
            lines.append(f"{source}: {key}: {item['msg']}")
        elif not item["loc"]:
            lines.append(f"{source}: {item['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{source}: {key} = {value!r}: {item['msg']}")
    return "; ".join(lines)


def validate_config(raw: dict[str, Any], *, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source=source)) from None


def _parse_scalar(text: str) -> Any:
    """Parse a CLI override value as a TOML value, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted keys (``training.rounds``) set to the given values."""
    merged: dict[str, Any] = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override: '{dotted}': '{part}' is not a section")
            node = child
        node[leaf] = _parse_scalar(value) if isinstance(value, str) else value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing TOML file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error}); fix the syntax") from None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a TOML file (or the defaults), apply dotted overrides, validate."""
    raw = read_toml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    return validate_config(apply_overrides(raw, overrides or {}), source=source)


def parse_override_pairs(pairs: list[str]) -> dict[str, str]:
    """Turn ``["training.rounds=3", ...]`` into a dict; a pair without '=' is an error."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}': expected KEY=VALUE, e.g. training.rounds=3")
        result[key.strip()] = value.strip()
    return result
