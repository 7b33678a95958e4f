"""Key lesion cross-sections: the largest lesion outline of each lung, for planar SR groups.

Viewers that list SR measurements by image coordinates (OHIF's measurement panel) show
only planar groups with a spatial coordinate (TID 1410, SCOORD in PS3.3 C.18.6). For each
lung this module finds the axial slice where that lung's lesions cover the largest area,
takes the largest connected lesion region there (holes filled), and traces its outline
through the centres of its boundary pixels (Moore-neighbour tracing, closed).

Coordinates are DICOM image coordinates (PS3.3 C.18.6.1.2: column, row; the top-left corner
of the top-left pixel is ``0.0\\0.0``, so the centre of pixel ``(r, c)`` is
``(c + 0.5, r + 0.5)``). NumPy and SciPy only; no DICOM here.
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

#: Moore neighbourhood, clockwise from west (row, column offsets).
_NEIGHBOURS: Final = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))


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
    """Closed outline of one 8-connected region through its boundary pixel centres.

    Parameters
    ----------
    mask
        2-D boolean mask holding exactly one 8-connected region.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` (column, row) DICOM image coordinates, ``n >= 4``, first == last. A
        region too small to have three boundary pixels (one or two pixels, a thin line) is
        outlined by its bounding box's pixel edges instead.
    """
    if mask.ndim != 2 or not mask.any():
        raise ValueError("mask must be a non-empty 2-D array")
    padded = np.pad(mask.astype(bool), 1)
    rows, cols = np.nonzero(padded)
    start = (int(rows[0]), int(cols[0]))  # top-most, then left-most: its west is empty
    points = [start]
    current, back = start, 0  # we "came" from the west neighbour
    seen: set[tuple[int, int, int]] = set()
    while True:
        for i in range(1, 9):
            d = (back + i) % 8
            nxt = (current[0] + _NEIGHBOURS[d][0], current[1] + _NEIGHBOURS[d][1])
            if padded[nxt]:
                break
        else:
            break  # an isolated pixel
        prev_d = (d - 1) % 8
        prev = (current[0] + _NEIGHBOURS[prev_d][0], current[1] + _NEIGHBOURS[prev_d][1])
        back = _NEIGHBOURS.index((prev[0] - nxt[0], prev[1] - nxt[1]))
        state = (nxt[0], nxt[1], back)
        if state in seen:
            break
        seen.add(state)
        current = nxt
        if current == start and len(points) > 1:
            break
        points.append(current)
    distinct = {p for p in points}
    if len(distinct) < 3:
        r0, r1 = int(rows.min()) - 1, int(rows.max())
        c0, c1 = int(cols.min()) - 1, int(cols.max())
        box = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
        return np.asarray(box, dtype=np.float64)
    if len(points) > MAX_OUTLINE_POINTS:
        keep = np.linspace(0, len(points) - 1, MAX_OUTLINE_POINTS).round().astype(int)
        points = [points[k] for k in sorted(set(keep.tolist()))]
    rc = np.asarray([*points, points[0]], dtype=np.float64) - 1.0 + 0.5
    return rc[:, ::-1].copy()


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
