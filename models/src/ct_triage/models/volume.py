"""The HU volume: the only image type compute code sees."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


def _identity() -> tuple[float, ...]:
    return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class Volume:
    """A CT volume in Hounsfield units with its geometry.

    Axis convention (the same as ``../shared/data/README.md``): the array is ``(z, y, x)``;
    for an axial series z runs inferior to superior, row 0 is anterior and column 0 is the
    patient's right (radiological display).

    Parameters
    ----------
    hu
        Hounsfield units, ``int16`` (preferred) or ``float32``, shape ``(z, y, x)``. Padding
        / outside-field-of-view voxels are already replaced by ``-1024`` (air).
    spacing
        Voxel size in mm, ``(z, y, x)``. ``z`` is the distance between slice centres (not the
        nominal slice thickness).
    origin
        Patient (LPS) coordinates in mm of the centre of voxel ``[0, 0, 0]``.
    direction
        Row-major 3x3 matrix whose *columns* are the LPS unit vectors of the x (column),
        y (row) and z (slice) array axes.
    """

    hu: npt.NDArray[np.int16] | npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default_factory=_identity)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"Volume.hu must be 3-D (z, y, x), got shape {self.hu.shape}")
        if len(self.spacing) != 3 or not all(s > 0 for s in self.spacing):
            raise ValueError(f"Volume.spacing must be three positive mm values, got {self.spacing}")
        if len(self.direction) != 9:
            raise ValueError("Volume.direction must have 9 values (row-major 3x3)")

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return (int(z), int(y), int(x))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        return float(np.prod(self.spacing)) / 1000.0
