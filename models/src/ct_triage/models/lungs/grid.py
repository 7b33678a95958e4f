"""The working grid of the lung segmentation (about 2 mm) and the way back to the original.

Steps 1 and 7 of :mod:`ct_triage.models.lungs`: integer block means of the HU down, labels
replicated up with the boundary band re-decided on the full-resolution HU; and the small
in-plane helpers the other steps share.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from ct_triage.kernels.accelerated import dilate_inplane_fast, erode_inplane_fast

#: Voxels below this HU are air (lung parenchyma is about -900..-700 HU).
AIR_THRESHOLD_HU: float = -380.0
_WORK_SPACING_XY_MM = 2.0
_WORK_SPACING_Z_MM = 2.0


def work_factors(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    fz = max(1, int(_WORK_SPACING_Z_MM / spacing[0] + 0.25))
    fy = max(1, int(_WORK_SPACING_XY_MM / spacing[1] + 0.25))
    fx = max(1, int(_WORK_SPACING_XY_MM / spacing[2] + 0.25))
    return fz, fy, fx


#: Output slices per step of :func:`block_mean` (its row sums stay in a small reused buffer).
_BLOCK_SLICES = 4


def block_mean(
    hu: npt.NDArray[np.int16] | npt.NDArray[np.float32], f: tuple[int, int, int]
) -> npt.NDArray[np.float32]:
    if f == (1, 1, 1):
        return hu.astype(np.float32)
    pads = [(0, (-n) % k) for n, k in zip(hu.shape, f, strict=True)]
    padded = np.pad(hu, pads, mode="edge") if any(p[1] for p in pads) else hu
    z, y, x = (s // k for s, k in zip(padded.shape, f, strict=True))
    n = f[0] * f[1] * f[2]
    if padded.dtype.kind in "iu" and padded.dtype.itemsize <= 2 and n <= 256:
        # integer HU: every partial sum is an integer below 2**24, so the float32 running sum
        # below is exact and equals this int32 one, done whole rows first, a few output
        # slices at a time in reused buffers (2.5x faster)
        total = np.zeros((z, y, x), dtype=np.int32)
        rows = np.empty((_BLOCK_SLICES * f[0], y, padded.shape[2]), dtype=np.int32)
        for start in range(0, z, _BLOCK_SLICES):
            src = padded[start * f[0] : (start + _BLOCK_SLICES) * f[0]]
            acc = rows[: src.shape[0]]
            np.copyto(acc, src[:, 0 :: f[1], :])
            for j in range(1, f[1]):
                np.add(acc, src[:, j :: f[1], :], out=acc)
            block = total[start : start + _BLOCK_SLICES]
            for i in range(f[0]):
                for k in range(f[2]):
                    block += acc[i :: f[0], :, k :: f[2]]
        out = total.astype(np.float32)
    else:
        out = np.zeros((z, y, x), dtype=np.float32)
        for i in range(f[0]):
            for j in range(f[1]):
                for k in range(f[2]):
                    np.add(out, padded[i :: f[0], j :: f[1], k :: f[2]], out=out)
    out /= np.float32(n)
    return out


#: The in-plane 8-neighbourhood as (dy, dx) offsets (INPLANE_CONNECTIVITY without the centre).
_INPLANE_OFFSETS: Final = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def upsample_labels(
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


def x_points_right(direction: tuple[float, ...]) -> bool:
    # direction is row-major 3x3 whose columns are the LPS vectors of the x, y, z axes:
    # element [0][0] is the L component of the x (column) axis.
    return float(direction[0]) < 0


def odd(n: float) -> int:
    k = max(1, round(n))
    return k if k % 2 else k + 1


def image_frame(shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """The image frame (first and last row and column) of every slice."""
    frame = np.zeros(shape, dtype=bool)
    frame[:, 0, :] = frame[:, -1, :] = frame[:, :, 0] = frame[:, :, -1] = True
    return frame


def inplane_steps(mm: float, spacing: tuple[float, float, float]) -> int:
    """How many one-pixel in-plane dilations or erosions reach ``mm`` (at least one)."""
    return max(1, math.ceil(mm / min(spacing[1], spacing[2])))
