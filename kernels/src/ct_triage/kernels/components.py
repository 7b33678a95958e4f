"""Connected components and per-label counts: the plain NumPy/SciPy reference.

These are the hot post-processing ops of the lung and lesion pipeline
(:mod:`ct_triage.models.lungs`, :mod:`ct_triage.models.postprocess`). Each function is the
reference implementation an accelerated version must match voxel for voxel.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

__all__ = [
    "FACE_CONNECTIVITY",
    "FULL_CONNECTIVITY",
    "INPLANE_CONNECTIVITY",
    "dilate_inplane",
    "erode_inplane",
    "fill_holes_inplane",
    "keep_components",
    "label",
    "label_counts",
    "nearest_label_within",
    "remove_small_components",
]

#: 8-connectivity inside each axial slice, no connection across slices.
INPLANE_CONNECTIVITY: npt.NDArray[np.bool_] = np.zeros((3, 3, 3), dtype=bool)
INPLANE_CONNECTIVITY[1] = True
#: 26-connectivity in 3-D.
FULL_CONNECTIVITY: npt.NDArray[np.bool_] = np.ones((3, 3, 3), dtype=bool)
#: 6-connectivity (faces only) in 3-D.
FACE_CONNECTIVITY: npt.NDArray[np.bool_] = ndi.generate_binary_structure(3, 1)


def label(
    mask: npt.NDArray[np.bool_], structure: npt.NDArray[np.bool_] | None = None
) -> tuple[npt.NDArray[np.int32], int]:
    """Label the connected components of a binary mask.

    Parameters
    ----------
    mask
        Boolean array.
    structure
        Connectivity; defaults to :data:`FACE_CONNECTIVITY` for 3-D input (scipy's default).

    Returns
    -------
    labels, n
        ``int32`` label image (0 background, 1..n components) and the number of components.
    """
    lab, n = ndi.label(mask, structure=structure, output=np.int32)
    return lab, int(n)


def label_counts(labels: npt.NDArray[np.integer], n_labels: int) -> npt.NDArray[np.int64]:
    """Voxel count of every label value ``0..n_labels`` (``np.bincount``, one pass).

    Parameters
    ----------
    labels
        Non-negative integer label image.
    n_labels
        The largest label value expected; the result has ``n_labels + 1`` entries.

    Returns
    -------
    numpy.ndarray
        ``int64`` counts, index = label value (index 0 counts the background).
    """
    flat = labels.ravel()
    if flat.dtype == np.uint64:
        flat = flat.astype(np.intp)
    counts = np.bincount(flat, minlength=n_labels + 1)
    if counts.size > n_labels + 1:  # checked after counting: no extra pass for the maximum
        raise ValueError(f"label value {counts.size - 1} exceeds n_labels={n_labels}")
    return counts.astype(np.int64, copy=False)


def keep_components(
    labels: npt.NDArray[np.int32], keep: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Mask of the components whose entry in ``keep`` (indexed by label, 0 ignored) is true."""
    lut = keep.astype(bool).copy()
    lut[0] = False
    result: npt.NDArray[np.bool_] = lut[labels]
    return result


def remove_small_components(
    mask: npt.NDArray[np.bool_],
    min_voxels: int,
    structure: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.bool_]:
    """Drop the connected components of ``mask`` with fewer than ``min_voxels`` voxels.

    Parameters
    ----------
    mask
        Boolean array.
    min_voxels
        Components strictly smaller than this are removed; ``<= 1`` keeps everything.
    structure
        Connectivity (see :func:`label`).

    Returns
    -------
    numpy.ndarray
        Boolean array of the same shape.
    """
    if min_voxels <= 1 or not mask.any():
        return mask.astype(bool, copy=True)
    lab, n = label(mask, structure)
    counts = label_counts(lab, n)
    return keep_components(lab, counts >= min_voxels)


def nearest_label_within(
    labels: npt.NDArray[np.integer],
    spacing: tuple[float, ...],
    query: npt.NDArray[np.bool_],
    max_distance: float,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]]:
    """Distance to, and value of, the nearest labelled voxel, for the ``query`` voxels.

    The reference: one exact Euclidean feature transform (``scipy.ndimage``) with indices
    over the whole array.

    Parameters
    ----------
    labels
        Label image with values ``0..255`` (0 is unlabelled).
    spacing
        Voxel spacing per axis (mm); distances are in the same unit.
    query
        Boolean mask (same shape) of the voxels asked about.
    max_distance
        Farther than this, the answer is ``inf`` and label 0.

    Returns
    -------
    distance, nearest
        For the query voxels in C order (``labels[query]``'s order): ``float64`` distance
        (0 on labelled voxels) and the ``uint8`` label of the nearest labelled voxel. Where
        two labels are equally near, either may be returned.
    """
    if labels.shape != query.shape:
        raise ValueError(f"labels {labels.shape} and query {query.shape} differ in shape")
    if labels.size and int(labels.max()) > 255:
        raise ValueError("labels must be in 0..255")
    lab = labels.astype(np.uint8, copy=False)
    n = int(np.count_nonzero(query))
    if not lab.any():
        return np.full(n, np.inf), np.zeros(n, dtype=np.uint8)
    dist, idx = ndi.distance_transform_edt(lab == 0, sampling=spacing, return_indices=True)
    d = np.asarray(dist[query], dtype=np.float64)
    nearest = lab[tuple(i[query] for i in idx)]
    far = d > max_distance
    d[far] = np.inf
    nearest[far] = 0
    return d, nearest


def fill_holes_inplane(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Fill the holes of every axial slice of a ``(z, y, x)`` mask (background 8-connected).

    A hole is a background piece of a slice that does not reach the slice's edge. The
    reference: ``scipy.ndimage.binary_fill_holes`` with :data:`INPLANE_CONNECTIVITY`.
    """
    filled: npt.NDArray[np.bool_] = ndi.binary_fill_holes(mask, INPLANE_CONNECTIVITY)
    return filled


def dilate_inplane(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """One in-plane dilation of a ``(z, y, x)`` mask by the 3 x 3 square (outside is False).

    The reference: ``scipy.ndimage.binary_dilation`` with :data:`INPLANE_CONNECTIVITY`.
    """
    out: npt.NDArray[np.bool_] = ndi.binary_dilation(mask, INPLANE_CONNECTIVITY)
    return out


def erode_inplane(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """One in-plane erosion of a ``(z, y, x)`` mask by the 3 x 3 square (outside is True).

    The reference: ``scipy.ndimage.binary_erosion`` with :data:`INPLANE_CONNECTIVITY` and
    ``border_value=1``.
    """
    out: npt.NDArray[np.bool_] = ndi.binary_erosion(mask, INPLANE_CONNECTIVITY, border_value=1)
    return out
