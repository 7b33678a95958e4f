"""Classical lung segmentation (threshold + connected components) on a HU volume.

The lungs are found without a network so that every study gets lung masks, lung volumes and a
"does this series show lungs at all?" check, whatever the lesion model does:

1. work on a grid of about 2 mm (integer block mean of the HU);
2. *air* is ``HU < -380`` inside the body (largest 3-D tissue component, holes filled per
   slice), so the air around the patient and under the table is gone. Padding outside the
   reconstructed field of view is neither air nor tissue, and lung cut open by the field of
   view (a small reconstruction circle, a crop) is still inside the body: an air piece
   touching the field-of-view boundary that reads as parenchyma, not pure gas, and is
   wrapped in the body elsewhere is a pocket of the body (:func:`_border_pockets`);
3. *gas*: bowel and stomach gas, the trachea and the main bronchi are pure air, whereas lung
   parenchyma (about -900..-700 HU) is interleaved with vessels and septa. Air whose 4 mm box
   mean is within 35 HU of the air level (measured on the air around the patient, since
   scanners read air anywhere from -1010 to -980 HU), in pieces of at least 0.2 mL, is
   removed together with a rim of half a box + 4 mm; in-plane pieces that mostly border the
   removed gas (colon wall, faeces) go too;
4. the remaining 3-D air components are kept when large enough (>= 2 mL and >= 8 % of the
   largest);
5. each component is given to the patient's right or left lung by its centroid against the
   mediastinum, the valley between the two lungs in the lung-column profile over the whole
   volume (:func:`_mediastinum_x`; the body centre only when one lung is visible), so a
   field of view centred off the midline does not move lungs to the other side; a
   component straddling the mediastinum (lungs touching at the anterior junction) is split
   by eroding it until it falls apart and giving each voxel to the nearest core; a piece
   of lung cut off by the field of view is kept whatever its size;
6. each lung is closed (4 mm disk) and its holes filled slice by slice, so intrapulmonary
   vessels are included, as in reference masks such as TotalSegmentator's;
7. labels go back to the original grid by replication, with the boundary band re-decided on
   the full-resolution HU.

Dense lesions touching the pleura (consolidation, effusion-like opacities) are not air and are
not found here; :func:`ct_triage.models.postprocess.combine` adds them from the lesion model.

Labels follow :class:`~ct_triage.models.segmentation.LungLabel` (0 background, 1 right,
2 left); column 0 is the patient's right unless :attr:`Volume.direction` says the x axis
points to the patient's right, in which case sides are swapped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ct_triage.kernels.accelerated import (
    dilate_inplane_fast,
    erode_inplane_fast,
    fill_holes_inplane_fast,
    label_fast,
    label_inplane_fast,
)
from ct_triage.kernels.components import (
    INPLANE_CONNECTIVITY,
    keep_components,
    label_counts,
)
from ct_triage.models.errors import StudyDeclined
from ct_triage.models.segmentation import LungLabel
from ct_triage.models.volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "AIR_THRESHOLD_HU",
    "MIN_LUNG_ML",
    "MIN_LUNG_SLICE_FRACTION",
    "check_contains_lungs",
    "field_of_view_boundary",
    "outside_field_of_view",
    "segment_lungs",
]

#: Voxels below this HU are air (lung parenchyma is about -900..-700 HU).
AIR_THRESHOLD_HU: float = -380.0
#: A 9 mm box mean below (air level + this) is pure gas (bowel, stomach, trachea), not lung.
#: The air level is measured on the air around the patient (scanners read it at -1010..-980).
_GAS_CORE_MARGIN_HU = 35.0
_DEFAULT_AIR_HU = -1000.0
_AIR_LEVEL_MAX_HU = -960.0
_GAS_BOX_MM = 4.0
_GAS_BOX_Z_MM = 2.0
_GAS_CORE_MIN_ML = 0.2
_GAS_MARGIN_MM = 4.0
#: Drop a component when more than this fraction of its voxels touches removed gas.
_GAS_CONTACT_MAX = 0.25
_MIN_COMPONENT_ML = 2.0
_MIN_COMPONENT_REL = 0.08
#: A component with at least this fraction of its voxels on each side of the midline is two
#: lungs touching at the anterior (or posterior) junction.
_STRADDLE_FRACTION = 0.15
_MAX_SPLIT_EROSIONS = 12
_CLOSE_MM = 4.0
_WORK_SPACING_XY_MM = 2.0
_WORK_SPACING_Z_MM = 2.0
#: An air piece touching the image border is a pocket of the body (a lung cut by a thorax crop)
#: when less than this share of its outline lies on the image border ...
_POCKET_MAX_BORDER = 0.25
#: ... and at least this share of the rest of its outline borders the body.
_POCKET_MIN_BODY = 0.4

#: An air piece cut by the field of view whose mean HU on the working grid is this much above
#: the air level is lung (parenchyma -900..-700 HU), not the air around the patient.
_POCKET_MIN_LUNG_HU = 70.0
#: ... and at least twice this thick in-plane (mm).
_POCKET_MIN_RADIUS_MM = 4.0
#: ... and enclosed by the body wherever the field of view does not cut it (a lung is
#: surrounded by chest wall, diaphragm and mediastinum; the gap between the patient's back and
#: the table is not).
_POCKET_MIN_BODY_LUNG = 0.8
_POCKET_CLEAR_MM = 10.0
#: ... and reach this far into the field of view.
_POCKET_MIN_DEPTH_MM = 20.0
_POCKET_MAX_NEAR_AIR = 0.1
#: The loader's HU floor (padding and clipped air).
_HU_FLOOR = -1024.0
#: Floor-valued pieces touching the image edge with at least this many working-grid pixels
#: (~1 cm2 at 2 mm) are outside the reconstructed field of view.
_FOV_MIN_PIXELS = 25
#: Mediastinum from the lung-column profile (see :func:`_mediastinum_x`).
_VALLEY_SMOOTH_MM = 10.0
_VALLEY_MIN_PEAK = 0.1
_VALLEY_MAX_DEPTH = 0.5

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
    factors = _work_factors(volume.spacing)
    coarse = np.maximum(_block_mean(hu, factors), np.float32(-1024.0))
    spacing = (
        volume.spacing[0] * factors[0],
        volume.spacing[1] * factors[1],
        volume.spacing[2] * factors[2],
    )
    labels = _segment_coarse(coarse, spacing, flip_sides=_x_points_right(volume.direction))
    if factors == (1, 1, 1):
        return labels
    return _upsample_labels(labels, factors, hu)


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


# --------------------------------------------------------------------------------------------
# grid


def _work_factors(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    fz = max(1, int(_WORK_SPACING_Z_MM / spacing[0] + 0.25))
    fy = max(1, int(_WORK_SPACING_XY_MM / spacing[1] + 0.25))
    fx = max(1, int(_WORK_SPACING_XY_MM / spacing[2] + 0.25))
    return fz, fy, fx


def _block_mean(
    hu: npt.NDArray[np.int16] | npt.NDArray[np.float32], f: tuple[int, int, int]
) -> npt.NDArray[np.float32]:
    if f == (1, 1, 1):
        return hu.astype(np.float32)
    pads = [(0, (-n) % k) for n, k in zip(hu.shape, f, strict=True)]
    padded = np.pad(hu, pads, mode="edge") if any(p[1] for p in pads) else hu
    z, y, x = (s // k for s, k in zip(padded.shape, f, strict=True))
    out = np.zeros((z, y, x), dtype=np.float32)
    for i in range(f[0]):
        for j in range(f[1]):
            for k in range(f[2]):
                out += padded[i :: f[0], j :: f[1], k :: f[2]]
    out /= np.float32(f[0] * f[1] * f[2])
    return out


#: The in-plane 8-neighbourhood as (dy, dx) offsets (INPLANE_CONNECTIVITY without the centre).
_INPLANE_OFFSETS: Final = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _upsample_labels(
    labels: npt.NDArray[np.uint8],
    f: tuple[int, int, int],
    hu: npt.NDArray[np.int16] | npt.NDArray[np.float32],
) -> npt.NDArray[np.uint8]:
    """Replicate coarse labels; in the one-voxel boundary band, re-threshold the fine HU.

    A band voxel outside the coarse lungs takes the largest label of its in-plane
    neighbours (a grey dilation, evaluated on the band only).
    """
    mask = labels > 0
    band_c = dilate_inplane_fast(mask) & ~erode_inplane_fast(mask)
    zc, yc, xc = labels.shape
    # replicate every coarse voxel into its f-block: x by np.repeat, then y and z by one
    # broadcast assignment of whole rows (contiguous copies; 5x faster than one 6-D copy)
    rows = np.repeat(labels, f[2], axis=2)
    full = np.empty((zc * f[0], yc * f[1], xc * f[2]), dtype=np.uint8)
    full.reshape(zc, f[0], yc, f[1], xc * f[2])[...] = rows[:, None, :, None, :]
    up = np.ascontiguousarray(full[: hu.shape[0], : hu.shape[1], : hu.shape[2]])
    coarse_idx = np.nonzero(band_c)
    values = labels[coarse_idx]
    empty = np.flatnonzero(values == 0)
    if empty.size:
        cz, cy, cx = (c[empty] for c in coarse_idx)
        grown = values[empty]
        for dy, dx in _INPLANE_OFFSETS:
            # clipping at the array edge reads the voxel itself, as the dilation's reflection
            ny = np.clip(cy + dy, 0, yc - 1)
            nx = np.clip(cx + dx, 0, xc - 1)
            np.maximum(grown, labels[cz, ny, nx], out=grown)
        values[empty] = grown
    offsets = np.indices(f).reshape(3, -1)
    fine = [c[:, None] * k + o[None, :] for c, k, o in zip(coarse_idx, f, offsets, strict=True)]
    valid = (fine[0] < hu.shape[0]) & (fine[1] < hu.shape[1]) & (fine[2] < hu.shape[2])
    fz, fy, fx = (a[valid] for a in fine)
    vals = np.broadcast_to(values[:, None], valid.shape)[valid]
    up[fz, fy, fx] = np.where(hu[fz, fy, fx] < AIR_THRESHOLD_HU, vals, 0)
    result: npt.NDArray[np.uint8] = up.astype(np.uint8, copy=False)
    return result


def _x_points_right(direction: tuple[float, ...]) -> bool:
    # direction is row-major 3x3 whose columns are the LPS vectors of the x, y, z axes:
    # element [0][0] is the L component of the x (column) axis.
    return float(direction[0]) < 0


def _odd(n: float) -> int:
    k = max(1, round(n))
    return k if k % 2 else k + 1


# --------------------------------------------------------------------------------------------
# segmentation on the working grid


def _segment_coarse(
    hu: npt.NDArray[np.float32], spacing: tuple[float, float, float], *, flip_sides: bool
) -> npt.NDArray[np.uint8]:
    vox_ml = float(np.prod(spacing)) / 1000.0
    out = np.zeros(hu.shape, dtype=np.uint8)
    outside_fov = outside_field_of_view(hu)
    air = (hu < AIR_THRESHOLD_HU) & ~outside_fov
    body = _body_mask(~air & ~outside_fov, hu, outside_fov, spacing)
    if not body.any():
        logger.info("lung segmentation: no body found")
        return out
    candidates = air & body

    # pure gas (bowel, stomach, trachea, main bronchi) and its rim
    box = (
        _odd(_GAS_BOX_Z_MM / spacing[0]),
        _odd(_GAS_BOX_MM / spacing[1]),
        _odd(_GAS_BOX_MM / spacing[2]),
    )
    smooth = ndi.uniform_filter(hu, size=box, mode="nearest")
    air_level = _air_level(hu, air & ~body)
    core = (smooth < air_level + _GAS_CORE_MARGIN_HU) & candidates
    core_lab, n_core = label_fast(core, 6)
    gas = np.zeros_like(core)
    if n_core:
        core_counts = label_counts(core_lab, n_core)
        gas = keep_components(core_lab, core_counts * vox_ml >= _GAS_CORE_MIN_ML)
    if gas.any():
        # the core is half a box inside the gas: grow it back, plus the partial-volume rim
        margin = _GAS_MARGIN_MM + _GAS_BOX_MM / 2
        r_xy = max(1, math.ceil(margin / min(spacing[1], spacing[2])))
        r_z = math.floor((_GAS_MARGIN_MM + _GAS_BOX_Z_MM / 2) / spacing[0])
        gas = ndi.binary_dilation(gas, INPLANE_CONNECTIVITY, iterations=r_xy, mask=candidates)
        if r_z:
            zs = np.zeros((3, 3, 3), dtype=bool)
            zs[:, 1, 1] = True
            gas = ndi.binary_dilation(gas, zs, iterations=r_z, mask=candidates)
    lung_cand = candidates & ~gas
    if gas.any():
        lung_cand &= ~_gas_contact_pieces(lung_cand, gas)

    lab, n = label_fast(lung_cand, 6)
    if n == 0:
        return out
    counts = label_counts(lab, n)
    touching = lung_cand & dilate_inplane_fast(gas) if gas.any() else None
    contact = (
        np.bincount(lab[touching], minlength=n + 1) if touching is not None else np.zeros(n + 1)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        contact_frac = np.where(counts > 0, contact / np.maximum(counts, 1), 0.0)
    not_gas = contact_frac <= _GAS_CONTACT_MAX
    not_gas[0] = False
    if not not_gas.any():
        return out
    largest = int(counts[not_gas].max())
    # a piece of lung cut off by the field of view (it meets the field-of-view boundary and
    # reads as parenchyma, not gas) is kept whatever its size relative to the largest
    cut_off = np.zeros(n + 1, dtype=bool)
    cut_off[np.unique(lab[field_of_view_boundary(outside_fov) & lung_cand])] = True
    hu_mean = np.bincount(lab.ravel(), weights=hu.ravel(), minlength=n + 1) / np.maximum(counts, 1)
    cut_off &= hu_mean > air_level + _POCKET_MIN_LUNG_HU
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

    midline = _mediastinum_x(keep[lab], body, spacing)
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
            split = _split_component(sub, xs_offset=comp_slices[2].start, midline=midline)
            region[split == 1] = right
            region[split == 2] = left
        else:
            region[sub] = right if low >= 0.5 else left

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


def _gas_contact_pieces(
    cand: npt.NDArray[np.bool_], gas: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """In-plane pieces of ``cand`` that mostly border removed gas (bowel wall, faeces)."""
    lab, n = label_inplane_fast(cand)
    if n == 0:
        return np.zeros_like(cand)
    counts = label_counts(lab, n)
    rim = cand & dilate_inplane_fast(gas)
    contact = np.bincount(lab[rim], minlength=n + 1)
    frac = contact / np.maximum(counts, 1)
    return keep_components(lab, frac > _GAS_CONTACT_MAX)


def _air_level(hu: npt.NDArray[np.float32], outside: npt.NDArray[np.bool_]) -> float:
    """Median HU of the air around the patient, ignoring clipped / padding voxels.

    Only voxels at or below ``_AIR_LEVEL_MAX_HU`` count: where the field of view cuts the
    body, lung parenchyma (-900..-700 HU on the working grid) can lie outside the body mask
    and must not raise the level at which pure gas is recognised.
    """
    values = hu[outside]
    values = values[(values > -1023.0) & (values <= _AIR_LEVEL_MAX_HU)]
    if values.size < 1000:
        return _DEFAULT_AIR_HU
    return float(np.clip(np.median(values), -1020.0, -960.0))


def outside_field_of_view(
    hu: npt.NDArray[np.float32] | npt.NDArray[np.int16],
) -> npt.NDArray[np.bool_]:
    """Voxels outside the reconstructed field of view (padding), per slice, of a ~2 mm grid.

    The loader sets padding (and everything below air) to -1024 HU, so a voxel at the floor
    is padding or air clipped by the scanner; the in-plane pieces of such voxels that touch
    the image frame (the outside of a reconstruction circle, the corners) and cover at least
    :data:`_FOV_MIN_PIXELS` are outside the field of view, while clipped voxels inside a lung
    or an airway are not. Where a scanner clips the air around the patient to -1024 this is
    that air: harmless, it is outside the body either way.
    """
    floor = hu <= _HU_FLOOR + 0.5
    if not floor.any():
        return np.zeros(hu.shape, dtype=bool)
    lab, n = label_inplane_fast(floor)
    keep = np.zeros(n + 1, dtype=bool)
    keep[lab[_frame(hu.shape)]] = True
    keep &= label_counts(lab, n) >= _FOV_MIN_PIXELS
    keep[0] = False
    result: npt.NDArray[np.bool_] = keep[lab]
    return result


def field_of_view_boundary(outside: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The voxels of the field of view on its boundary: the image frame and the ring just
    inside the padding of :func:`outside_field_of_view` (``outside``)."""
    boundary = _frame(outside.shape)
    if outside.any():
        boundary |= dilate_inplane_fast(outside) & ~outside
    return boundary


def _frame(shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """The image frame (first and last row and column) of every slice."""
    frame = np.zeros(shape, dtype=bool)
    frame[:, 0, :] = frame[:, -1, :] = frame[:, :, 0] = frame[:, :, -1] = True
    return frame


def _inplane_steps(
    operation: Callable[[npt.NDArray[np.bool_]], npt.NDArray[np.bool_]],
    mask: npt.NDArray[np.bool_],
    mm: float,
    spacing: tuple[float, float, float],
) -> npt.NDArray[np.bool_]:
    """``operation`` (a one-pixel in-plane dilation or erosion) repeated to reach ``mm``."""
    for _ in range(max(1, math.ceil(mm / min(spacing[1], spacing[2])))):
        mask = operation(mask)
    return mask


def _body_mask(
    tissue: npt.NDArray[np.bool_],
    hu: npt.NDArray[np.float32],
    outside_fov: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
) -> npt.NDArray[np.bool_]:
    """Largest 3-D tissue component with its holes (lungs, airways, bowel gas) filled per slice.

    Air cut open by the field of view (image edge or reconstruction circle) but enclosed by
    the body elsewhere is a pocket of the body (see :func:`_border_pockets`) and is filled too.
    """
    lab, n = label_fast(tissue, 6)
    if n == 0:
        return np.zeros_like(tissue)
    counts = label_counts(lab, n)
    counts[0] = 0
    body = lab == int(np.argmax(counts))
    filled: npt.NDArray[np.bool_] = fill_holes_inplane_fast(body)
    pockets = _border_pockets(~tissue & ~filled & ~outside_fov, filled, hu, outside_fov, spacing)
    if pockets.any():
        filled = fill_holes_inplane_fast(filled | pockets)
    return filled


def _border_pockets(
    air: npt.NDArray[np.bool_],
    body: npt.NDArray[np.bool_],
    hu: npt.NDArray[np.float32],
    outside_fov: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
) -> npt.NDArray[np.bool_]:
    """In-plane air pieces cut open by the field of view but enclosed by the body elsewhere.

    A thorax crop or a small reconstruction field of view cuts through the chest wall, so a
    lung touching the image edge or the reconstruction circle is not a hole of the body. The
    air around the patient is *pure* air, whereas lung parenchyma, with its vessels and
    septa, reads -900..-700 HU on the working grid. An air piece touching the field-of-view
    boundary is a pocket of the body by either rule:

    * lung, whatever the shape of the cut: its mean HU is above
      ``_DEFAULT_AIR_HU + _POCKET_MIN_LUNG_HU``, it is at least ``2 * _POCKET_MIN_RADIUS_MM``
      thick, it reaches ``_POCKET_MIN_DEPTH_MM`` into the field of view (not a strip of air
      between the skin and a crop's edge) and ``_POCKET_MIN_BODY_LUNG`` of the rest of its
      outline borders the body (not the gap between the patient's back and the table);
    * a corner cut: less than ``_POCKET_MAX_BORDER`` of its outline lies on the boundary, it
      touches the image edge (not only a reconstruction circle, which the layers of a
      patient table cross) and at least ``_POCKET_MIN_BODY`` of the rest borders the body (a
      convex body cuts a corner with a curve no longer than the two border legs).

    Both rules also ask that at most ``_POCKET_MAX_NEAR_AIR`` of the piece lies within
    ``_POCKET_CLEAR_MM`` of the air around the patient: a lung is wrapped in the chest wall.
    """
    result = np.zeros_like(air)
    boundary = field_of_view_boundary(outside_fov)
    if not (air & boundary).any():
        return result
    lab, n = label_inplane_fast(air)
    on_boundary = lab[boundary & air]
    touching = np.unique(on_boundary[on_boundary > 0])
    is_touching = np.zeros(n + 1, dtype=bool)
    is_touching[touching] = True
    cut = is_touching[lab]
    # the outline away from the boundary (a staircase circle leaves two-pixel contacts)
    outline = (
        cut & ~erode_inplane_fast(fill_holes_inplane_fast(cut)) & ~dilate_inplane_fast(boundary)
    )
    near_body = outline & dilate_inplane_fast(body)
    n_edge = np.bincount(on_boundary, minlength=n + 1).astype(np.float64)
    on_image_edge = np.zeros(n + 1, dtype=bool)
    on_image_edge[lab[_frame(lab.shape)]] = True
    n_outline = np.bincount(lab[outline], minlength=n + 1).astype(np.float64)
    n_body = np.bincount(lab[near_body], minlength=n + 1).astype(np.float64)
    n_vox = np.bincount(lab[cut], minlength=n + 1).astype(np.float64)
    hu_sum = np.bincount(lab[cut], weights=hu[cut], minlength=n + 1)
    total = n_edge + n_outline
    with np.errstate(divide="ignore", invalid="ignore"):
        border_share = np.where(total > 0, n_edge / np.maximum(total, 1), 1.0)
        body_share = np.where(n_outline > 0, n_body / np.maximum(n_outline, 1), 0.0)
        mean_hu = np.where(n_vox > 0, hu_sum / np.maximum(n_vox, 1), _DEFAULT_AIR_HU)
    # thick enough to be lung: survives in-plane erosion to a _POCKET_MIN_RADIUS_MM core
    # (the air gap inside a patient table reads like lung foam but is a few mm thin)
    core = _inplane_steps(erode_inplane_fast, cut, _POCKET_MIN_RADIUS_MM, spacing)
    thick = np.zeros(n + 1, dtype=bool)
    thick[np.unique(lab[core])] = True
    dense = mean_hu > _DEFAULT_AIR_HU + _POCKET_MIN_LUNG_HU
    # a strip of the air around the patient between the skin and a crop's edge can read
    # denser than air (partial volume, blankets) but it is shallow: it never reaches
    # _POCKET_MIN_DEPTH_MM into the field of view, a cut lung does
    reach = _inplane_steps(dilate_inplane_fast, boundary, _POCKET_MIN_DEPTH_MM, spacing)
    deep = np.zeros(n + 1, dtype=bool)
    deep[np.unique(lab[cut & ~reach])] = True
    lung_like = dense & thick & deep
    # a lung is wrapped in the chest wall: little of it lies within _POCKET_CLEAR_MM of the
    # air around the patient; the air between the layers of a patient table (part of the
    # body's tissue component) lies a few mm from it
    outside_air = air & ~body & ~(cut & dense[lab])
    near = _inplane_steps(dilate_inplane_fast, outside_air, _POCKET_CLEAR_MM, spacing)
    n_near = np.bincount(lab[cut & near], minlength=n + 1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        clear = np.where(n_vox > 0, n_near / np.maximum(n_vox, 1), 1.0) <= _POCKET_MAX_NEAR_AIR
    keep = np.zeros(n + 1, dtype=bool)
    keep[touching] = True
    keep &= clear & (
        ((body_share >= _POCKET_MIN_BODY) & (border_share < _POCKET_MAX_BORDER) & on_image_edge)
        | (lung_like & (body_share >= _POCKET_MIN_BODY_LUNG))
    )
    keep[0] = False
    if keep.any():
        logger.debug("lung segmentation: %d air pockets cut by the field of view", int(keep.sum()))
        result = keep_components(lab, keep)
    return result


def _mediastinum_x(
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
    fallback = float(np.nonzero(body)[2].mean()) if body.any() else lungs.shape[2] / 2
    profile = np.count_nonzero(lungs, axis=(0, 1)).astype(np.float64)
    if profile.max() <= 0:
        return fallback
    profile = ndi.uniform_filter1d(profile, max(1, round(_VALLEY_SMOOTH_MM / spacing[2])))
    top = float(profile.max())
    left = np.maximum.accumulate(profile)
    right = np.maximum.accumulate(profile[::-1])[::-1]
    flank = np.minimum(left, right)
    depth = np.where(flank >= _VALLEY_MIN_PEAK * top, flank - profile, 0.0)
    best = int(np.argmax(depth))
    if depth[best] <= 0 or profile[best] > _VALLEY_MAX_DEPTH * flank[best]:
        logger.info("lung sides: no mediastinal valley, using the body centre")
        return fallback
    # the valley floor (e.g. the whole heart) is flat: take its middle
    floor = profile <= profile[best] + 0.05 * (flank[best] - profile[best])
    lo = hi = best
    while lo > 0 and floor[lo - 1]:
        lo -= 1
    while hi < profile.size - 1 and floor[hi + 1]:
        hi += 1
    return (lo + hi) / 2


def _split_component(
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
