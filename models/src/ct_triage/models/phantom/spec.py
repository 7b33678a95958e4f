"""What a phantom is: its :class:`PhantomSpec`, drawn by :func:`spec_from_seed`, and the
generated :class:`Phantom` (volume and exact truth).

The array aliases ``F32``, ``F64``, ``U8`` and ``Bool`` are shared by the modules of the
package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ct_triage.models.errors import TriageError
from ct_triage.models.volume import Volume

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
Bool = npt.NDArray[np.bool_]

#: Severity names, from no lesion to most involved.
SEVERITIES: Final = ("none", "mild", "moderate", "severe")

#: Target fraction of the lung volume (lesions included) occupied by lesions per severity.
#: The bands sit inside both the issue's definition (mild < 10 %, moderate 10-40 %,
#: severe > 40 %) and the default triage thresholds of :mod:`ct_triage.models.quantify`
#: (mild < 25 %, moderate 25-50 %, severe >= 50 %).
INVOLVEMENT_RANGES: Final[dict[str, tuple[float, float]]] = {
    "none": (0.0, 0.0),
    "mild": (0.02, 0.08),
    "moderate": (0.28, 0.38),
    "severe": (0.55, 0.70),
}


class PhantomError(TriageError):
    """An invalid phantom request (bad size, spacing or severity)."""


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that defines a phantom; :func:`spec_from_seed` draws the free fields.

    Parameters
    ----------
    seed
        Seed of every random draw (anatomy, lesions, noise).
    n_slices
        Number of axial slices (realistic: 60-400).
    slice_spacing_mm
        Distance between slice centres, also the nominal slice thickness (realistic: 1-5).
    pixel_spacing_mm
        In-plane pixel size (realistic: 0.6-0.9; the field of view is ``cols`` times it).
    severity
        One of :data:`SEVERITIES`.
    rows, cols
        Matrix size (512 x 512 on real scanners; smaller is allowed for quick tests).
    thorax_height_mm
        Cranio-caudal extent of the anatomy template (lung bases to above the apices).
    body_fill
        Body half-width as a fraction of the field of view.
    target_involvement
        Fraction of the lungs to cover with lesions; ``None``: the middle of the band of
        ``severity`` in :data:`INVOLVEMENT_RANGES`.
    noise_std_hu
        Standard deviation of the (spatially correlated) image noise in HU.
    contrast
        Iodinated contrast in the blood pool and vessels (about 250 HU) instead of 40 HU.
    """

    seed: int
    n_slices: int
    slice_spacing_mm: float
    pixel_spacing_mm: float
    severity: str
    rows: int = 512
    cols: int = 512
    thorax_height_mm: float = 275.0
    body_fill: float = 0.42
    target_involvement: float | None = None
    noise_std_hu: float = 18.0
    contrast: bool = False

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise PhantomError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not 4 <= self.n_slices <= 1000:
            raise PhantomError(f"n_slices must be 4..1000, got {self.n_slices}")
        if not 0.3 <= self.slice_spacing_mm <= 10.0:
            raise PhantomError(f"slice_spacing_mm must be 0.3..10, got {self.slice_spacing_mm}")
        if not 0.3 <= self.pixel_spacing_mm <= 1.5:
            raise PhantomError(f"pixel_spacing_mm must be 0.3..1.5, got {self.pixel_spacing_mm}")
        if not (64 <= self.rows <= 1024 and 64 <= self.cols <= 1024):
            raise PhantomError(f"rows/cols must be 64..1024, got {self.rows}x{self.cols}")
        if not 0.30 <= self.body_fill <= 0.46:
            raise PhantomError(f"body_fill must be 0.30..0.46, got {self.body_fill}")
        if not 150.0 <= self.thorax_height_mm <= 400.0:
            raise PhantomError(f"thorax_height_mm must be 150..400, got {self.thorax_height_mm}")
        if self.target_involvement is not None and not 0.0 <= self.target_involvement <= 0.8:
            raise PhantomError("target_involvement must be within 0..0.8")
        if not 0.0 <= self.noise_std_hu <= 100.0:
            raise PhantomError(f"noise_std_hu must be 0..100, got {self.noise_std_hu}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing ``(z, y, x)`` in mm."""
        return (self.slice_spacing_mm, self.pixel_spacing_mm, self.pixel_spacing_mm)

    @property
    def involvement(self) -> float:
        """Target lesion fraction of the lungs actually used by :func:`generate`."""
        if self.severity == "none":
            return 0.0
        if self.target_involvement is not None:
            return self.target_involvement
        lo, hi = INVOLVEMENT_RANGES[self.severity]
        return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Phantom:
    """A generated phantom: the HU volume and its exact ground truth.

    Parameters
    ----------
    volume
        ``int16`` HU volume ``(z, y, x)`` with spacing and LPS geometry (origin is the
        centre of voxel ``[0, 0, 0]``, identity direction: an axial head-first-supine scan).
    lung_mask
        ``uint8`` 0/1, lungs including lesions.
    lung_labels
        ``uint8`` :class:`~ct_triage.models.segmentation.LungLabel` (1 right, 2 left).
    lesion_mask
        ``uint8`` 0/1, inside ``lung_mask``.
    lesion_class
        ``uint8`` :class:`~ct_triage.models.segmentation.LesionLabel` (1 GGO, 2 consolidation).
    spec
        The spec it was generated from.
    """

    volume: Volume
    lung_mask: U8
    lung_labels: U8
    lesion_mask: U8
    lesion_class: U8
    spec: PhantomSpec


_FOVS_MM: Final = (320.0, 330.0, 340.0, 350.0, 360.0, 370.0, 380.0, 400.0, 420.0, 440.0, 460.0)


def spec_from_seed(
    seed: int,
    *,
    n_slices: int | None = None,
    severity: str | None = None,
    slice_spacing_mm: float | None = None,
    pixel_spacing_mm: float | None = None,
) -> PhantomSpec:
    """Draw a realistic :class:`PhantomSpec` from ``seed``; given arguments are kept.

    The default is small and quick: 2.5 or 3 mm slices covering the thorax (about 90-125
    slices), 512 x 512 pixels of 0.625-0.9 mm (a 320-460 mm field of view, as chosen on a
    scanner to fit the patient).

    Parameters
    ----------
    seed
        Non-negative integer seed.
    n_slices, severity, slice_spacing_mm, pixel_spacing_mm
        Override the drawn value.

    Returns
    -------
    PhantomSpec
    """
    if seed < 0:
        raise PhantomError(f"seed must be non-negative, got {seed}")
    rng = np.random.default_rng([seed, 0])
    height = float(np.round(rng.uniform(255.0, 295.0), 1))
    dz = float(rng.choice([2.5, 3.0]))
    fov = float(rng.choice(_FOVS_MM))
    sev = str(rng.choice(SEVERITIES, p=[0.2, 0.3, 0.3, 0.2]))
    fill = float(np.round(rng.uniform(0.38, 0.44), 3))
    noise = float(np.round(rng.uniform(12.0, 22.0), 1))
    contrast = bool(rng.random() < 0.3)
    extent_factor = float(rng.uniform(1.02, 1.10))
    dz = slice_spacing_mm if slice_spacing_mm is not None else dz
    if n_slices is None:
        n_slices = int(np.clip(math.ceil(height * extent_factor / dz), 8, 1000))
    return PhantomSpec(
        seed=seed,
        n_slices=n_slices,
        slice_spacing_mm=dz,
        pixel_spacing_mm=pixel_spacing_mm if pixel_spacing_mm is not None else fov / 512.0,
        severity=severity if severity is not None else sev,
        thorax_height_mm=height,
        body_fill=fill,
        noise_std_hu=noise,
        contrast=contrast,
    )
