"""Label maps produced by postprocessing and consumed by quantify and the writers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt


class LungLabel(IntEnum):
    """Values of :attr:`Segmentation.lungs`."""

    BACKGROUND = 0
    RIGHT = 1
    LEFT = 2


class LesionLabel(IntEnum):
    """Values of :attr:`Segmentation.lesions` (same as ``lesion_class`` in truth ``.npz``)."""

    NONE = 0
    GGO = 1
    CONSOLIDATION = 2


@dataclass(frozen=True, slots=True)
class Segmentation:
    """Lung and lesion label maps on the grid of the source :class:`Volume`.

    Parameters
    ----------
    lungs
        ``uint8`` ``(z, y, x)``: :class:`LungLabel`. The lungs *include* the lesions.
    lesions
        ``uint8`` ``(z, y, x)``: :class:`LesionLabel`. Lesions lie inside ``lungs > 0``.
    spacing
        Voxel size in mm ``(z, y, x)``.
    """

    lungs: npt.NDArray[np.uint8]
    lesions: npt.NDArray[np.uint8]
    spacing: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.lungs.shape != self.lesions.shape or self.lungs.ndim != 3:
            raise ValueError(
                f"lungs {self.lungs.shape} and lesions {self.lesions.shape} "
                "must be the same 3-D shape"
            )
