"""BENCHMARKS.md as named sections: a rerun replaces its own sections and keeps the rest."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import HEADER, split_sections, update_sections


def test_a_rerun_replaces_its_section_keeps_the_others_and_appends_new_ones(
        tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    update_sections(path, [["## A", "", "old a"], ["## B", "", "b"]])
    update_sections(path, [["## A", "", "new a"], ["## C", "", "c"]])
    text = path.read_text()
    assert text.startswith("\n".join(HEADER))
    sections = split_sections(text)
    assert list(sections) == ["## A", "## B", "## C"]
    assert "new a" in sections["## A"] and "old a" not in text
    assert sections["## B"] == "## B\n\nb\n"
