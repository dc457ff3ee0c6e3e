"""Round checkpoints: global weights, server-optimiser state and run state in one safetensors file.

``checkpoints/round-000N.safetensors`` is written atomically after round N; the run state (round,
per-site privacy figures, rounds left) travels as JSON in the safetensors metadata. The newest file
that loads is the resume point; a truncated file can never be mistaken for one (atomic rename).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_bytes
from common.serialization import Weights
from server.run_folder import RunFolder

KEEP = 3


@dataclass
class Checkpoint:
    round: int
    weights: Weights
    optimizer_state: Weights
    state: dict[str, Any]


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    from safetensors.numpy import save

    tensors = {f"w/{k}": v for k, v in checkpoint.weights.items()}
    tensors.update({f"o/{k}": v for k, v in checkpoint.optimizer_state.items()})
    metadata = {"round": str(checkpoint.round), "state": json.dumps(checkpoint.state)}
    path = RunFolder(Path(run_dir)).checkpoint(checkpoint.round)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    for old in list_checkpoints(run_dir)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    return [path for _, path in RunFolder(Path(run_dir)).saved_checkpoints()]


def load_checkpoint(path: Path) -> Checkpoint:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        arrays = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    return Checkpoint(
        round=int(metadata["round"]),
        weights={k[2:]: v for k, v in arrays.items() if k.startswith("w/")},
        optimizer_state={k[2:]: v for k, v in arrays.items() if k.startswith("o/")},
        state=json.loads(metadata.get("state", "{}")),
    )


def checkpoint_state(path: Path) -> dict:
    """A checkpoint's ``state`` (round config, sites' privacy) without reading its arrays."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return json.loads((handle.metadata() or {}).get("state", "{}"))


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that loads; unreadable ones are skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path)
        except Exception:
            continue
    return None
