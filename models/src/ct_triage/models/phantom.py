"""A synthetic chest CT phantom with exact ground truth (pure numpy / scipy).

:func:`generate` builds a chest CT volume in Hounsfield units from a :class:`PhantomSpec`:
body contour with subcutaneous fat and muscle, ribs following an oblique rib pattern, spine,
sternum, mediastinum (heart with blood pool, aorta, pulmonary trunk, superior vena cava,
trachea and main bronchi, oesophagus), diaphragm domes with liver and spleen below, two
separate lungs whose shape varies along z (small apex, large base, cardiac notch on the
left), branching pulmonary vessels and airways grown into each lung, and COVID-19-like
lesions (ground-glass opacity and consolidation with air bronchograms). Partial-volume blur
and spatially correlated noise are applied last.

Conventions are those of ``../shared/data/README.md`` and :class:`~ct_triage.models.volume.Volume`:
``(z, y, x)`` arrays, z inferior to superior, row 0 anterior, column 0 the patient's right
(so the left lung has the higher column indices). The anatomy is laid out in physical mm
around the centre of the scan, over a thorax height drawn from the seed; a scan longer than
that height shows more neck and abdomen, a shorter one only the mid chest.

Ground truth (all exact, on the voxel grid):

* ``lung_labels`` / ``lung_mask``: the lung regions, intrapulmonary vessels, airways and
  lesions included (the definition of ``truth.npz``);
* ``lesion_class``: 1 ground-glass opacity (GGO), 2 consolidation; a voxel is a lesion voxel
  iff it lies in a generated lesion region *and* inside the lungs. Vessels crossing a GGO and
  air bronchograms inside a consolidation belong to the lesion, as a radiologist draws it.
* Outside the circular reconstruction field of view (inscribed circle of the matrix) the
  image holds exactly ``-1024`` (air); a correct DICOM reader maps the padding value there.

Determinism: every random draw comes from ``numpy.random.default_rng([seed, stream])``, so
the same spec gives identical bytes.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ct_triage.models.durable import durable_file
from ct_triage.models.errors import TriageError
from ct_triage.models.metrics import percent_involved
from ct_triage.models.segmentation import LesionLabel, LungLabel
from ct_triage.models.volume import Volume

__all__ = [
    "INVOLVEMENT_RANGES",
    "SEVERITIES",
    "Phantom",
    "PhantomSpec",
    "generate",
    "percent_involvement",
    "save_truth",
    "spec_from_seed",
]

logger = logging.getLogger(__name__)

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

#: Value of the image outside the circular field of view (and the lowest HU written).
AIR_HU: Final = -1024
_MAX_HU: Final = 3071
_CHUNK: Final = 16


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


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Anatomy template (all lengths in mm, thorax coordinates: x to patient left, y posterior)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anatomy:
    A: float  # body half-width at the widest level
    fat: float
    muscle: float
    muscle_post: float
    rib_t: float
    A_c: float  # thoracic cavity half-width
    B_c: float  # thoracic cavity half-depth
    y_shift: float  # thorax y of the image centre
    t_dome_r: float
    t_dome_l: float
    t_apex: float
    t_carina: float
    t_arch: float
    heart_dx: float
    rib_pitch: float
    rib_drop: float
    rib_phase: float
    vert_phase: float
    blood_hu: float
    tex: tuple[tuple[float, float, float, float, float, float], ...]

    @property
    def r_vb(self) -> float:
        return 17.0

    @property
    def y_vb(self) -> float:
        return self.B_c - 0.45 * self.r_vb

    @property
    def y_oes(self) -> float:
        return self.y_vb - self.r_vb - 8.0

    @property
    def y_tr(self) -> float:
        return self.y_oes - 19.0

    def hilum(self, side: int) -> tuple[float, float, float]:
        """Thorax (x, y, t) of the arterial root of a lung (side -1 right, +1 left)."""
        return (side * 16.0, -0.05 * self.B_c, self.t_carina - 0.05)


def _draw_anatomy(spec: PhantomSpec) -> _Anatomy:
    rng = np.random.default_rng([spec.seed, 1])
    fov = min(spec.rows, spec.cols) * spec.pixel_spacing_mm
    A = spec.body_fill * fov
    fat = float(rng.uniform(8.0, 24.0))
    muscle = float(rng.uniform(8.0, 13.0))
    rib_t = 7.0
    A_c = A - fat - muscle - rib_t
    B_c = A_c * float(rng.uniform(0.62, 0.72))
    muscle_post = float(rng.uniform(40.0, 50.0))
    ry_ant = B_c + rib_t + muscle + fat
    ry_post = B_c + rib_t + muscle_post + fat
    t_dome_r = float(rng.uniform(0.27, 0.31))
    tex = tuple(
        (
            float(rng.uniform(0.02, 0.06)),
            float(rng.uniform(0.02, 0.06)),
            float(rng.uniform(0.02, 0.06)),
            float(rng.uniform(0, 2 * np.pi)),
            float(rng.uniform(0, 2 * np.pi)),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for _ in range(3)
    )
    return _Anatomy(
        A=A,
        fat=fat,
        muscle=muscle,
        muscle_post=muscle_post,
        rib_t=rib_t,
        A_c=A_c,
        B_c=B_c,
        y_shift=0.5 * (ry_post - ry_ant),
        t_dome_r=t_dome_r,
        t_dome_l=t_dome_r - float(rng.uniform(0.03, 0.06)),
        t_apex=float(rng.uniform(0.92, 0.95)),
        t_carina=float(rng.uniform(0.60, 0.65)),
        t_arch=float(rng.uniform(0.70, 0.74)),
        heart_dx=float(rng.uniform(0.10, 0.20)) * A_c,
        rib_pitch=float(rng.uniform(22.0, 27.0)),
        rib_drop=float(rng.uniform(55.0, 80.0)),
        rib_phase=float(rng.uniform(0.0, 30.0)),
        vert_phase=float(rng.uniform(0.0, 25.0)),
        blood_hu=250.0 if spec.contrast else 40.0,
        tex=tex,
    )


def _ell(X: F32, Y: F32, cx: Any, cy: Any, rx: Any, ry: Any) -> Bool:
    """Inside an axis-aligned ellipse (parameters may broadcast along z)."""
    rx = np.maximum(rx, 1e-3)
    ry = np.maximum(ry, 1e-3)
    out: Bool = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 < 1.0
    return out


def _ell2(X: F32, Y: F32, rx: Any, ry_ant: Any, ry_post: Any) -> Bool:
    """Inside an ellipse centred at 0 with a different half-depth anterior and posterior."""
    ry = np.where(Y > 0, ry_post, ry_ant)
    out: Bool = (X / rx) ** 2 + (Y / ry) ** 2 < 1.0
    return out


def _tube2d(X: F32, Y: F32, p0: tuple[float, float], p1: tuple[float, float], r: float) -> Bool:
    """In-plane capsule of radius ``r`` around the segment ``p0``-``p1``."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    u = np.clip(((X - p0[0]) * vx + (Y - p0[1]) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    out: Bool = (X - p0[0] - u * vx) ** 2 + (Y - p0[1] - u * vy) ** 2 < r * r
    return out


def _band(t: F32, lo: float, hi: float) -> Bool:
    out: Bool = (t >= lo) & (t <= hi)
    return out


def _cap(t: F32, centre: float, half: float) -> F32:
    """Ellipsoidal radius factor along z: 1 at ``centre``, 0 beyond ``half``."""
    out: F32 = np.sqrt(np.clip(1.0 - ((t - centre) / half) ** 2, 0.0, 1.0)).astype(np.float32)
    return out


def _texture(an: _Anatomy, X: F32, Y: F32, Z: F32) -> F32:
    """Smooth pseudo-random texture in about [-1, 1] (products of separable cosines)."""
    out = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), np.float32)
    for kx, ky, kz, px, py, pz in an.tex:
        cx = np.cos(kx * X + px).astype(np.float32)
        cy = np.cos(ky * Y + py).astype(np.float32)
        cz = np.cos(kz * Z + pz).astype(np.float32)
        out += cz * (cy * cx)
    out *= np.float32(1.0 / math.sqrt(len(an.tex) / 8.0) / 2.0)
    return out


def _dome_t(an: _Anatomy, X: F32, Y: F32) -> F32:
    """Height (in template units t) of the diaphragm under each in-plane point."""
    v = Y / an.B_c
    post = 0.05 * np.clip(v, 0.0, 1.0)
    right = an.t_dome_r - 0.16 * (
        ((X + 0.45 * an.A_c) / (0.6 * an.A_c)) ** 2 + ((v + 0.1) / 0.8) ** 2
    )
    left = an.t_dome_l - 0.16 * (
        ((X - 0.45 * an.A_c) / (0.6 * an.A_c)) ** 2 + ((v + 0.1) / 0.8) ** 2
    )
    out: F32 = (np.maximum(right, left) - post).astype(np.float32)
    return out


def _compose_chunk(an: _Anatomy, X: F32, Y: F32, t: F32, Z: F32, dome: F32) -> tuple[F32, U8]:
    """Base anatomy (no vessels, airways or lesions) for the slices with template heights ``t``.

    Returns the HU array and the lung labels of the chunk.
    """
    shape = (t.shape[0], Y.shape[1], X.shape[2])
    hu = np.full(shape, -1000.0, np.float32)

    def put(mask: Any, value: float) -> None:
        np.copyto(hu, np.float32(value), where=mask)

    s = (1.0 - 0.22 * np.clip((t - 0.35) / 0.65, 0.0, 1.0) ** 1.5).astype(np.float32)
    A_c, B_c = an.A_c * s, an.B_c * s
    A_r, B_r = A_c + an.rib_t, B_c + an.rib_t
    A_m, B_m = A_r + an.muscle, B_r + an.muscle
    B_mp = B_r + an.muscle_post
    # body, subcutaneous fat, muscle layer
    body = _ell2(X, Y, A_m + an.fat, B_m + an.fat, B_mp + an.fat)
    put(body, -100.0)
    put(_ell2(X, Y, A_m, B_m, B_mp), 40.0)
    for side in (-1.0, 1.0):  # paraspinal muscles
        put(_ell(X, Y, side * 32.0, B_c + 30.0, 30.0, 24.0) & (B_c < Y) & body, 48.0)
    # rib ring: intercostal muscle, ribs (cortex + marrow) and costal cartilage
    ring = _ell(X, Y, 0.0, 0.0, A_r, B_r) & ~_ell(X, Y, 0.0, 0.0, A_c, B_c)
    theta = np.arctan2(Y / (an.B_c + an.rib_t), X / (an.A_c + an.rib_t))  # elliptic angle
    deg = np.degrees(theta)
    s_rib = an.rib_drop * (1.0 - np.sin(theta)) / 2.0
    phase = np.mod((Z + an.rib_phase + s_rib) / an.rib_pitch, 1.0)
    w = 0.45
    in_ribs = (phase < w) & (np.abs(deg - 90.0) > 12.0) & _band(t, -0.1, 0.97)
    cart = np.abs(deg + 90.0) < 40.0
    sternal = np.abs(deg + 90.0) < 14.0
    rib_core = (
        _ell(X, Y, 0.0, 0.0, A_r - 1.6, B_r - 1.6)
        & ~_ell(X, Y, 0.0, 0.0, A_c + 1.6, B_c + 1.6)
        & (phase > 0.2 * w)
        & (phase < 0.8 * w)
    )
    bone = ring & in_ribs & ~cart
    put(bone, 800.0)
    put(bone & rib_core, 220.0)
    put(ring & in_ribs & cart & ~sternal, 110.0)
    # sternum
    st = _ell(X, Y, 0.0, -(B_c + 0.5 * an.rib_t), 16.0, 6.5) & _band(t, 0.28, 0.90)
    put(st, 650.0)
    put(st & _ell(X, Y, 0.0, -(B_c + 0.5 * an.rib_t), 13.5, 4.0), 200.0)

    cavity = _ell(X, Y, 0.0, 0.0, A_c, B_c)
    put(cavity, -85.0)  # mediastinal / extrapleural fat
    below = t < dome
    abdomen = cavity & below
    put(abdomen & (0.3 * an.A_c > X), 58.0)  # liver
    put(abdomen & (0.3 * an.A_c <= X), 42.0)  # spleen / stomach wall

    # mediastinal structures (geometry), drawn after the lungs are cut out
    x_h, y_h = an.heart_dx, -0.2 * an.B_c
    t_hc, t_hh = an.t_dome_l + 0.09, 0.17
    t_htop = t_hc + t_hh
    r_h = _cap(t, t_hc, t_hh)
    heart_rx, heart_ry = 0.45 * an.A_c * r_h, 0.5 * an.B_c * r_h
    y_aa, x_aa = -0.2 * an.B_c, -6.0
    x_ad, y_ad = an.r_vb + 12.0, an.y_vb - 8.0
    x_pt, y_pt = 20.0, -0.38 * an.B_c
    t_pa = an.t_carina - 0.03
    hil_r, hil_l = an.hilum(-1), an.hilum(1)
    tv = t[:, 0, 0]
    # (slices, region, region + pleural margin, HU); 2-D regions apply to a range of slices
    structures: list[tuple[slice, Bool, Bool, float]] = []

    def add(region_fn: Any, hu_value: float, lo: float = -9.0, hi: float = 9.0) -> None:
        idx = np.flatnonzero((tv >= lo) & (tv <= hi))
        if len(idx):
            ks = slice(int(idx[0]), int(idx[-1]) + 1)
            structures.append((ks, region_fn(ks, 0.0), region_fn(ks, 3.0), hu_value))

    def add2d(region_fn: Any, hu_value: float, lo: float = -9.0, hi: float = 9.0) -> None:
        add(lambda ks, m: region_fn(m), hu_value, lo, hi)

    def heart(ks: slice, m: float) -> Bool:
        out: Bool = _ell(X, Y, x_h, y_h, heart_rx[ks] + m, heart_ry[ks] + m) & ~below[ks]
        return out

    add(heart, 48.0, t_hc - t_hh, t_htop)
    add2d(lambda m: _ell(X, Y, 0.0, an.y_vb, an.r_vb + m, an.r_vb + m), 230.0)
    add2d(lambda m: _ell(X, Y, x_ad, y_ad, 12.0 + m, 12.0 + m), an.blood_hu, hi=an.t_arch)
    add2d(
        lambda m: _ell(X, Y, x_aa, y_aa, 15.0 + m, 15.0 + m), an.blood_hu, t_htop - 0.08, an.t_arch
    )
    mid = (26.0, an.y_tr - 14.0)
    add2d(
        lambda m: (
            _tube2d(X, Y, (x_aa, y_aa), mid, 13.0 + m) | _tube2d(X, Y, mid, (x_ad, y_ad), 13.0 + m)
        ),
        an.blood_hu,
        an.t_arch - 0.025,
        an.t_arch + 0.025,
    )
    add2d(lambda m: _ell(X, Y, x_pt, y_pt, 13.0 + m, 13.0 + m), an.blood_hu, t_htop - 0.06, t_pa)
    add2d(
        lambda m: (
            _tube2d(X, Y, (x_pt, y_pt), (hil_l[0], hil_l[1]), 10.0 + m)
            | _tube2d(X, Y, (x_pt, y_pt), (hil_r[0], hil_r[1]), 10.0 + m)
        ),
        an.blood_hu,
        t_pa - 0.02,
        t_pa + 0.02,
    )
    add2d(
        lambda m: _ell(X, Y, -24.0, -0.15 * an.B_c, 10.0 + m, 10.0 + m),
        an.blood_hu,
        t_htop - 0.04,
        0.86,
    )
    for bx, by in ((-9.0, an.y_tr - 16.0), (6.0, an.y_tr - 19.0), (17.0, an.y_tr - 6.0)):
        add2d(
            lambda m, bx=bx, by=by: _ell(X, Y, bx, by, 6.5 + m, 6.5 + m), an.blood_hu, lo=an.t_arch
        )
    add2d(lambda m: _ell(X, Y, 5.0, an.y_oes, 9.0 + m, 6.0 + m), 38.0)
    add2d(lambda m: _ell(X, Y, 0.0, an.y_tr, 11.0 + m, 11.0 + m), 35.0, lo=an.t_carina)

    # lungs
    v = Y / B_c
    hw = 4.0 + 14.0 * np.exp(-(((v - 0.05) / 0.4) ** 2)) + 8.0 * (_band(t, 0.6, 0.85) & (v < 0.4))
    t_a0 = an.t_apex - 0.2
    sc = _cap(t, t_a0, an.t_apex - t_a0)
    sc = np.where(t > t_a0, sc, np.float32(10.0))
    lungs_zone = cavity & (t > dome + 0.01)
    for ks, _, widened, _ in structures:
        lungs_zone[ks] &= ~widened
    labels = np.zeros(shape, np.uint8)
    for side, label in ((-1.0, LungLabel.RIGHT), (1.0, LungLabel.LEFT)):
        half = (-hw > X) if side < 0 else (hw < X)
        apex = _ell(X, Y, side * 0.45 * A_c, 0.15 * B_c, 0.62 * A_c * sc, 0.9 * B_c * sc)
        np.copyto(labels, np.uint8(label), where=lungs_zone & half & apex)
    lung = labels > 0
    parenchyma = -855.0 + 35.0 * v - 10.0 * (t - 0.5) + 12.0 * _texture(an, X, Y, Z)
    np.copyto(hu, parenchyma, where=lung)

    # draw the mediastinal structures
    for ks, region, _, value in structures:
        np.copyto(hu[ks], np.float32(value), where=region)
    heart_in = (
        _ell(X, Y, x_h - 4.0, y_h - 3.0, 0.72 * heart_rx, 0.72 * heart_ry) & (r_h > 0) & ~below
    )
    put(heart_in, an.blood_hu)
    vb = _ell(X, Y, 0.0, an.y_vb, an.r_vb, an.r_vb)
    disc = np.mod(Z + an.vert_phase, 27.0) < 5.0
    put(vb & ~_ell(X, Y, 0.0, an.y_vb, an.r_vb - 2.0, an.r_vb - 2.0), 650.0)
    put(vb & disc, 85.0)
    # posterior elements: pedicles, lamina, canal, spinous and transverse processes
    y_c = an.y_vb + an.r_vb + 8.0
    ax = np.abs(X)
    post = (
        (_ell(X, Y, 0.0, y_c, 14.0, 14.0) & (y_c - 4.0 < Y))
        | ((ax < 4.0) & (y_c + 10.0 < Y) & (y_c + 32.0 > Y))
        | ((np.abs(Y - y_c + 2.0) < 5.0) & (ax > 10.0) & (ax < 34.0))
        | ((ax > 8.0) & (ax < 14.0) & (an.y_vb + an.r_vb - 4.0 < Y) & (y_c > Y))
    )
    put(post & body, 550.0)
    put(_ell(X, Y, 0.0, y_c, 8.0, 8.0), 25.0)
    trachea = _ell(X, Y, 0.0, an.y_tr, 9.0, 9.0) & (t > an.t_carina)
    put(trachea, -1000.0)
    put(_ell(X, Y, 5.0, an.y_oes, 2.0, 1.5) & _band(t, 0.5, 0.95), -900.0)  # oesophageal air
    return hu, labels


# ---------------------------------------------------------------------------------------------
# Tubes: vessels and airways, grown into each lung by recursive splitting of sample points
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seg:
    a: tuple[float, float, float]  # (z, y, x) mm in array coordinates
    b: tuple[float, float, float]
    ra: float
    rb: float


def _grow(
    root: F64,
    pts: F64,
    r_root: float,
    rng: np.random.Generator,
    out: list[_Seg],
    *,
    airway: list[_Seg] | None = None,
    aw_min_n: int = 12,
) -> None:
    """Recursively split ``pts`` along their principal axis; each node is a centroid.

    Radii follow Murray's law (r^3 proportional to the flow, i.e. the number of points fed).
    When ``airway`` is given, a companion bronchus (offset beside the artery) is added for
    the nodes fed by at least ``aw_min_n`` points.
    """
    n_total = len(pts)
    stack: list[tuple[F64, F64, F64, float, bool]] = [(root, root, pts, r_root, True)]
    while stack:
        p, p_aw, sub, r_parent, first = stack.pop()
        n = len(sub)
        c = sub.mean(axis=0)
        q = p + (0.5 if first else 1.0) * (c - p)
        r = r_root * (n / n_total) ** (1.0 / 3.0)
        out.append(_Seg(tuple(p), tuple(q), r_parent, r))
        q_aw = q
        if airway is not None and n >= aw_min_n:
            d = q - p
            perp = np.cross(d, [1.0, 0.0, 0.0])
            if np.linalg.norm(perp) < 1e-6:
                perp = np.cross(d, [0.0, 1.0, 0.0])
            perp /= np.linalg.norm(perp)
            q_aw = q + perp * (1.9 * r + 0.8)
            airway.append(_Seg(tuple(p_aw), tuple(q_aw), 0.85 * r_parent, 0.85 * r))
        if n <= 3 or r < 0.7:
            continue
        centred = sub - c
        _, vecs = np.linalg.eigh(centred.T @ centred)
        proj = centred @ vecs[:, -1]
        cut = np.quantile(proj, rng.uniform(0.35, 0.65))
        left, right = sub[proj <= cut], sub[proj > cut]
        for part in (left, right):
            if len(part):
                stack.append((q, q_aw, part, r, False))


def _raster_tube(
    hu: F32,
    seg: _Seg,
    spacing: tuple[float, float, float],
    value: float,
    *,
    grow_mm: float = 0.0,
    scale: float = 1.0,
) -> None:
    """Blend a tapered capsule into ``hu`` with partial-volume occupancy."""
    dz, dy, dx = spacing
    ra, rb = seg.ra * scale + grow_mm, seg.rb * scale + grow_mm
    a, b = np.asarray(seg.a), np.asarray(seg.b)
    rmax = max(ra, rb) + max(dx, dz)
    lo = np.minimum(a, b) - rmax
    hi = np.maximum(a, b) + rmax
    sp = np.asarray(spacing)
    i0 = np.maximum(np.floor(lo / sp).astype(int), 0)
    i1 = np.minimum(np.ceil(hi / sp).astype(int) + 1, np.asarray(hu.shape))
    if np.any(i1 <= i0):
        return
    zz = (np.arange(i0[0], i1[0], dtype=np.float32) * dz)[:, None, None]
    yy = (np.arange(i0[1], i1[1], dtype=np.float32) * dy)[None, :, None]
    xx = (np.arange(i0[2], i1[2], dtype=np.float32) * dx)[None, None, :]
    v = b - a
    vv = float(v @ v) or 1e-6
    u = np.clip(((zz - a[0]) * v[0] + (yy - a[1]) * v[1] + (xx - a[2]) * v[2]) / vv, 0.0, 1.0)
    ez = zz - a[0] - u * v[0]
    # a thick slice sees a tube a slab away: shrink the z distance by the slab half-width
    ez = np.sign(ez) * np.maximum(np.abs(ez) - 0.5 * (dz - dx), 0.0)
    d = np.sqrt(ez * ez + (yy - a[1] - u * v[1]) ** 2 + (xx - a[2] - u * v[2]) ** 2)
    r = ra + u * (rb - ra)
    occ = np.clip((r - d) / dx + 0.5, 0.0, 1.0)
    horiz = math.hypot(v[1], v[2]) / math.sqrt(vv)
    occ *= min(1.0, (2.0 * max(ra, rb) + dx) / (2.0 * max(ra, rb) + dx + dz * horiz - dx * horiz))
    box = hu[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]]
    box += occ.astype(np.float32) * (np.float32(value) - box)


def _lung_points(
    labels: U8, label: int, n: int, spacing: tuple[float, float, float], rng: np.random.Generator
) -> F64:
    """``n`` random points (mm, z/y/x) inside one lung, jittered within their voxel."""
    idx = np.flatnonzero(labels[:, ::2, ::2] == label)
    if len(idx) == 0:
        return np.zeros((0, 3))
    pick = rng.choice(idx, size=min(n, len(idx)), replace=False)
    zyx = np.stack(np.unravel_index(pick, labels[:, ::2, ::2].shape), axis=1).astype(float)
    zyx[:, 1:] *= 2.0
    out: F64 = (zyx + rng.uniform(-0.5, 0.5, zyx.shape)) * np.asarray(spacing)
    return out


# ---------------------------------------------------------------------------------------------
# Lesions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lesion:
    centre: tuple[float, float, float]  # (z, y, x) mm
    radii: tuple[float, float, float]
    waves: tuple[tuple[float, ...], ...]  # (kz, ky, kx, pz, py, px, amplitude)
    ggo_hu: float
    cons_hu: float
    core: float  # consolidation core size (fraction of the radii); 0 none, 1 pure consolidation
    bronchi: tuple[_Seg, ...]


def _bbox(
    centre: Any, ext: Any, spacing: Any, shape: tuple[int, ...]
) -> tuple[tuple[slice, slice, slice], F32, F32, F32] | None:
    """Index box (and its z, y, x mm coordinates) of ``centre +- ext`` (mm) on a grid."""
    sp = np.asarray(spacing, float)
    i0 = np.maximum(np.floor((np.asarray(centre) - ext) / sp).astype(int), 0)
    i1 = np.minimum(np.ceil((np.asarray(centre) + ext) / sp).astype(int) + 1, np.asarray(shape))
    if np.any(i1 <= i0):
        return None
    zz = (np.arange(i0[0], i1[0], dtype=np.float32) * np.float32(sp[0]))[:, None, None]
    yy = (np.arange(i0[1], i1[1], dtype=np.float32) * np.float32(sp[1]))[None, :, None]
    xx = (np.arange(i0[2], i1[2], dtype=np.float32) * np.float32(sp[2]))[None, None, :]
    sl = (
        slice(int(i0[0]), int(i1[0])),
        slice(int(i0[1]), int(i1[1])),
        slice(int(i0[2]), int(i1[2])),
    )
    return sl, zz, yy, xx


def _lesion_fields(les: _Lesion, zz: F32, yy: F32, xx: F32) -> tuple[F32, F32]:
    """Implicit functions (>0 inside) of the GGO region and the consolidation core."""
    q = (
        ((zz - les.centre[0]) / les.radii[0]) ** 2
        + (((yy - les.centre[1]) / les.radii[1]) ** 2 + ((xx - les.centre[2]) / les.radii[2]) ** 2)
    ).astype(np.float32)
    noise = np.zeros(q.shape, np.float32)
    for kz, ky, kx, pz, py, px, amp in les.waves:
        cz = np.cos(kz * zz + pz).astype(np.float32)
        cy = np.cos(ky * yy + py).astype(np.float32)
        cx = np.cos(kx * xx + px).astype(np.float32)
        noise += np.float32(amp) * (cz * (cy * cx))
    f_ggo = (1.0 - q + noise).astype(np.float32)
    if les.core <= 0.0:
        return f_ggo, np.full(q.shape, -1.0, np.float32)
    f_cons = (1.0 - q / les.core**2 + 0.8 * noise).astype(np.float32)
    return f_ggo, f_cons


def _make_lesion(
    rng: np.random.Generator,
    centre: F64,
    severity: str,
    scale: float,
) -> _Lesion:
    r_lo, r_hi = {"mild": (8.0, 22.0), "moderate": (16.0, 40.0), "severe": (25.0, 55.0)}[severity]
    R = float(rng.uniform(r_lo, r_hi)) * scale
    radii = (
        R * float(rng.uniform(1.0, 1.5)),
        R * float(rng.uniform(0.7, 1.2)),
        R * float(rng.uniform(0.7, 1.2)),
    )
    waves = tuple(
        (
            *(float(k) for k in rng.uniform(2 * np.pi / 40.0, 2 * np.pi / 10.0, 3)),
            *(float(p) for p in rng.uniform(0, 2 * np.pi, 3)),
            float(rng.uniform(0.1, 0.25)),
        )
        for _ in range(4)
    )
    p_cons = {"mild": 0.15, "moderate": 0.4, "severe": 0.6}[severity]
    u = rng.random()
    core = 0.0 if u > p_cons else (1.0 if u < 0.1 * p_cons else float(rng.uniform(0.4, 0.75)))
    bronchi: list[_Seg] = []
    if core > 0:
        for _ in range(int(rng.integers(2, 5))):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            length = float(rng.uniform(0.5, 0.9)) * core * min(radii)
            start = centre - d * 0.3 * length
            bronchi.append(_Seg(tuple(start), tuple(start + d * length), 1.4, 0.7))
    return _Lesion(
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        radii=radii,
        waves=waves,
        ggo_hu=float(rng.uniform(-700.0, -420.0)),
        cons_hu=float(rng.uniform(-20.0, 45.0)),
        core=core,
        bronchi=tuple(bronchi),
    )


def _plan_lesions(spec: PhantomSpec, labels: U8) -> list[_Lesion]:
    """Place lesions (subpleural, posterior and basal first, bilateral) until the target
    involvement is reached, measured on a coarse grid."""
    target = spec.involvement
    if target <= 0.0:
        return []
    rng = np.random.default_rng([spec.seed, 3])
    _lo, hi = INVOLVEMENT_RANGES.get(spec.severity, (0.0, 1.0))
    hi = max(hi, target + 0.03)
    step = 4
    coarse = np.ascontiguousarray(labels[:, ::step, ::step])
    sp = (spec.slice_spacing_mm, spec.pixel_spacing_mm * step, spec.pixel_spacing_mm * step)
    lung = coarse > 0
    n_lung = int(lung.sum())
    if n_lung == 0:
        return []
    depth = ndimage.distance_transform_edt(lung, sampling=sp)
    zs = np.arange(coarse.shape[0])[:, None, None] / max(coarse.shape[0] - 1, 1)
    rows = np.arange(coarse.shape[1])[None, :, None] / coarse.shape[1]
    weight = np.exp(-depth / 12.0) * (1.6 - zs) * (0.6 + rows) * lung
    flat = coarse.ravel()
    wflat = weight.ravel()
    cdfs: dict[int, tuple[npt.NDArray[np.intp], F64]] = {}
    for lab in (int(LungLabel.RIGHT), int(LungLabel.LEFT)):
        cand = np.flatnonzero((flat == lab) & (wflat > 0))
        cdfs[lab] = (cand, np.cumsum(wflat[cand]))
    totals = {lab: (float(c[1][-1]) if len(c[0]) else 0.0) for lab, c in cdfs.items()}
    mask = np.zeros(coarse.shape, bool)
    n_mask = 0
    lesions: list[_Lesion] = []
    covered = {int(LungLabel.RIGHT): 0, int(LungLabel.LEFT): 0}
    for _ in range(80):
        right = int(LungLabel.RIGHT)
        side = right if rng.random() * (totals[1] + totals[2]) < totals[right] else 3 - right
        other = 3 - side
        if covered[side] > covered[other] and totals[other] > 0 and rng.random() < 0.7:
            side = other  # keep it bilateral
        cand, cdf = cdfs[side]
        pick = int(cand[min(int(np.searchsorted(cdf, rng.random() * cdf[-1])), len(cand) - 1)])
        centre = np.asarray(np.unravel_index(pick, coarse.shape), float) * sp
        scale = 1.0
        for _try in range(4):
            les = _make_lesion(rng, centre, spec.severity, scale)
            box_ = _bbox(les.centre, np.asarray(les.radii) * 1.6, sp, coarse.shape)
            if box_ is None:
                break
            sl, zz, yy, xx = box_
            f_g, f_c = _lesion_fields(les, zz, yy, xx)
            grown = ((f_g > 0) | (f_c > 0)) & lung[sl] & ~mask[sl]
            added = int(grown.sum())
            frac = (n_mask + added) / n_lung
            if frac <= hi:
                break
            scale *= 0.6
        else:
            break
        if box_ is None or added == 0:
            continue
        mask[sl] |= grown
        n_mask += added
        covered[side] += added
        lesions.append(les)
        if frac >= target:
            break
    logger.debug("planned %d lesions, coarse involvement %.3f", len(lesions), n_mask / n_lung)
    return lesions


def _raster_lesions(
    hu: F32,
    lesion_class: U8,
    labels: U8,
    lesions: list[_Lesion],
    spacing: tuple[float, float, float],
) -> None:
    """Write lesion truth and blend lesion HU (densities combine by maximum)."""
    for les in lesions:
        box_ = _bbox(les.centre, np.asarray(les.radii) * 1.6, spacing, hu.shape)
        if box_ is None:
            continue
        sl, zz, yy, xx = box_
        inside = labels[sl] > 0
        f_g, f_c = _lesion_fields(les, zz, yy, xx)
        ggo = (f_g > 0) & inside
        cons = (f_c > 0) & inside
        cls = lesion_class[sl]
        cls[ggo & (cls == 0)] = int(LesionLabel.GGO)
        cls[cons] = int(LesionLabel.CONSOLIDATION)
        box = hu[sl]
        patch = np.cos(0.21 * xx + 0.13 * yy + 0.3 * zz + les.ggo_hu).astype(np.float32)
        a_g = np.clip(0.35 + 4.0 * f_g, 0.0, 1.0)
        g_val = box + a_g * (np.float32(les.ggo_hu) + 50.0 * patch - box)
        box[ggo] = np.maximum(box[ggo], g_val[ggo])
        if les.core > 0:
            a_c = np.clip(0.4 + 4.0 * f_c, 0.0, 1.0)
            c_val = box + a_c * (np.float32(les.cons_hu) + 12.0 * patch - box)
            box[cons] = np.maximum(box[cons], c_val[cons])


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _fov_mask(spec: PhantomSpec) -> Bool:
    r = (min(spec.rows, spec.cols) / 2.0) ** 2
    yy = (np.arange(spec.rows) - (spec.rows - 1) / 2.0)[:, None]
    xx = (np.arange(spec.cols) - (spec.cols - 1) / 2.0)[None, :]
    out: Bool = yy * yy + xx * xx <= r
    return out


def generate(spec: PhantomSpec) -> Phantom:
    """Generate the phantom described by ``spec`` (deterministic).

    Parameters
    ----------
    spec
        From :func:`spec_from_seed` or built by hand.

    Returns
    -------
    Phantom
        ``int16`` HU volume and exact truth masks (see the module docstring).
    """
    t0 = time.perf_counter()
    an = _draw_anatomy(spec)
    nz, ny, nx = spec.n_slices, spec.rows, spec.cols
    dz, p = spec.slice_spacing_mm, spec.pixel_spacing_mm
    spacing = (dz, p, p)
    x_all = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2.0) * p
    y_all = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2.0) * p + an.y_shift
    # compute only inside the bounding box of the body (the rest is air)
    ry_ant = an.B_c + an.rib_t + an.muscle + an.fat + 2.0
    ry_post = an.B_c + an.rib_t + an.muscle_post + an.fat + 2.0
    xs = np.flatnonzero(np.abs(x_all) <= an.A + 2.0)
    ys = np.flatnonzero((y_all >= -ry_ant) & (y_all <= ry_post))
    crop = (slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))
    X = x_all[crop[1]][None, None, :]
    Y = y_all[crop[0]][None, :, None]
    Z_all = (np.arange(nz, dtype=np.float32) - (nz - 1) / 2.0) * dz
    t_all = (0.5 + Z_all / spec.thorax_height_mm).astype(np.float32)
    dome = _dome_t(an, X, Y)
    hu = np.full((nz, ny, nx), -1000.0, np.float32)
    labels = np.zeros((nz, ny, nx), np.uint8)

    def anatomy(k0: int) -> None:
        k1 = min(k0 + _CHUNK, nz)
        h, lab = _compose_chunk(an, X, Y, t_all[k0:k1, None, None], Z_all[k0:k1, None, None], dome)
        hu[k0:k1, crop[0], crop[1]] = h
        labels[k0:k1, crop[0], crop[1]] = lab

    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        list(pool.map(anatomy, range(0, nz, _CHUNK)))
    t1 = time.perf_counter()

    # lesions (before vessels: vessels stay visible through ground glass)
    lesion_class = np.zeros((nz, ny, nx), np.uint8)
    lesions = _plan_lesions(spec, labels)
    _raster_lesions(hu, lesion_class, labels, lesions, spacing)
    t2 = time.perf_counter()

    # vessels and airways; array mm coordinates (z, y, x) from the thorax template
    rng = np.random.default_rng([spec.seed, 2])
    vessel_hu = 200.0 if spec.contrast else 40.0

    def to_array(x: float, y: float, t: float) -> F64:
        z_mm = (t - 0.5) * spec.thorax_height_mm + (nz - 1) / 2.0 * dz
        return np.array([z_mm, y - an.y_shift + (ny - 1) / 2.0 * p, x + (nx - 1) / 2.0 * p])

    arteries: list[_Seg] = []
    veins: list[_Seg] = []
    airways: list[_Seg] = []
    carina = to_array(0.0, an.y_tr, an.t_carina)
    for side, label in ((-1, LungLabel.RIGHT), (1, LungLabel.LEFT)):
        pts = _lung_points(labels, int(label), 700, spacing, rng)
        if len(pts) < 8:
            continue
        hx, hy, ht = an.hilum(side)
        root = to_array(hx, hy, ht)
        bronchus_end = root + np.array([0.0, 8.0, 0.0])
        airways.append(_Seg(tuple(carina), tuple(bronchus_end), 7.0, 6.0))
        branch: list[_Seg] = []
        _grow(root, pts, 6.5, rng, arteries, airway=branch)
        if branch:  # re-root the bronchial tree on the main bronchus
            branch[0] = _Seg(tuple(bronchus_end), branch[0].b, 6.0, branch[0].rb)
        airways.extend(branch)
        vpts = _lung_points(labels, int(label), 700, spacing, rng)
        _grow(to_array(side * 14.0, -0.1 * an.B_c, an.t_dome_l + 0.2), vpts, 6.0, rng, veins)
    for les in lesions:
        airways.extend(les.bronchi)
    for seg in (*arteries, *veins):
        _raster_tube(hu, seg, spacing, vessel_hu)
    for seg in airways:
        _raster_tube(hu, seg, spacing, 30.0, grow_mm=0.3 + 0.15 * seg.ra)
    for seg in airways:
        _raster_tube(hu, seg, spacing, -1000.0)
    t3 = time.perf_counter()

    # partial volume (through-plane here, in-plane per chunk), correlated noise, field of view
    ndimage.gaussian_filter1d(hu, 0.35, axis=0, output=hu, mode="nearest", truncate=3.0)
    image = np.empty((nz, ny, nx), np.int16)
    outside = ~_fov_mask(spec)
    gain = np.float32(spec.noise_std_hu * 2.0 * math.sqrt(math.pi) * 0.8)

    def finish(k0: int) -> None:
        k1 = min(k0 + _CHUNK, nz)
        h = ndimage.gaussian_filter(hu[k0:k1], sigma=(0.0, 0.6, 0.6), truncate=3.0)
        noise = np.random.default_rng([spec.seed, 4, k0]).standard_normal(h.shape, np.float32)
        ndimage.gaussian_filter(noise, sigma=(0.0, 0.8, 0.8), output=noise, truncate=3.0)
        h += gain * noise
        np.clip(h, AIR_HU, _MAX_HU, out=h)
        img = np.rint(h).astype(np.int16)
        img[:, outside] = AIR_HU
        image[k0:k1] = img

    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        list(pool.map(finish, range(0, nz, _CHUNK)))
    t4 = time.perf_counter()

    lung_mask = (labels > 0).astype(np.uint8)
    lesion_mask = (lesion_class > 0).astype(np.uint8)
    origin = (-(nx - 1) / 2.0 * p, -(ny - 1) / 2.0 * p, -(nz - 1) * dz)
    volume = Volume(hu=image, spacing=spacing, origin=origin)
    logger.info(
        "phantom seed=%d %dx%dx%d severity=%s lesions=%d in %.2fs "
        "(anatomy %.2f, lesions %.2f, tubes %.2f, noise %.2f)",
        spec.seed, nz, ny, nx, spec.severity, len(lesions), t4 - t0,
        t1 - t0, t2 - t1, t3 - t2, t4 - t3,
    )  # fmt: skip
    return Phantom(
        volume=volume,
        lung_mask=lung_mask,
        lung_labels=labels,
        lesion_mask=lesion_mask,
        lesion_class=lesion_class,
        spec=spec,
    )


def percent_involvement(phantom: Phantom) -> dict[str, float]:
    """Lesion percent of each lung and of both (lesion voxels / lung voxels x 100)."""
    out: dict[str, float] = {}
    for name, sel in (
        ("right", phantom.lung_labels == LungLabel.RIGHT),
        ("left", phantom.lung_labels == LungLabel.LEFT),
        ("total", phantom.lung_labels > 0),
    ):
        out[name] = percent_involved(phantom.lesion_mask, sel) or 0.0
    return out


def save_truth(phantom: Phantom, path: Path) -> None:
    """Write ``truth.npz`` in the format of ``../shared/data/README.md`` (byte-reproducible).

    Keys: ``image`` (int16 HU), ``spacing`` (float64 z, y, x mm), ``origin`` (LPS mm of voxel
    ``[0, 0, 0]``), ``lung_mask``, ``lung_labels``, ``lesion_mask``, ``lesion_class`` (uint8),
    ``lung_mask_origin``, ``source``, ``hu_is_approx`` (False), ``severity``.
    The zip members carry a fixed timestamp so the same phantom gives identical bytes.

    Parameters
    ----------
    phantom
        From :func:`generate`.
    path
        Destination file (parents are created).
    """
    arrays: dict[str, npt.NDArray[Any]] = {
        "image": np.asarray(phantom.volume.hu, dtype=np.int16),
        "spacing": np.asarray(phantom.volume.spacing, dtype=np.float64),
        "origin": np.asarray(phantom.volume.origin, dtype=np.float64),
        "lung_mask": phantom.lung_mask,
        "lung_labels": phantom.lung_labels,
        "lesion_mask": phantom.lesion_mask,
        "lesion_class": phantom.lesion_class,
        "lung_mask_origin": np.array("synthetic:exact"),
        "source": np.array(f"synthetic:ct-triage-phantom seed={phantom.spec.seed}"),
        "hu_is_approx": np.array(False),
        "severity": np.array(phantom.spec.severity),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        durable_file(path) as fh,
        zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
    ):
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=1)
