"""COVID-19-like lesions: ground-glass regions with optional consolidation cores and air
bronchograms, planned on a coarse grid up to the target involvement and then rastered into
the HU volume and the lesion truth."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ct_triage.models.phantom.spec import F32, F64, INVOLVEMENT_RANGES, U8, PhantomSpec
from ct_triage.models.phantom.tubes import Segment
from ct_triage.models.segmentation import LesionLabel, LungLabel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lesion:
    centre: tuple[float, float, float]  # (z, y, x) mm
    radii: tuple[float, float, float]
    waves: tuple[tuple[float, ...], ...]  # (kz, ky, kx, pz, py, px, amplitude)
    ggo_hu: float
    cons_hu: float
    core: float  # consolidation core size (fraction of the radii); 0 none, 1 pure consolidation
    bronchi: tuple[Segment, ...]


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


def _lesion_fields(les: Lesion, zz: F32, yy: F32, xx: F32) -> tuple[F32, F32]:
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
) -> Lesion:
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
    bronchi: list[Segment] = []
    if core > 0:
        for _ in range(int(rng.integers(2, 5))):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            length = float(rng.uniform(0.5, 0.9)) * core * min(radii)
            start = centre - d * 0.3 * length
            bronchi.append(Segment(tuple(start), tuple(start + d * length), 1.4, 0.7))
    return Lesion(
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        radii=radii,
        waves=waves,
        ggo_hu=float(rng.uniform(-700.0, -420.0)),
        cons_hu=float(rng.uniform(-20.0, 45.0)),
        core=core,
        bronchi=tuple(bronchi),
    )


def plan_lesions(spec: PhantomSpec, labels: U8) -> list[Lesion]:
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
    lesions: list[Lesion] = []
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


def raster_lesions(
    hu: F32,
    lesion_class: U8,
    labels: U8,
    lesions: list[Lesion],
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
