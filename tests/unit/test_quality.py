"""The quality gate (``ct_triage.models.quality``) on hand-made lungs with known geometry."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from ct_triage.models.quality import QualityReport, assess_quality
from ct_triage.models.segmentation import LungLabel, Segmentation
from ct_triage.models.volume import Volume

SPACING = (5.0, 2.0, 2.0)  # z, y, x mm
SHAPE = (40, 160, 200)  # 20 cm of z, 32 x 40 cm in-plane


def _chest(
    *,
    right_half_width: int = 30,
    left_half_width: int = 30,
    x_shift: int = 0,
    circle_radius: int | None = None,
    missing_slices: tuple[int, ...] = (),
) -> tuple[Volume, Segmentation]:
    """Soft tissue with two elliptic-cylinder lungs at -850 HU, air outside a body ellipse."""
    _z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cy, cx = SHAPE[1] / 2, SHAPE[2] / 2 + x_shift
    hu = np.full(SHAPE, -1000, dtype=np.int16)
    body = ((y - cy) / 70) ** 2 + ((x - cx) / 90) ** 2 <= 1
    hu[body] = 40
    lungs = np.zeros(SHAPE, dtype=np.uint8)
    right = ((y - cy) / 45) ** 2 + ((x - (cx - 42)) / right_half_width) ** 2 <= 1
    left = ((y - cy) / 45) ** 2 + ((x - (cx + 42)) / left_half_width) ** 2 <= 1
    lungs[right] = LungLabel.RIGHT
    lungs[left] = LungLabel.LEFT
    lungs[list(missing_slices)] = 0
    hu[lungs > 0] = -850
    if circle_radius is not None:
        outside = (y - SHAPE[1] / 2) ** 2 + (x - SHAPE[2] / 2) ** 2 > circle_radius**2
        hu[outside] = -1024
        lungs[outside] = 0
    volume = Volume(hu=hu, spacing=SPACING)
    return volume, Segmentation(lungs, np.zeros(SHAPE, dtype=np.uint8), SPACING)


def _codes(report: QualityReport) -> set[str]:
    return {f.code for f in report.flags}


def test_whole_lungs_pass() -> None:
    volume, seg = _chest()
    report = assess_quality(volume, seg)
    assert report.reliable
    assert report.summary == ""
    assert report.to_dict() == {"lung_segmentation_reliable": True, "flags": []}


def test_reconstruction_circle_cutting_the_lungs_is_truncation() -> None:
    volume, seg = _chest(circle_radius=60)
    report = assess_quality(volume, seg)
    assert "truncated" in _codes(report)
    assert report.summary.startswith("lung segmentation unreliable: lungs cut by the field")


def test_image_edge_cutting_a_lung_is_truncation_of_that_lung() -> None:
    volume, seg = _chest(x_shift=60)  # the left lung runs off the right image edge
    reasons = {f.code: f.reason for f in assess_quality(volume, seg).flags}
    assert "truncated" in reasons
    assert "left" in reasons["truncated"]
    assert "right" not in reasons["truncated"]


def test_clipped_air_inside_a_lung_is_not_truncation() -> None:
    volume, seg = _chest()
    hu = volume.hu.copy()
    hu[:, 78:84, 60:66] = -1024  # a clipped bulla inside the right lung, away from the frame
    assert assess_quality(Volume(hu=hu, spacing=SPACING), seg).reliable


def test_one_lung_much_smaller_is_flagged() -> None:
    volume, seg = _chest(right_half_width=12)
    report = assess_quality(volume, seg)
    assert _codes(report) == {"asymmetric"}
    assert "right" in report.flags[0].reason
    assert "mL" in report.flags[0].reason


def test_one_lung_missing_is_flagged() -> None:
    volume, seg = _chest()
    lungs = np.where(seg.lungs == LungLabel.LEFT, 0, seg.lungs).astype(np.uint8)
    report = assess_quality(volume, Segmentation(lungs, seg.lesions, SPACING))
    assert "lung_missing" in _codes(report)
    assert report.flags[0].reason == "left lung not found"


def test_lungs_missing_on_many_slices_are_flagged() -> None:
    volume, seg = _chest(missing_slices=tuple(range(10, 20)))
    assert "gaps" in _codes(assess_quality(volume, seg))


def test_too_little_lung_for_the_extent_is_flagged() -> None:
    volume, seg = _chest(right_half_width=4, left_half_width=4)
    codes = _codes(assess_quality(volume, seg))
    assert "low_volume" in codes


@pytest.mark.parametrize("bad", [(1, 2, 3), (40, 160, 199)])
def test_shape_mismatch_is_an_error(bad: tuple[int, int, int]) -> None:
    volume, _ = _chest()
    lungs: npt.NDArray[np.uint8] = np.zeros(bad, dtype=np.uint8)
    with pytest.raises(ValueError, match="do not match"):
        assess_quality(volume, Segmentation(lungs, lungs.copy(), SPACING))


def test_a_few_slices_of_lung_are_too_little_coverage() -> None:
    volume, seg = _chest()
    few = Volume(hu=volume.hu[:3], spacing=SPACING)
    report = assess_quality(few, Segmentation(seg.lungs[:3], seg.lesions[:3], SPACING))
    assert _codes(report) == {"coverage"}
    assert "1.5 cm" in report.flags[0].reason
