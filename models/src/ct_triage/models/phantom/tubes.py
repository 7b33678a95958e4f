"""Tubes: vessels and airways, grown into each lung by recursive splitting of sample points,
and rastered as tapered capsules with partial-volume occupancy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ct_triage.models.phantom.spec import F32, F64, U8


@dataclass(frozen=True)
class Segment:
    a: tuple[float, float, float]  # (z, y, x) mm in array coordinates
    b: tuple[float, float, float]
    ra: float
    rb: float


def grow_tree(
    root: F64,
    pts: F64,
    r_root: float,
    rng: np.random.Generator,
    out: list[Segment],
    *,
    airway: list[Segment] | None = None,
    aw_min_n: int = 12,
) -> None:
    """Recursively split ``pts`` along their principal axis; each node is a centroid.

    Radii follow Murray's law (r^3 proportional to the flow, i.e. the number of points fed).
    When ``airway`` is given, a companion bronchus (offset beside the artery) is added for
    the nodes fed by at least ``aw_min_n`` points.
    """
    n_total = len(pts)
    stack: list[tuple[F64, F64, F64, float, bool]] = [(root, root, pts, r_root, True)]
    while stack:
        p, p_aw, sub, r_parent, first = stack.pop()
        n = len(sub)
        c = sub.mean(axis=0)
        q = p + (0.5 if first else 1.0) * (c - p)
        r = r_root * (n / n_total) ** (1.0 / 3.0)
        out.append(Segment(tuple(p), tuple(q), r_parent, r))
        q_aw = q
        if airway is not None and n >= aw_min_n:
            d = q - p
            perp = np.cross(d, [1.0, 0.0, 0.0])
            if np.linalg.norm(perp) < 1e-6:
                perp = np.cross(d, [0.0, 1.0, 0.0])
            perp /= np.linalg.norm(perp)
            q_aw = q + perp * (1.9 * r + 0.8)
            airway.append(Segment(tuple(p_aw), tuple(q_aw), 0.85 * r_parent, 0.85 * r))
        if n <= 3 or r < 0.7:
            continue
        centred = sub - c
        _, vecs = np.linalg.eigh(centred.T @ centred)
        proj = centred @ vecs[:, -1]
        cut = np.quantile(proj, rng.uniform(0.35, 0.65))
        left, right = sub[proj <= cut], sub[proj > cut]
        for part in (left, right):
            if len(part):
                stack.append((q, q_aw, part, r, False))


def raster_tube(
    hu: F32,
    seg: Segment,
    spacing: tuple[float, float, float],
    value: float,
    *,
    grow_mm: float = 0.0,
    scale: float = 1.0,
) -> None:
    """Blend a tapered capsule into ``hu`` with partial-volume occupancy."""
    dz, dy, dx = spacing
    ra, rb = seg.ra * scale + grow_mm, seg.rb * scale + grow_mm
    a, b = np.asarray(seg.a), np.asarray(seg.b)
    rmax = max(ra, rb) + max(dx, dz)
    lo = np.minimum(a, b) - rmax
    hi = np.maximum(a, b) + rmax
    sp = np.asarray(spacing)
    i0 = np.maximum(np.floor(lo / sp).astype(int), 0)
    i1 = np.minimum(np.ceil(hi / sp).astype(int) + 1, np.asarray(hu.shape))
    if np.any(i1 <= i0):
        return
    zz = (np.arange(i0[0], i1[0], dtype=np.float32) * dz)[:, None, None]
    yy = (np.arange(i0[1], i1[1], dtype=np.float32) * dy)[None, :, None]
    xx = (np.arange(i0[2], i1[2], dtype=np.float32) * dx)[None, None, :]
    v = b - a
    vv = float(v @ v) or 1e-6
    u = np.clip(((zz - a[0]) * v[0] + (yy - a[1]) * v[1] + (xx - a[2]) * v[2]) / vv, 0.0, 1.0)
    ez = zz - a[0] - u * v[0]
    # a thick slice sees a tube a slab away: shrink the z distance by the slab half-width
    ez = np.sign(ez) * np.maximum(np.abs(ez) - 0.5 * (dz - dx), 0.0)
    d = np.sqrt(ez * ez + (yy - a[1] - u * v[1]) ** 2 + (xx - a[2] - u * v[2]) ** 2)
    r = ra + u * (rb - ra)
    occ = np.clip((r - d) / dx + 0.5, 0.0, 1.0)
    horiz = math.hypot(v[1], v[2]) / math.sqrt(vv)
    occ *= min(1.0, (2.0 * max(ra, rb) + dx) / (2.0 * max(ra, rb) + dx + dz * horiz - dx * horiz))
    box = hu[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]]
    box += occ.astype(np.float32) * (np.float32(value) - box)


def lung_points(
    labels: U8, label: int, n: int, spacing: tuple[float, float, float], rng: np.random.Generator
) -> F64:
    """``n`` random points (mm, z/y/x) inside one lung, jittered within their voxel."""
    idx = np.flatnonzero(labels[:, ::2, ::2] == label)
    if len(idx) == 0:
        return np.zeros((0, 3))
    pick = rng.choice(idx, size=min(n, len(idx)), replace=False)
    zyx = np.stack(np.unravel_index(pick, labels[:, ::2, ::2].shape), axis=1).astype(float)
    zyx[:, 1:] *= 2.0
    out: F64 = (zyx + rng.uniform(-0.5, 0.5, zyx.shape)) * np.asarray(spacing)
    return out
