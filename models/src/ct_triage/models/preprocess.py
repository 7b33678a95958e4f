"""Preprocessing for the 2-D lesion network: HU windowing, lung-box cropping and resampling.

Pure numpy (no torch, no scipy): the same functions run at inference and, to keep the two
identical, build the cached training inputs in :mod:`ct_triage.models.train`.

Resampling uses separable interpolation matrices, ``out = Ry @ img @ Rx.T``, with a triangle
(linear) kernel that widens when downsampling (antialiasing, as PIL's ``BILINEAR`` does).
A crop box may extend past the image: source pixels outside the image are treated as air,
which is ``0`` after :func:`window` because the window's lower bound is above -1024 HU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ct_triage.kernels.preprocess import interp_matrix as kernel_interp_matrix

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


def window(
    hu: npt.NDArray[np.integer] | npt.NDArray[np.floating], lo: float, hi: float
) -> FloatArray:
    """Clip Hounsfield units to ``[lo, hi]`` and scale them linearly to ``[0, 1]``.

    Parameters
    ----------
    hu
        Array of Hounsfield units, any shape.
    lo, hi
        The HU window; ``lo`` maps to 0 and ``hi`` to 1.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape.
    """
    if not hi > lo:
        raise ValueError(f"HU window must have hi > lo, got ({lo}, {hi})")
    out = np.asarray(hu, dtype=np.float32)
    out = (np.clip(out, lo, hi) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return out.astype(np.float32, copy=False)


def interp_matrix(
    n_out: int, n_in: int, *, offset: float, scale: float, renormalise: bool = False
) -> FloatArray:
    """Linear resampling matrix from ``n_in`` source samples to ``n_out`` output samples.

    Output sample ``i`` sits at the source coordinate ``offset + (i + 0.5) * scale - 0.5``
    (pixel centres at integers). The triangle kernel has half-width ``max(1, scale)``, so
    downsampling averages (antialiasing) and upsampling is plain linear interpolation.

    Parameters
    ----------
    n_out, n_in
        Number of output and source samples.
    offset
        Source coordinate of the left edge of output sample 0 (may be negative).
    scale
        Source samples per output sample.
    renormalise
        ``False``: weights that fall outside ``[0, n_in)`` are dropped (the outside counts
        as zero, i.e. air after :func:`window`). ``True``: each row is renormalised over the
        samples inside (edge extension), which keeps probabilities summing to one.

    Returns
    -------
    numpy.ndarray
        ``float32`` matrix of shape ``(n_out, n_in)``.
    """
    # One implementation, in the kernels package (the fused kernels use the same matrices).
    return kernel_interp_matrix(n_out, n_in, offset=offset, scale=scale, renormalise=renormalise)


@dataclass(frozen=True, slots=True)
class CropBox:
    """An axis-aligned in-plane box in pixel units of the source slice.

    The box covers source rows ``[y0, y0 + height)`` and columns ``[x0, x0 + width)``; it may
    extend past the image (the outside is air). Coordinates are floats: the box is resampled,
    never sliced.
    """

    y0: float
    x0: float
    height: float
    width: float

    def __post_init__(self) -> None:
        if not (self.height > 0 and self.width > 0):
            raise ValueError(f"CropBox must have a positive size, got {self}")


def square_box_around(
    y_range: tuple[float, float],
    x_range: tuple[float, float],
    *,
    margin_mm: float,
    spacing_yx: tuple[float, float],
) -> CropBox:
    """The smallest square box (in mm) around ``[y_min, y_max] x [x_min, x_max]`` plus a margin.

    Parameters
    ----------
    y_range, x_range
        Inclusive pixel index ranges of the object (e.g. the lung bounding box).
    margin_mm
        Margin added on each side, in mm (a few cm mimic a thorax crop).
    spacing_yx
        In-plane pixel spacing in mm ``(row, column)``.

    Returns
    -------
    CropBox
        Square in mm, centred on the object.
    """
    sy, sx = spacing_yx
    cy = 0.5 * (y_range[0] + y_range[1]) + 0.5
    cx = 0.5 * (x_range[0] + x_range[1]) + 0.5
    h_mm = (y_range[1] - y_range[0] + 1) * sy
    w_mm = (x_range[1] - x_range[0] + 1) * sx
    side_mm = max(h_mm, w_mm) + 2.0 * margin_mm
    hy, hx = side_mm / sy, side_mm / sx
    return CropBox(y0=cy - hy / 2, x0=cx - hx / 2, height=hy, width=hx)


def whole_image_box(shape_yx: tuple[int, int]) -> CropBox:
    """The square box centred on an image that contains all of it (shorter side padded)."""
    h, w = shape_yx
    side = float(max(h, w))
    return CropBox(y0=(h - side) / 2, x0=(w - side) / 2, height=side, width=side)


def crop_resize(images: npt.NDArray[np.floating], box: CropBox, size: int) -> FloatArray:
    """Resample the box of a stack of slices onto a ``size x size`` grid.

    Parameters
    ----------
    images
        ``(N, H, W)`` (or ``(H, W)``) values where 0 means air (windowed input, or one-hot
        label maps).
    box
        Source box; the outside of the image counts as 0.
    size
        Output side in pixels.

    Returns
    -------
    numpy.ndarray
        ``float32`` ``(N, size, size)`` (or ``(size, size)``).
    """
    h, w = images.shape[-2:]
    ry = interp_matrix(size, h, offset=box.y0, scale=box.height / size)
    rx = interp_matrix(size, w, offset=box.x0, scale=box.width / size)
    arr = np.asarray(images, dtype=np.float32)
    out: FloatArray = np.matmul(np.matmul(ry, arr), rx.T).astype(np.float32, copy=False)
    return out


def uncrop_resize(
    maps: npt.NDArray[np.floating], box: CropBox, shape_yx: tuple[int, int]
) -> tuple[FloatArray, tuple[slice, slice]]:
    """Resample network-grid maps back onto the part of the source slice that the box covers.

    Parameters
    ----------
    maps
        ``(..., S, S)`` maps on the network grid (e.g. class probabilities).
    box
        The box used by :func:`crop_resize`.
    shape_yx
        ``(H, W)`` of the source slice.

    Returns
    -------
    (numpy.ndarray, (slice, slice))
        The maps on the source pixels inside both the box and the image (rows renormalised
        at the box edge, so probabilities still sum to one), and the index of that region.
    """
    s_h, s_w = maps.shape[-2:]
    h, w = shape_yx
    ya, yb = max(0, math.floor(box.y0)), min(h, math.ceil(box.y0 + box.height))
    xa, xb = max(0, math.floor(box.x0)), min(w, math.ceil(box.x0 + box.width))
    if yb <= ya or xb <= xa:
        raise ValueError(f"crop box {box} does not overlap an image of shape {shape_yx}")
    sy, sx = s_h / box.height, s_w / box.width
    ry = interp_matrix(yb - ya, s_h, offset=(ya - box.y0) * sy, scale=sy, renormalise=True)
    rx = interp_matrix(xb - xa, s_w, offset=(xa - box.x0) * sx, scale=sx, renormalise=True)
    arr = np.asarray(maps, dtype=np.float32)
    out = np.matmul(np.matmul(ry, arr), rx.T).astype(np.float32, copy=False)
    return out, (slice(ya, yb), slice(xa, xb))


def lung_box(
    lungs: npt.NDArray[np.integer], spacing_yx: tuple[float, float], *, margin_mm: float
) -> CropBox | None:
    """The in-plane square box around all lung voxels of a ``(z, y, x)`` label map.

    One box for the whole volume (the union over slices) keeps the scale constant from apex
    to base, like the thorax crops the network was trained on. ``None`` when there is no lung.
    """
    any_y = np.flatnonzero(lungs.any(axis=(0, 2)))
    any_x = np.flatnonzero(lungs.any(axis=(0, 1)))
    if any_y.size == 0 or any_x.size == 0:
        return None
    return square_box_around(
        (float(any_y[0]), float(any_y[-1])),
        (float(any_x[0]), float(any_x[-1])),
        margin_mm=margin_mm,
        spacing_yx=spacing_yx,
    )
