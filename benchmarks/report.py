"""``BENCHMARKS.md`` as named sections: a run rewrites the sections it measured and keeps the
others as they were (each section names the command and machine that produced it)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

HEADER = ["# Benchmarks", "",
          "Figures are ratios measured side by side in one run (never timed assertions in tests).",
          "Each section names the command that produced it; `python -m benchmarks --only NAME` "
          "reruns one section and leaves the others.", ""]
_SECTION = re.compile(r"^## ", re.MULTILINE)


def machine() -> str:
    """One line: CPU, cores, Python and the package versions the figures depend on."""
    import flwr
    import numpy
    import opacus
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"flwr {flwr.__version__}, opacus {opacus.__version__}, numpy {numpy.__version__}")


def split_sections(text: str) -> dict[str, str]:
    """``{"## title": section text}`` in file order; the text before the first section is
    dropped (the header is rewritten)."""
    starts = [m.start() for m in _SECTION.finditer(text)]
    sections = {}
    for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
        chunk = text[start:end].rstrip("\n") + "\n"
        sections[chunk.splitlines()[0]] = chunk
    return sections


def update_sections(path: Path, new: list[list[str]]) -> None:
    """Replace the sections of ``path`` whose titles appear in ``new`` (each a list of lines,
    the first ``## title``); sections not in the file are appended."""
    sections = split_sections(path.read_text(encoding="utf-8")) if path.exists() else {}
    for lines in new:
        sections[lines[0]] = "\n".join(lines).rstrip("\n") + "\n"
    body = "\n".join(sections.values())
    path.write_text("\n".join(HEADER) + "\n" + body, encoding="utf-8")
