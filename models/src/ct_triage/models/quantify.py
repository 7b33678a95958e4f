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

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from ct_triage.models.segmentation import Segmentation


class TriageCategory(str, Enum):
    """Triage categories; :attr:`priority` 1 is read first."""

    NORMAL = "normal"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"

    @property
    def priority(self) -> int:
        return {"severe": 1, "moderate": 2, "mild": 3, "normal": 4}[self.value]


@dataclass(frozen=True, slots=True)
class TriageThresholds:
    """Total percent involvement bounds of the categories (configurable).

    ``normal`` when the involvement is below ``mild_min_percent`` *and* the lesion volume is
    below ``mild_min_lesion_ml``; otherwise ``mild`` below ``moderate_min_percent``,
    ``moderate`` below ``severe_min_percent``, else ``severe``.
    """

    mild_min_percent: float = 0.5
    mild_min_lesion_ml: float = 1.0
    moderate_min_percent: float = 25.0
    severe_min_percent: float = 50.0

    def __post_init__(self) -> None:
        if not (
            0 <= self.mild_min_percent <= self.moderate_min_percent <= self.severe_min_percent <= 100
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the quantitative part of ``report.json``)."""
        d = asdict(self)
        d["triage"] = {"category": self.triage.value, "priority": self.triage.priority}
        d["zones"] = [asdict(z) for z in self.zones]
        return d


def quantify(
    segmentation: Segmentation, thresholds: TriageThresholds | None = None
) -> Quantification:
    """Quantify a segmentation (see the module docstring for the definitions)."""
    raise NotImplementedError  # implemented by the quantify work item
