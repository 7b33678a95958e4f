"""Overlay rendering (NumPy reference): HU windowing, 1-px outlines, preview montage.

Pure NumPy, no DICOM and no imaging library: the secondary-capture writer and the preview
PNG both draw with these functions, so a slice looks the same in PACS and in the preview.

Axis convention (``ct_triage.models.volume.Volume``): arrays are ``(z, y, x)``, z runs
inferior to superior, row 0 is anterior and column 0 is the patient's right.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]

#: Lung window (PS3.3 C.11.2.1.2 Window Center / Width), HU.
LUNG_WINDOW_CENTER = -600.0
LUNG_WINDOW_WIDTH = 1500.0

#: Outline colours (RGB): ground-glass opacity, consolidation, lung (subtle, blended).
GGO_COLOR: RGB = (255, 210, 0)
CONSOLIDATION_COLOR: RGB = (255, 40, 40)
LUNG_COLOR: RGB = (0, 170, 200)
#: Opacity of the lung outline (0-1); lesion outlines are opaque.
LUNG_OUTLINE_ALPHA = 0.45

#: Label values (same as ``ct_triage.models.segmentation.LesionLabel``; kernels import nothing
#: from models).
_GGO = 1
_CONSOLIDATION = 2


def window_to_uint8(
    hu: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    *,
    center: float = LUNG_WINDOW_CENTER,
    width: float = LUNG_WINDOW_WIDTH,
) -> npt.NDArray[np.uint8]:
    """Map HU to 0-255 with a linear window.

    Parameters
    ----------
    hu
        Array of any shape in Hounsfield units.
    center, width
        Window centre and width in HU (lung window W1500 / L-600 by default). The simple
        ``[c - w/2, c + w/2] -> [0, 255]`` mapping is used, not the exact PS3.3 C.11.2.1.2.1
        ``c - 0.5`` formula: the difference is below one grey level.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of the same shape.
    """
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    lo = center - width / 2.0
    scaled = (hu.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / width)
    out: npt.NDArray[np.uint8] = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    return out


def outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Inner 1-px boundary of a 2-D mask (4-connected).

    A pixel is on the outline when it is in ``mask`` and at least one of its four neighbours
    is not (pixels outside the image count as outside the mask).

    Parameters
    ----------
    mask
        Boolean ``(y, x)`` array.

    Returns
    -------
    numpy.ndarray
        Boolean ``(y, x)`` array.
    """
    if mask.ndim != 2:
        raise ValueError(f"outline expects a 2-D mask, got shape {mask.shape}")
    m: npt.NDArray[np.bool_] = mask.astype(bool, copy=False)
    padded = np.pad(m, 1, mode="constant", constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & m
    edge: npt.NDArray[np.bool_] = m & ~interior
    return edge


def burn_outlines(
    gray: npt.NDArray[np.uint8],
    lungs: npt.NDArray[np.integer],
    lesions: npt.NDArray[np.integer],
) -> npt.NDArray[np.uint8]:
    """Turn a grey slice into RGB with lung and lesion outlines burned in.

    Parameters
    ----------
    gray
        ``uint8`` ``(y, x)`` windowed slice (see :func:`window_to_uint8`).
    lungs
        ``(y, x)`` lung labels (0 background, >0 lung); outlined per label value, blended
        with :data:`LUNG_OUTLINE_ALPHA`.
    lesions
        ``(y, x)`` lesion labels (1 ground-glass opacity, 2 consolidation); outlined opaque.

    Returns
    -------
    numpy.ndarray
        ``uint8`` ``(y, x, 3)`` RGB image.
    """
    if gray.shape != lungs.shape or gray.shape != lesions.shape or gray.ndim != 2:
        raise ValueError(
            f"gray {gray.shape}, lungs {lungs.shape} and lesions {lesions.shape} "
            "must be the same 2-D shape"
        )
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    lung_edge = np.zeros(gray.shape, dtype=bool)
    for label in np.unique(lungs):
        if label != 0:
            lung_edge |= outline(lungs == label)
    if lung_edge.any():
        color = np.asarray(LUNG_COLOR, dtype=np.float32)
        px = rgb[lung_edge].astype(np.float32)
        rgb[lung_edge] = (px * (1 - LUNG_OUTLINE_ALPHA) + color * LUNG_OUTLINE_ALPHA + 0.5).astype(
            np.uint8
        )
    for label, color_ in ((_GGO, GGO_COLOR), (_CONSOLIDATION, CONSOLIDATION_COLOR)):
        edge = outline(lesions == label)
        if edge.any():
            rgb[edge] = color_
    return rgb


def render_slice(
    hu: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    lungs: npt.NDArray[np.integer],
    lesions: npt.NDArray[np.integer],
    *,
    center: float = LUNG_WINDOW_CENTER,
    width: float = LUNG_WINDOW_WIDTH,
) -> npt.NDArray[np.uint8]:
    """Window one ``(y, x)`` HU slice and burn its outlines in (RGB ``uint8``)."""
    return burn_outlines(window_to_uint8(hu, center=center, width=width), lungs, lesions)


def key_slices(
    lungs: npt.NDArray[np.integer],
    lesions: npt.NDArray[np.integer],
    max_slices: int,
) -> list[int]:
    """Choose the slice indices worth showing.

    Slices with lesion, evenly subsampled to at most ``max_slices`` (the slice with the most
    lesion always kept); when there is no lesion, up to ``min(max_slices, 5)`` evenly spaced
    slices through the lungs (through the whole volume when there are no lungs either).

    Parameters
    ----------
    lungs, lesions
        ``(z, y, x)`` label maps.
    max_slices
        Upper bound on the number of indices returned (>= 1).

    Returns
    -------
    list of int
        Sorted, unique z indices.
    """
    if max_slices < 1:
        raise ValueError(f"max_slices must be >= 1, got {max_slices}")
    if lungs.ndim != 3 or lungs.shape != lesions.shape:
        raise ValueError("lungs and lesions must be the same 3-D shape")
    area = np.count_nonzero(lesions.reshape(lesions.shape[0], -1), axis=1)
    with_lesion = np.flatnonzero(area)
    if with_lesion.size:
        if with_lesion.size <= max_slices:
            return [int(i) for i in with_lesion]
        picks = np.linspace(0, with_lesion.size - 1, max_slices).round().astype(int)
        chosen = set(with_lesion[picks].tolist())
        peak = int(np.argmax(area))
        if peak not in chosen:
            # Replace the pick nearest the peak so the count stays at max_slices.
            nearest = min(chosen, key=lambda i: abs(i - peak))
            chosen.discard(nearest)
            chosen.add(peak)
        return sorted(int(i) for i in chosen)
    lung_area = np.count_nonzero(lungs.reshape(lungs.shape[0], -1), axis=1)
    candidates = np.flatnonzero(lung_area)
    if candidates.size == 0:
        candidates = np.arange(lungs.shape[0])
    n = min(max_slices, 5, candidates.size)
    # Interior points of the span, so the first/last (tiny) lung slices are not shown.
    picks = np.linspace(0, candidates.size - 1, n + 2)[1:-1].round().astype(int)
    return sorted({int(candidates[i]) for i in picks})


def _resize_nearest(img: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    rows = np.minimum((np.arange(height) + 0.5) * img.shape[0] / height, img.shape[0] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * img.shape[1] / width, img.shape[1] - 1)
    out: npt.NDArray[np.uint8] = img[rows.astype(int)][:, cols.astype(int)]
    return out


def preview_montage(
    hu: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    lungs: npt.NDArray[np.integer],
    lesions: npt.NDArray[np.integer],
    spacing: tuple[float, float, float],
    *,
    n_axial: int = 3,
    tile_height: int = 320,
    gap: int = 4,
    background: RGB = (0, 0, 0),
) -> npt.NDArray[np.uint8]:
    """One RGB preview: the axial slices with most lesion plus a coronal reformat.

    Layout (legend-free): ``n_axial`` axial tiles then one coronal tile, in one row, all
    ``tile_height`` pixels high, separated by ``gap`` pixels of ``background``. Axial slices
    are those with the largest lesion area (evenly spaced lung slices when there is no
    lesion), shown in z order. The coronal reformat is taken at the row (y) with the most
    lesion (or the most lung), superior at the top, with its aspect ratio corrected for the
    voxel spacing.

    Parameters
    ----------
    hu
        ``(z, y, x)`` Hounsfield units.
    lungs, lesions
        ``(z, y, x)`` label maps on the same grid.
    spacing
        Voxel size in mm ``(z, y, x)``.
    n_axial
        Number of axial tiles (>= 1).
    tile_height
        Height of every tile in pixels.
    gap
        Pixels between tiles.
    background
        Colour of the gaps.

    Returns
    -------
    numpy.ndarray
        ``uint8`` ``(tile_height, W, 3)`` RGB image.
    """
    if hu.ndim != 3 or hu.shape != lungs.shape or hu.shape != lesions.shape:
        raise ValueError("hu, lungs and lesions must be the same 3-D shape")
    if n_axial < 1 or tile_height < 8 or gap < 0:
        raise ValueError("n_axial >= 1, tile_height >= 8 and gap >= 0 are required")
    sz, sy, sx = (float(s) for s in spacing)
    if not all(np.isfinite(s) and s > 0 for s in (sz, sy, sx)):
        sz, sy, sx = 1.0, 1.0, 1.0

    area = np.count_nonzero(lesions.reshape(lesions.shape[0], -1), axis=1)
    if area.any():
        order = np.argsort(-area, kind="stable")
        axial = sorted(int(i) for i in order[: min(n_axial, int(np.count_nonzero(area)))])
    else:
        axial = key_slices(lungs, lesions, n_axial)

    tiles: list[npt.NDArray[np.uint8]] = []
    axial_width = max(1, round(tile_height * (hu.shape[2] * sx) / (hu.shape[1] * sy)))
    for k in axial:
        rgb = render_slice(hu[k], lungs[k], lesions[k])
        tiles.append(_resize_nearest(rgb, tile_height, axial_width))

    per_row_lesion = np.count_nonzero(lesions, axis=(0, 2))
    per_row_lung = np.count_nonzero(lungs, axis=(0, 2))
    weights = per_row_lesion if per_row_lesion.any() else per_row_lung
    y = int(np.argmax(weights)) if weights.any() else hu.shape[1] // 2
    coronal = render_slice(hu[::-1, y, :], lungs[::-1, y, :], lesions[::-1, y, :])
    coronal_width = max(1, round(tile_height * (hu.shape[2] * sx) / (hu.shape[0] * sz)))
    tiles.append(_resize_nearest(coronal, tile_height, coronal_width))

    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    out = np.empty((tile_height, width, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    x0 = 0
    for t in tiles:
        out[:, x0 : x0 + t.shape[1]] = t
        x0 += t.shape[1] + gap
    logger.debug("preview montage: axial slices %s, coronal row %d", axial, y)
    return out
