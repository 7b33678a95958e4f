"""The worklist page in a real browser: Debian's Chromium driven by Playwright (Python).

The live server and its jobs are those of ``test_api`` (SQLite store). The browser gets the
token once, then must show the rows in triage-priority order with their labels and
previews. A screenshot is saved under ``tmp_path`` and copied to
``$CT_TRIAGE_TEST_ARTIFACTS`` when that is set (CI artifacts).

Skipped, with the reason, when the ``playwright`` package or ``/usr/bin/chromium`` is missing
(``apt-get install chromium``; never ``playwright install``: no browser downloads).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.test_api import (
    Live,
    Study,
    _finish_four,
    model,  # noqa: F401 - fixtures shared with test_api
    start_server,
    study,  # noqa: F401
)

from ct_triage.models.lesions import LesionSegmenter
from ct_triage.server.jobs.factory import create_job_store
from ct_triage.server.jobs.model import JobStore

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def sqlite_live(tmp_path: Path, model: LesionSegmenter) -> Iterator[Live]:  # noqa: F811
    store: JobStore = create_job_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    server, live = start_server(tmp_path, store, model.identity)
    try:
        yield live
    finally:
        server.stop()
        store.close()


def test_worklist_page_in_chromium(
    sqlite_live: Live,
    study: Study,  # noqa: F811
    tmp_path: Path,
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright Python package is not installed"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    ids = _finish_four(sqlite_live, study)  # severe, mild, queued, declined
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            page.goto(sqlite_live.url + "/")
            page.get_by_label("API token").fill(sqlite_live.tokens["viewer"])
            page.get_by_role("button", name="Open worklist").click()
            rows = page.locator("#worklist tbody tr")
            rows.nth(3).wait_for(timeout=15_000)
            # (Locators, not wait_for_function: the page's CSP forbids eval, as it should.)
            page.locator("#worklist tbody img.thumb").nth(1).wait_for(timeout=15_000)
            assert page.locator("#worklist tbody img.thumb").count() == 2
            assert rows.count() == 4
            assert page.locator("#login").is_hidden()
            order = [rows.nth(i).get_attribute("data-job-id") for i in range(4)]
            assert order == [ids[0], ids[1], ids[3], ids[2]]
            labels = [rows.nth(i).locator(".triage").inner_text() for i in range(4)]
            assert labels[:2] == ["SEVERE", "MILD"]
            assert "triage-severe" in (rows.nth(0).locator(".triage").get_attribute("class") or "")
            alt = rows.nth(0).locator("img.thumb").get_attribute("alt") or ""
            assert "lesion overlay" in alt
            assert "NOT FOR PRIMARY DIAGNOSIS" in page.locator("#disclaimer").inner_text()
            # The token survives a reload (sessionStorage) and is never put in the URL.
            page.reload()
            rows.nth(3).wait_for(timeout=15_000)
            assert sqlite_live.tokens["viewer"] not in page.url
            shot = tmp_path / "worklist.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert shot.stat().st_size > 1000
    artifacts = os.environ.get("CT_TRIAGE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(artifacts) / "worklist.png")
