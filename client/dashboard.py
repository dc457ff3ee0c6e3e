"""A hospital's live view of its own state folder: ``fedmm dashboard SITE_DIR``.

What ``fedmm privacy`` prints (ε per model and in total against the site policy, recomputed
from the ledger's history by :mod:`client.privacy_report`), every line of the audit log (each
message sent: time, kind, status, bytes, SHA-256), the refusals among them, and a summary of
``manifest.csv``. Read afresh on each request, never written.

Other local users of a hospital machine are adversaries, so this view always needs its token,
on loopback too, and serves beyond loopback only over TLS (:func:`check_listen`).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from client.audit_log import read_audit_log
from client.ledger import LedgerError
from client.privacy_report import site_privacy_report, site_total
from client.site import Site
from common.config import MODALITIES
from common.dashboard_http import (
    DashboardApp,
    DashboardError,
    Listen,
    Response,
    Served,
    is_loopback,
    new_token,
    number,
    page,
    secret_prefix,
    serve,
    table,
)
from common.sitedata import MANIFEST_NAME, SiteDataError, read_manifest

AUDIT_ROWS_SHOWN = 500  # newest first; the JSON view has them all
MODEL_FIELDS = ("model_id", "epsilon", "max_epsilon", "epsilon_left", "delta", "accountant",
                "rounds_served", "evaluations_released", "rounds_interrupted", "steps",
                "noise_multiplier", "sample_rate", "consistent")


def check_listen(listen: Listen) -> None:
    """The site view leaves loopback only over TLS (and always with its token)."""
    if not is_loopback(listen.host) and listen.tls_cert is None:
        raise DashboardError(f"--host {listen.host} is not loopback: a hospital's view leaves "
                             "this machine only over TLS; pass --tls-cert and --tls-key (or "
                             "use an SSH tunnel to 127.0.0.1)")


def is_refusal(entry: Mapping[str, Any]) -> bool:
    return str(entry.get("status", "")).startswith("refused")


def data_summary(site: Site) -> dict[str, Any]:
    """Rows, label counts and modality coverage of ``manifest.csv`` (no data file opened)."""
    try:
        rows = read_manifest(site.data_dir, site.policy.read_limits)
    except SiteDataError as error:
        return {"error": str(error)}
    return {"rows": len(rows), "malformed_rows": sum(1 for r in rows if r.problem),
            "labels": dict(sorted(Counter(r.label for r in rows).items())),
            "modalities": {m: sum(1 for r in rows if r.cell(m)) for m in MODALITIES}}


def _ledger(site: Site) -> dict[str, Any]:
    try:
        models = site_privacy_report(site.state_dir, site.policy)
        total = site_total(site.state_dir, site.policy)
    except (LedgerError, OSError) as error:
        return {"models": [], "total": None, "error": str(error)}
    return {"models": [{k: row[k] for k in MODEL_FIELDS} for row in models], "total": total,
            "error": None}


def site_view(site: Site, data: dict[str, Any]) -> dict[str, Any]:
    """What the page shows, as plain data."""
    try:
        audit, audit_error = read_audit_log(site.state), None
    except (OSError, UnicodeDecodeError) as error:  # e.g. run as another user than the site's
        audit, audit_error = [], f"{site.state.audit_log}: cannot be read ({error})"
    return {"site": site.site_id, "state_dir": str(site.state_dir),
            "policy": {"max_epsilon": site.policy.max_epsilon,
                       "max_total_epsilon": site.policy.max_total_epsilon},
            **_ledger(site), "audit": audit, "audit_error": audit_error,
            "refusals": [entry for entry in audit if is_refusal(entry)], "data": data}


def _ledger_section(view: Mapping[str, Any]) -> str:
    if view["error"]:
        return f"<h2>Privacy ledger</h2><p class='refused'>{html.escape(view['error'])}</p>"
    if not view["models"]:
        return ("<h2>Privacy ledger</h2><p id='ledger-empty'>no DP-SGD steps recorded yet "
                f"(policy: ε ≤ {view['policy']['max_epsilon']:g} per model, "
                f"{view['policy']['max_total_epsilon']:g} in total)</p>")
    rows = [([f"<td class='l'>{html.escape(m['model_id'])}</td>", number(m["epsilon"], 4),
              f"{m['max_epsilon']:g}", number(m["epsilon_left"], 4), f"{m['delta']:g}",
              html.escape(str(m["accountant"])), str(m["rounds_served"]),
              str(m["evaluations_released"]),
              str(m["rounds_interrupted"]), str(m["steps"]), number(m["noise_multiplier"], 4),
              "yes" if m["consistent"] else "<b>no</b>"],
             {"data-model": m["model_id"]}) for m in view["models"]]
    total = view["total"]
    if total is not None:
        rows.append(([f"<td class='l'><b>all {total['models']} models</b></td>",
                      number(total["epsilon"], 4), f"{total['max_total_epsilon']:g}",
                      number(total["epsilon_left"], 4), f"{total['delta']:g}",
                      html.escape(str(total["accountant"])), "", "", "", "", "", ""],
                     {"data-model": "*total*"}))
    return ("<h2>Privacy ledger</h2><p class='muted'>ε recomputed from the recorded steps, "
            "against this site's policy</p>"
            + table(["model", "ε spent", "ε max", "ε left", "δ", "accountant", "rounds",
                     "evaluations", "interrupted", "steps", "σ", "ledger ε agrees"], rows))


def _audit_rows(entries: list[dict[str, Any]]) -> list[tuple[list[str], dict[str, str]]]:
    rows = []
    for index, entry in reversed(list(enumerate(entries))):
        status = str(entry.get("status", ""))
        rows.append(([f"<td class='l'>{html.escape(str(entry.get('time', '')))}</td>",
                      html.escape(str(entry.get("run", ""))),
                      html.escape(str(entry.get("round", ""))),
                      f"<td class='l'>{html.escape(str(entry.get('kind', '')))}</td>",
                      f"<td class='l {html.escape(status)}'>{html.escape(status)}</td>",
                      html.escape(str(entry.get("bytes", ""))),
                      f"<td class='l'><code>{html.escape(str(entry.get('sha256', '')))}</code>"
                      "</td>", number(entry.get("epsilon"), 4),
                      f"<td class='l'>{html.escape(str(entry.get('reason', '')))}</td>"],
                     {"data-line": str(index + 1)}))
    return rows


_AUDIT_HEADERS = ["time", "run", "round", "kind", "status", "bytes", "SHA-256", "ε after",
                  "reason"]


def _audit_section(view: Mapping[str, Any]) -> str:
    entries = view["audit"]
    if view["audit_error"]:
        return f"<h2>Audit log</h2><p class='refused'>{html.escape(view['audit_error'])}</p>"
    if not entries:
        return "<h2>Audit log</h2><p>no message sent yet</p>"
    shown = _audit_rows(entries)[:AUDIT_ROWS_SHOWN]
    return (f"<h2>Audit log</h2><p class='muted'>{len(entries)} messages sent, newest first"
            + (f" ({AUDIT_ROWS_SHOWN} shown)" if len(entries) > AUDIT_ROWS_SHOWN else "")
            + "</p>" + table(_AUDIT_HEADERS, shown))


def _refusals_section(view: Mapping[str, Any]) -> str:
    refusals = view["refusals"]
    if not refusals:
        return "<h2>Refusals</h2><p>none</p>"
    return "<h2>Refusals</h2>" + table(_AUDIT_HEADERS, _audit_rows(refusals))


def _data_section(view: Mapping[str, Any]) -> str:
    data = view["data"]
    if "error" in data:
        return f"<h2>Data</h2><p class='refused'>{html.escape(data['error'])}</p>"
    labels = ", ".join(f"{html.escape(k)}: {v}" for k, v in data["labels"].items())
    modalities = ", ".join(f"{m} {n}/{data['rows']}" for m, n in data["modalities"].items())
    return (f"<h2>Data</h2><p id='data'>{data['rows']} rows in manifest.csv"
            + (f", {data['malformed_rows']} malformed" if data["malformed_rows"] else "")
            + f"; labels {labels}; modalities {modalities}</p>")


def sections(view: Mapping[str, Any]) -> dict[str, str]:
    head = (f"<p><b>{html.escape(view['site'])}</b> · <span class='muted'>"
            f"{html.escape(view['state_dir'])}</span></p>")
    return {"status": head, "ledger": _ledger_section(view),
            "refusals": _refusals_section(view), "audit": _audit_section(view),
            "data": _data_section(view)}


@dataclass
class SiteDashboard:
    """The site view's routes over one site; the manifest summary is re-read when it changes."""

    site: Site
    _data: tuple[tuple[int, int], dict[str, Any]] | None = field(default=None)

    def _data_summary(self) -> dict[str, Any]:
        try:
            stat = (self.site.data_dir / MANIFEST_NAME).stat()
            key = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (0, -1)
        if self._data is None or self._data[0] != key:
            self._data = (key, data_summary(self.site))
        return self._data[1]

    def view(self) -> dict[str, Any]:
        return site_view(self.site, self._data_summary())

    def app(self, token: str, *, loopback_only_hosts: bool, prefix: str = "") -> DashboardApp:
        def index(query: Mapping[str, str]) -> Response:
            return Response(page(f"fedmm site {self.site.site_id}",
                                 sections(self.view())).encode())

        def view(query: Mapping[str, str]) -> Response:
            data = self.view()
            return Response.json({"view": data, "sections": sections(data)})

        return DashboardApp({"/": index, "/api/view": view}, token=token,
                            loopback_only_hosts=loopback_only_hosts, prefix=prefix)


def serve_site(site: Site, listen: Listen, *, on_ready: Callable[[Served], None]) -> Served:
    """Serve the site view in the foreground, always behind a fresh token."""
    check_listen(listen)
    app = SiteDashboard(site).app(new_token(), loopback_only_hosts=is_loopback(listen.host),
                                  prefix=secret_prefix())
    return serve(app, listen, in_thread=False, on_ready=on_ready)
