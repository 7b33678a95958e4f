"""The lung segmentation: :func:`segment_lungs`, its steps on the working grid, and
:func:`check_contains_lungs`."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ct_triage.kernels.accelerated import dilate_inplane_fast, fill_holes_inplane_fast, label_fast
from ct_triage.models.errors import StudyDeclined
from ct_triage.models.lungs.body import (
    POCKET_MIN_LUNG_HU,
    body_mask,
    field_of_view_boundary,
    outside_field_of_view,
)
from ct_triage.models.lungs.gas import GAS_CONTACT_MAX, find_gas, gas_contact_pieces
from ct_triage.models.lungs.grid import (
    AIR_THRESHOLD_HU,
    block_mean,
    upsample_labels,
    work_factors,
    x_points_right,
)
from ct_triage.models.lungs.sides import assign_sides
from ct_triage.models.segmentation import LungLabel
from ct_triage.models.volume import Volume

logger = logging.getLogger(__name__)

_MIN_COMPONENT_ML = 2.0
_MIN_COMPONENT_REL = 0.08
_CLOSE_MM = 4.0

#: Default of :func:`check_contains_lungs`: at least this much lung (mL) ...
MIN_LUNG_ML: float = 20.0
#: ... on at least this fraction of the slices (each with >= 1 cm2 of lung).
MIN_LUNG_SLICE_FRACTION: float = 0.1
_MIN_SLICE_AREA_MM2 = 100.0


def segment_lungs(volume: Volume) -> npt.NDArray[np.uint8]:
    """Segment the right and left lungs of a chest CT.

    Parameters
    ----------
    volume
        HU volume ``(z, y, x)`` (any size, any spacing; a few slices are fine).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of ``volume.shape`` with :class:`LungLabel` values (0 background,
        1 right lung, 2 left lung). All zero when no lung is found.
    """
    hu = volume.hu
    factors = work_factors(volume.spacing)
    coarse = np.maximum(block_mean(hu, factors), np.float32(-1024.0))
    spacing = (
        volume.spacing[0] * factors[0],
        volume.spacing[1] * factors[1],
        volume.spacing[2] * factors[2],
    )
    labels = _segment_coarse(coarse, spacing, flip_sides=x_points_right(volume.direction))
    if factors == (1, 1, 1):
        return labels
    return upsample_labels(labels, factors, hu)


def check_contains_lungs(
    volume: Volume,
    lungs: npt.NDArray[np.uint8],
    *,
    min_lung_ml: float = MIN_LUNG_ML,
    min_slice_fraction: float = MIN_LUNG_SLICE_FRACTION,
) -> None:
    """Decline a series that shows too little lung to be analysed as a chest CT.

    Parameters
    ----------
    volume
        The analysed volume (for its spacing and slice count).
    lungs
        Output of :func:`segment_lungs` on ``volume``.
    min_lung_ml
        Minimum total lung volume in mL. The default (20 mL) declines an upper-abdomen series
        with a sliver of lung base (a few mL) and accepts a 9 cm lung-base scan (~115 mL).
    min_slice_fraction
        Minimum fraction of the slices that contain at least 1 cm2 of lung.

    Raises
    ------
    StudyDeclined
        When either criterion fails (message: "... no lungs visible ...").
    ValueError
        When ``lungs`` does not match the volume or the limits are negative.
    """
    if lungs.shape != volume.shape:
        raise ValueError(f"lungs {lungs.shape} do not match the volume {volume.shape}")
    if min_lung_ml < 0 or not 0 <= min_slice_fraction <= 1:
        raise ValueError("min_lung_ml must be >= 0 and min_slice_fraction in [0, 1]")
    per_slice = np.count_nonzero(lungs, axis=(1, 2))
    lung_ml = float(per_slice.sum()) * volume.voxel_volume_ml
    area_mm2 = per_slice * (volume.spacing[1] * volume.spacing[2])
    fraction = float(np.mean(area_mm2 >= _MIN_SLICE_AREA_MM2)) if per_slice.size else 0.0
    logger.info("lung check: %.1f mL of lung on %.0f %% of the slices", lung_ml, 100 * fraction)
    if lung_ml < min_lung_ml or fraction < min_slice_fraction:
        raise StudyDeclined(
            f"Series declined: no lungs visible (found {lung_ml:.1f} mL of lung on "
            f"{100 * fraction:.0f} % of the slices; a chest CT needs at least "
            f"{min_lung_ml:g} mL on {100 * min_slice_fraction:.0f} %)"
        )


def _segment_coarse(
    hu: npt.NDArray[np.float32], spacing: tuple[float, float, float], *, flip_sides: bool
) -> npt.NDArray[np.uint8]:
    vox_ml = float(np.prod(spacing)) / 1000.0
    out = np.zeros(hu.shape, dtype=np.uint8)
    outside_fov = outside_field_of_view(hu)
    air = (hu < AIR_THRESHOLD_HU) & ~outside_fov
    body = body_mask(~air & ~outside_fov, hu, outside_fov, spacing)
    if not body.any():
        logger.info("lung segmentation: no body found")
        return out
    candidates = air & body
    gas, air_level = find_gas(hu, air, body, candidates, spacing)
    lung_cand = candidates & ~gas
    if gas.any():
        lung_cand &= ~gas_contact_pieces(lung_cand, gas)

    lab, n = label_fast(lung_cand, 6)
    if n == 0:
        return out
    # per-component sums over the candidates only (label 0, the rest, is not used)
    cand_lab = lab[lung_cand]
    counts = np.bincount(cand_lab, minlength=n + 1)
    touching = lung_cand & dilate_inplane_fast(gas) if gas.any() else None
    contact = (
        np.bincount(lab[touching], minlength=n + 1) if touching is not None else np.zeros(n + 1)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        contact_frac = np.where(counts > 0, contact / np.maximum(counts, 1), 0.0)
    not_gas = contact_frac <= GAS_CONTACT_MAX
    not_gas[0] = False
    if not not_gas.any():
        return out
    largest = int(counts[not_gas].max())
    # a piece of lung cut off by the field of view (it meets the field-of-view boundary and
    # reads as parenchyma, not gas) is kept whatever its size relative to the largest
    cut_off = np.zeros(n + 1, dtype=bool)
    cut_off[np.unique(lab[field_of_view_boundary(outside_fov) & lung_cand])] = True
    hu_sum = np.bincount(cand_lab, weights=hu[lung_cand], minlength=n + 1)
    hu_mean = hu_sum / np.maximum(counts, 1)
    cut_off &= hu_mean > air_level + POCKET_MIN_LUNG_HU
    keep = (
        not_gas
        & (counts * vox_ml >= _MIN_COMPONENT_ML)
        & ((counts >= _MIN_COMPONENT_REL * largest) | cut_off)
    )
    keep[0] = False
    if not keep.any():
        logger.info(
            "lung segmentation: no air component large enough (largest %.1f mL)", largest * vox_ml
        )
        return out
    right, left = assign_sides(out, lab, keep, body, spacing, flip_sides=flip_sides)
    for lung in (right, left):
        _close_and_fill(out, lung, spacing)
    logger.info(
        "lung segmentation: right %.0f mL, left %.0f mL (air %.0f HU, %d gas voxels removed)",
        np.count_nonzero(out == LungLabel.RIGHT) * vox_ml,
        np.count_nonzero(out == LungLabel.LEFT) * vox_ml,
        air_level,
        int(np.count_nonzero(gas)),
    )
    return out


def _close_and_fill(
    out: npt.NDArray[np.uint8], lung: int, spacing: tuple[float, float, float]
) -> None:
    """Close one lung with an in-plane disk and fill its holes per slice, in place."""
    mask = out == lung
    found = ndi.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return
    r = max(1, round(_CLOSE_MM / min(spacing[1], spacing[2])))
    sl = found[0]
    pad_sl = (
        sl[0],
        slice(max(0, sl[1].start - r), min(out.shape[1], sl[1].stop + r)),
        slice(max(0, sl[2].start - r), min(out.shape[2], sl[2].stop + r)),
    )
    sub = mask[pad_sl]
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2 <= (r * min(spacing[1], spacing[2])) ** 2
    structure = disk[None, :, :]
    padded = np.pad(sub, ((0, 0), (r, r), (r, r)))
    closed = ndi.binary_erosion(ndi.binary_dilation(padded, structure), structure)[:, r:-r, r:-r]
    closed = fill_holes_inplane_fast(closed | sub)
    region = out[pad_sl]
    region[closed & (region == 0)] = lung
