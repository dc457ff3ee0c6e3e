"""The live views in a real browser (headless Chromium through Selenium and chromedriver, both
installed by ``make test``), against ``fedmm dashboard`` running as its own process.

The run view follows a real ``fedmm simulate`` (:class:`RunWatch`): it rides along the run that
``tests/test_simulate_e2e.py``'s ``policy_run`` makes anyway (four sites, secure aggregation,
refusals), opened before the run starts and looked at while it goes and after it ends; what
the page shows is checked there against ``metrics.jsonl`` read line by line. The site view is
checked here against the ledger and ``audit.jsonl`` that the real ClientApp's audit mod wrote
in secure-aggregation rounds delivered in this process. Every request the page makes stays on
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
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.run_folder import RunFolder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1300")


def open_chromium() -> tuple[Any, str]:
    """A headless Chromium with a fresh profile, and the profile's folder."""
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
    return driver, profile


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    driver, profile = open_chromium()
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
    """The run's state as the page shows it, read in one script: the page's own refresh may
    replace the element between a lookup and a second call (a stale reference)."""
    return browser.execute_script(
        "const e = document.getElementById('state'); return e ? e.dataset.state || '' : '';")


def text_of(browser: Any, selector: str) -> str:
    """An element's visible text, or "" if the page has none, read in one script (no stale
    reference when the page refreshes between a lookup and a read)."""
    return browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", selector)


def shown_rounds(browser: Any) -> dict[int, dict[str, str]]:
    """Round → {site: status} as the page shows them (rounds table and sites matrix), read in
    one script so that the page's own refresh cannot change it half way."""
    shown = browser.execute_script("""
      const rounds = {};
      for (const row of document.querySelectorAll('#rounds tr[data-round]'))
        rounds[row.dataset.round] = {};
      for (const row of document.querySelectorAll('#sites tr[data-site]'))
        for (const cell of row.querySelectorAll('td[data-site-round]'))
          if (cell.dataset.status !== 'absent')
            (rounds[cell.dataset.siteRound] ??= {})[row.dataset.site] = cell.dataset.status;
      return rounds;""")
    return {int(number): sites for number, sites in shown.items()}


def recorded_rounds(folder: RunFolder) -> dict[int, dict[str, str]]:
    """The same, read straight from metrics.jsonl (one JSON object a line; a line being
    appended as it is read is left out)."""
    rounds = {}
    for line in folder.metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        rounds[record["round"]] = {site: entry["status"]
                                   for site, entry in record["sites"].items()}
    return rounds


def requests_stay_on(browser: Any, url: str) -> None:
    names = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    origin = "/".join(url.split("/")[:3])  # scheme://host:port
    assert names and all(name.startswith(origin + "/") for name in names), names


class RunWatch:
    """Headless Chromium on ``fedmm dashboard RUN_DIR`` (its own process), opened before a real
    run starts: :meth:`look` while the run goes on keeps what the page shows next to what
    ``metrics.jsonl`` holds right after; :meth:`after` once the run has ended."""

    def __init__(self, folder: Path) -> None:
        self.folder = RunFolder(folder)
        self.dashboard = Dashboard(str(folder))
        self.driver, self.profile = open_chromium()
        self.driver.get(self.dashboard.url)
        self.waiting_at_start = "waiting for the first round" in text_of(self.driver, "#state")
        self.while_running: list[tuple[dict, dict]] = []
        self.done: tuple[dict, dict] = ({}, {})
        self.report, self.charts, self.requests = "", 0, []

    def look(self) -> None:
        if state_of(self.driver) == "running" and (shown := shown_rounds(self.driver)):
            self.while_running.append((shown, recorded_rounds(self.folder)))

    def after(self) -> None:
        wait_until(lambda: state_of(self.driver) in ("done", "failed"), "the run ended", 60)
        self.done = (shown_rounds(self.driver), recorded_rounds(self.folder))
        self.report = text_of(self.driver, "#report")
        wait_until(lambda: self.driver.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"),
            "its charts")
        self.charts = len(self.driver.find_elements("css selector", "#charts img"))
        self.requests = self.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        self.driver.save_screenshot(str(self.folder.root.parent / "run-view-done.png"))

    def close(self) -> int:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)
        return self.dashboard.stop()


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
        assert "token" not in browser.current_url  # sent on without it, on its cookie
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
