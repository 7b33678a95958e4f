"""Quality gate after segmentation: are the lung masks fit to be quantified?

The percent of lung involved is lesion volume / lung volume. When the lungs are not found
whole, that ratio can look normal or mild while the study is anything but, so a study whose
lungs fail one of these checks is flagged, and its triage becomes ``indeterminate`` ("needs a
human"), never a silent normal or mild. The analysis still finishes: the numbers are written,
with the flags beside them.

Checks (each flag has a stable ``code`` and a one-line ``reason`` with the measured values):

``truncated``
    A lung touches the boundary of the reconstructed field of view (the image edge or the
    padding outside a reconstruction circle) over at least :data:`TRUNCATION_MIN_CM2` of its
    surface: part of it was not imaged.
``lung_missing``
    One lung is empty while the other is found.
``asymmetric``
    The smaller lung is below :data:`MIN_SIDE_RATIO` of the larger one (the right lung is
    normally about 10-20 % larger than the left; a collapsed or resected lung, or a
    segmentation failure, needs a human either way).
``low_volume``
    Less than :data:`MIN_ML_PER_CM` of lung per cm of the lungs' cranio-caudal extent (an
    adult chest holds 120-250 mL per cm even in expiration).
``coverage``
    The lungs span less than :data:`MIN_EXTENT_CM` cranio-caudally (a few slices).
``gaps``
    More than :data:`MAX_GAP_FRACTION` of the slices between the highest and the lowest
    lung slice have (almost) no lung: the lungs were not found on most chest slices.

Which situations decline instead (exit 2): a series with too little lung to be a chest CT
at all (:func:`ct_triage.models.lungs.check_contains_lungs`). Everything else is analysed
and flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ct_triage.models.lungs import field_of_view_boundary, outside_field_of_view
from ct_triage.models.segmentation import LungLabel, Segmentation
from ct_triage.models.volume import Volume

__all__ = [
    "MAX_GAP_FRACTION",
    "MIN_EXTENT_CM",
    "MIN_ML_PER_CM",
    "MIN_SIDE_RATIO",
    "TRUNCATION_MIN_CM2",
    "QualityFlag",
    "QualityReport",
    "assess_quality",
]

#: Lung surface on the field-of-view boundary (cm2) from which a lung is truncated.
TRUNCATION_MIN_CM2: float = 10.0
#: Smallest accepted ratio of the smaller lung's volume to the larger one's.
MIN_SIDE_RATIO: float = 0.5
#: Least lung volume (mL) per cm of the lungs' cranio-caudal extent.
MIN_ML_PER_CM: float = 50.0
#: Least cranio-caudal extent (cm) of the lungs: a few slices of lung base say nothing about
#: the lungs (sites may lower the slice minimum of series selection).
MIN_EXTENT_CM: float = 10.0
#: Largest accepted share of slices without lung between apex and base.
MAX_GAP_FRACTION: float = 0.1
_MIN_SLICE_AREA_MM2 = 100.0
_GRID_MM = 2.0
_SIDES = (("right", LungLabel.RIGHT), ("left", LungLabel.LEFT))


@dataclass(frozen=True, slots=True)
class QualityFlag:
    """One failed check: a stable code and a one-line reason with the measured values."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class QualityReport:
    """The quality gate's verdict on one segmentation."""

    flags: tuple[QualityFlag, ...] = ()

    @property
    def reliable(self) -> bool:
        """Whether the lung segmentation passed every check."""
        return not self.flags

    @property
    def summary(self) -> str:
        """One line for people: ``"lung segmentation unreliable: REASON; REASON"`` or ``""``."""
        if not self.flags:
            return ""
        return "lung segmentation unreliable: " + "; ".join(f.reason for f in self.flags)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``report.json`` → ``quality``)."""
        return {
            "lung_segmentation_reliable": self.reliable,
            "flags": [{"code": f.code, "reason": f.reason} for f in self.flags],
        }


def assess_quality(volume: Volume, segmentation: Segmentation) -> QualityReport:
    """Run the checks of the module docstring on a segmentation of ``volume``."""
    lungs = segmentation.lungs
    if lungs.shape != volume.shape:
        raise ValueError(f"lungs {lungs.shape} do not match the volume {volume.shape}")
    # every check works on a ~2 mm in-plane grid: volumes within a fraction of a percent,
    # 5-9x cheaper than the full grid
    f = max(1, round(_GRID_MM / max(volume.spacing[1], volume.spacing[2])))
    coarse = lungs[:, ::f, ::f]
    vox_ml = volume.voxel_volume_ml * f * f
    flags: list[QualityFlag] = []
    side_slices = {side: np.count_nonzero(coarse == label, axis=(1, 2)) for side, label in _SIDES}
    ml = {side: float(n.sum()) * vox_ml for side, n in side_slices.items()}
    truncated = _truncated_cm2(volume, coarse, f)
    cut = [f"{side} {cm2:.0f} cm2" for side, cm2 in truncated.items() if cm2 >= TRUNCATION_MIN_CM2]
    if cut:
        flags.append(
            QualityFlag(
                "truncated",
                "lungs cut by the field of view (" + ", ".join(cut) + " of lung surface on "
                "its edge)",
            )
        )
    small, large = sorted(ml.values())
    if large > 0 and small == 0:
        missing = min(ml, key=lambda s: ml[s])
        flags.append(QualityFlag("lung_missing", f"{missing} lung not found"))
    elif large > 0 and small / large < MIN_SIDE_RATIO:
        # the reason quotes the volumes of the report: counted on the full grid
        exact = {
            side: float(np.count_nonzero(lungs == label)) * volume.voxel_volume_ml
            for side, label in _SIDES
        }
        flags.append(
            QualityFlag(
                "asymmetric",
                f"one lung far smaller than the other (right {exact['right']:.0f} mL, "
                f"left {exact['left']:.0f} mL)",
            )
        )
    per_slice = side_slices["right"] + side_slices["left"]
    present = np.flatnonzero(per_slice)
    if present.size:
        z0, z1 = int(present[0]), int(present[-1])
        extent_cm = (z1 - z0 + 1) * volume.spacing[0] / 10.0
        total = ml["right"] + ml["left"]
        if extent_cm < MIN_EXTENT_CM:
            flags.append(
                QualityFlag(
                    "coverage",
                    f"lungs imaged over only {extent_cm:.1f} cm (a chest CT covers about "
                    f"25 cm; at least {MIN_EXTENT_CM:g} cm needed)",
                )
            )
        if extent_cm >= 5.0 and total / extent_cm < MIN_ML_PER_CM:
            flags.append(
                QualityFlag(
                    "low_volume",
                    f"too little lung for its extent ({total:.0f} mL over {extent_cm:.0f} cm, "
                    f"expected >= {MIN_ML_PER_CM:g} mL/cm)",
                )
            )
        area = per_slice[z0 : z1 + 1] * (volume.spacing[1] * volume.spacing[2] * f * f)
        empty = int(np.count_nonzero(area < _MIN_SLICE_AREA_MM2))
        if empty > MAX_GAP_FRACTION * area.size:
            flags.append(
                QualityFlag(
                    "gaps",
                    f"lungs not found on {empty} of {area.size} slices between apex and base",
                )
            )
    return QualityReport(tuple(flags))


def _truncated_cm2(volume: Volume, coarse: npt.NDArray[np.uint8], f: int) -> dict[str, float]:
    """Lung surface (cm2) lying on the field-of-view boundary, per lung.

    The boundary is the one the lung segmentation uses
    (:func:`ct_triage.models.lungs.field_of_view_boundary`): the image frame and the ring
    inside the padding outside a reconstruction circle, plus the padding.
    """
    result = {"right": 0.0, "left": 0.0}
    if not coarse.any():
        return result
    zs = np.flatnonzero(coarse.any(axis=(1, 2)))
    sub = coarse[zs[0] : zs[-1] + 1]
    pad = outside_field_of_view(volume.hu[zs[0] : zs[-1] + 1, ::f, ::f])
    # the padding itself counts too: the lung labels' boundary band, re-decided on the full
    # grid by HU, can reach one voxel into it
    edge = field_of_view_boundary(pad) | pad
    # one boundary voxel is a strip of (pixel size x slice spacing) of lung surface
    strip_cm2 = float(np.mean(volume.spacing[1:])) * f * volume.spacing[0] / 100.0
    for side, label in _SIDES:
        result[side] = float(np.count_nonzero(edge & (sub == label))) * strip_cm2
    return result
