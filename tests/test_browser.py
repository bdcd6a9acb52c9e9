"""The web UI in a real browser: Debian's Chromium, headless, driven by Playwright for Python.

`dagster dev` (web server + daemon) serves the code location on a free loopback port with a fresh
$DAGSTER_HOME (deploy/dagster.sqlite.yaml: the run queue, so the daemon launches the run). The test
walks what a user does: the asset graph, the catalogued sources, one source's page (licence, URL),
demo_job launched from the Launchpad, the run page until it succeeds, the dataset report and its
charts. Screenshots go to test-artifacts/browser/ (gitignored; CI keeps them as artifacts).
No browser is downloaded: Playwright launches /usr/bin/chromium (`.ci/run` installs it).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from services import REPO, dagster_dev, install_dagster_yaml, missing_service, service_env

from gmai_pipeline.catalog import load_catalog

pytestmark = [pytest.mark.services, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = REPO / "test-artifacts" / "browser"
RUN_TIMEOUT_S = 20 * 60


def _dismiss_modals(page) -> None:
    """Dagster's first-visit 'Join the community' dialog covers the page; skip it when it shows."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count() and skip.first.is_visible():
        skip.first.click()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def _scroll_collect(page, pattern: str, max_rounds: int = 400) -> set[str]:
    """Scroll a virtualized list to the end, collecting hrefs containing `pattern` (rows render only when visible)."""
    seen: set[str] = set()
    stale = 0
    page.mouse.move(800, 600)
    for _ in range(max_rounds):
        hrefs = page.eval_on_selector_all(
            f"a[href*='{pattern}']", "els => els.map(e => e.getAttribute('href'))"
        )
        new = {h.split("?")[0] for h in hrefs} - seen
        seen |= new
        stale = 0 if new else stale + 1
        if stale >= 5:
            break
        page.mouse.wheel(0, 800)
        page.wait_for_timeout(250)
    return seen


def _run_status(page) -> str | None:
    text = page.inner_text("body")
    for status in ("Success", "Failure", "Canceled"):
        if re.search(rf"\b{status}\b", text):
            return status
    return None


def test_web_ui_tour(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        missing_service("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog()
    source_names = {s.name for s in catalog}
    catalogued = [s for s in catalog if not s.demo]
    home = tmp_path / "dagster_home"
    install_dagster_yaml("dagster.sqlite.yaml", home)
    # In-process runs: the run worker loads the code location once instead of once per step.
    env = service_env(
        DAGSTER_HOME=str(home), GMAI_OUTPUT_ROOT=str(tmp_path / "out"), GMAI_EXECUTOR="in_process"
    )
    log = tmp_path / "dagster-dev.log"
    try:
        with dagster_dev(env, log) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # The first-visit "Join the Dagster community" dialog reads this key; set, it stays closed.
            context.add_init_script("window.localStorage.setItem('communityNux', 'true')")
            page = context.new_page()
            page.set_default_timeout(90_000)

            # 1. The asset graph (Lineage): the stages' groups are there.
            page.goto(f"{url}/asset-groups")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(3000)
            _dismiss_modals(page)
            page.get_by_text("generation", exact=True).first.wait_for()
            _shot(page, "01-asset-graph")

            # 2. The catalogue: every source/<name> asset, 219 catalogued datasets plus the demo.
            page.goto(f"{url}/assets/source")
            page.get_by_text(sorted(source_names)[0], exact=True).first.wait_for()
            _dismiss_modals(page)
            _shot(page, "02-sources")
            shown = {h.rsplit("/", 1)[-1] for h in _scroll_collect(page, "/assets/source/")}
            assert shown == source_names, (len(shown), sorted(source_names ^ shown)[:10])
            assert len(catalogued) >= 219

            # 3. One source's page: its licence and download URL.
            source = next((s for s in catalogued if s.url and s.license != "unknown"), catalogued[0])
            page.goto(f"{url}/assets/source/{source.name}")
            page.get_by_text("license", exact=True).first.wait_for()
            _dismiss_modals(page)
            body = page.inner_text("body")
            assert source.license in body and (source.url or "unknown") in body
            _shot(page, "03-source-page")

            # 4. Launch demo_job from the Launchpad; the daemon dequeues it; wait for success.
            page.goto(f"{url}/locations/gmai_pipeline/jobs/demo_job/playground")
            _dismiss_modals(page)
            launch = page.locator("button", has_text=re.compile(r"^\s*Launch run\s*$", re.IGNORECASE))
            launch.wait_for()
            _shot(page, "04-launchpad")
            launch.click()
            # demo_job holds partitioned assets; its range tags cover every shard, so no partition is picked.
            confirm = page.get_by_role("button", name="Confirm")
            confirm.wait_for(timeout=15_000)
            confirm.click()
            page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}.*"), timeout=120_000)
            run_url = page.url.split("?")[0]
            deadline = time.monotonic() + RUN_TIMEOUT_S
            status = None
            while time.monotonic() < deadline:
                page.wait_for_timeout(10_000)
                status = _run_status(page)
                if status:
                    break
            page.goto(run_url)
            page.wait_for_timeout(3000)
            _shot(page, "05-run")
            assert status == "Success", f"demo_job ended {status}; see {run_url} and {log}"

            # 5. The dataset report: its metadata shows the charts (PNG images).
            page.goto(f"{url}/assets/dataset_report")
            page.get_by_text("Latest materialization").first.wait_for()
            _dismiss_modals(page)
            page.wait_for_timeout(3000)
            _shot(page, "06-dataset-report")
            chart_rows = page.locator("tr").filter(has=page.locator("td", has_text=re.compile(r"^\s*chart_")))
            assert chart_rows.count() >= 1, "no chart_* metadata on dataset_report"
            for i in range(chart_rows.count()):
                row = chart_rows.nth(i)
                name = row.locator("td").first.inner_text().strip()
                row.scroll_into_view_if_needed()
                img = row.locator("img[src^='data:image/png']")
                dialog = img.count() == 0  # long markdown values sit behind "[Show Markdown]"
                if dialog:
                    row.get_by_text("[Show Markdown]").click()
                    img = page.locator("[role=dialog] img[src^='data:image/png']")
                img.first.wait_for()
                assert img.first.evaluate("i => i.complete && i.naturalWidth") > 100, name
                if dialog:
                    page.wait_for_timeout(800)  # the dialog fades in: shoot it opaque, not over the page
                _shot(page, f"07-{name}")
                if dialog:
                    # The closing animation can leave the previous dialog in the DOM for a moment: close the
                    # newest one and wait until no chart dialog is left before opening the next.
                    page.get_by_role("button", name="Close").last.click()
                    page.locator("[role=dialog] img[src^='data:image/png']").first.wait_for(state="detached")
            browser.close()
    finally:
        if log.exists():
            shutil.copyfile(log, ARTIFACTS / "dagster-dev.log")
