from pathlib import Path

import numpy as np

from server.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def _checkpoint(round_number: int) -> Checkpoint:
    return Checkpoint(round=round_number, weights={"w": np.full(3, round_number, np.float32)},
                      optimizer_state={"m/w": np.ones(3)}, state={"sites": {"a": 1}})


def test_save_load_and_keep_last_three(tmp_path: Path) -> None:
    for r in range(1, 6):
        save_checkpoint(tmp_path, _checkpoint(r))
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "round-0003.safetensors", "round-0004.safetensors", "round-0005.safetensors"]
    loaded = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert loaded.round == 5 and np.array_equal(loaded.weights["w"], np.full(3, 5))
    assert loaded.state == {"sites": {"a": 1}} and "m/w" in loaded.optimizer_state


def test_latest_skips_a_corrupt_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    path = save_checkpoint(tmp_path, _checkpoint(2))
    path.write_bytes(path.read_bytes()[:50])
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.round == 1
    assert latest_checkpoint(tmp_path / "none") is None
