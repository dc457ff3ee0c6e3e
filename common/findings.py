"""What a manifest's ``label`` cell means, per ``data.labels`` (numpy only).

- ``multiclass`` (and ``binary``, two classes): one class a row, an index in ``0..K-1`` or
  one of ``data.label_names``; stored as an ``int64`` class.
- ``multilabel``: any number of the K findings a row, separated by ``;`` (indices or names;
  an empty cell is a row with none of them); stored as a ``float32`` row of K zeros and ones,
  the targets of the binary cross-entropy (:mod:`common.models.losses`).

A cell that names a class or finding the config does not know is that row's error, with the
reason; :func:`label_counts` gives how many rows have each class (multiclass) or each finding
(multilabel), as ``validate-data`` shows them.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from common.config import FINDING_SEPARATOR, DataConfig


class LabelError(ValueError):
    """A label cell this config cannot read; the message says why."""


def _index(token: str, config: DataConfig, what: str) -> int:
    token = token.strip()
    names = {name.strip().lower(): i for i, name in enumerate(config.label_names)}
    if token.lower() in names:
        return names[token.lower()]
    try:
        index = int(token)
    except ValueError:
        known = f"; known names: {', '.join(config.label_names)}" if names else ""
        raise LabelError(f"{what} '{token}' is neither an integer nor a name in "
                         f"data.label_names{known}") from None
    if not 0 <= index < config.num_classes:
        raise LabelError(f"{what} {index} outside 0..{config.num_classes - 1}")
    return index


def parse_label(text: str, config: DataConfig) -> int | np.ndarray:
    """One row's label cell: a class index, or (multilabel) the row's K-vector of findings."""
    if config.labels != "multilabel":
        if FINDING_SEPARATOR in text:
            raise LabelError(f"label '{text}' holds several classes; set data.labels = "
                             "\"multilabel\" for rows with several findings")
        return _index(text, config, "label")
    targets = np.zeros(config.num_classes, dtype=np.float32)
    for token in text.split(FINDING_SEPARATOR):
        if token.strip():
            targets[_index(token, config, "finding")] = 1.0
    return targets


def stack_labels(labels: list[int | np.ndarray], config: DataConfig) -> np.ndarray:
    """The rows' labels as one array: ``(N,)`` int64 classes or ``(N, K)`` float32 findings."""
    if config.labels == "multilabel":
        return np.asarray(labels, dtype=np.float32).reshape(len(labels), config.num_classes)
    return np.asarray(labels, dtype=np.int64).reshape(len(labels))


def label_counts(labels: np.ndarray) -> dict[int, int]:
    """Rows per class (``(N,)`` labels) or per finding (``(N, K)``: rows that have it)."""
    if labels.ndim == 2:
        return {k: int(n) for k, n in enumerate(labels.sum(axis=0).round().astype(int))}
    return dict(sorted(Counter(int(x) for x in labels).items()))


def label_name(index: int, config: DataConfig) -> str:
    """``"3"``, or ``"3 (Edema)"`` when the config names it."""
    names = config.label_names
    return f"{index} ({names[index]})" if names else str(index)
