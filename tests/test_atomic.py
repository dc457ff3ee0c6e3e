import json
from pathlib import Path

import pytest

from common.atomic import (
    append_line_durably,
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temporaries,
)


def test_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_failed_write_keeps_the_old_content(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.bin"
    atomic_write_bytes(target, b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("common.atomic.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_append_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    append_line_durably(path, '{"a": 1}')
    append_line_durably(path, '{"a": 2}\n')
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_stale_temporaries_are_swept_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / ".round-0002.safetensors.abc123.tmp").write_bytes(b"half")
    (tmp_path / "round-0001.safetensors").write_bytes(b"whole")
    (tmp_path / "notes.tmp").write_text("not ours")
    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "round-0001.safetensors"]
    assert remove_stale_temporaries(tmp_path / "missing") == 0


def test_create_once_keeps_the_first_content(tmp_path: Path) -> None:
    from common.atomic import create_once

    path = tmp_path / "deep" / "secret"
    assert create_once(path, b"first") == b"first"
    assert create_once(path, b"second") == b"first"
    assert path.read_bytes() == b"first" and oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporaries left
