"""Key lesion cross-sections: the largest lesion outline of each lung, for planar SR groups.

Viewers that list SR measurements by image coordinates (OHIF's measurement panel) show
only planar groups with a spatial coordinate (TID 1410, SCOORD in PS3.3 C.18.6). For each
lung this module finds the axial slice where that lung's lesions cover the largest area,
takes the largest connected lesion region there (holes filled), and traces its outline
along the outer edges of its pixels (closed), so the area the outline encloses is the area
reported.

Coordinates are DICOM image coordinates (PS3.3 C.18.6.1.2: column, row; the top-left corner
of the top-left pixel is ``0.0\\0.0``, so pixel ``(r, c)`` spans ``c..c+1`` by ``r..r+1``).
NumPy and SciPy only; no DICOM here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ct_triage.models.segmentation import LesionLabel, LungLabel, Segmentation

#: At most this many outline points per section (longer outlines are evenly thinned).
MAX_OUTLINE_POINTS: Final = 400


@dataclass(frozen=True, slots=True)
class KeySection:
    """The largest lesion cross-section of one lung.

    Parameters
    ----------
    side
        ``"right"`` or ``"left"``.
    slice_index
        Index ``z`` of the axial slice in the volume (and in the source headers).
    kind
        :class:`LesionLabel` holding most of the region's pixels (GGO or consolidation).
    area_mm2
        Area of the outlined region (pixels inside the outline, holes filled) in mm2.
    outline
        ``(n, 2)`` closed POLYLINE in DICOM image coordinates (column, row); first point
        equals the last.
    """

    side: str
    slice_index: int
    kind: LesionLabel
    area_mm2: float
    outline: npt.NDArray[np.float64]


def trace_outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Closed outline of one 8-connected region along its pixels' outer edges.

    The polygon follows the pixel edges between the region and the background, clockwise,
    with collinear points merged, so the area it encloses is exactly the region's pixel
    count (holes are not outlined: fill them first). Where two pixels of the region touch
    only at a corner, the outline passes through that corner (8-connectivity).

    Parameters
    ----------
    mask
        2-D boolean mask holding exactly one 8-connected region without holes.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` (column, row) DICOM image coordinates of pixel corners, ``n >= 5``,
        first == last. Outlines longer than :data:`MAX_OUTLINE_POINTS` are evenly thinned
        (the enclosed area is then approximate).
    """
    if mask.ndim != 2 or not mask.any():
        raise ValueError("mask must be a non-empty 2-D array")
    m = np.pad(mask.astype(bool), 1)
    rows, cols = np.nonzero(m)
    # directed boundary edges (x, y) -> (x, y) on pixel corners, interior on the right
    # (image coordinates, y down): top east, right south, bottom west, left north
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        if not m[r - 1, c]:
            outgoing.setdefault((c, r), []).append((c + 1, r))
        if not m[r, c + 1]:
            outgoing.setdefault((c + 1, r), []).append((c + 1, r + 1))
        if not m[r + 1, c]:
            outgoing.setdefault((c + 1, r + 1), []).append((c, r + 1))
        if not m[r, c - 1]:
            outgoing.setdefault((c, r + 1), []).append((c, r))
    start = (int(cols[0]), int(rows[0]))  # top-left corner of the top-most, left-most pixel
    points = [start]
    heading = (1, 0)
    vertex = start
    for _ in range(4 * len(rows) + 4):
        options = outgoing[vertex]
        if len(options) == 1:
            nxt = options[0]
        else:  # a corner where two pixels touch diagonally: turn left, stay 8-connected
            left = (heading[1], -heading[0])
            nxt = next(
                (o for o in options if (o[0] - vertex[0], o[1] - vertex[1]) == left),
                options[0],
            )
        options.remove(nxt)
        step = (nxt[0] - vertex[0], nxt[1] - vertex[1])
        if step == heading and len(points) > 1:
            points[-1] = nxt  # collinear: extend the current side
        else:
            points.append(nxt)
        heading, vertex = step, nxt
        if vertex == start:
            break
    if points[-1] != start:
        raise ValueError("outline did not close: the mask holds more than one region")
    if len(points) > MAX_OUTLINE_POINTS:
        keep = np.linspace(0, len(points) - 1, MAX_OUTLINE_POINTS).round().astype(int)
        points = [points[k] for k in sorted(set(keep.tolist()))]
        points[-1] = points[0]
    return np.asarray(points, dtype=np.float64) - 1.0  # undo the padding


def largest_cross_sections(segmentation: Segmentation) -> tuple[KeySection, ...]:
    """The largest lesion cross-section of each lung that has lesions (right first).

    Parameters
    ----------
    segmentation
        Lung and lesion label maps; ``spacing`` (z, y, x) in mm gives the areas.

    Returns
    -------
    tuple of KeySection
        Zero, one or two sections.
    """
    lungs, lesions = segmentation.lungs, segmentation.lesions
    pixel_mm2 = float(segmentation.spacing[1]) * float(segmentation.spacing[2])
    # Lesion voxels are a few percent of the volume: count them per slice and lung from
    # their flat indices (one pass over the volume instead of one per lung).
    flat = np.flatnonzero(lesions)
    slice_of = flat // (lungs.shape[1] * lungs.shape[2])
    lung_of = lungs.reshape(-1)[flat]
    out: list[KeySection] = []
    for side, label in (("right", LungLabel.RIGHT), ("left", LungLabel.LEFT)):
        per_slice = np.bincount(slice_of[lung_of == label], minlength=lungs.shape[0])
        if not per_slice.any():
            continue
        z = int(np.argmax(per_slice))
        inside_z = (lesions[z] > 0) & (lungs[z] == label)
        components, n = ndimage.label(inside_z, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        sizes[0] = 0
        region = components == int(np.argmax(sizes))
        filled = ndimage.binary_fill_holes(region)
        ggo = int(np.count_nonzero(region & (lesions[z] == LesionLabel.GGO)))
        consolidation = int(np.count_nonzero(region & (lesions[z] == LesionLabel.CONSOLIDATION)))
        out.append(
            KeySection(
                side=side,
                slice_index=z,
                kind=LesionLabel.GGO if ggo >= consolidation else LesionLabel.CONSOLIDATION,
                area_mm2=float(np.count_nonzero(filled)) * pixel_mm2,
                outline=trace_outline(np.asarray(filled, dtype=bool)),
            )
        )
    return tuple(out)
