"""Quantification of a :class:`~ct_triage.models.segmentation.Segmentation`.

Definitions (DESIGN.md, "quantify"):

* lung volume: voxels of each lung, lesions included, times the voxel volume (mL);
* lesion volume: ground-glass opacity (GGO) and consolidation voxels inside the lungs (mL);
* percent involvement of a lung: lesion volume inside that lung / that lung's volume x 100
  (the same definition as ``truth.npz``, whose ``lung_mask`` covers the lesions);
* zones: each lung split into thirds (upper / middle / lower) along its own cranio-caudal
  extent;
* severity score (0-25 style, after the 5-lobe visual CT severity score of Pan et al.,
  Radiology 2020): five lobe-equivalent regions (right lung: thirds; left lung: halves), each
  scored 0-5 from its percent involvement (0: none, 1: <5 %, 2: 5-25 %, 3: 25-50 %,
  4: 50-75 %, 5: >75 %);
* triage category from total percent involvement with configurable thresholds.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from ct_triage.models.errors import StudyDeclined
from ct_triage.models.metrics import percent_of_lung
from ct_triage.models.quality import QualityReport
from ct_triage.models.segmentation import LesionLabel, LungLabel, Segmentation

logger = logging.getLogger(__name__)

#: Zone names, inferior to superior (z runs inferior -> superior).
_THIRDS = ("lower", "middle", "upper")
_HALVES = ("lower", "upper")


class TriageCategory(StrEnum):
    """Triage categories; :attr:`priority` 1 is read first.

    ``indeterminate`` means "needs a human": the quality gate
    (:mod:`ct_triage.models.quality`) found the lung segmentation unreliable, so the numbers
    cannot be trusted to say normal or mild. It is read right after ``severe``.
    """

    NORMAL = "normal"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"
    INDETERMINATE = "indeterminate"

    @property
    def priority(self) -> int:
        return {"severe": 1, "indeterminate": 2, "moderate": 3, "mild": 4, "normal": 5}[self.value]


@dataclass(frozen=True, slots=True)
class TriageThresholds:
    """Total percent involvement bounds of the categories (configurable).

    ``normal`` when the involvement is below ``mild_min_percent`` *and* the lesion volume is
    below ``mild_min_lesion_ml``; otherwise ``mild`` below ``moderate_min_percent``,
    ``moderate`` below ``severe_min_percent``, else ``severe``.

    The default ``mild_min_lesion_ml`` of 10 mL sits above the false-positive lesion volume
    the shipped model measured on lesion-free lungs (0.7 and 5.1 mL on two lesion-free
    phantoms; see ``models/MODEL_CARD.md``), so a healthy chest is triaged ``normal``; a site
    that wants small lesions flagged lowers it (``CT_TRIAGE_TRIAGE_MILD_MIN_LESION_ML``).
    """

    mild_min_percent: float = 0.5
    mild_min_lesion_ml: float = 10.0
    moderate_min_percent: float = 25.0
    severe_min_percent: float = 50.0

    def __post_init__(self) -> None:
        if not (
            0
            <= self.mild_min_percent
            <= self.moderate_min_percent
            <= self.severe_min_percent
            <= 100
        ):
            raise ValueError(
                "triage thresholds must satisfy 0 <= mild <= moderate <= severe <= 100, got "
                f"{self.mild_min_percent}, {self.moderate_min_percent}, {self.severe_min_percent}"
            )
        if self.mild_min_lesion_ml < 0:
            raise ValueError("mild_min_lesion_ml must be >= 0")


@dataclass(frozen=True, slots=True)
class Sided:
    """A value for the left lung, the right lung and both."""

    left: float
    right: float
    total: float


@dataclass(frozen=True, slots=True)
class LesionVolumes:
    """Lesion volume in mL, split by lesion class."""

    total: float
    ggo: float
    consolidation: float


@dataclass(frozen=True, slots=True)
class Zone:
    """Involvement of one zone (upper / middle / lower third) of one lung."""

    lung: str  # "left" | "right"
    zone: str  # "upper" | "middle" | "lower"
    lung_volume_ml: float
    lesion_volume_ml: float
    percent_involvement: float


@dataclass(frozen=True, slots=True)
class Quantification:
    """All numbers reported for one series. Volumes in mL, percentages 0-100."""

    lung_volume_ml: Sided
    lesion_volume_ml: LesionVolumes
    percent_involvement: Sided
    zones: tuple[Zone, ...]
    severity_score: int  # 0..25
    severity_regions: dict[str, int] = field(default_factory=dict)  # region -> 0..5
    triage: TriageCategory = TriageCategory.NORMAL
    quality: QualityReport = field(default_factory=QualityReport)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the quantitative part of ``report.json``)."""
        d = asdict(self)
        d["triage"] = {"category": self.triage.value, "priority": self.triage.priority}
        d["quality"] = self.quality.to_dict()
        d["zones"] = [asdict(z) for z in self.zones]
        return d


def severity_points(percent: float, has_lesion: bool = True) -> int:
    """Score 0-5 of one region from its percent involvement (Pan et al., Radiology 2020).

    Bins, following the integer ranges of the paper: 0 no lesion; 1 below 5 %; 2 from 5 % up
    to and including 25 %; 3 above 25 % and below 50 %; 4 from 50 % up to and including 75 %;
    5 above 75 %.

    Parameters
    ----------
    percent
        Percent involvement of the region, 0-100.
    has_lesion
        ``False`` when the region holds no lesion voxel (score 0 whatever ``percent``).
    """
    if not has_lesion or percent <= 0:
        return 0
    if percent < 5:
        return 1
    if percent <= 25:
        return 2
    if percent < 50:
        return 3
    if percent <= 75:
        return 4
    return 5


def quantify(
    segmentation: Segmentation,
    thresholds: TriageThresholds | None = None,
    quality: QualityReport | None = None,
) -> Quantification:
    """Quantify a segmentation (see the module docstring for the definitions).

    Parameters
    ----------
    segmentation
        Lungs (lesions included) and lesions. Lesion voxels outside the lungs (a broken
        contract) are ignored with a warning.
    thresholds
        Triage thresholds; defaults to :class:`TriageThresholds()`.
    quality
        The quality gate's verdict (:func:`ct_triage.models.quality.assess_quality`); any
        flag makes the triage :attr:`TriageCategory.INDETERMINATE` whatever the numbers.

    Returns
    -------
    Quantification
        Volumes in mL, percentages 0-100. A lung with no voxel (e.g. after pneumonectomy) has
        volume 0, percent 0 and zone/severity 0.

    Raises
    ------
    StudyDeclined
        When neither lung has a voxel (no lungs visible; normally declined earlier by
        :func:`ct_triage.models.lungs.check_contains_lungs`).
    ValueError
        On label values outside :class:`LungLabel` / :class:`LesionLabel`.
    """
    thresholds = thresholds or TriageThresholds()
    lungs = segmentation.lungs
    lesions = segmentation.lesions
    if lungs.size and int(lungs.max()) > max(LungLabel):
        raise ValueError(f"lung labels must be in 0..{max(LungLabel)}")
    if lesions.size and int(lesions.max()) > max(LesionLabel):
        raise ValueError(f"lesion labels must be in 0..{max(LesionLabel)}")
    voxel_ml = float(np.prod(segmentation.spacing)) / 1000.0
    counts = _slice_counts(lungs, lesions)  # (z, lung 0..2, lesion 0..2)
    stray = int(counts[:, 0, 1:].sum())
    if stray:
        logger.warning("quantify: %d lesion voxels outside the lungs ignored", stray)

    lung_vox = counts[:, 1:, :].sum(axis=2)  # (z, 2): right, left
    ggo_vox = counts[:, 1:, LesionLabel.GGO]
    cons_vox = counts[:, 1:, LesionLabel.CONSOLIDATION]
    if int(lung_vox.sum()) == 0:
        raise StudyDeclined("Series declined: no lungs visible (the lung segmentation is empty)")

    right, left = LungLabel.RIGHT - 1, LungLabel.LEFT - 1
    lung_ml = lung_vox.sum(axis=0) * voxel_ml
    lesion_per_lung = (ggo_vox + cons_vox).sum(axis=0)
    lesion_ml = lesion_per_lung * voxel_ml
    total_lung = float(lung_ml.sum())
    total_lesion = float(lesion_ml.sum())

    zones: list[Zone] = []
    regions: dict[str, int] = {}
    for name, col in (("right", right), ("left", left)):
        les_z = ggo_vox[:, col] + cons_vox[:, col]
        thirds = _split(lung_vox[:, col], les_z, 3)
        for zname, (lv, sv) in reversed(list(zip(_THIRDS, thirds, strict=True))):
            zones.append(
                Zone(
                    lung=name,
                    zone=zname,
                    lung_volume_ml=lv * voxel_ml,
                    lesion_volume_ml=sv * voxel_ml,
                    percent_involvement=_percent(sv, lv),
                )
            )
        parts, names = (
            (thirds, _THIRDS) if name == "right" else (_split(lung_vox[:, col], les_z, 2), _HALVES)
        )
        for pname, (lv, sv) in reversed(list(zip(names, parts, strict=True))):
            regions[f"{name}_{pname}"] = severity_points(_percent(sv, lv), sv > 0)

    percent_total = _percent(int(lesion_per_lung.sum()), int(lung_vox.sum()))
    return Quantification(
        lung_volume_ml=Sided(
            left=float(lung_ml[left]), right=float(lung_ml[right]), total=total_lung
        ),
        lesion_volume_ml=LesionVolumes(
            total=total_lesion,
            ggo=float(ggo_vox.sum()) * voxel_ml,
            consolidation=float(cons_vox.sum()) * voxel_ml,
        ),
        percent_involvement=Sided(
            left=_percent(int(lesion_per_lung[left]), int(lung_vox[:, left].sum())),
            right=_percent(int(lesion_per_lung[right]), int(lung_vox[:, right].sum())),
            total=percent_total,
        ),
        zones=tuple(zones),
        severity_score=sum(regions.values()),
        severity_regions=regions,
        triage=(
            TriageCategory.INDETERMINATE
            if quality is not None and not quality.reliable
            else _triage(percent_total, total_lesion, thresholds)
        ),
        quality=quality if quality is not None else QualityReport(),
    )


def _slice_counts(
    lungs: npt.NDArray[np.uint8], lesions: npt.NDArray[np.uint8]
) -> npt.NDArray[np.int64]:
    """Voxel counts per slice of every (lung label, lesion label) pair: ``(z, 3, 3)``."""
    code = lungs.astype(np.uint8) * np.uint8(3) + lesions.astype(np.uint8)
    nz = code.shape[0]
    flat = code.reshape(nz, -1)
    out = np.empty((nz, 9), dtype=np.int64)
    for z in range(nz):
        out[z] = np.bincount(flat[z], minlength=9)[:9]
    return out.reshape(nz, 3, 3)


def _split(
    lung_z: npt.NDArray[np.int64], lesion_z: npt.NDArray[np.int64], parts: int
) -> list[tuple[int, int]]:
    """(lung voxels, lesion voxels) of ``parts`` equal slabs of the lung's own z extent.

    Slabs are counted from the most inferior slice holding the lung; slice ``z`` goes to slab
    ``floor(parts * (z - z0) / n)`` where ``n`` is the number of slices from the first to the
    last slice with lung. An empty lung gives zero everywhere.
    """
    present = np.flatnonzero(lung_z)
    if present.size == 0:
        return [(0, 0)] * parts
    z0, z1 = int(present[0]), int(present[-1])
    n = z1 - z0 + 1
    slab = (parts * np.arange(n)) // n
    lung_sums = np.bincount(slab, weights=lung_z[z0 : z1 + 1], minlength=parts)
    lesion_sums = np.bincount(slab, weights=lesion_z[z0 : z1 + 1], minlength=parts)
    return [(int(lv), int(sv)) for lv, sv in zip(lung_sums, lesion_sums, strict=True)]


def _percent(lesion_voxels: int, lung_voxels: int) -> float:
    """:func:`~ct_triage.models.metrics.percent_of_lung`, 0 for a lung with no voxel."""
    return percent_of_lung(lesion_voxels, lung_voxels) or 0.0


def _triage(percent: float, lesion_ml: float, t: TriageThresholds) -> TriageCategory:
    if percent < t.mild_min_percent and lesion_ml < t.mild_min_lesion_ml:
        return TriageCategory.NORMAL
    if percent < t.moderate_min_percent:
        return TriageCategory.MILD
    if percent < t.severe_min_percent:
        return TriageCategory.MODERATE
    return TriageCategory.SEVERE
