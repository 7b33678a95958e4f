"""The body and the field of view: what is inside the patient, and what the scanner did
not reconstruct.

Step 2 of :mod:`ct_triage.models.lungs`: padding outside the reconstructed field of view
(:func:`outside_field_of_view`) is neither air nor tissue; the body is the largest tissue
component with its holes filled per slice (:func:`body_mask`), and air cut open by the
field of view but wrapped in the body elsewhere is a pocket of the body
(:func:`_border_pockets`).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from ct_triage.kernels.accelerated import (
    dilate_inplane_fast,
    erode_inplane_fast,
    fill_holes_inplane_fast,
    label_fast,
    label_inplane_fast,
)
from ct_triage.kernels.components import keep_components, label_counts
from ct_triage.models.lungs.grid import image_frame, inplane_steps

logger = logging.getLogger(__name__)

#: The air level assumed when too little air around the patient is seen to measure it.
DEFAULT_AIR_HU = -1000.0
#: An air piece touching the image border is a pocket of the body (a lung cut by a thorax crop)
#: when less than this share of its outline lies on the image border ...
_POCKET_MAX_BORDER = 0.25
#: ... and at least this share of the rest of its outline borders the body.
_POCKET_MIN_BODY = 0.4

#: An air piece cut by the field of view whose mean HU on the working grid is this much above
#: the air level is lung (parenchyma -900..-700 HU), not the air around the patient.
POCKET_MIN_LUNG_HU = 70.0
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
    for edge in _image_edges(lab):
        keep[edge] = True
    keep &= label_counts(lab, n) >= _FOV_MIN_PIXELS
    keep[0] = False
    result: npt.NDArray[np.bool_] = keep[lab]
    return result


def field_of_view_boundary(outside: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The voxels of the field of view on its boundary: the image frame and the ring just
    inside the padding of :func:`outside_field_of_view` (``outside``)."""
    boundary = image_frame(outside.shape)
    if outside.any():
        boundary |= dilate_inplane_fast(outside) & ~outside
    return boundary


def body_mask(
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
      ``DEFAULT_AIR_HU + POCKET_MIN_LUNG_HU``, it is at least ``2 * _POCKET_MIN_RADIUS_MM``
      thick, it reaches ``_POCKET_MIN_DEPTH_MM`` into the field of view (not a strip of air
      between the skin and a crop's edge) and ``_POCKET_MIN_BODY_LUNG`` of the rest of its
      outline borders the body (not the gap between the patient's back and the table);
    * a corner cut: less than ``_POCKET_MAX_BORDER`` of its outline lies on the boundary, it
      touches the image edge (not only a reconstruction circle, which the layers of a
      patient table cross) and at least ``_POCKET_MIN_BODY`` of the rest borders the body (a
      convex body cuts a corner with a curve no longer than the two border legs).

    Both rules also ask that at most ``_POCKET_MAX_NEAR_AIR`` of the piece lies within
    ``_POCKET_CLEAR_MM`` of the air around the patient: a lung is wrapped in the chest wall.

    ``air`` lies outside ``body`` (the filled body of :func:`body_mask`).
    """
    result = np.zeros_like(air)
    boundary = field_of_view_boundary(outside_fov)
    if not (air & boundary).any():
        return result
    lab, n = label_inplane_fast(air)
    on_boundary = lab[boundary & air]
    is_touching = np.zeros(n + 1, dtype=bool)
    is_touching[on_boundary] = True
    is_touching[0] = False
    cut = is_touching[lab]
    cut_lab = lab[cut]
    n_vox = np.bincount(cut_lab, minlength=n + 1).astype(np.float64)
    hu_sum = np.bincount(cut_lab, weights=hu[cut], minlength=n + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_hu = np.where(n_vox > 0, hu_sum / np.maximum(n_vox, 1), DEFAULT_AIR_HU)
    dense = mean_hu > DEFAULT_AIR_HU + POCKET_MIN_LUNG_HU
    # only a dense piece can be a pocket: one that is not dense (all of it air outside the
    # body) is part of ``outside_air`` below, so all of it lies near that air and it is never
    # clear; the shares below are counted on the dense pieces only
    candidate = is_touching & dense
    if not candidate.any():
        return result
    in_candidate = candidate[lab]
    # the outline away from the boundary (a staircase circle leaves two-pixel contacts)
    outline = (
        in_candidate
        & ~erode_inplane_fast(fill_holes_inplane_fast(cut))
        & ~dilate_inplane_fast(boundary)
    )
    near_body = outline & dilate_inplane_fast(body)
    n_edge = np.bincount(on_boundary, minlength=n + 1).astype(np.float64)
    on_image_edge = np.zeros(n + 1, dtype=bool)
    for edge in _image_edges(lab):
        on_image_edge[edge] = True
    n_outline = np.bincount(lab[outline], minlength=n + 1).astype(np.float64)
    n_body = np.bincount(lab[near_body], minlength=n + 1).astype(np.float64)
    total = n_edge + n_outline
    with np.errstate(divide="ignore", invalid="ignore"):
        border_share = np.where(total > 0, n_edge / np.maximum(total, 1), 1.0)
        body_share = np.where(n_outline > 0, n_body / np.maximum(n_outline, 1), 0.0)
    # thick enough to be lung: survives in-plane erosion to a _POCKET_MIN_RADIUS_MM core
    # (the air gap inside a patient table reads like lung foam but is a few mm thin)
    core = erode_inplane_fast(cut, inplane_steps(_POCKET_MIN_RADIUS_MM, spacing))
    thick = np.zeros(n + 1, dtype=bool)
    thick[lab[core & in_candidate]] = True
    # a strip of the air around the patient between the skin and a crop's edge can read
    # denser than air (partial volume, blankets) but it is shallow: it never reaches
    # _POCKET_MIN_DEPTH_MM into the field of view, a cut lung does
    reach = dilate_inplane_fast(boundary, inplane_steps(_POCKET_MIN_DEPTH_MM, spacing))
    deep = np.zeros(n + 1, dtype=bool)
    deep[lab[in_candidate & ~reach]] = True
    lung_like = dense & thick & deep
    # a lung is wrapped in the chest wall: little of it lies within _POCKET_CLEAR_MM of the
    # air around the patient; the air between the layers of a patient table (part of the
    # body's tissue component) lies a few mm from it
    outside_air = air & ~body & ~in_candidate
    near = dilate_inplane_fast(outside_air, inplane_steps(_POCKET_CLEAR_MM, spacing))
    n_near = np.bincount(lab[in_candidate & near], minlength=n + 1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        clear = np.where(n_vox > 0, n_near / np.maximum(n_vox, 1), 1.0) <= _POCKET_MAX_NEAR_AIR
    keep = (
        candidate
        & clear
        & (
            ((body_share >= _POCKET_MIN_BODY) & (border_share < _POCKET_MAX_BORDER) & on_image_edge)
            | (lung_like & (body_share >= _POCKET_MIN_BODY_LUNG))
        )
    )
    keep[0] = False
    if keep.any():
        logger.debug("lung segmentation: %d air pockets cut by the field of view", int(keep.sum()))
        result = keep_components(lab, keep)
    return result


def _image_edges(a: npt.NDArray[np.int32]) -> tuple[npt.NDArray[np.int32], ...]:
    """The first and last row and column of every slice of ``a`` (views, no copy)."""
    return a[:, 0, :], a[:, -1, :], a[:, :, 0], a[:, :, -1]
