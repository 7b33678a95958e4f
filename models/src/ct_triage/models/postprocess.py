"""Postprocessing: lesion predictions + classical lungs -> one consistent :class:`Segmentation`.

:func:`combine` enforces the contract of :class:`~ct_triage.models.segmentation.Segmentation`
(lungs include the lesions, lesions lie inside the lungs):

1. lesion voxels (``LesionLabel`` 1 GGO / 2 consolidation) are kept only within
   ``margin_mm`` (default 25 mm) of the classical lungs: dense subpleural consolidation is not
   air, so the threshold-based lungs miss it, but it always borders aerated lung; lobar
   consolidation reaches several cm from it (measured on the 10 held-out MedSeg
   slices lesion Dice 0.637 at 10 mm, 0.672 at 25 mm, 0.676 at 40 mm, with the lung Dice on
   the TotalSegmentator example unchanged at 0.963; 25 mm keeps the gain with a tighter
   bound against false positives);
2. lesion components (3-D, 26-connected, both classes together) smaller than
   ``min_lesion_ml`` (default 0.05 mL, about a 4.6 mm cube: speckle, not a finding) are
   removed, and so are components with less than ``min_lung_fraction`` (default 10 %) of
   their voxels inside the classical lungs *and* less than ``min_lung_ml`` (default 5 mL)
   inside them: a real lesion always has aerated or ground-glass lung around or within it,
   while a false positive in the mediastinum (oesophagus, hilar vessels) or chest wall lies
   (almost) entirely outside the lungs even when it is within the margin. The absolute
   bound keeps the dense consolidation of a severely involved lobe, which is mostly outside
   the aerated lungs but large: on a severe phantom (seed 14) a 202 mL consolidation with
   15.7 mL (7.7 %) inside the lungs was dropped by the fraction alone (left lung 5.4 pp
   under-called), while the false positives the fraction removes on the real lesion-free
   TotalSegmentator example have at most 0.54 mL inside;
3. the kept lesion voxels outside the lungs are added to the lung of the nearest lung voxel
   (Euclidean distance in mm), so that lung volumes include the lesions.

Before all this, lesion voxels denser than ``max_lesion_hu`` (default 200 HU) are dropped:
consolidation, even enhancing after contrast, stays below about 100-150 HU, while
contrast-filled vessels read 150-600 HU and bone more; the network, trained mostly on
non-contrast slices, outlined contrast-filled hilar and subclavian vessels as consolidation
on a real contrast chest CT (LIDC-IDRI-0003).

Distances come from :func:`ct_triage.kernels.accelerated.nearest_label_within_fast` (exact
Euclidean distances from the lesion voxels outside the lungs to the lung surface, with a k-d
tree), not from a distance transform of the whole box.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from ct_triage.kernels.accelerated import label_fast, nearest_label_within_fast
from ct_triage.kernels.components import keep_components
from ct_triage.models.segmentation import LesionLabel, LungLabel, Segmentation
from ct_triage.models.volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "LESION_MARGIN_MM",
    "MAX_LESION_HU",
    "MIN_LESION_ML",
    "MIN_LUNG_FRACTION",
    "MIN_LUNG_ML",
    "combine",
]

#: Lesion voxels farther than this from the classical lungs are discarded.
LESION_MARGIN_MM: float = 25.0
#: Lesion components smaller than this (mL) are discarded.
MIN_LESION_ML: float = 0.05
#: Lesion components with a smaller fraction of their voxels inside the lungs are discarded,
#: unless they have at least :data:`MIN_LUNG_ML` inside the lungs.
MIN_LUNG_FRACTION: float = 0.10
#: A lesion component with this much (mL) inside the lungs is kept whatever its fraction.
MIN_LUNG_ML: float = 5.0
#: Lesion voxels denser than this (HU) are contrast-filled vessels or bone, not lesion.
MAX_LESION_HU: float = 200.0


def combine(
    volume: Volume,
    lungs: npt.NDArray[np.uint8],
    lesion_classes: npt.NDArray[np.uint8],
    *,
    margin_mm: float = LESION_MARGIN_MM,
    min_lesion_ml: float = MIN_LESION_ML,
    min_lung_fraction: float = MIN_LUNG_FRACTION,
    min_lung_ml: float = MIN_LUNG_ML,
    max_lesion_hu: float | None = MAX_LESION_HU,
) -> Segmentation:
    """Merge the classical lung labels and the model's lesion classes.

    Parameters
    ----------
    volume
        The source volume (for its shape and spacing).
    lungs
        :class:`LungLabel` map from :func:`ct_triage.models.lungs.segment_lungs`.
    lesion_classes
        :class:`LesionLabel` map predicted by the lesion model on the same grid.
    margin_mm
        Lesion voxels within this distance of the lungs are kept (see the module docstring).
    min_lesion_ml
        Lesion components below this volume are removed; 0 keeps everything.
    min_lung_fraction
        Lesion components with less than this fraction of their voxels inside the classical
        lungs (and less than ``min_lung_ml`` inside them) are removed; 0 keeps them.
    min_lung_ml
        Lesion components with at least this volume (mL) inside the classical lungs are kept
        whatever their fraction.
    max_lesion_hu
        Lesion voxels above this HU are dropped first; ``None`` keeps them.

    Returns
    -------
    Segmentation
        Lungs (classical lungs plus the kept lesions) and lesions, with
        ``lesions > 0`` implying ``lungs > 0``.

    Raises
    ------
    ValueError
        On a shape mismatch, out-of-range labels or negative parameters.
    """
    shape = volume.shape
    if lungs.shape != shape or lesion_classes.shape != shape:
        raise ValueError(
            f"lungs {lungs.shape} and lesions {lesion_classes.shape} must match the volume {shape}"
        )
    if margin_mm < 0 or min_lesion_ml < 0 or min_lung_ml < 0 or not 0 <= min_lung_fraction <= 1:
        raise ValueError(
            "margin_mm, min_lesion_ml, min_lung_ml must be >= 0 and min_lung_fraction in [0, 1]"
        )
    if lungs.size and int(lungs.max()) > max(LungLabel):
        raise ValueError(f"lung labels must be in 0..{max(LungLabel)}, got {int(lungs.max())}")
    if lesion_classes.size and int(lesion_classes.max()) > max(LesionLabel):
        raise ValueError(
            f"lesion classes must be in 0..{max(LesionLabel)}, got {int(lesion_classes.max())}"
        )
    spacing = volume.spacing
    out_lungs = np.array(lungs, dtype=np.uint8, copy=True)
    out_lesions = np.zeros(shape, dtype=np.uint8)
    # the lesion voxels as flat indices: the dense ones and the box are found on them, not on
    # whole-volume masks
    flat = np.flatnonzero(lesion_classes)
    classes = lesion_classes.reshape(-1)[flat]
    dropped: tuple[npt.NDArray[np.intp], ...] = ()
    if max_lesion_hu is not None:
        dense = volume.hu.reshape(-1)[flat] > max_lesion_hu
        if dense.any():
            dropped = np.unravel_index(flat[dense], shape)
            # kept as uint8, as the whole map was when dense voxels were dropped (this only
            # matters for a signed or float map)
            flat, classes = flat[~dense], classes[~dense].astype(np.uint8)
    flat = flat[classes > 0]
    if flat.size == 0:
        return Segmentation(out_lungs, out_lesions, spacing)
    if not out_lungs.any():
        logger.warning("combine: no lungs, %d lesion voxels dropped", flat.size)
        return Segmentation(out_lungs, out_lesions, spacing)

    # everything below happens in the lesions' bounding box grown by the margin: the nearest
    # lung voxel of any lesion voxel within margin_mm of the lungs lies inside it
    box = _bbox(np.unravel_index(flat, shape), shape, margin_mm, spacing)
    lesions = np.array(lesion_classes[box], dtype=np.uint8, copy=True)
    _zero_at(lesions, box, dropped)
    sub_lungs = out_lungs[box]  # a view: written in place below
    in_lung = sub_lungs > 0
    outside = (lesions > 0) & ~in_lung
    nearest_label: npt.NDArray[np.uint8] | None = None
    near_box: tuple[slice, ...] = ()
    outside_flat = np.flatnonzero(outside)
    if outside_flat.size:
        # the nearest lung voxel of an outside lesion voxel within margin_mm of the lungs lies
        # in the outside voxels' box grown by the margin; farther voxels are dropped anyway
        near_box = _bbox(
            np.unravel_index(outside_flat, outside.shape), outside.shape, margin_mm, spacing
        )
        query = outside[near_box]
        _, nearest = nearest_label_within_fast(sub_lungs[near_box], spacing, query, margin_mm)
        far = np.zeros_like(query)
        far[query] = nearest == 0  # nothing within the margin
        lesions[near_box][far] = 0
        nearest_label = np.zeros(query.shape, dtype=np.uint8)
        nearest_label[query] = nearest
        logger.debug("combine: %d lesion voxels beyond %.1f mm dropped", int(far.sum()), margin_mm)

    lesions = _filter_components(
        lesions, in_lung, min_lesion_ml, volume.voxel_volume_ml, min_lung_fraction, min_lung_ml
    )

    added = 0
    if nearest_label is not None:
        add = (lesions[near_box] > 0) & ~in_lung[near_box]
        sub_lungs[near_box][add] = nearest_label[add]
        added = int(add.sum())
    lesions[sub_lungs == 0] = 0  # guaranteed subset, whatever happened above
    out_lesions[box] = lesions
    logger.info(
        "combine: %d lesion voxels kept (%d added to the lungs)",
        int(np.count_nonzero(lesions)),
        added,
    )
    return Segmentation(out_lungs, out_lesions, spacing)


def _bbox(
    coords: tuple[npt.NDArray[np.intp], ...],
    shape: tuple[int, ...],
    margin_mm: float,
    spacing: tuple[float, float, float],
) -> tuple[slice, ...]:
    """Bounding box of the voxels at ``coords`` (one index array per axis, not empty) grown by
    ``margin_mm`` (plus one voxel), clipped to an array of ``shape``."""
    result = []
    for c, n, sp in zip(coords, shape, spacing, strict=True):
        pad = int(np.ceil(margin_mm / sp)) + 1
        result.append(slice(max(0, int(c.min()) - pad), min(n, int(c.max()) + pad + 1)))
    return tuple(result)


def _zero_at(
    sub: npt.NDArray[np.uint8], box: tuple[slice, ...], coords: tuple[npt.NDArray[np.intp], ...]
) -> None:
    """Set the voxels at whole-array ``coords`` that lie in ``box`` to 0 in ``sub`` (the box)."""
    if not coords:
        return
    inside = np.logical_and.reduce(
        [(c >= b.start) & (c < b.stop) for c, b in zip(coords, box, strict=True)]
    )
    sub[tuple(c[inside] - b.start for c, b in zip(coords, box, strict=True))] = 0


def _filter_components(
    lesions: npt.NDArray[np.uint8],
    in_lung: npt.NDArray[np.bool_],
    min_ml: float,
    voxel_ml: float,
    min_lung_fraction: float,
    min_lung_ml: float,
) -> npt.NDArray[np.uint8]:
    """Remove lesion components that are too small or lie (almost) entirely outside the lungs.

    ``lesions`` is changed in place and returned.
    """
    if (min_ml <= 0 and min_lung_fraction <= 0) or not lesions.any():
        return lesions
    found = lesions > 0
    lab, n = label_fast(found, 26)
    # counts over the lesion voxels only (index 0, the background, is not used)
    counts = np.bincount(lab[found], minlength=n + 1)
    # counts of each component's voxels inside the lungs (bincount of an index, not of
    # float weights over the whole box: 3x faster on a 300-slice chest)
    inside = np.bincount(lab[in_lung], minlength=n + 1)
    fraction = inside / np.maximum(counts, 1)
    keep = (counts * voxel_ml >= min_ml) & (
        (fraction >= min_lung_fraction) | (inside * voxel_ml >= min_lung_ml)
    )
    keep[0] = False
    removed = int(np.count_nonzero(~keep[1:]))
    if removed:
        lesions[~keep_components(lab, keep)] = 0
        logger.debug(
            "combine: %d lesion components removed (< %.3f mL, or < %.0f %% and < %.1f mL "
            "inside the lungs)",
            removed,
            min_ml,
            100 * min_lung_fraction,
            min_lung_ml,
        )
    return lesions
