"""Exact quantification on hand-built label maps."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import pytest

from ct_triage.models.errors import StudyDeclined
from ct_triage.models.quality import QualityFlag, QualityReport
from ct_triage.models.quantify import (
    TriageCategory,
    TriageThresholds,
    quantify,
    severity_points,
)
from ct_triage.models.segmentation import LesionLabel, LungLabel, Segmentation

SPACING = (2.0, 0.5, 0.5)  # one voxel = 0.5 mm^3 = 0.0005 mL
VOX_ML = 0.0005


def _blocks() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Right lung: a 9x10x10 block at z 0..8; left lung: a 6x10x10 block at z 3..8."""
    lungs = np.zeros((10, 10, 20), dtype=np.uint8)
    lungs[0:9, :, 0:10] = LungLabel.RIGHT
    lungs[3:9, :, 10:20] = LungLabel.LEFT
    return lungs, np.zeros_like(lungs)


def test_volumes_and_percent_are_exact() -> None:
    lungs, lesions = _blocks()
    lesions[0, :, 0:10] = LesionLabel.GGO  # 100 voxels, right lower third
    lesions[8, 0:5, 0:10] = LesionLabel.CONSOLIDATION  # 50 voxels, right upper third
    lesions[3, 0:2, 10:20] = LesionLabel.GGO  # 20 voxels, left lower
    q = quantify(Segmentation(lungs, lesions, SPACING))
    assert q.lung_volume_ml.right == pytest.approx(900 * VOX_ML)
    assert q.lung_volume_ml.left == pytest.approx(600 * VOX_ML)
    assert q.lung_volume_ml.total == pytest.approx(1500 * VOX_ML)
    assert q.lesion_volume_ml.total == pytest.approx(170 * VOX_ML)
    assert q.lesion_volume_ml.ggo == pytest.approx(120 * VOX_ML)
    assert q.lesion_volume_ml.consolidation == pytest.approx(50 * VOX_ML)
    assert q.percent_involvement.right == pytest.approx(100 * 150 / 900)
    assert q.percent_involvement.left == pytest.approx(100 * 20 / 600)
    assert q.percent_involvement.total == pytest.approx(100 * 170 / 1500)


def test_zones_follow_each_lungs_own_extent() -> None:
    lungs, lesions = _blocks()
    lesions[2, :, 0:10] = LesionLabel.GGO  # right z 0..8: thirds 0-2 | 3-5 | 6-8 -> lower
    lesions[3, :, 0:10] = LesionLabel.GGO  # -> right middle
    lesions[4, :, 10:20] = LesionLabel.GGO  # left z 3..8: thirds 3-4 | 5-6 | 7-8 -> lower
    lesions[5, :, 10:20] = LesionLabel.GGO  # -> left middle
    q = quantify(Segmentation(lungs, lesions, SPACING))
    zones = {(z.lung, z.zone): z for z in q.zones}
    assert [(z.lung, z.zone) for z in q.zones] == [
        ("right", "upper"),
        ("right", "middle"),
        ("right", "lower"),
        ("left", "upper"),
        ("left", "middle"),
        ("left", "lower"),
    ]
    for zone in ("upper", "middle", "lower"):
        assert zones[("right", zone)].lung_volume_ml == pytest.approx(300 * VOX_ML)
        assert zones[("left", zone)].lung_volume_ml == pytest.approx(200 * VOX_ML)
    assert zones[("right", "lower")].lesion_volume_ml == pytest.approx(100 * VOX_ML)
    assert zones[("right", "middle")].percent_involvement == pytest.approx(100 / 3)
    assert zones[("right", "upper")].lesion_volume_ml == 0
    assert zones[("left", "lower")].percent_involvement == pytest.approx(50.0)
    assert zones[("left", "middle")].percent_involvement == pytest.approx(50.0)
    assert zones[("left", "upper")].percent_involvement == 0
    # severity: right thirds 100/300 -> 3, 100/300 -> 3, 0; left halves (z 3-5 | 6-8):
    # lower 200/300 -> 4, upper 0
    assert q.severity_regions == {
        "right_upper": 0,
        "right_middle": 3,
        "right_lower": 3,
        "left_upper": 0,
        "left_lower": 4,
    }
    assert q.severity_score == 10


@pytest.mark.parametrize(
    ("percent", "points"),
    [
        (0.0, 0),
        (1e-9, 1),
        (4.999, 1),
        (5.0, 2),
        (25.0, 2),
        (25.001, 3),
        (49.999, 3),
        (50.0, 4),
        (75.0, 4),
        (75.001, 5),
        (100.0, 5),
    ],
)
def test_severity_bins_at_their_edges(percent: float, points: int) -> None:
    assert severity_points(percent) == points


def test_severity_zero_without_lesion() -> None:
    assert severity_points(10.0, has_lesion=False) == 0


def test_full_involvement_scores_25() -> None:
    lungs, _ = _blocks()
    lesions = np.where(lungs > 0, LesionLabel.CONSOLIDATION, 0).astype(np.uint8)
    q = quantify(Segmentation(lungs, lesions, SPACING))
    assert q.severity_score == 25
    assert q.percent_involvement.total == pytest.approx(100.0)
    assert q.triage is TriageCategory.SEVERE


def _with_percent(percent_voxels: int) -> Segmentation:
    """1000-voxel lung (one lung), ``percent_voxels`` lesion voxels, 1 mL voxels."""
    lungs = np.zeros((10, 10, 10), dtype=np.uint8)
    lungs[:] = LungLabel.RIGHT
    lesions = np.zeros_like(lungs)
    lesions.reshape(-1)[:percent_voxels] = LesionLabel.GGO
    return Segmentation(lungs, lesions, (10.0, 10.0, 10.0))


@pytest.mark.parametrize(
    ("n_lesion", "category"),
    [
        (0, TriageCategory.NORMAL),
        (4, TriageCategory.NORMAL),  # 0.4 % and 4 mL < 10 mL
        (5, TriageCategory.MILD),  # 0.5 %
        (249, TriageCategory.MILD),
        (250, TriageCategory.MODERATE),
        (499, TriageCategory.MODERATE),
        (500, TriageCategory.SEVERE),
    ],
)
def test_triage_thresholds(n_lesion: int, category: TriageCategory) -> None:
    assert quantify(_with_percent(n_lesion)).triage is category


def test_triage_small_lesion_is_normal_and_thresholds_configurable() -> None:
    seg = _with_percent(4)  # 0.4 %, 4 mL
    assert quantify(seg).triage is TriageCategory.NORMAL
    sensitive = TriageThresholds(mild_min_lesion_ml=1.0)
    assert quantify(seg, sensitive).triage is TriageCategory.MILD
    custom = TriageThresholds(
        mild_min_percent=0.1, moderate_min_percent=0.2, severe_min_percent=0.3
    )
    assert quantify(seg, custom).triage is TriageCategory.SEVERE
    assert quantify(seg, sensitive).triage.priority == 4
    assert quantify(seg).triage.priority == 5


def test_quality_flags_make_the_triage_indeterminate() -> None:
    """A flagged segmentation is never a silent normal: it needs a human (priority 2)."""
    seg = _with_percent(4)
    flagged = QualityReport((QualityFlag("truncated", "lungs cut by the field of view"),))
    q = quantify(seg, quality=flagged)
    assert q.triage is TriageCategory.INDETERMINATE
    assert q.triage.priority == 2
    assert q.percent_involvement == quantify(seg).percent_involvement  # numbers still given
    d = q.to_dict()
    assert d["quality"] == {
        "lung_segmentation_reliable": False,
        "flags": [{"code": "truncated", "reason": "lungs cut by the field of view"}],
    }
    assert quantify(seg, quality=QualityReport()).triage is TriageCategory.NORMAL
    order = sorted(TriageCategory, key=lambda c: c.priority)
    assert [c.value for c in order] == ["severe", "indeterminate", "moderate", "mild", "normal"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mild_min_percent": 30.0, "moderate_min_percent": 25.0},
        {"severe_min_percent": 101.0},
        {"mild_min_percent": -1.0},
        {"mild_min_lesion_ml": -0.1},
    ],
)
def test_thresholds_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        TriageThresholds(**kwargs)


def test_one_empty_lung_gives_zero_percent() -> None:
    lungs, lesions = _blocks()
    lungs[lungs == LungLabel.LEFT] = 0
    lesions[0, 0, 0] = LesionLabel.GGO
    q = quantify(Segmentation(lungs, lesions, SPACING))
    assert q.lung_volume_ml.left == 0
    assert q.percent_involvement.left == 0
    assert all(z.percent_involvement == 0 for z in q.zones if z.lung == "left")
    assert q.severity_regions["left_upper"] == q.severity_regions["left_lower"] == 0
    assert q.severity_regions["right_lower"] == 1


def test_no_lungs_is_declined() -> None:
    empty = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(StudyDeclined, match="no lungs visible"):
        quantify(Segmentation(empty, empty.copy(), SPACING))


def test_lesions_outside_lungs_are_ignored() -> None:
    lungs, lesions = _blocks()
    lungs[9] = 0
    lesions[9] = LesionLabel.GGO
    q = quantify(Segmentation(lungs, lesions, SPACING))
    assert q.lesion_volume_ml.total == 0


def test_bad_labels_raise() -> None:
    lungs, lesions = _blocks()
    lungs[0, 0, 0] = 3
    with pytest.raises(ValueError, match="lung labels"):
        quantify(Segmentation(lungs, lesions, SPACING))


def test_to_dict_is_json_ready() -> None:
    lungs, lesions = _blocks()
    lesions[0, 0, 0] = LesionLabel.GGO
    d = quantify(Segmentation(lungs, lesions, SPACING)).to_dict()
    assert d["triage"] == {"category": "normal", "priority": 5}
    assert len(d["zones"]) == 6
    assert set(d["lung_volume_ml"]) == {"left", "right", "total"}


def test_fast_on_a_full_size_volume() -> None:
    shape = (300, 512, 512)
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[20:280, 100:400, 60:240] = LungLabel.RIGHT
    lungs[40:280, 100:400, 270:450] = LungLabel.LEFT
    lesions = np.zeros(shape, dtype=np.uint8)
    lesions[100:150, 200:300, 100:200] = LesionLabel.GGO
    seg = Segmentation(lungs, lesions, (1.0, 0.7, 0.7))
    start = time.perf_counter()
    q = quantify(seg)
    elapsed = time.perf_counter() - start
    assert q.lesion_volume_ml.ggo == pytest.approx(50 * 100 * 100 * 0.49 / 1000)
    assert elapsed < 2.0  # ~0.3 s on 2 cores; generous for loaded CI machines


def test_report_evaluation_and_phantom_truth_share_one_percent_involved() -> None:
    """quantify's percentages equal those of metrics.percent_involved, exactly (issue 20)."""
    from ct_triage.models.metrics import percent_involved, percent_of_lung

    rng = np.random.default_rng(20)
    lungs, _ = _blocks()
    labels = (rng.random(lungs.shape) < 0.3) * rng.integers(1, 3, lungs.shape)
    lesions = np.where(lungs > 0, labels, 0).astype(np.uint8)
    q = quantify(Segmentation(lungs, lesions, SPACING))
    assert q.percent_involvement.right == percent_involved(lesions, lungs == LungLabel.RIGHT)
    assert q.percent_involvement.left == percent_involved(lesions, lungs == LungLabel.LEFT)
    assert q.percent_involvement.total == percent_involved(lesions, lungs)
    assert percent_of_lung(3, 0) is None
    assert percent_of_lung(0, 7) == 0.0
    assert percent_of_lung(1, 8) == 12.5
