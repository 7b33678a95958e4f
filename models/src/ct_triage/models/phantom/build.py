"""The phantom generator: anatomy, lesions, vessels and airways, then partial volume, noise
and the circular field of view (:func:`generate`)."""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import numpy as np
from scipy import ndimage

from ct_triage.models.phantom.anatomy import compose_chunk, dome_t, draw_anatomy
from ct_triage.models.phantom.lesions import plan_lesions, raster_lesions
from ct_triage.models.phantom.spec import F64, Bool, Phantom, PhantomSpec
from ct_triage.models.phantom.tubes import Segment, grow_tree, lung_points, raster_tube
from ct_triage.models.segmentation import LungLabel
from ct_triage.models.volume import Volume

logger = logging.getLogger(__name__)

#: Value of the image outside the circular field of view (and the lowest HU written).
AIR_HU: Final = -1024
_MAX_HU: Final = 3071
_CHUNK: Final = 16


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
    an = draw_anatomy(spec)
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
    dome = dome_t(an, X, Y)
    hu = np.full((nz, ny, nx), -1000.0, np.float32)
    labels = np.zeros((nz, ny, nx), np.uint8)

    def anatomy(k0: int) -> None:
        k1 = min(k0 + _CHUNK, nz)
        h, lab = compose_chunk(an, X, Y, t_all[k0:k1, None, None], Z_all[k0:k1, None, None], dome)
        hu[k0:k1, crop[0], crop[1]] = h
        labels[k0:k1, crop[0], crop[1]] = lab

    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        list(pool.map(anatomy, range(0, nz, _CHUNK)))
    t1 = time.perf_counter()

    # lesions (before vessels: vessels stay visible through ground glass)
    lesion_class = np.zeros((nz, ny, nx), np.uint8)
    lesions = plan_lesions(spec, labels)
    raster_lesions(hu, lesion_class, labels, lesions, spacing)
    t2 = time.perf_counter()

    # vessels and airways; array mm coordinates (z, y, x) from the thorax template
    rng = np.random.default_rng([spec.seed, 2])
    vessel_hu = 200.0 if spec.contrast else 40.0

    def to_array(x: float, y: float, t: float) -> F64:
        z_mm = (t - 0.5) * spec.thorax_height_mm + (nz - 1) / 2.0 * dz
        return np.array([z_mm, y - an.y_shift + (ny - 1) / 2.0 * p, x + (nx - 1) / 2.0 * p])

    arteries: list[Segment] = []
    veins: list[Segment] = []
    airways: list[Segment] = []
    carina = to_array(0.0, an.y_tr, an.t_carina)
    for side, label in ((-1, LungLabel.RIGHT), (1, LungLabel.LEFT)):
        pts = lung_points(labels, int(label), 700, spacing, rng)
        if len(pts) < 8:
            continue
        hx, hy, ht = an.hilum(side)
        root = to_array(hx, hy, ht)
        bronchus_end = root + np.array([0.0, 8.0, 0.0])
        airways.append(Segment(tuple(carina), tuple(bronchus_end), 7.0, 6.0))
        branch: list[Segment] = []
        grow_tree(root, pts, 6.5, rng, arteries, airway=branch)
        if branch:  # re-root the bronchial tree on the main bronchus
            branch[0] = Segment(tuple(bronchus_end), branch[0].b, 6.0, branch[0].rb)
        airways.extend(branch)
        vpts = lung_points(labels, int(label), 700, spacing, rng)
        grow_tree(to_array(side * 14.0, -0.1 * an.B_c, an.t_dome_l + 0.2), vpts, 6.0, rng, veins)
    for les in lesions:
        airways.extend(les.bronchi)
    for seg in (*arteries, *veins):
        raster_tube(hu, seg, spacing, vessel_hu)
    for seg in airways:
        raster_tube(hu, seg, spacing, 30.0, grow_mm=0.3 + 0.15 * seg.ra)
    for seg in airways:
        raster_tube(hu, seg, spacing, -1000.0)
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
