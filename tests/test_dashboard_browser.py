"""The live views in a real browser (headless Chromium through Selenium and chromedriver, both
installed by ``make test``), against ``fedmm dashboard`` running as its own process.

The run view is opened before the first round and followed while a writer appends rounds
through the round loop's own metrics callback (``MetricsLog``), then after the run ends; what
the page shows is checked against ``metrics.jsonl`` read line by line here. The site view is
checked against the ledger and ``audit.jsonl`` that the real ClientApp's audit mod wrote in
secure-aggregation rounds delivered in this process. Every request the page makes stays on
the dashboard's loopback address (nothing from a CDN). Screenshots go to each test's folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from common.atomic import atomic_write_json
from server.callbacks import MetricsLog
from server.run_folder import RoundRecord, RunFolder, SiteRound

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1300")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not CHROMEDRIVER.exists():
        pytest.fail("chromium-driver is not installed; `make test` installs it")
    profile = tempfile.mkdtemp(prefix="fmchrome")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Dashboard:
    """``fedmm dashboard ARGS --port 0`` as a process; its URL once it listens."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"}
        self.process = subprocess.Popen([sys.executable, "-m", "fedmm", "dashboard", *args,
                                         "--port", "0"], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env)
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "http" in line:
                self.url = line[line.index("http"):].split()[0]
                return
        raise AssertionError("fedmm dashboard printed no URL")

    def stop(self) -> int:
        """Ctrl-C, as an operator would: a clean exit."""
        self.process.send_signal(signal.SIGINT)
        try:
            output, _ = self.process.communicate(timeout=20)
        finally:
            self.process.kill()
        assert "Traceback" not in output, output
        return self.process.returncode


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"the page never showed {what}")


def state_of(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.ID, "state")
    return found[0].get_attribute("data-state") if found else ""


def shown_rounds(browser: Any) -> dict[int, dict[str, str]]:
    """Round → {site: status} as the page shows them (rounds table and sites matrix)."""
    from selenium.webdriver.common.by import By

    rounds = {int(row.get_attribute("data-round")): {} for row in
              browser.find_elements(By.CSS_SELECTOR, "#rounds tr[data-round]")}
    for row in browser.find_elements(By.CSS_SELECTOR, "#sites tr[data-site]"):
        for cell in row.find_elements(By.CSS_SELECTOR, "td[data-site-round]"):
            rounds.setdefault(int(cell.get_attribute("data-site-round")), {})[
                row.get_attribute("data-site")] = cell.get_attribute("data-status")
    return rounds


def recorded_rounds(folder: RunFolder) -> dict[int, dict[str, str]]:
    """The same, read straight from metrics.jsonl (one JSON object a line)."""
    lines = [json.loads(line) for line in folder.metrics.read_text().splitlines() if line]
    return {line["round"]: {site: entry["status"] for site, entry in line["sites"].items()}
            for line in lines}


def requests_stay_on(browser: Any, url: str) -> None:
    names = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    origin = url.split("/?")[0].rstrip("/")
    assert names and all(name.startswith(origin + "/") for name in names), names


def a_round(number: int) -> RoundRecord:
    """Three sites: site-c refuses round 2 for its budget, and site-b is gone in round 3."""
    sites = {"site-a": SiteRound(status="ok", epsilon=0.9 * number, num_examples=40),
             "site-b": SiteRound(status="ok", epsilon=1.0 * number, num_examples=40),
             "site-c": SiteRound(status="ok", epsilon=0.8 * number, num_examples=40)}
    if number == 2:
        sites["site-c"] = SiteRound(status="refused", code="budget-exhausted",
                                    reason="ε would pass the site's max_epsilon")
    if number == 3:
        sites["site-b"] = SiteRound(status="failed", code="no-reply", reason="dropped")
    ok = sum(1 for s in sites.values() if s.status == "ok")
    return RoundRecord(round=number, sites=sites, sites_ok=ok, aggregated=True,
                       accuracy=0.4 + 0.1 * number, loss=1.2 - 0.2 * number, seconds=1.5,
                       secure_aggregation={"survivors": ok})


def test_run_view_follows_a_run_while_it_goes_and_after(browser: Any, tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    dashboard = Dashboard(str(folder.root))
    writer_may_go, round_two_seen = threading.Event(), threading.Event()

    def run() -> None:  # the round loop's own metrics writer, a round at a time
        writer_may_go.wait(30)
        state = SimpleNamespace(folder=folder)
        for number in (1, 2):
            MetricsLog().on_round_end(state, a_round(number))  # type: ignore[arg-type]
            time.sleep(1.0)
        round_two_seen.wait(30)
        MetricsLog().on_round_end(state, a_round(3))  # type: ignore[arg-type]
        folder.report_dir.mkdir()
        folder.report.write_text("# fedmm run report\n- rounds completed: 3\n")
        atomic_write_json(folder.summary, {"rounds_completed": 3})

    writer = threading.Thread(target=run, daemon=True)
    writer.start()
    try:
        browser.get(dashboard.url)
        assert "waiting for the first round" in browser.find_element("id", "state").text
        writer_may_go.set()
        wait_until(lambda: len(shown_rounds(browser)) == 2, "two rounds")
        assert state_of(browser) == "running" and not folder.summary.exists()
        assert shown_rounds(browser) == recorded_rounds(folder)
        browser.save_screenshot(str(tmp_path / "run-view-running.png"))
        round_two_seen.set()
        wait_until(lambda: state_of(browser) == "done", "the run done")
        assert shown_rounds(browser) == recorded_rounds(folder)
        assert recorded_rounds(folder)[2]["site-c"] == "refused"
        assert recorded_rounds(folder)[3]["site-b"] == "failed"
        assert "rounds completed: 3" in browser.find_element("id", "report").text
        wait_until(lambda: browser.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"),
            "its charts")
        assert len(browser.find_elements("css selector", "#charts img")) == 4
        requests_stay_on(browser, dashboard.url)
        browser.save_screenshot(str(tmp_path / "run-view-done.png"))
    finally:
        writer_may_go.set()
        round_two_seen.set()
        writer.join(30)
        code = dashboard.stop()
    assert code == 130
    assert sorted(p.name for p in folder.root.iterdir()) == sorted(
        [folder.metrics.name, folder.summary.name, folder.report_dir.name])  # nothing written


def _secure_round(site_dirs: list[Path], refusing: str, epsilons: list[float]) -> None:
    """One secure-aggregation round through the real ClientApp and its audit mod: each site
    but ``refusing`` reserves its steps in its ledger and marks them sent, as DP-SGD does;
    ``refusing`` refuses for its budget."""
    from flwr.clientapp import ClientApp

    from client.audit_log import audit_log_mod
    from client.ledger import PrivacyLedger
    from client.local_round import LocalRound
    from client.secure_aggregation import register_secure_aggregation
    from common import wire
    from common.config import RunConfig
    from server.secure_aggregation import SecureAggregation
    from tests.inprocess import InProcessSites

    def train(msg: Any, site: Any, config: Any) -> LocalRound:
        if site.site_id == refusing:
            return LocalRound(site.site_id, "refused", code="budget-exhausted",
                              reason="ε would pass max_epsilon")
        entry = {"model_id": config.model_id, "run_id": "test", "round_number": 1}
        epsilons.append(PrivacyLedger(site.state_dir).reserve(
            **entry, noise_multiplier=1.1, sample_rate=0.1, steps=40, delta=1e-5,
            accountant="rdp"))
        return LocalRound(site.site_id, "ok", update={"w": np.ones(4, np.float32)},
                          report=wire.TrainReport(num_examples=40, train_loss=0.1, steps=40,
                                                  skipped_rows=0, seconds=0.1,
                                                  epsilon=epsilons[-1]),
                          ledger_entry=entry, site=site)

    app = ClientApp(mods=[audit_log_mod(None)])
    register_secure_aggregation(app, site_dirs=None, train=train)
    sites = InProcessSites(app, site_dirs, RunConfig())
    SecureAggregation(settings=RunConfig().secure_aggregation, exchange=sites.exchange).train(
        round_id="r/1", nodes=sites.nodes, weights={"w": np.zeros(4, np.float32)})


def test_site_view_needs_its_token_and_shows_the_ledger_and_audit_log(
        browser: Any, demo_root: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from common.site_state import SiteState

    site_dirs = [tmp_path / name for name in ("site-a", "site-b", "site-c")]
    for site in site_dirs:
        shutil.copytree(demo_root / "site-01", site)
    epsilons: list[float] = []
    _secure_round(site_dirs, refusing="site-c", epsilons=epsilons)
    state = SiteState.of(site_dirs[0])
    dashboard = Dashboard(str(site_dirs[0]))
    try:
        bare = dashboard.url.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bare + "api/view", timeout=10)
        assert refused.value.code == 401
        browser.get(bare)
        assert "token required" in browser.find_element(By.TAG_NAME, "body").text
        browser.get(dashboard.url)
        audit = [json.loads(line) for line in state.audit_log.read_text().splitlines()]
        ledger = json.loads(state.ledger.read_text())["models"]
        [(model, spend)] = ledger.items()
        row = browser.find_element(By.CSS_SELECTOR, f"#ledger tr[data-model='{model}']")
        assert f"{spend['epsilon']:.4f}" in row.text and f"{epsilons[0]:.4f}" in row.text
        assert [r["status"] for r in spend["rounds"]] == ["sent"]
        rows = browser.find_elements(By.CSS_SELECTOR, "#audit tr[data-line]")
        assert len(rows) == len(audit) == 5

        def cells(entry: dict[str, Any]) -> list[str]:
            return [entry["kind"], entry["status"], str(entry["bytes"]), entry["sha256"]]

        for shown in rows:
            entry = audit[int(shown.get_attribute("data-line")) - 1]
            assert all(value in shown.text for value in cells(entry))
        assert browser.find_element(By.CSS_SELECTOR, "#refusals").text.endswith("none")
        # a second round, in which this site refuses: the page (on its cookie now) shows it
        _secure_round(site_dirs, refusing="site-a", epsilons=epsilons)
        audit = [json.loads(line) for line in state.audit_log.read_text().splitlines()]
        refusals = [entry for entry in audit if entry["status"] == "refused"]
        wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#audit tr[data-line]"))
                   == len(audit), "the second round's audit lines")
        shown = browser.find_elements(By.CSS_SELECTOR, "#refusals tr[data-line]")
        assert len(shown) == len(refusals) == 1
        assert all(value in shown[0].text for value in cells(refusals[0]))
        assert f"{epsilons[0]:.4f}" in browser.find_element(By.ID, "ledger").text  # unspent
        assert "60 rows" in browser.find_element(By.ID, "data").text
        requests_stay_on(browser, dashboard.url)
        browser.save_screenshot(str(tmp_path / "site-view.png"))
    finally:
        code = dashboard.stop()
    assert code == 130
