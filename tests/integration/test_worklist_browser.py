"""The worklist page in a real browser: Debian's Chromium driven by Playwright (Python).

The live server and its jobs are those of ``test_api`` (SQLite store), with a viewer link
template set. The browser gets the token once, then must show the rows in triage-priority
order with their labels, the patient's identity, the viewer link and previews that open at
full size; a normal study's sub-threshold volumes read "below threshold". A screenshot is
saved under ``tmp_path`` and copied to ``$CT_TRIAGE_TEST_ARTIFACTS`` when that is set (CI
artifacts; ``docs/screenshots/worklist.png`` is one).

Skipped, with the reason, when the ``playwright`` package or ``/usr/bin/chromium`` is missing
(``apt-get install chromium``; never ``playwright install``: no browser downloads).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from integration.test_api import (
    Live,
    Study,
    _finish_four,
    complete,
    model,  # noqa: F401 - fixtures shared with test_api
    start_server,
    study,  # noqa: F401
    submit,
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


VIEWER = "http://pacs.example/ohif/viewer?StudyInstanceUIDs={study}"


@pytest.fixture
def sqlite_live(
    tmp_path: Path,
    model: LesionSegmenter,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Live]:
    monkeypatch.setenv("CT_TRIAGE_VIEWER_URL_TEMPLATE", VIEWER)
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
    with sqlite_live.client("operator") as op:  # and a normal study with a tiny volume
        normal = submit(op, "1.2.826.0.1.3680043.8.498.39")["id"]
    complete(
        sqlite_live.store,
        normal,
        study,
        triage="normal",
        priority=5,
        severity_score=1,
        lesion_volume_ml={"total": 0.1, "ggo": 0.1, "consolidation": 0.0},
        percent_involvement={"left": 0.0, "right": 0.01, "total": 0.01},
    )
    ds = pydicom.dcmread(study.files[0], stop_before_pixels=True)
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
            rows.nth(4).wait_for(timeout=15_000)
            # (Locators, not wait_for_function: the page's CSP forbids eval, as it should.)
            page.locator("#worklist tbody img.thumb").nth(2).wait_for(timeout=15_000)
            assert page.locator("#worklist tbody img.thumb").count() == 3
            assert rows.count() == 5
            assert page.locator("#login").is_hidden()
            order = [rows.nth(i).get_attribute("data-job-id") for i in range(5)]
            assert order == [ids[0], ids[1], normal, ids[3], ids[2]]
            labels = [rows.nth(i).locator(".triage").inner_text() for i in range(5)]
            assert labels[:3] == ["SEVERE", "MILD", "NORMAL"]
            assert "triage-severe" in (rows.nth(0).locator(".triage").get_attribute("class") or "")
            alt = rows.nth(0).locator("img.thumb").get_attribute("alt") or ""
            assert "lesion overlay" in alt
            assert "NOT FOR PRIMARY DIAGNOSIS" in page.locator("#disclaimer").inner_text()
            # Who and which study: name, ID, accession, study date, and the viewer link.
            family, given = str(ds.PatientName).split("^")[:2]
            patient = rows.nth(0).locator("td.patient").inner_text()
            assert f"{family}, {given}" in patient
            assert f"ID {ds.PatientID}" in patient
            study_cell = rows.nth(0).locator("td.study").inner_text()
            assert f"Acc. {ds.AccessionNumber}" in study_cell
            assert f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:8]}" in study_cell
            link = rows.nth(0).get_by_role("link", name="Open in viewer")
            assert link.get_attribute("href") == VIEWER.format(study=ds.StudyInstanceUID)
            assert link.get_attribute("target") == "_blank"
            # A normal study's tiny measured volume is not presented as a finding.
            normal_row = rows.nth(2).inner_text()
            assert "No lesions above the triage thresholds" in normal_row
            assert "below threshold" in normal_row
            cells = rows.nth(2).locator("td")
            assert [cells.nth(i).inner_text() for i in (6, 7, 8)] == [
                "below threshold",
                "below threshold",
                "–",
            ]
            assert "0.1 mL" in (cells.nth(7).get_attribute("title") or "")
            # The preview opens at its full size in a dialog.
            rows.nth(0).locator("img.thumb").click()
            full = page.locator("#preview-full")
            full.wait_for(state="visible", timeout=5_000)
            thumb_w = rows.nth(0).locator("img.thumb").bounding_box()
            full_w = full.bounding_box()
            assert thumb_w is not None
            assert full_w is not None
            assert full_w["width"] > 1.5 * thumb_w["width"]
            page.screenshot(path=str(tmp_path / "worklist-preview.png"))
            page.locator("#preview-close").click()
            assert full.is_hidden()
            # The token survives a reload (sessionStorage) and is never put in the URL.
            page.reload()
            rows.nth(4).wait_for(timeout=15_000)
            page.locator("#worklist tbody img.thumb").nth(2).wait_for(timeout=15_000)
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
        shutil.copy2(tmp_path / "worklist-preview.png", Path(artifacts) / "worklist-preview.png")
