"""The operator's live view of a run folder: ``fedmm dashboard RUN_DIR`` and
``fedmm server --dashboard``.

Everything comes from the run folder through :class:`~server.run_folder.RunFolder` (its tolerant
``metrics.jsonl`` reader, ``summary.json``, the report), read afresh on each request and never
written: the view can be opened, reloaded and closed while a run goes on without touching it.
:func:`run_view` is the page's data (also served as JSON); :class:`RunDashboard` renders it and
draws the charts as SVG with matplotlib, so the page needs no network.
"""

from __future__ import annotations

import html
import io
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import ConfigError, RunConfig
from common.dashboard_http import (
    MAX_LINE_BYTES,
    DashboardApp,
    Listen,
    Response,
    Served,
    is_loopback,
    new_token,
    number,
    page,
    read_inside,
    secret_prefix,
    serve,
    table,
)
from server.checkpoint import checkpoint_state
from server.run_folder import (
    LOSS_METRICS,
    SCORE_METRICS,
    RoundRecord,
    RunFolder,
    round_records,
)

CHARTS = ("scores", "loss", "epsilon", "seconds")


def is_run_folder(folder: RunFolder) -> bool:
    """Whether ``folder`` may be a run folder: absent or empty (a run yet to start), or
    holding something a run writes."""
    if not folder.root.exists():
        return True
    if not folder.root.is_dir():
        return False
    known = (folder.metrics, folder.summary, folder.checkpoints, folder.run_config,
             folder.logs, folder.flwr_home, folder.failed, folder.model)
    return not any(folder.root.iterdir()) or any(path.exists() for path in known)


def _round_row(record: RoundRecord) -> dict[str, Any]:
    secure = record.secure_aggregation or {}
    row: dict[str, Any] = {
        "round": record.round, "sites": len(record.sites), "sites_ok": record.sites_ok,
        "aggregated": record.aggregated, "note": record.note, "seconds": record.seconds,
        "epsilon_max": record.epsilon_max, "survivors": secure.get("survivors"),
        "evaluation_private": record.evaluation_private}
    for name in (*SCORE_METRICS, *LOSS_METRICS):
        row[name] = getattr(record, name, None)
    return row


def _site_rounds(records: list[RoundRecord]) -> dict[str, list[dict[str, Any]]]:
    sites: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        for name, entry in record.sites.items():
            sites.setdefault(name, []).append({
                "round": record.round, "status": entry.status, "code": entry.code,
                "reason": entry.reason, "epsilon": entry.epsilon})
    return dict(sorted(sites.items()))


_parsed: dict[Path, tuple[tuple[int, int, int, int], list[RoundRecord]]] = {}
_parsed_lock = threading.Lock()


def read_rounds(folder: RunFolder) -> list[RoundRecord]:
    """:meth:`RunFolder.rounds`, read as the view reads everything: through
    :func:`~common.dashboard_http.read_inside` (no symbolic link, no FIFO, bounded), and a
    hostile line ends the list as a torn one does. Parsed again only when the file changed,
    so polling pages (or anyone on loopback asking in a loop) cost a ``stat`` each."""
    try:
        info = folder.metrics.lstat()
    except FileNotFoundError:
        return []
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    with _parsed_lock:
        cached = _parsed.get(folder.metrics)
    if cached is not None and cached[0] == key:
        return list(cached[1])
    try:
        data = read_inside(folder.root, folder.metrics)
    except FileNotFoundError:
        return []
    records = round_records(data.decode("utf-8"), max_line=MAX_LINE_BYTES)
    with _parsed_lock:
        _parsed.clear()  # one run folder per process: keep only the newest
        _parsed[folder.metrics] = (key, records)
    return list(records)


def _run_config(folder: RunFolder) -> RunConfig | None:
    """The run's config: ``run_config.json`` (deployments), else the newest checkpoint's."""
    try:
        return RunConfig.from_json(read_inside(folder.root, folder.run_config).decode())
    except (OSError, ValueError, ConfigError):
        pass
    for _, path in reversed(folder.saved_checkpoints()):
        try:
            if not stat.S_ISREG(path.lstat().st_mode):  # a link or a FIFO planted there
                continue
            return RunConfig.model_validate(checkpoint_state(path)["config"])
        except Exception:  # being replaced, torn, or older: try the one before
            continue
    return None


def _target_epsilon(folder: RunFolder) -> float | None:
    """The run's per-site ε target (what σ was set for), when the folder says."""
    config = _run_config(folder)
    if config is None or not config.privacy.enabled:
        return None
    return config.privacy.target_epsilon


def _state(folder: RunFolder, records: list[RoundRecord]) -> str:
    if folder.summary.is_file():
        return "done"
    if folder.failed.is_file():
        return "failed"
    return "running" if records else "waiting"


def _read_text(folder: RunFolder, path: Path) -> str | None:
    try:
        return read_inside(folder.root, path).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"{path}: cannot be shown ({error.strerror or error})"


def run_view(folder: RunFolder) -> dict[str, Any]:
    """What the page shows, as plain data: state, rounds, each site's rounds, ε per site."""
    try:
        records, unreadable = read_rounds(folder), None
    except (OSError, UnicodeDecodeError) as error:  # permissions, a link, too large, not text
        records, unreadable = [], f"{folder.metrics}: cannot be read ({error})"
    sites = _site_rounds(records)
    spent = {name: max((r["epsilon"] for r in rounds if r["epsilon"] is not None),
                       default=None) for name, rounds in sites.items()}
    state = "failed" if unreadable else _state(folder, records)
    return {
        "run_dir": str(folder.root), "state": state,
        "rounds": [_round_row(record) for record in records], "sites": sites,
        "epsilon": spent, "target_epsilon": _target_epsilon(folder),
        "failure": unreadable or (_read_text(folder, folder.failed) if state == "failed" else None),
        "report": _read_text(folder, folder.report) if state == "done" else None,
    }


def _status_section(view: Mapping[str, Any]) -> str:
    rounds = view["rounds"]
    text = {"waiting": "waiting for the first round",
            "running": f"running: {len(rounds)} rounds so far",
            "done": f"done: {len(rounds)} rounds",
            "failed": "stopped: " + (view["failure"] or "").strip()}[view["state"]]
    return (f"<p id='state' data-state='{view['state']}'><b>{html.escape(text)}</b> · "
            f"<span class='muted'>{html.escape(view['run_dir'])}</span></p>")


def _charts_section(view: Mapping[str, Any]) -> str:
    shown = [name for name in CHARTS if any(_series(view, name)[1].values())]
    if not shown:
        return ""
    version = f"{len(view['rounds'])}-{view['state']}"
    note = ("" if "scores" in shown else "<p class='muted'>no validation metrics yet (a site "
            "releases them only when its policy allows)</p>")
    return "<h2>Charts</h2>" + note + "<div class='charts'>" + "".join(
        f"<img alt='{name}' src='chart/{name}.svg?v={version}'>" for name in shown) + "</div>"


def _rounds_section(view: Mapping[str, Any]) -> str:
    rows = view["rounds"]
    if not rows:
        return ""
    shown = [m for m in (*SCORE_METRICS, *LOSS_METRICS) if any(r[m] is not None for r in rows)]
    headers = ["round", *shown, "sites ok", "SecAgg survivors", "aggregated", "seconds", "note"]
    body = [([str(r["round"]), *[number(r[m]) for m in shown], f"{r['sites_ok']}/{r['sites']}",
              "–" if r["survivors"] is None else html.escape(str(r["survivors"])),
              "yes" if r["aggregated"] else "no", number(r["seconds"], 1),
              f"<td class='l'>{html.escape(r['note'] or '')}</td>"],
             {"data-round": str(r["round"])}) for r in rows]
    return "<h2>Rounds</h2>" + table(headers, body)


def _site_cell(entry: Mapping[str, Any]) -> str:
    why = " ".join(str(x) for x in (entry["code"], entry["reason"]) if x)
    text = entry["status"] + (f": {entry['code']}" if entry["code"] else "")
    return (f"<td class='l {html.escape(entry['status'])}' data-site-round='{entry['round']}' "
            f"data-status='{html.escape(entry['status'])}' title='{html.escape(why)}'>"
            f"{html.escape(text)}</td>")


def _sites_section(view: Mapping[str, Any]) -> str:
    if not view["sites"]:
        return ""
    numbers = [r["round"] for r in view["rounds"]]
    target = view["target_epsilon"]
    body = []
    for name, entries in view["sites"].items():
        by_round = {e["round"]: e for e in entries}
        cells = [_site_cell(by_round[n]) if n in by_round
                 else f"<td class='l dropped' data-site-round='{n}' data-status='absent'>"
                      "not asked</td>" for n in numbers]
        body.append(([f"<td class='l'>{html.escape(name)}</td>", number(view["epsilon"][name]),
                      number(target, 2), *cells], {"data-site": name}))
    return ("<h2>Sites</h2><p class='muted'>status per round (hover for the reason); ε spent "
            "as the site reported it, against the run's target</p>"
            + table(["site", "ε spent", "ε target", *[f"r{n}" for n in numbers]], body))


def _report_section(view: Mapping[str, Any]) -> str:
    if view["report"] is None:
        return ""
    return f"<h2>Final report</h2><pre id='report'>{html.escape(view['report'])}</pre>"


def sections(view: Mapping[str, Any]) -> dict[str, str]:
    return {"status": _status_section(view), "charts": _charts_section(view),
            "rounds": _rounds_section(view), "sites": _sites_section(view),
            "report": _report_section(view)}


def _series(view: Mapping[str, Any], chart: str) -> tuple[str, dict[str, list[tuple]]]:
    rounds = view["rounds"]

    def of(name: str) -> list[tuple]:
        return [(r["round"], r[name]) for r in rounds if r[name] is not None]

    if chart == "scores":
        return "score", {m: of(m) for m in SCORE_METRICS}
    if chart == "loss":
        return "loss", {m: of(m) for m in LOSS_METRICS}
    if chart == "seconds":
        return "seconds per round", {"seconds": of("seconds")}
    return "ε spent", {name: [(e["round"], e["epsilon"]) for e in entries
                              if e["epsilon"] is not None]
                       for name, entries in view["sites"].items()}


def _plain(label: str) -> str:
    """A legend label as text: no mathtext (``$\\frac{$`` would fail the chart), not hidden by
    a leading underscore."""
    text = label.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def draw_chart(view: Mapping[str, Any], chart: str) -> str:
    """One chart of the view as SVG text (matplotlib, no pyplot: safe off the main thread)."""
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    label, series = _series(view, chart)
    figure = Figure(figsize=(4.2, 2.8))
    FigureCanvasSVG(figure)
    axes = figure.add_subplot()
    for name, points in series.items():
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", markersize=3,
                      label=_plain(name))
    if chart == "epsilon" and view["target_epsilon"] is not None:
        axes.axhline(view["target_epsilon"], color="red", linestyle="--", label="target")
    axes.set_xlabel("round")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(label, fontsize=10)
    if any(series.values()):
        axes.legend(fontsize=7)
    figure.tight_layout()
    out = io.StringIO()
    figure.savefig(out, format="svg")
    return out.getvalue()


@dataclass
class RunDashboard:
    """The run view's routes over one run folder; charts are cached per round count."""

    folder: RunFolder
    _charts: dict[tuple[str, str], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def index(self, query: Mapping[str, str]) -> Response:
        return Response(page("fedmm run", sections(run_view(self.folder))).encode())

    def view(self, query: Mapping[str, str]) -> Response:
        data = run_view(self.folder)
        return Response.json({"view": data, "sections": sections(data)})

    def chart(self, name: str) -> Response:
        if name not in CHARTS:
            return Response.text("no such chart", 404)
        data = run_view(self.folder)
        key = (name, f"{len(data['rounds'])}-{data['state']}-{data['target_epsilon']}")
        with self._lock:
            if key not in self._charts:
                self._charts = {k: v for k, v in self._charts.items() if k[0] != name}
                self._charts[key] = draw_chart(data, name)
            return Response.svg(self._charts[key])

    def app(self, token: str | None, *, loopback_only_hosts: bool,
            prefix: str = "") -> DashboardApp:
        routes = {"/": self.index, "/api/view": self.view}
        routes |= {f"/chart/{name}.svg": (lambda q, n=name: self.chart(n))
                   for name in CHARTS}
        return DashboardApp(routes, token=token, loopback_only_hosts=loopback_only_hosts,
                            prefix=prefix)


def serve_run(folder: RunFolder, listen: Listen, *, in_thread: bool,
              on_ready: Callable[[Served], None]) -> Served:
    """Serve the run view: open on loopback, behind a fresh token anywhere else."""
    local = is_loopback(listen.host)
    app = RunDashboard(folder).app(None if local else new_token(), loopback_only_hosts=local,
                                   prefix="" if local else secret_prefix())
    return serve(app, listen, in_thread=in_thread, on_ready=on_ready)
