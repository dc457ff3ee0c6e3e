"""The live views' data, access rules and command, without a browser: a run folder written
through RunFolder's own record type, a site's ledger written through PrivacyLedger, requests
sent straight to the ASGI app, and ``fedmm dashboard`` as a real process."""

from __future__ import annotations

import asyncio
import html
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from client.dashboard import SiteDashboard, check_listen, site_view
from client.dashboard import sections as site_sections
from client.ledger import PrivacyLedger
from client.privacy_report import site_privacy_report, site_total
from client.site import resolve_site
from common.atomic import append_line_durably, atomic_write_json
from common.dashboard_http import DashboardApp, DashboardError, Listen, Response, is_loopback
from fedmm.cli import app as cli
from server.dashboard import RunDashboard, draw_chart, is_run_folder, run_view, sections
from server.run_folder import RoundRecord, RunFolder, SiteRound

REPO = Path(__file__).resolve().parent.parent


def round_record(number: int, *, refused: bool = False) -> RoundRecord:
    """A round of two sites; in a ``refused`` round site-b refuses for its budget."""
    b = (SiteRound(status="refused", code="budget-exhausted", reason="ε 3.1 > 3")
         if refused else SiteRound(status="ok", epsilon=0.5 * number, train_loss=1.0))
    return RoundRecord(round=number, sites={"site-a": SiteRound(status="ok", epsilon=0.4 * number),
                                            "site-b": b},
                       sites_ok=1 if refused else 2, aggregated=True, accuracy=0.5 + number / 10,
                       loss=1.0 / number, seconds=2.5,
                       secure_aggregation={"survivors": 1 if refused else 2})


def write_rounds(folder: RunFolder, records: list[RoundRecord]) -> None:
    for record in records:
        append_line_durably(folder.metrics, record.to_line())


def test_a_missing_or_empty_folder_waits_and_an_unknown_one_is_no_run(tmp_path: Path) -> None:
    assert run_view(RunFolder(tmp_path / "absent"))["state"] == "waiting"
    assert is_run_folder(RunFolder(tmp_path / "absent")) and is_run_folder(RunFolder(tmp_path))
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    assert not is_run_folder(RunFolder(tmp_path))
    status = sections(run_view(RunFolder(tmp_path / "absent")))["status"]
    assert "waiting for the first round" in status


def test_rounds_sites_and_epsilon_come_from_the_records(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    write_rounds(folder, [round_record(1), round_record(2, refused=True)])
    with folder.metrics.open("a") as handle:
        handle.write('{"round": 3, "sites": {"site-a"')  # torn mid-append
    view = run_view(folder)
    assert view["state"] == "running"
    assert [r["round"] for r in view["rounds"]] == [1, 2]
    assert [r["survivors"] for r in view["rounds"]] == [2, 1]
    assert view["rounds"][1]["accuracy"] == pytest.approx(0.7)
    assert [e["status"] for e in view["sites"]["site-b"]] == ["ok", "refused"]
    assert view["sites"]["site-b"][1]["code"] == "budget-exhausted"
    assert view["epsilon"] == {"site-a": pytest.approx(0.8), "site-b": pytest.approx(0.5)}
    html = sections(view)
    assert 'data-status="refused"' in html["sites"] or "data-status='refused'" in html["sites"]
    assert "ε 3.1 &gt; 3" in html["sites"]  # the reason, escaped, on hover


def test_a_finished_run_shows_its_report_and_a_failed_one_why(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    write_rounds(folder, [round_record(1)])
    folder.failed.write_text("disk full\n")
    assert run_view(folder)["state"] == "failed"
    assert "disk full" in sections(run_view(folder))["status"]
    folder.report_dir.mkdir()
    folder.report.write_text("# fedmm report\n<b>x</b>\n")
    atomic_write_json(folder.summary, {"rounds_completed": 1})
    view = run_view(folder)
    assert view["state"] == "done" and view["report"].startswith("# fedmm report")
    assert "&lt;b&gt;x&lt;/b&gt;" in sections(view)["report"]


def test_charts_are_svg_and_a_site_without_epsilon_draws_nothing(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    write_rounds(folder, [round_record(1), round_record(2)])
    view = run_view(folder)
    for chart in ("scores", "loss", "epsilon", "seconds"):
        assert draw_chart(view, chart).lstrip().startswith("<?xml")
    response = RunDashboard(folder).chart("nonsense")
    assert response.status == 404


def call(app: DashboardApp, path: str = "/", *, query: str = "", method: str = "GET",
         host: str = "127.0.0.1:8050", cookie: str | None = None) -> tuple[int, dict, bytes]:
    """One request straight into the ASGI app: (status, headers, body)."""
    headers = [(b"host", host.encode())]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return _exchange(app, {"type": "http", "method": method, "path": path,
                           "query_string": query.encode(), "headers": headers,
                           "server": ("127.0.0.1", 8050), "scheme": "http"})


def _exchange(app: DashboardApp, scope: dict[str, Any]) -> tuple[int, dict, bytes]:
    """Run one ASGI request with an empty body: (status, headers, body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return (sent[0]["status"], {k.decode(): v.decode() for k, v in sent[0]["headers"]},
            sent[1]["body"])


def test_the_token_is_required_taken_once_and_kept_in_a_cookie() -> None:
    app = DashboardApp({"/": lambda q: Response(b"secret page")}, token="s3cret")
    assert call(app)[0] == 401
    assert call(app, query="token=wrong")[0] == 401
    status, headers, body = call(app, query="token=s3cret")
    assert status == 200 and body == b"secret page"
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    cookie = headers["set-cookie"].split(";")[0]
    assert call(app, cookie=cookie)[0] == 200
    assert call(app, cookie="fedmm_dashboard_8050=nope")[0] == 401
    assert call(app, "/elsewhere", cookie=cookie)[0] == 404


def test_loopback_views_refuse_foreign_host_names_and_every_write() -> None:
    app = DashboardApp({"/": lambda q: Response(b"page")}, token=None)
    assert call(app)[0] == 200 and call(app, host="localhost:8050")[0] == 200
    assert call(app, host="[::1]:8050")[0] == 200
    assert call(app, host="attacker.example:8050")[0] == 403  # DNS rebinding
    assert call(app, method="POST")[0] == 405
    assert is_loopback("127.0.0.2") and not is_loopback("0.0.0.0")


def test_run_view_over_http_is_its_json_view(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    write_rounds(folder, [round_record(1)])
    app = RunDashboard(folder).app(None, loopback_only_hosts=True)
    status, headers, body = call(app, "/api/view")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["view"]["rounds"][0]["round"] == 1
    status, headers, _ = call(app, "/chart/scores.svg")
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    assert b"fedmm run" in call(app)[2]


def test_site_view_is_the_privacy_report_and_the_audit_log(site_copy: Path) -> None:
    site = resolve_site({"data-dir": str(site_copy)}, None)
    ledger = PrivacyLedger(site.state_dir)
    ledger.reserve(model_id="m", run_id="r1", round_number=1, noise_multiplier=1.1,
                   sample_rate=0.1, steps=30, delta=1e-5, accountant="rdp")
    ledger.mark(model_id="m", run_id="r1", round_number=1, status="sent", sha256="ab" * 32)
    lines = [{"time": "2026-01-01T00:00:00.000+00:00", "run": "r1", "round": 1,
              "kind": "train", "status": "ok", "bytes": 1234, "sha256": "ab" * 32},
             {"time": "2026-01-01T00:01:00.000+00:00", "run": "r1", "round": 2,
              "kind": "train", "status": "refused", "bytes": 99, "sha256": "cd" * 32}]
    for line in lines:
        append_line_durably(site.state.audit_log, json.dumps(line, sort_keys=True))
    with site.state.audit_log.open("a") as handle:
        handle.write('{"time": "torn')
    view = SiteDashboard(site).view()
    report = site_privacy_report(site.state_dir, site.policy)
    assert view["models"][0]["epsilon"] == report[0]["epsilon"]
    assert view["total"]["epsilon"] == site_total(site.state_dir, site.policy)["epsilon"]
    assert view["audit"] == lines and view["refusals"] == lines[1:]
    assert view["data"]["rows"] == 60 and set(view["data"]["modalities"]) == {
        "image", "text", "audio"}
    html = "".join(SiteDashboard(site).app("t", loopback_only_hosts=True).routes["/"](
        {}).body.decode())
    assert "cd" * 32 in html and "no DP-SGD" not in html
    assert site_view(site, {})["site"] == site.site_id


def test_the_site_view_leaves_loopback_only_over_tls() -> None:
    check_listen(Listen(host="127.0.0.1"))
    with pytest.raises(DashboardError, match="only over TLS"):
        check_listen(Listen(host="0.0.0.0"))
    check_listen(Listen(host="0.0.0.0", tls_cert=Path("c.pem"), tls_key=Path("k.pem")))


def test_an_unknown_folder_is_exit_two_and_a_port_in_use_exit_one(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "notes.txt").write_text("x")
    result = runner.invoke(cli, ["dashboard", str(tmp_path)])
    assert result.exit_code == 2 and "neither a run folder" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = runner.invoke(cli, ["dashboard", str(tmp_path / "run"), "--port",
                                     str(busy.getsockname()[1])])
    assert result.exit_code == 1 and "cannot listen on" in result.output
    assert "Traceback" not in result.output


def _started(process: subprocess.Popen, timeout: float = 60) -> str:
    """The URL the dashboard prints once it listens."""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "http" in line:
            return line[line.index("http"):].split()[0]
    raise AssertionError("the dashboard printed no URL")


def test_the_command_serves_a_run_that_has_not_started_and_ctrl_c_exits_130(
        tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fedmm", "dashboard", str(tmp_path / "run"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = _started(process)
        assert "token" not in url  # loopback run view: no token
        with urllib.request.urlopen(url + "api/view", timeout=10) as answer:
            assert json.load(answer)["view"]["state"] == "waiting"
        write_rounds(RunFolder(tmp_path / "run"), [round_record(1)])
        with urllib.request.urlopen(url + "api/view", timeout=10) as answer:
            assert json.load(answer)["view"]["rounds"][0]["round"] == 1
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "Traceback" not in output
    assert list((tmp_path / "run").iterdir()) == [RunFolder(tmp_path / "run").metrics]


def test_the_epsilon_target_is_the_run_configs_from_either_file(tmp_path: Path) -> None:
    import numpy as np

    from common.config import RunConfig
    from server.checkpoint import Checkpoint, save_checkpoint

    folder = RunFolder(tmp_path)
    write_rounds(folder, [round_record(1)])
    assert run_view(folder)["target_epsilon"] is None
    config = RunConfig.model_validate({"privacy": {"target_epsilon": 2.5}})
    save_checkpoint(tmp_path, Checkpoint(1, {"w": np.zeros(2, np.float32)}, {},
                                         {"config": config.model_dump(mode="json")}))
    assert run_view(folder)["target_epsilon"] == 2.5  # simulations: the checkpoint's config
    folder.run_config.write_text(RunConfig.model_validate(
        {"privacy": {"target_epsilon": 3.0}}).to_json())
    assert run_view(folder)["target_epsilon"] == 3.0  # deployments: run_config.json


def test_the_server_serves_its_run_view_and_stops_it_with_the_run(tmp_path: Path) -> None:
    """``fedmm server --dashboard`` starts the view before anything else can fail (here: no
    certificates) and stops it with the run; an address that is not [HOST:]PORT is exit 2."""
    runner = CliRunner()
    result = runner.invoke(cli, ["server", "--certs", str(tmp_path / "none"), "--out",
                                 str(tmp_path / "run"), "--dashboard", "127.0.0.1:0"])
    assert result.exit_code == 1 and "missing; run `fedmm keys init`" in result.output
    url = result.output[result.output.index("http://127.0.0.1:"):].split()[0]
    assert "token" not in url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "api/view", timeout=5)  # stopped with the server
    result = runner.invoke(cli, ["server", "--out", str(tmp_path / "run2"), "--certs",
                                 str(tmp_path / "none"), "--dashboard", "0.0.0.0:0"])
    assert "?token=" in result.output  # beyond loopback: behind a token
    result = runner.invoke(cli, ["server", "--dashboard", "here"])
    assert result.exit_code == 2 and "expected [HOST:]PORT" in result.output


def _events(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files under ``folder`` (TFRecord framing)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, dict[int, float]] = {}
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            event = Event.FromString(data[12:12 + length])
            data = data[12 + length + 4:]
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def test_tensorboard_export_writes_the_round_records(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    write_rounds(folder, [round_record(1), round_record(2, refused=True)])
    result = CliRunner().invoke(cli, ["dashboard", str(folder.root), "--export-tensorboard",
                                      str(tmp_path / "tb")])
    assert result.exit_code == 0 and "2 rounds" in result.output
    events = _events(tmp_path / "tb")
    assert events["metrics/accuracy"] == {1: pytest.approx(0.6), 2: pytest.approx(0.7)}
    assert events["epsilon/site-b"] == {1: pytest.approx(0.5)}  # refused in round 2
    assert events["round/secagg_survivors"] == {1: 2.0, 2: 1.0}
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if the extra were missing
    result = CliRunner().invoke(cli, ["dashboard", str(folder.root), "--export-tensorboard",
                                      str(tmp_path / "tb2")])
    assert result.exit_code == 1 and "fedmm[tensorboard]" in result.output


def test_an_unreadable_metrics_file_is_shown_not_a_server_error(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.metrics.write_bytes(b"\xff\xfe not text")
    view = run_view(folder)
    assert view["state"] == "failed" and "cannot be read" in view["failure"]


def test_the_site_view_over_tls_still_needs_its_token(site_copy: Path, tmp_path: Path) -> None:
    import ssl

    from common.dashboard_http import serve
    from common.pki import make_loopback_tls

    tls = make_loopback_tls(tmp_path / "tls")
    site = resolve_site({"data-dir": str(site_copy)}, None)
    app = SiteDashboard(site).app("tok", loopback_only_hosts=True)
    served = serve(app, Listen(port=0, tls_cert=tls.cert, tls_key=tls.key), in_thread=True)
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    try:
        assert served.url.startswith("https://127.0.0.1:") and served.url.endswith("?token=tok")
        with urllib.request.urlopen(served.url, context=context, timeout=10) as answer:
            assert answer.status == 200 and b"fedmm site" in answer.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(served.url.split("?")[0], context=context, timeout=10)
        assert refused.value.code == 401
    finally:
        served.stop()
    result = CliRunner().invoke(cli, ["dashboard", str(site_copy), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "only over TLS" in result.output


def test_whatever_a_line_of_the_audit_log_holds_is_shown_as_text(site_copy: Path) -> None:
    site = resolve_site({"data-dir": str(site_copy)}, None)
    hostile = {"time": "<script>alert(1)</script>", "run": "<b id=run>", "round": "<i id=r>",
               "kind": "'\"><img src=x>", "status": "refused", "bytes": "<u id=b>",
               "epsilon": "<s id=e>", "sha256": "<a id=h>"}
    append_line_durably(site.state.audit_log, json.dumps(hostile))
    markup = "".join(site_sections(site_view(site, {"rows": 0, "malformed_rows": 0, "labels": {},
                                                "modalities": {}})).values())
    for key, value in hostile.items():
        if key != "status":
            assert value not in markup and html.escape(value) in markup, key


# --- a local adversary: other users of the machine can write hostile files where a run or a
# site lets them, plant links, connect to loopback ports and hold connections open ---

EVIL = "<script>alert(1)</script>'\"><img src=x onerror=alert(2)>&"


def test_hostile_round_records_are_text_in_the_page_and_in_the_charts(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    hostile = {"round": 1, "sites_ok": 1, "aggregated": True, "note": EVIL, "accuracy": 0.5,
               "secure_aggregation": {"survivors": EVIL}, "seconds": 1,
               "sites": {EVIL: {"status": EVIL, "code": EVIL, "reason": EVIL, "epsilon": 1.0},
                         "$\\frac{$": {"status": "ok", "epsilon": 2.0}}}
    folder.metrics.write_text(json.dumps(hostile) + "\n")
    view = run_view(folder)
    markup = "".join(sections(view).values())
    assert "<script" not in markup and "<img src=x" not in markup
    assert html.escape(EVIL) in markup  # shown, as text
    status, _, body = call(RunDashboard(folder).app(None, loopback_only_hosts=True), "/")
    assert status == 200 and b"<script>alert" not in body
    for chart in ("epsilon", "scores"):
        svg = draw_chart(view, chart)
        assert "<script" not in svg and "<img" not in svg and "onerror=" not in svg.replace(
            "onerror=alert(2)&gt;", "")


def test_a_link_or_fifo_planted_in_the_run_folder_shows_nothing_from_elsewhere(
        tmp_path: Path) -> None:
    secret = tmp_path / "operator-only" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    elsewhere = tmp_path / "elsewhere"
    write_rounds(RunFolder(elsewhere), [round_record(1)])
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    folder.report_dir.mkdir()
    folder.report.symlink_to(secret)
    assert "PRIVATE KEY" in folder.report.read_text()  # the link works: the reader refuses it
    atomic_write_json(folder.summary, {"rounds_completed": 1})
    folder.failed.symlink_to(secret)
    view = run_view(folder)
    assert view["state"] == "done" and "PRIVATE KEY" not in json.dumps(view)
    folder.metrics.symlink_to(RunFolder(elsewhere).metrics)
    view = run_view(folder)
    assert view["rounds"] == [] and "cannot be read" in view["failure"]
    folder.metrics.unlink()
    os.mkfifo(folder.metrics)  # a reader that opened it would wait for a writer for ever
    started = time.monotonic()
    assert run_view(folder)["rounds"] == [] and time.monotonic() - started < 5
    # a linked folder on the way is refused too
    folder.report.unlink()
    folder.report_dir.rmdir()
    folder.report_dir.symlink_to(secret.parent)
    (secret.parent / folder.report.name).write_text("operator's notes")
    assert "operator's notes" not in json.dumps(run_view(folder))


def test_huge_or_hostile_metrics_and_audit_files_are_bounded(site_copy: Path,
                                                             tmp_path: Path) -> None:
    from common.dashboard_http import MAX_LINE_BYTES

    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    with folder.metrics.open("wb") as handle:  # 1 GB, sparse: cheap to make, not to read
        handle.truncate(2**30)
    started = time.monotonic()
    view = run_view(folder)
    assert "more than" in view["failure"] and time.monotonic() - started < 2
    lines = [round_record(1).to_line(), '{"round": 2, "note": "' + "x" * MAX_LINE_BYTES + '"}',
             round_record(3).to_line()]
    folder.metrics.write_text("\n".join(lines) + "\n")
    assert [r["round"] for r in run_view(folder)["rounds"]] == [1]  # a huge line ends it
    folder.metrics.write_text(lines[0] + "\n" + "[" * 100_000 + "\n" + lines[2] + "\n")
    assert [r["round"] for r in run_view(folder)["rounds"]] == [1]  # so does deep nesting
    site = resolve_site({"data-dir": str(site_copy)}, None)
    site.state.root.mkdir(parents=True, exist_ok=True)
    with site.state.audit_log.open("wb") as handle:
        handle.truncate(2**30)
    view = site_view(site, {})
    assert view["audit"] == [] and "more than" in view["audit_error"]


def test_the_token_is_accepted_only_as_given_and_leaves_the_address_bar() -> None:
    app = DashboardApp({"/": lambda q: Response(b"secret page"),
                        "/api/view": lambda q: Response.json({})}, token="s3cret")
    for query, cookie in (("token=", None), ("token=S3CRET", None), ("token=s3cre", None),
                          ("token=s3cret%00", None), ("tok=s3cret", None),
                          ("", "fedmm_dashboard_9999=s3cret"), ("", "token=s3cret"),
                          ("", "fedmm_dashboard_8050=s3cretx")):
        assert call(app, query=query, cookie=cookie)[0] == 401, (query, cookie)
    for header in (b"authorization", b"x-token"):
        status = call_with(app, [(header, b"Bearer s3cret")])[0]
        assert status == 401, header
    assert call(app, "/api/view", query="token=wrong&token=s3cret")[0] == 200
    # a browser opening the printed URL is sent on without the token in its address bar
    status, headers, _ = call_with(app, [(b"sec-fetch-mode", b"navigate")],
                                   query="token=s3cret")
    assert status == 303 and headers["location"] == "/"
    assert headers["set-cookie"].startswith("fedmm_dashboard_8050=s3cret;")
    # no cross-origin reads: no CORS header, whatever the Origin
    status, headers, _ = call_with(app, [(b"origin", b"http://attacker.example")],
                                   path="/api/view", query="token=s3cret")
    assert status == 200 and not any(k.startswith("access-control") for k in headers)
    assert call(app, "/api/view/../", query="token=s3cret")[0] == 404


def call_with(app: DashboardApp, headers: list[tuple[bytes, bytes]], *, path: str = "/",
              query: str = "") -> tuple[int, dict, bytes]:
    """:func:`call` with more request headers."""
    return _exchange(app, {"type": "http", "method": "GET", "path": path,
                           "query_string": query.encode(),
                           "headers": [(b"host", b"127.0.0.1:8050"), *headers],
                           "server": ("127.0.0.1", 8050), "scheme": "http"})


def _held_open(port: int, seconds: float) -> bool:
    """Whether a client trickling a request it never finishes is still connected after
    ``seconds``."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 5) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                client.sendall(b"X-a: b\r\n")
                time.sleep(0.2)
            client.settimeout(0.5)
            return client.recv(1) != b""
        except TimeoutError:
            return True
        except OSError:  # reset or broken pipe: closed by the server
            return False


def test_connections_that_never_finish_a_request_are_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from common import dashboard_http

    monkeypatch.setattr(dashboard_http, "REQUEST_DEADLINE_S", 0.5)
    monkeypatch.setattr(dashboard_http, "MAX_CONNECTIONS", 8)
    app = DashboardApp({"/": lambda q: Response(b"page")}, token=None)
    served = dashboard_http.serve(app, Listen(port=0), in_thread=True)
    try:
        assert not _held_open(served.port, 2.0)
        idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(20)]
        time.sleep(0.3)
        for client in idle:
            client.settimeout(0.05)
        held = 0
        for client in idle:
            try:
                held += client.recv(1) != b""
            except TimeoutError:
                held += 1
            except OSError:
                pass
        assert held <= 8
        for client in idle:
            client.close()
        time.sleep(0.3)
        with urllib.request.urlopen(served.url, timeout=10) as answer:
            assert answer.read() == b"page"  # and the view answers again
    finally:
        served.stop()
    # the same server on uvicorn's own protocol keeps the trickling client
    monkeypatch.setattr(dashboard_http, "_guarded_protocol", lambda: "h11")
    served = dashboard_http.serve(app, Listen(port=0), in_thread=True)
    try:
        assert _held_open(served.port, 2.0)
    finally:
        served.stop()


def _raw(port: int, request: bytes) -> bytes:
    """A request as an attacker types it, byte for byte; the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        return client.recv(4096).split(b"\r\n")[0]


def test_a_local_adversary_gets_nothing_from_the_running_site_view(site_copy: Path) -> None:
    """``fedmm dashboard SITE_DIR`` as its own process, attacked as another local user
    could: its command line, and raw requests to its loopback port."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fedmm", "dashboard", str(site_copy), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = _started(process)
        token = url.split("?token=")[1]
        port = int(url.split(":")[2].split("/")[0])
        prefix = url.split("?")[0].split(str(port), 1)[1].encode()  # /v/<random>/
        assert token.encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes()
        cookie = f"Cookie: fedmm_dashboard_{port}={token}\r\n".encode()
        for request, status in (
                (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"401"),
                (b"GET /api/view HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                 + token.encode() + b"\r\n\r\n", b"401"),
                (b"GET /api/view HTTP/1.1\r\nHost: evil.example\r\n" + cookie + b"\r\n",
                 b"403"),  # DNS rebinding, even with the cookie
                (b"GET /api/view HTTP/1.1\r\nHost: 127.0.0.1.evil.example\r\n" + cookie
                 + b"\r\n", b"403"),
                (b"GET /../../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n" + cookie
                 + b"\r\n", b"404"),
                (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n" + cookie
                 + b"\r\n", b"404"),
                (b"GET /.fedmm/audit.jsonl HTTP/1.1\r\nHost: 127.0.0.1\r\n" + cookie
                 + b"\r\n", b"404"),
                (b"POST /api/view HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                 + cookie + b"\r\n", b"405"),
                (b"GET /api/view HTTP/1.1\r\nHost: 127.0.0.1\r\n" + cookie + b"\r\n",
                 b"404"),  # outside the view's random path, even with the cookie
                (b"GET " + prefix + b"api/view HTTP/1.1\r\nHost: 127.0.0.1\r\n" + cookie
                 + b"\r\n", b"200")):
            assert _raw(port, request).split(b" ")[1] == status, request
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert output.count(token) == 0  # printed once (read above), in no log line after it


def test_polling_parses_metrics_again_only_when_the_file_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server import dashboard

    folder = RunFolder(tmp_path)
    write_rounds(folder, [round_record(1)])
    parsed: list[str] = []
    real = dashboard.round_records
    monkeypatch.setattr(dashboard, "round_records",
                        lambda text, **limits: parsed.append(text) or real(text, **limits))
    app = RunDashboard(folder).app(None, loopback_only_hosts=True)
    for _ in range(20):  # a page polling, or a local user asking in a loop
        assert call(app, "/api/view")[0] == 200
    assert len(parsed) == 1
    write_rounds(folder, [round_record(2)])
    assert [r["round"] for r in json.loads(call(app, "/api/view")[2])["view"]["rounds"]] == [
        1, 2]
    assert len(parsed) == 2


def test_the_token_cookie_is_sent_back_under_a_random_path_only() -> None:
    """Browsers send a cookie to every port of 127.0.0.1: with ``Path=/`` a page of another
    local user's server there would receive the token. Under ``/v/<random>/`` it does not
    (that server does not know the path)."""
    from common.dashboard_http import secret_prefix

    prefix = secret_prefix()
    assert prefix.startswith("/v/") and len(prefix) >= 15 and prefix != secret_prefix()
    app = DashboardApp({"/": lambda q: Response(b"page")}, token="s3cret", prefix=prefix)
    status, headers, _ = call_with(app, [(b"sec-fetch-mode", b"navigate")],
                                   path=prefix + "/", query="token=s3cret")
    assert status == 303 and headers["location"] == prefix + "/"
    assert f"Path={prefix}/" in headers["set-cookie"]
    cookie = headers["set-cookie"].split(";")[0]
    assert call(app, prefix + "/", cookie=cookie)[0] == 200
    assert call(app, "/", cookie=cookie)[0] == 404
    weak = DashboardApp({"/": lambda q: Response(b"page")}, token="s3cret")
    assert "Path=/;" in call(weak, query="token=s3cret")[1]["set-cookie"] + ";"
    served_url = Listen(port=0).url(8050, "t", prefix)
    assert served_url == f"http://127.0.0.1:8050{prefix}/?token=t"
