"""Fused HU window + lung-box crop-and-resize, and its inverse fused with the arg-max.

The lesion network (``ct_triage.models.lesions``) sees each axial slice windowed to
``[lo, hi]`` HU, scaled to ``[0, 1]``, and resampled from a square box around the lungs onto
an ``S x S`` grid; its class probabilities are resampled back onto the slice and arg-maxed.
``ct_triage.models.preprocess`` does this in three passes over full 512 x 512 slices
(window everything, then ``Ry @ img @ Rx.T`` with dense matrices). Here:

* :func:`interp_matrix` is the same separable triangle-kernel matrix (antialiased when
  downsampling; outside the image counts as air = 0 after windowing);
* :func:`window_crop_resize_reference` is the plain composition (what the models code does);
* :func:`window_crop_resize` fuses the window into the resample and touches only the source
  rows/columns that the matrices weight (the box, not the whole slice): same values up to
  float32 summation order (``atol`` 1e-5 on ``[0, 1]`` data);
* :func:`uncrop_argmax` resamples probabilities back and takes the arg-max in one step.

The accelerated torch versions are in :mod:`ct_triage.kernels.accelerated`. Kernels import
nothing from ``ct_triage.models``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

__all__ = [
    "Box",
    "interp_matrix",
    "support",
    "uncrop_argmax",
    "uncrop_argmax_reference",
    "uncrop_region",
    "window_crop_resize",
    "window_crop_resize_reference",
]

FloatArray = npt.NDArray[np.float32]
#: Source pixels per chunk of :func:`window_crop_resize` (16 slices of 512 x 512).
_CHUNK_PIXELS = 16 * 512 * 512


@dataclass(frozen=True, slots=True)
class Box:
    """In-plane box ``[y0, y0 + height) x [x0, x0 + width)`` in source pixels (may overhang)."""

    y0: float
    x0: float
    height: float
    width: float


def interp_matrix(
    n_out: int, n_in: int, *, offset: float, scale: float, renormalise: bool = False
) -> FloatArray:
    """Linear resampling matrix ``(n_out, n_in)``; see ``ct_triage.models.preprocess``.

    Output sample ``i`` sits at source coordinate ``offset + (i + 0.5) * scale - 0.5``; the
    triangle kernel has half-width ``max(1, scale)``. ``renormalise=False`` drops weights
    outside ``[0, n_in)`` (outside is 0); ``True`` renormalises each row over the inside.
    """
    if n_out <= 0 or n_in <= 0 or not scale > 0:
        raise ValueError(f"bad resampling request: n_out={n_out}, n_in={n_in}, scale={scale}")
    half = max(1.0, scale)
    centres = offset + (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    j_lo = math.floor(float(centres.min()) - half)
    j_hi = math.ceil(float(centres.max()) + half)
    j = np.arange(j_lo, j_hi + 1, dtype=np.float64)
    w = np.maximum(0.0, 1.0 - np.abs(j[None, :] - centres[:, None]) / half)
    total = w.sum(axis=1, keepdims=True)
    inside = (j >= 0) & (j < n_in)
    w_in = w[:, inside]
    norm = w_in.sum(axis=1, keepdims=True) if renormalise else total
    w_in = np.divide(w_in, norm, out=np.zeros_like(w_in), where=norm > 0)
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    mat[:, j[inside].astype(np.int64)] = w_in
    return mat.astype(np.float32)


def support(mat: npt.NDArray[np.floating]) -> slice:
    """The smallest column range holding every non-zero weight of ``mat`` (maybe empty)."""
    cols = np.flatnonzero(np.any(mat != 0, axis=0))
    if cols.size == 0:
        return slice(0, 0)
    return slice(int(cols[0]), int(cols[-1]) + 1)


def _check_window(lo: float, hi: float) -> None:
    if not hi > lo:
        raise ValueError(f"HU window must have hi > lo, got ({lo}, {hi})")


def _matrices(shape_yx: tuple[int, int], box: Box, size: int) -> tuple[FloatArray, FloatArray]:
    h, w = shape_yx
    ry = interp_matrix(size, h, offset=box.y0, scale=box.height / size)
    rx = interp_matrix(size, w, offset=box.x0, scale=box.width / size)
    return ry, rx


def window_crop_resize_reference(
    hu: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    box: Box,
    size: int,
    lo: float,
    hi: float,
) -> FloatArray:
    """Reference: window every pixel, then ``Ry @ img @ Rx.T`` with the full matrices.

    Parameters
    ----------
    hu
        ``(N, H, W)`` Hounsfield units.
    box
        Source box (outside the image is air, 0 after the window).
    size
        Output side ``S``.
    lo, hi
        HU window mapped to ``[0, 1]`` (clipped).

    Returns
    -------
    numpy.ndarray
        ``float32`` ``(N, S, S)``.
    """
    _check_window(lo, hi)
    win = (np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - np.float32(lo)) * np.float32(
        1.0 / (hi - lo)
    )
    ry, rx = _matrices(hu.shape[-2:], box, size)
    out: FloatArray = np.matmul(np.matmul(ry, win), rx.T).astype(np.float32, copy=False)
    return out


def window_crop_resize(
    hu: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    box: Box,
    size: int,
    lo: float,
    hi: float,
) -> FloatArray:
    """Fused NumPy version of :func:`window_crop_resize_reference` (same arguments).

    Only the source rows and columns with a non-zero weight are windowed and multiplied,
    and the smaller of the two matrix products is done first. Equal to the reference within
    float32 rounding (``atol`` 1e-5).
    """
    _check_window(lo, hi)
    ry, rx = _matrices(hu.shape[-2:], box, size)
    ys, xs = support(ry), support(rx)
    n = hu.shape[0]
    out: FloatArray = np.zeros((n, size, size), dtype=np.float32)
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return out
    ry_s = np.ascontiguousarray(ry[:, ys])
    rx_t = np.ascontiguousarray(rx[:, xs].T)
    h, w = ys.stop - ys.start, xs.stop - xs.start
    scale = np.float32(1.0 / (hi - lo))
    # chunks of slices: the float32 copy stays in cache-sized buffers that are reused, and
    # each chunk is two large GEMMs instead of many small broadcast ones
    step = max(1, min(n, _CHUNK_PIXELS // (h * w)))
    buf = np.empty((step, h, w), dtype=np.float32)
    for start in range(0, n, step):
        c = min(step, n - start)
        sub = buf[:c]
        np.copyto(sub, hu[start : start + c, ys, xs], casting="unsafe")
        np.clip(sub, lo, hi, out=sub)
        sub -= np.float32(lo)
        sub *= scale
        cols = (sub.reshape(c * h, w) @ rx_t).reshape(c, h, size)
        rows = ry_s @ cols.transpose(1, 0, 2).reshape(h, c * size)
        out[start : start + c] = rows.reshape(size, c, size).transpose(1, 0, 2)
    return out


def uncrop_region(box: Box, shape_yx: tuple[int, int]) -> tuple[slice, slice]:
    """The source pixels covered by both the box and the image (rows, columns)."""
    h, w = shape_yx
    ya, yb = max(0, math.floor(box.y0)), min(h, math.ceil(box.y0 + box.height))
    xa, xb = max(0, math.floor(box.x0)), min(w, math.ceil(box.x0 + box.width))
    if yb <= ya or xb <= xa:
        raise ValueError(f"crop box {box} does not overlap an image of shape {shape_yx}")
    return slice(ya, yb), slice(xa, xb)


def _uncrop_matrices(
    s_h: int, s_w: int, box: Box, region: tuple[slice, slice]
) -> tuple[FloatArray, FloatArray]:
    ys, xs = region
    sy, sx = s_h / box.height, s_w / box.width
    ry = interp_matrix(
        ys.stop - ys.start, s_h, offset=(ys.start - box.y0) * sy, scale=sy, renormalise=True
    )
    rx = interp_matrix(
        xs.stop - xs.start, s_w, offset=(xs.start - box.x0) * sx, scale=sx, renormalise=True
    )
    return ry, rx


def uncrop_argmax_reference(
    probs: npt.NDArray[np.floating], box: Box, shape_yx: tuple[int, int]
) -> tuple[npt.NDArray[np.uint8], tuple[slice, slice]]:
    """Reference: resample ``(N, K, S, S)`` probabilities onto the slice region, arg-max.

    Returns
    -------
    (numpy.ndarray, (slice, slice))
        ``uint8`` ``(N, h, w)`` classes on the region, and the region.
    """
    region = uncrop_region(box, shape_yx)
    ry, rx = _uncrop_matrices(probs.shape[-2], probs.shape[-1], box, region)
    back = np.matmul(np.matmul(ry, np.asarray(probs, dtype=np.float32)), rx.T)
    return np.argmax(back, axis=1).astype(np.uint8), region


def uncrop_argmax(
    probs: npt.NDArray[np.floating], box: Box, shape_yx: tuple[int, int]
) -> tuple[npt.NDArray[np.uint8], tuple[slice, slice]]:
    """NumPy fast path of :func:`uncrop_argmax_reference`.

    Resampling is a convex combination (non-negative weights summing to 1), so a pixel whose
    source neighbourhood on the network grid is background everywhere (class 0 strictly more
    probable than every other class) is background after resampling too. Only the rectangle
    of output pixels that reaches a non-background source pixel is resampled, slice by slice;
    a slice without any is all background. The arg-max runs over the class axis with a running
    maximum. Classes equal the reference except where two classes tie within float32 rounding.
    """
    region = uncrop_region(box, shape_yx)
    ry, rx = _uncrop_matrices(probs.shape[-2], probs.shape[-1], box, region)
    arr = np.asarray(probs, dtype=np.float32)
    n, k = arr.shape[:2]
    labels = np.zeros((n, ry.shape[0], rx.shape[0]), dtype=np.uint8)
    if k < 2:
        return labels, region
    # source pixels where some lesion class is at least as probable as the background
    lesion = np.any(arr[:, 1:] >= arr[:, :1], axis=1)
    ry_used, rx_used = ry != 0, rx != 0
    for i in range(n):
        src_rows = lesion[i].any(axis=1)
        if not src_rows.any():
            continue
        src_cols = lesion[i].any(axis=0)
        rows = np.flatnonzero(ry_used[:, src_rows].any(axis=1))
        cols = np.flatnonzero(rx_used[:, src_cols].any(axis=1))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        ry_i, rx_t = ry[r0:r1], np.ascontiguousarray(rx[c0:c1].T)
        best = ry_i @ arr[i, 0] @ rx_t
        out = labels[i, r0:r1, c0:c1]
        for cls in range(1, k):
            cand = ry_i @ arr[i, cls] @ rx_t
            out[cand > best] = cls  # strict: the first maximum wins, as np.argmax
            np.maximum(best, cand, out=best)
    return labels, region
