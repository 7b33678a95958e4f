"""One-page summary Secondary Capture: the numbers every PACS viewer shows.

Not every viewer renders a SEG or lists the measurements of an SR; every one displays a
Secondary Capture image (PS3.3 A.8.1). This writer draws one RGB page per result:

* for an analysed series: key axial slices and a coronal reformat with the AI outlines
  (:func:`ct_triage.kernels.overlay.preview_montage`), then the triage category and
  priority, the severity score, each lung's volume and percent involved (with its zones),
  the lesion volumes, the quality gate's verdict ("NEEDS A HUMAN: REASON" when the lung
  segmentation is unreliable), the model name, version and checksum, and the disclaimer;
* for a study that was not analysed (declined): "NOT ANALYSED: REASON", the product and the
  disclaimer, in the study it came with, so the radiologist sees in the PACS that the study
  was skipped and why.

The page is a single-instance series of its own (Series Description says what it is and
that it is not for primary diagnosis). No patient identifier is drawn into the pixels; the
header carries the patient and study attributes of the source.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from ct_triage.dicom_bridge.writers import codes
from ct_triage.dicom_bridge.writers.overlay import _font, _wrap, secondary_capture
from ct_triage.dicom_bridge.writers.sr import round_measurement
from ct_triage.kernels import overlay as kov
from ct_triage.models.identity import DISCLAIMER, DISCLAIMER_SHORT, ModelIdentity
from ct_triage.models.quantify import Quantification
from ct_triage.models.segmentation import Segmentation

logger = logging.getLogger(__name__)

#: Series Description of a result's summary (LO, at most 64 characters).
SERIES_DESCRIPTION: Final = f"AI lung summary - {DISCLAIMER_SHORT}"[:64]
#: Series Description of the page of a study that was not analysed.
DECLINED_DESCRIPTION: Final = f"AI not analysed - {DISCLAIMER_SHORT}"[:64]
#: Width of the page in pixels (a wider montage is scaled down to fit).
PAGE_WIDTH: Final = 1024
#: Height of the image tiles on the page.
TILE_HEIGHT: Final = 320
_FONT_SIZE: Final = 18
_MARGIN: Final = 12


@dataclass(frozen=True, slots=True)
class SummaryPage:
    """Text and images of one summary page, validated on construction.

    Parameters
    ----------
    header
        A header of the study (patient and study attributes are copied from it).
    title
        First line, drawn large.
    lines
        Body lines; a line starting with ``"!"`` is drawn in the warning colour (the ``!``
        is not drawn).
    images
        ``(h, w, 3)`` ``uint8`` montage drawn under the title, or ``None``.
    references
        Source images the page shows or summarises (Source Image Sequence).
    model
        The software that wrote the page (equipment attributes).
    series_description
        Series Description (at most 64 characters).
    series_number
        Series Number of the page's series (IS).
    """

    header: Dataset
    title: str
    lines: tuple[str, ...]
    images: npt.NDArray[np.uint8] | None
    references: tuple[Dataset, ...]
    model: ModelIdentity
    series_description: str = SERIES_DESCRIPTION
    series_number: int = 9004

    def __post_init__(self) -> None:
        for kw in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID"):
            if kw not in self.header:
                raise ValueError(f"header lacks {kw}")
        if self.images is not None and (
            self.images.ndim != 3 or self.images.shape[2] != 3 or self.images.dtype != np.uint8
        ):
            raise ValueError("images must be an (h, w, 3) uint8 array")
        if not 0 < self.series_number < 2**31:
            raise ValueError("series_number must be a positive IS value")
        if len(self.series_description) > 64:
            raise ValueError("series_description is longer than 64 characters")


def _ml(x: float) -> str:
    return f"{round_measurement(x):.1f} mL"


def _pct(x: float) -> str:
    return f"{round_measurement(x):.1f} %"


def result_lines(quant: Quantification, model: ModelIdentity) -> tuple[str, ...]:
    """The body lines of an analysed series' page (numbers rounded as in the SR)."""
    q = quant
    lines = [
        f"Triage: {q.triage.value.upper()}  (priority {q.triage.priority} of 5, 1 = read first),"
        f" severity score: {q.severity_score} / 25",
        f"Lung involved: total {_pct(q.percent_involvement.total)}   "
        f"right {_pct(q.percent_involvement.right)}, left {_pct(q.percent_involvement.left)}",
    ]
    for side in ("right", "left"):
        zones = [z for z in q.zones if z.lung == side]
        if zones:
            parts = ", ".join(f"{z.zone} {_pct(z.percent_involvement)}" for z in zones)
            lines.append(f"  {side.capitalize()} lung zones: {parts}")
    lines += [
        f"Lung volume: total {_ml(q.lung_volume_ml.total)}, right "
        f"{_ml(q.lung_volume_ml.right)}, left {_ml(q.lung_volume_ml.left)}",
        f"Lesion volume: total {_ml(q.lesion_volume_ml.total)}, ground-glass opacity "
        f"{_ml(q.lesion_volume_ml.ggo)}, consolidation {_ml(q.lesion_volume_ml.consolidation)}",
    ]
    if q.quality.reliable:
        lines.append("Quality checks: lung segmentation passed every check")
    else:
        lines.append(f"!NEEDS A HUMAN: {q.quality.summary}")
    lines.append(f"Model: {model.name} {model.version}  (sha256 {model.sha256[:16]})")
    lines.append(f"Software: {codes.MANUFACTURER} {codes.SOFTWARE_VERSION}")
    return tuple(lines)


def result_page(
    *,
    source: Sequence[Dataset],
    hu: npt.NDArray[np.int16] | npt.NDArray[np.float32],
    segmentation: Segmentation,
    quant: Quantification,
    model: ModelIdentity,
) -> SummaryPage:
    """The summary page of an analysed series (key axial + coronal images, the numbers)."""
    montage = kov.preview_montage(
        hu,
        segmentation.lungs,
        segmentation.lesions,
        segmentation.spacing,
        n_axial=2,
        tile_height=TILE_HEIGHT,
    )
    fit = PAGE_WIDTH - 2 * _MARGIN
    if montage.shape[1] > fit:  # one page width, so the numbers stay legible on screen
        height = max(1, round(montage.shape[0] * fit / montage.shape[1]))
        resized = Image.fromarray(montage, mode="RGB").resize(
            (fit, height), Image.Resampling.LANCZOS
        )
        montage = np.asarray(resized, dtype=np.uint8)
    middle = len(source) // 2
    return SummaryPage(
        header=source[middle],
        title="AI chest CT summary: lungs, ground-glass opacity, consolidation",
        lines=result_lines(quant, model),
        images=montage,
        references=(source[middle],),
        model=model,
    )


def declined_page(
    *, header: Dataset, reason: str, model: ModelIdentity, needs_human: bool = False
) -> SummaryPage:
    """The page of a study that was not analysed ("NOT ANALYSED: REASON")."""
    verdict = "NEEDS A HUMAN" if needs_human else "NOT ANALYSED"
    return SummaryPage(
        header=header,
        title=f"AI chest CT triage: {verdict.lower()}",
        lines=(
            f"!{verdict}: {reason}",
            "No AI result exists for this study; read it as usual.",
            f"Software: {codes.MANUFACTURER} {codes.SOFTWARE_VERSION}, "
            f"model {model.algorithm_label}",
        ),
        images=None,
        references=(header,),
        model=model,
        series_description=DECLINED_DESCRIPTION,
    )


def render_page(page: SummaryPage) -> npt.NDArray[np.uint8]:
    """Draw ``page`` as one RGB image (title, images, body, disclaimer)."""
    width = max(PAGE_WIDTH, 0 if page.images is None else page.images.shape[1] + 2 * _MARGIN)
    font, title_font = _font(_FONT_SIZE), _font(_FONT_SIZE + 6)
    text_width = width - 2 * _MARGIN
    body: list[tuple[str, bool]] = []
    for line in page.lines:
        warn = line.startswith("!")
        text = line[1:] if warn else line
        indent = "  " if text.startswith("  ") else ""
        wrapped = _wrap(text, font, text_width)
        body += [(("" if i == 0 else indent + "  ") + w, warn) for i, w in enumerate(wrapped)]
    disclaimer = _wrap(DISCLAIMER, font, text_width)
    step = _FONT_SIZE + 8
    title_h = _FONT_SIZE + 6 + 16
    images_h = 0 if page.images is None else page.images.shape[0] + 12
    height = _MARGIN + title_h + images_h + step * (len(body) + len(disclaimer) + 1) + _MARGIN
    height += height % 2  # even, like most captured pages
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    y = _MARGIN
    draw.text((_MARGIN, y), page.title, fill=(255, 255, 255), font=title_font)
    y += title_h
    if page.images is not None:
        canvas.paste(Image.fromarray(page.images, mode="RGB"), (_MARGIN, y))
        y += images_h
    for text, warn in body:
        draw.text((_MARGIN, y), text, fill=(255, 90, 60) if warn else (230, 230, 230), font=font)
        y += step
    y += step
    for text in disclaimer:
        draw.text((_MARGIN, y), text, fill=(255, 200, 60), font=font)
        y += step
    return np.asarray(canvas, dtype=np.uint8)


def write_summary(page: SummaryPage) -> Dataset:
    """The summary page as one Secondary Capture Image instance (PS3.3 A.8.1).

    Returns
    -------
    pydicom.dataset.Dataset
        A new series with one instance, Instance Number 1, in the study of ``page.header``;
        the page's text is also in Image Comments (the disclaimer first), so it can be read
        without looking at the pixels.
    """
    rgb = render_page(page)
    ds = secondary_capture(
        page.header,
        rgb,
        series_uid=hd.UID(),
        series_number=page.series_number,
        instance_number=1,
        model=page.model,
        now=_dt.datetime.now(),
        series_description=page.series_description,
        derivation_description=f"{page.title}. "
        + " ".join(line.lstrip("!") for line in page.lines),
        references=page.references,
    )
    ds.BurnedInAnnotation = "NO"  # numbers only; no patient identifier is drawn
    ds.PatientOrientation = None  # axial and coronal tiles on one page
    ds.ImageComments = (DISCLAIMER + " " + " ".join(line.lstrip("!") for line in page.lines))[
        :10240
    ]
    logger.info("summary page built: %dx%d", rgb.shape[1], rgb.shape[0])
    return ds
