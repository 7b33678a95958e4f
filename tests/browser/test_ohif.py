"""Our results in the OHIF viewer (3.13, from npm), in Debian's Chromium, against real Orthanc.

A synthetic chest CT is analysed (``ct-triage analyze``, the shipped model) and the CT and
every result object are stored in a test Orthanc. OHIF's prebuilt ``dist/``
(``scripts/install-ohif.sh``) is served same-origin with a ``/dicom-web`` proxy to Orthanc
(:mod:`browser.ohif_server`), and Playwright drives ``/usr/bin/chromium`` (SwiftShader WebGL):

1. the study opens on the CT;
2. the SEG, double-clicked, is drawn over the CT: the viewport has many more coloured pixels
   than before (screenshots compared pixel by pixel), and loading it lists our segments;
3. the summary page (Secondary Capture) is displayed: its image, with the outline and
   disclaimer colours, fills the viewport;
4. the lesion outline SR, opened and its "continue tracking measurements?" prompt answered Yes
   (and nothing else clicked before that answer: see :func:`_load_outline_sr`), loads into
   OHIF's measurement panel: one measurement per lung with lesions, named by finding and lung.

The full measurement SR (volumetric TID 1500 groups tied to SEG segments) is not opened:
OHIF 3.13 throws on any SR measurement group without image coordinates and blanks the
viewport (its ``_checkIfCanAddMeasurementsToDisplaySet`` reads ``coords[0]``). Its numbers
are what the summary page shows, and its outlines are what the outline SR carries.

Screenshots are written under ``tmp_path`` (and ``$CT_TRIAGE_TEST_ARTIFACTS`` when set).
Skipped, with the reason, only when npm, Chromium, Orthanc or the ``playwright`` Python
package is missing; a failed OHIF download is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from browser.ohif_server import OhifServer, ohif_dist
from orthanc import OrthancServer, free_port, orthanc_available
from PIL import Image

from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.phantom import generate, spec_from_seed
from ct_triage.server.cli import main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--use-angle=swiftshader",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Generous: OHIF on SwiftShader on two shared CPU cores.
STEP_TIMEOUT_MS = 120_000


@dataclass(frozen=True)
class Study:
    study_uid: str
    ct: list[Path]
    out: Path


@pytest.fixture(scope="module")
def dist() -> Path:
    """OHIF's dist/, installed by scripts/install-ohif.sh when it is not there yet."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    folder = ohif_dist()
    if not (folder / "index.html").is_file():
        if shutil.which("npm") is None:
            pytest.skip("npm is missing (apt-get install npm): OHIF cannot be installed")
        subprocess.run(["bash", str(REPO / "scripts" / "install-ohif.sh")], check=True, timeout=900)
    assert (folder / "index.html").is_file(), f"{folder} has no index.html"
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A moderate synthetic chest CT and its analysis (SEG, SRs, summary, overlay)."""
    root = tmp_path_factory.mktemp("ohif-study")
    ph = generate(spec_from_seed(13, n_slices=60, severity="moderate"))
    ct = write_phantom_series(ph, root / "ct")
    out = root / "out"
    assert main(["analyze", str(root / "ct"), "--out", str(out)]) == 0
    uid = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    return Study(uid, ct, out)


@pytest.fixture
def viewer(dist: Path, study: Study, tmp_path: Path) -> Iterator[OhifServer]:
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    orthanc = OrthancServer(root=tmp_path / "orthanc")
    orthanc.start()
    server = OhifServer(dist, orthanc.dicomweb_url, orthanc.auth, free_port())
    try:
        results = sorted(p for p in study.out.rglob("*.dcm"))
        orthanc.upload([*study.ct, *results])
        server.start()
        yield server
    finally:
        server.stop()
        orthanc.stop()


def _save(png: bytes, tmp_path: Path, name: str) -> npt.NDArray[np.uint8]:
    """Keep a screenshot (tmp_path and $CT_TRIAGE_TEST_ARTIFACTS); return its RGB pixels."""
    (tmp_path / name).write_bytes(png)
    artefacts = os.environ.get("CT_TRIAGE_TEST_ARTIFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        (Path(artefacts) / name).write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)


def _screenshot_until(
    pane: Any, tmp_path: Path, name: str, ready: Callable[[npt.NDArray[np.uint8]], bool]
) -> npt.NDArray[np.uint8]:
    """Screenshot ``pane`` until ``ready`` holds for its pixels (OHIF draws asynchronously,
    slowly on SwiftShader and two shared cores) or :data:`STEP_TIMEOUT_MS` passes; the last
    screenshot is kept as ``name`` and returned either way, for the caller to assert on."""
    deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
    while True:
        rgb = _save(pane.screenshot(timeout=STEP_TIMEOUT_MS), tmp_path, name)
        if ready(rgb) or time.monotonic() > deadline:
            return rgb
        pane.page.wait_for_timeout(500)


def _drawn(rgb: npt.NDArray[np.uint8]) -> float:
    """Fraction of the pixels that are not near black (the CT is drawn)."""
    return float(np.count_nonzero(rgb.max(axis=-1) > 40)) / float(rgb.shape[0] * rgb.shape[1])


def coloured_fraction(rgb: npt.NDArray[np.uint8], margin: int = 24) -> float:
    """Fraction of the pixels (inside a margin, away from the viewport's frame and corner
    labels) whose channels differ by more than 60: colour, not the CT's grey."""
    inner = rgb[margin:-margin, margin:-margin].astype(np.int16)
    spread = inner.max(axis=-1) - inner.min(axis=-1)
    return float(np.count_nonzero(spread > 60)) / float(spread.size)


def _warm_yellow(rgb: npt.NDArray[np.uint8]) -> int:
    """Pixels of the summary page's disclaimer / ground-glass colours (yellow-orange)."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    return int(np.count_nonzero((r > 200) & (g > 140) & (g < 235) & (b < 110)))


def _dismiss_tour(page: Any) -> None:
    with contextlib.suppress(Exception):  # no onboarding tour shown
        page.get_by_text("Skip all").click(timeout=5_000)


def test_ohif_shows_seg_summary_and_outline_measurements(
    viewer: OhifServer, study: Study, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright Python package is not installed"
    )
    t0 = time.monotonic()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={study.study_uid}")
            pane = page.locator("[data-cy=viewport-pane]").first
            thumbs = page.locator("[data-cy=study-browser-thumbnail]")
            thumbs.first.wait_for(timeout=STEP_TIMEOUT_MS)
            page.get_by_text("I:", exact=False).first.wait_for(timeout=STEP_TIMEOUT_MS)
            _dismiss_tour(page)
            ct = _screenshot_until(pane, tmp_path, "ohif-ct.png", lambda px: _drawn(px) > 0.2)

            # 2. the SEG over the CT
            listed = page.locator("[data-cy=study-browser-thumbnail-no-image]")
            listed.filter(has_text="SEG").first.dblclick()
            page.get_by_text("Do you want to open this Segmentation?").wait_for(
                timeout=STEP_TIMEOUT_MS
            )
            # (screenshots only: a click outside that prompt would answer it "No")
            before = coloured_fraction(ct)
            seg = _screenshot_until(
                pane, tmp_path, "ohif-seg.png", lambda px: coloured_fraction(px) > before + 0.05
            )
            after = coloured_fraction(seg)
            assert after > before + 0.05, (before, after)  # lungs filled in our colours
            page.get_by_role("button", name="Yes").click(timeout=STEP_TIMEOUT_MS)
            page.locator("[data-cy=panelSegmentation-btn]").first.click(timeout=STEP_TIMEOUT_MS)
            for label in ("Right lung", "Left lung", "Ground-glass opacity", "Consolidation"):
                page.get_by_text(label, exact=True).first.wait_for(timeout=STEP_TIMEOUT_MS)

            # 3. the summary page
            thumbs.filter(has_text="AI lung summary").first.dblclick()
            summary = _screenshot_until(
                pane, tmp_path, "ohif-summary.png", lambda px: _warm_yellow(px) > 200
            )
            assert _warm_yellow(summary) > 200, _warm_yellow(summary)
            assert _warm_yellow(ct) < _warm_yellow(summary) // 4

            # 4. the outline SR in the measurement panel
            n_lungs = sum(1 for side in ("right", "left") if _has_lesion_section(study.out, side))
            listed.filter(has_text="AI lesion outlines SR").first.dblclick()
            try:
                _load_outline_sr(page, f"Measurements ({n_lungs})")
            finally:
                _save(page.screenshot(), tmp_path, "ohif-measurements.png")
            text = page.inner_text("body")
            assert "Right lung" in text
            # OHIF measures our outline itself: the area it computes is the one we report
            areas = _outline_areas(study.out)
            assert any(f"{round(a)} mm²" in text for a in areas), (areas, text[-400:])
            assert not [e for e in errors if "ReferencedSOPSequence" in e], errors
        finally:
            browser.close()
    print(f"OHIF browser steps: {time.monotonic() - t0:.1f} s")


def _load_outline_sr(page: Any, expected: str) -> None:
    """Answer OHIF's prompt to load the SR just opened, then show the measurement panel.

    OHIF (``measurementTrackingMode`` "standard", its default) asks in the viewport "Do you
    want to continue tracking measurements for this study?" (``data-cy=viewport-notification``)
    once the SR is loaded and found rehydratable. That dialog takes any mouse down or up
    outside it as "No" (``ViewportDialog`` ``onOutsideClick`` -> CANCEL), and the tracking
    machine then adds the SR's series to ``ignoredSRSeriesForHydration``: the prompt never
    comes back, the SR viewport has no LOAD button, and the panel says "Measurements (0)"
    for the rest of the session. So nothing is clicked between the double-click that opened
    the SR and the answer: wait for the dialog, click its Yes, then open the panel once
    (OHIF activates no panel by itself; a second click would close it).
    """
    dialog = page.locator("[data-cy=viewport-notification]").filter(
        has_text="continue tracking measurements"
    )
    dialog.wait_for(timeout=STEP_TIMEOUT_MS)
    dialog.get_by_role("button", name="Yes", exact=True).click(timeout=STEP_TIMEOUT_MS)
    dialog.wait_for(state="detached", timeout=STEP_TIMEOUT_MS)
    if not page.get_by_text("Measurements (").first.is_visible():
        page.locator("[data-cy=trackedMeasurements-btn]").first.click(timeout=STEP_TIMEOUT_MS)
    try:
        page.get_by_text(expected).first.wait_for(timeout=STEP_TIMEOUT_MS)
    except Exception as exc:
        tail = page.inner_text("body")[-600:]
        dump = os.environ.get("CT_TRIAGE_OHIF_DUMP")
        if dump:
            Path(dump).write_text(page.content())
        shown = f"OHIF's measurement panel never showed {expected!r}: {tail!r}"
        raise AssertionError(shown) from exc


def _has_lesion_section(out: Path, side: str) -> bool:
    """Whether the outline SR has a group for the ``side`` lung."""
    sr = pydicom.dcmread(out / "sr-outlines.dcm")
    meaning = "Right lung" if side == "right" else "Left lung"
    return any(
        getattr(v, "keyword", "") == "CodeMeaning" and v.value == meaning for v in sr.iterall()
    )


def _outline_areas(out: Path) -> list[float]:
    """The Area values (mm2) of the outline SR."""
    sr = pydicom.dcmread(out / "sr-outlines.dcm")
    return [
        float(element.value[0].NumericValue)
        for element in sr.iterall()
        if element.keyword == "MeasuredValueSequence"
    ]
