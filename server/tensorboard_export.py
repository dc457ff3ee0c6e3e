"""A run's round records as TensorBoard event files, for researchers who follow runs there.

``fedmm dashboard RUN_DIR --export-tensorboard DIR`` (extra ``fedmm[tensorboard]``, i.e.
tensorboardX). The same :class:`~server.run_folder.RoundRecord` the live view reads, one step a
round: the round's metrics under ``metrics/``, each site's ε under ``epsilon/``, and the round's
seconds, sites answering and secure-aggregation survivors under ``round/``.
"""

from __future__ import annotations

from pathlib import Path

from server.run_folder import LOSS_METRICS, SCORE_METRICS, RoundRecord, RunFolder

EXTRA = "fedmm[tensorboard]"


class ExportError(RuntimeError):
    """The export cannot run; the message says what to install or pass."""


def scalars(record: RoundRecord) -> dict[str, float]:
    """One round's values, by TensorBoard tag."""
    values: dict[str, float] = {"round/seconds": record.seconds,
                                "round/sites_ok": float(record.sites_ok)}
    for name in (*SCORE_METRICS, *LOSS_METRICS):
        value = getattr(record, name, None)
        if value is not None:
            values[f"metrics/{name}"] = float(value)
    survivors = (record.secure_aggregation or {}).get("survivors")
    if survivors is not None:
        values["round/secagg_survivors"] = float(survivors)
    for site, entry in record.sites.items():
        if entry.epsilon is not None:
            values[f"epsilon/{site}"] = float(entry.epsilon)
    return values


def export_tensorboard(folder: RunFolder, out: Path) -> int:
    """Write every complete round of ``folder`` as events under ``out``; the rounds written."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ExportError(f"TensorBoard export needs the extra: pip install '{EXTRA}'"
                          ) from None
    records = folder.rounds()
    writer = SummaryWriter(logdir=str(out), flush_secs=1)
    try:
        for record in records:
            for tag, value in scalars(record).items():
                writer.add_scalar(tag, value, global_step=record.round)
    finally:
        writer.close()
    return len(records)
