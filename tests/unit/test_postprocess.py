"""combine(): lesions restricted to the lungs, small components dropped, lungs grown."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import pytest

from ct_triage.models.postprocess import combine
from ct_triage.models.segmentation import LesionLabel, LungLabel
from ct_triage.models.volume import Volume

SPACING = (2.0, 1.0, 1.0)  # 2 mm^3 voxels: 0.05 mL = 25 voxels


def _case() -> tuple[Volume, npt.NDArray[np.uint8]]:
    volume = Volume(np.zeros((20, 60, 80), dtype=np.int16), SPACING)
    lungs = np.zeros(volume.shape, dtype=np.uint8)
    lungs[2:18, 10:50, 5:35] = LungLabel.RIGHT
    lungs[2:18, 10:50, 45:75] = LungLabel.LEFT
    return volume, lungs


def test_lesions_inside_lungs_are_kept_and_lungs_unchanged() -> None:
    volume, lungs = _case()
    lesions = np.zeros_like(lungs)
    lesions[5:8, 20:30, 10:20] = LesionLabel.GGO
    lesions[10:12, 20:30, 50:60] = LesionLabel.CONSOLIDATION
    seg = combine(volume, lungs, lesions)
    np.testing.assert_array_equal(seg.lesions, lesions)
    np.testing.assert_array_equal(seg.lungs, lungs)
    assert seg.spacing == SPACING


def test_subpleural_lesion_outside_the_lungs_joins_the_nearest_lung() -> None:
    volume, lungs = _case()
    lesions = np.zeros_like(lungs)
    # consolidation bulging 4 mm outside the left lung's lateral surface (x 75..78)
    lesions[8:12, 20:30, 70:79] = LesionLabel.CONSOLIDATION
    seg = combine(volume, lungs, lesions)
    np.testing.assert_array_equal(seg.lesions, lesions)
    assert (seg.lungs[8:12, 20:30, 75:79] == LungLabel.LEFT).all()
    assert np.count_nonzero(seg.lungs) == np.count_nonzero(lungs) + 4 * 10 * 4
    assert not np.any((seg.lesions > 0) & (seg.lungs == 0))


def test_far_lesion_voxels_are_dropped() -> None:
    volume, lungs = _case()
    lesions = np.zeros_like(lungs)
    lesions[8:12, 52:60, 20:30] = LesionLabel.GGO  # 3..10 mm below the right lung (y 49)
    seg = combine(volume, lungs, lesions, margin_mm=5.0, min_lung_fraction=0.0)
    kept_rows = np.flatnonzero(seg.lesions.any(axis=(0, 2)))
    assert kept_rows.min() == 52  # within 5 mm of row 49
    assert kept_rows.max() == 54
    assert (seg.lungs[8:12, 52:55, 20:30] == LungLabel.RIGHT).all()
    assert not seg.lungs[:, 55:].any()


def test_components_outside_the_lungs_are_removed() -> None:
    """A blob entirely outside the lungs (e.g. in the mediastinum) is not a lung lesion."""
    volume, lungs = _case()
    lesions = np.zeros_like(lungs)
    lesions[8:12, 50:53, 20:30] = LesionLabel.CONSOLIDATION  # just below the lung, all outside
    lesions[8:12, 46:52, 40:50] = LesionLabel.CONSOLIDATION  # straddles the lung edge (row 49)
    seg = combine(volume, lungs, lesions, margin_mm=10.0)
    assert not seg.lesions[8:12, 50:53, 20:30].any()
    assert (seg.lesions[8:12, 46:52, 40:50] == LesionLabel.CONSOLIDATION).all()
    kept = combine(volume, lungs, lesions, margin_mm=10.0, min_lung_fraction=0.0)
    assert kept.lesions[8:12, 50:53, 20:30].all()


def test_a_large_component_with_enough_lung_inside_is_kept() -> None:
    """Dense consolidation of a collapsed lobe lies mostly outside the aerated lungs: a
    component with ``min_lung_ml`` inside the lungs is kept whatever its fraction."""
    volume, lungs = _case()
    lesions = np.zeros_like(lungs)
    # one row inside the right lung (row 49: 12 x 30 voxels = 0.72 mL), ten rows below it
    lesions[4:16, 49:60, 5:35] = LesionLabel.CONSOLIDATION  # 1/11 = 9 % inside
    dropped = combine(volume, lungs, lesions, min_lung_ml=1.0)
    assert not dropped.lesions.any()
    kept = combine(volume, lungs, lesions, min_lung_ml=0.5)
    np.testing.assert_array_equal(kept.lesions, lesions)
    assert (kept.lungs[4:16, 49:60, 5:35] == LungLabel.RIGHT).all()
    assert not combine(volume, lungs, lesions).lesions.any()  # default 5 mL


def test_small_components_are_removed() -> None:
    volume, lungs = _case()
    lesions = np.zeros_like(lungs)
    lesions[5, 20:25, 10:14] = LesionLabel.GGO  # 20 voxels = 0.04 mL < 0.05
    lesions[10, 20:25, 10:15] = LesionLabel.GGO  # 25 voxels = 0.05 mL, kept
    seg = combine(volume, lungs, lesions)
    assert not seg.lesions[5].any()
    assert np.count_nonzero(seg.lesions) == 25
    kept_all = combine(volume, lungs, lesions, min_lesion_ml=0.0)
    assert np.count_nonzero(kept_all.lesions) == 45


def test_mixed_classes_form_one_component() -> None:
    volume, lungs = _case()
    lesions = np.zeros_like(lungs)
    lesions[5, 20:25, 10:13] = LesionLabel.GGO  # 15 voxels
    lesions[5, 20:25, 13:15] = LesionLabel.CONSOLIDATION  # 10 voxels: 25 together
    seg = combine(volume, lungs, lesions)
    assert np.count_nonzero(seg.lesions == LesionLabel.GGO) == 15
    assert np.count_nonzero(seg.lesions == LesionLabel.CONSOLIDATION) == 10


def test_no_lungs_drops_all_lesions() -> None:
    volume, lungs = _case()
    lesions = np.ones_like(lungs)
    seg = combine(volume, np.zeros_like(lungs), lesions)
    assert not seg.lesions.any()
    assert not seg.lungs.any()


def test_inputs_are_not_modified() -> None:
    volume, lungs = _case()
    lesions = np.zeros_like(lungs)
    lesions[8:12, 20:30, 70:79] = LesionLabel.CONSOLIDATION
    before = (lungs.copy(), lesions.copy())
    combine(volume, lungs, lesions)
    np.testing.assert_array_equal(lungs, before[0])
    np.testing.assert_array_equal(lesions, before[1])


@pytest.mark.parametrize(
    ("lungs_value", "lesion_value", "shape", "match"),
    [
        (0, 0, (1, 2, 3), "must match"),
        (3, 0, None, "lung labels"),
        (0, 3, None, "lesion classes"),
    ],
)
def test_validation(
    lungs_value: int, lesion_value: int, shape: tuple[int, int, int] | None, match: str
) -> None:
    volume, lungs = _case()
    lungs[0, 0, 0] = lungs_value
    lesions = np.zeros(shape or lungs.shape, dtype=np.uint8)
    lesions.reshape(-1)[0] = lesion_value
    with pytest.raises(ValueError, match=match):
        combine(volume, lungs, lesions)
    with pytest.raises(ValueError, match=">= 0"):
        combine(volume, _case()[1], np.zeros_like(lungs), margin_mm=-1.0)


def test_full_size_speed() -> None:
    shape = (300, 512, 512)
    volume = Volume(np.zeros(shape, dtype=np.int16), (1.0, 0.7, 0.7))
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[20:280, 100:400, 60:240] = LungLabel.RIGHT
    lungs[40:280, 100:400, 270:450] = LungLabel.LEFT
    lesions = np.zeros(shape, dtype=np.uint8)
    lesions[100:150, 200:300, 230:250] = LesionLabel.CONSOLIDATION  # crosses the right surface
    lesions[200:210, 150:160, 300:310] = LesionLabel.GGO
    start = time.perf_counter()
    seg = combine(volume, lungs, lesions)
    elapsed = time.perf_counter() - start
    assert (seg.lungs[100:150, 200:300, 240:250] == LungLabel.RIGHT).all()
    assert elapsed < 10.0  # ~1-2 s measured on 2 cores


def test_contrast_filled_vessel_is_not_lesion() -> None:
    """Lesion voxels above MAX_LESION_HU (contrast-filled vessels, bone) are dropped."""
    hu = np.full((3, 40, 40), -850, dtype=np.int16)
    lungs = np.zeros(hu.shape, dtype=np.uint8)
    lungs[:, 5:35, 5:35] = LungLabel.RIGHT
    lesions = np.zeros(hu.shape, dtype=np.uint8)
    lesions[:, 10:20, 10:20] = LesionLabel.CONSOLIDATION
    hu[:, 10:20, 10:15] = 450  # a contrast-filled vessel
    hu[:, 10:20, 15:20] = 40  # consolidation
    volume = Volume(hu=hu, spacing=(2.0, 2.0, 2.0))
    seg = combine(volume, lungs, lesions)
    assert not seg.lesions[:, 10:20, 10:15].any()
    assert (seg.lesions[:, 10:20, 15:20] == LesionLabel.CONSOLIDATION).all()
    kept = combine(volume, lungs, lesions, max_lesion_hu=None)
    assert (kept.lesions[:, 10:20, 10:20] == LesionLabel.CONSOLIDATION).all()
