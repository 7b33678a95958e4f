"""Right and left: each lung component goes to the patient's side of the mediastinum.

Step 5 of :mod:`ct_triage.models.lungs`: the mediastinum is the valley between the two
lungs in the lung-column profile (:func:`mediastinum_x`); a component straddling it (lungs
touching at the anterior junction) is split by erosion (:func:`split_component`).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ct_triage.kernels.accelerated import label_fast
from ct_triage.kernels.components import INPLANE_CONNECTIVITY, label_counts
from ct_triage.models.segmentation import LungLabel

logger = logging.getLogger(__name__)

#: A component with at least this fraction of its voxels on each side of the midline is two
#: lungs touching at the anterior (or posterior) junction.
_STRADDLE_FRACTION = 0.15
_MAX_SPLIT_EROSIONS = 12
#: Mediastinum from the lung-column profile (see :func:`mediastinum_x`).
_VALLEY_SMOOTH_MM = 10.0
_VALLEY_MIN_PEAK = 0.1
_VALLEY_MAX_DEPTH = 0.5


def assign_sides(
    out: npt.NDArray[np.uint8],
    lab: npt.NDArray[np.int32],
    keep: npt.NDArray[np.bool_],
    body: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
    *,
    flip_sides: bool,
) -> tuple[LungLabel, LungLabel]:
    """Write the kept components of ``lab`` into ``out`` as the right or the left lung.

    Parameters
    ----------
    out
        Labels of the working grid, written in place.
    lab
        The labelled lung candidates.
    keep
        Which labels of ``lab`` are lung (index 0, the background, is False).
    body
        The body (for the fallback midline).
    spacing
        Working-grid spacing ``(z, y, x)`` in mm.
    flip_sides
        The x axis points to the patient's right (low columns are the left lung).

    Returns
    -------
    tuple
        The labels written for the low-column and the high-column side.
    """
    midline = mediastinum_x(keep[lab], body, spacing)
    right, left = (
        (LungLabel.LEFT, LungLabel.RIGHT) if flip_sides else (LungLabel.RIGHT, LungLabel.LEFT)
    )
    objects = ndi.find_objects(lab)
    for idx in np.flatnonzero(keep):
        comp_slices = objects[idx - 1]
        if comp_slices is None:
            continue
        sub = lab[comp_slices] == idx
        xs = np.nonzero(sub)[2] + comp_slices[2].start
        low = float(np.mean(xs < midline))
        region = out[comp_slices]
        if min(low, 1.0 - low) >= _STRADDLE_FRACTION:
            split = split_component(sub, xs_offset=comp_slices[2].start, midline=midline)
            region[split == 1] = right
            region[split == 2] = left
        else:
            region[sub] = right if low >= 0.5 else left
    return right, left


def mediastinum_x(
    lungs: npt.NDArray[np.bool_], body: npt.NDArray[np.bool_], spacing: tuple[float, float, float]
) -> float:
    """Column of the mediastinum: the deepest valley of the lung-column profile.

    The lungs' voxel count per image column (over all slices and rows) has one hump per lung
    and a valley at the mediastinum (heart, great vessels, spine), wherever the field of view
    is centred. The valley is taken when both humps reach :data:`_VALLEY_MIN_PEAK` of the
    higher one and the valley bottom is at most :data:`_VALLEY_MAX_DEPTH` of the lower hump;
    its centre is the middle of the columns within 5 % of the bottom. Otherwise (one lung
    visible, lungs fused over the whole volume) the centre of the body is used.
    """
    profile = np.count_nonzero(lungs, axis=(0, 1)).astype(np.float64)
    if profile.max() <= 0:
        return _body_centre(body, lungs.shape[2])
    profile = ndi.uniform_filter1d(profile, max(1, round(_VALLEY_SMOOTH_MM / spacing[2])))
    top = float(profile.max())
    left = np.maximum.accumulate(profile)
    right = np.maximum.accumulate(profile[::-1])[::-1]
    flank = np.minimum(left, right)
    depth = np.where(flank >= _VALLEY_MIN_PEAK * top, flank - profile, 0.0)
    best = int(np.argmax(depth))
    if depth[best] <= 0 or profile[best] > _VALLEY_MAX_DEPTH * flank[best]:
        logger.info("lung sides: no mediastinal valley, using the body centre")
        return _body_centre(body, lungs.shape[2])
    # the valley floor (e.g. the whole heart) is flat: take its middle
    floor = profile <= profile[best] + 0.05 * (flank[best] - profile[best])
    lo = hi = best
    while lo > 0 and floor[lo - 1]:
        lo -= 1
    while hi < profile.size - 1 and floor[hi + 1]:
        hi += 1
    return (lo + hi) / 2


def _body_centre(body: npt.NDArray[np.bool_], width: int) -> float:
    """Mean column of the body; the middle of ``width`` columns when there is no body."""
    return float(np.nonzero(body)[2].mean()) if body.any() else width / 2


def split_component(
    sub: npt.NDArray[np.bool_], *, xs_offset: int, midline: float
) -> npt.NDArray[np.uint8]:
    """Split a component holding both lungs: 1 = low x side, 2 = high x side."""
    result = np.zeros(sub.shape, dtype=np.uint8)
    total = int(sub.sum())
    eroded = sub
    seeds: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None = None
    for _ in range(_MAX_SPLIT_EROSIONS):
        eroded = ndi.binary_erosion(eroded, INPLANE_CONNECTIVITY)
        lab, n = label_fast(eroded, 6)
        if n < 2:
            if n == 0:
                break
            continue
        counts = label_counts(lab, n)
        big = [i for i in range(1, n + 1) if counts[i] >= 0.05 * total]
        if len(big) < 2:
            continue
        com_x = [float(np.nonzero(lab == i)[2].mean()) + xs_offset for i in big]
        low = [i for i, cx in zip(big, com_x, strict=True) if cx < midline]
        high = [i for i, cx in zip(big, com_x, strict=True) if cx >= midline]
        if low and high:
            seeds = (np.isin(lab, low), np.isin(lab, high))
            break
    if seeds is None:
        logger.info("lung split: erosion did not separate the lungs, cutting at the midline")
        xs = np.arange(sub.shape[2]) + xs_offset
        result[sub & (xs < midline)[None, None, :]] = 1
        result[sub & (xs >= midline)[None, None, :]] = 2
        return result
    seed_lab = np.zeros(sub.shape, dtype=np.uint8)
    seed_lab[seeds[0]] = 1
    seed_lab[seeds[1]] = 2
    _, idx = ndi.distance_transform_edt(seed_lab == 0, return_indices=True)
    nearest = seed_lab[tuple(idx)]
    result[sub] = nearest[sub]
    return result
