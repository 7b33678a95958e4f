"""The anatomy template: body wall, ribs, spine, mediastinum, diaphragm and the two lungs.

All lengths are in mm, in thorax coordinates (x to the patient's left, y posterior); the
cranio-caudal position is the template height ``t`` (0 at the lung bases, 1 above the
apices). :func:`draw_anatomy` draws the patient from the seed and :func:`compose_chunk`
builds the base HU and lung labels of a run of slices (no vessels, airways or lesions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ct_triage.models.phantom.spec import F32, U8, Bool, PhantomSpec
from ct_triage.models.segmentation import LungLabel


@dataclass(frozen=True)
class Anatomy:
    A: float  # body half-width at the widest level
    fat: float
    muscle: float
    muscle_post: float
    rib_t: float
    A_c: float  # thoracic cavity half-width
    B_c: float  # thoracic cavity half-depth
    y_shift: float  # thorax y of the image centre
    t_dome_r: float
    t_dome_l: float
    t_apex: float
    t_carina: float
    t_arch: float
    heart_dx: float
    rib_pitch: float
    rib_drop: float
    rib_phase: float
    vert_phase: float
    blood_hu: float
    tex: tuple[tuple[float, float, float, float, float, float], ...]

    @property
    def r_vb(self) -> float:
        return 17.0

    @property
    def y_vb(self) -> float:
        return self.B_c - 0.45 * self.r_vb

    @property
    def y_oes(self) -> float:
        return self.y_vb - self.r_vb - 8.0

    @property
    def y_tr(self) -> float:
        return self.y_oes - 19.0

    def hilum(self, side: int) -> tuple[float, float, float]:
        """Thorax (x, y, t) of the arterial root of a lung (side -1 right, +1 left)."""
        return (side * 16.0, -0.05 * self.B_c, self.t_carina - 0.05)


def draw_anatomy(spec: PhantomSpec) -> Anatomy:
    rng = np.random.default_rng([spec.seed, 1])
    fov = min(spec.rows, spec.cols) * spec.pixel_spacing_mm
    A = spec.body_fill * fov
    fat = float(rng.uniform(8.0, 24.0))
    muscle = float(rng.uniform(8.0, 13.0))
    rib_t = 7.0
    A_c = A - fat - muscle - rib_t
    B_c = A_c * float(rng.uniform(0.62, 0.72))
    muscle_post = float(rng.uniform(40.0, 50.0))
    ry_ant = B_c + rib_t + muscle + fat
    ry_post = B_c + rib_t + muscle_post + fat
    t_dome_r = float(rng.uniform(0.27, 0.31))
    tex = tuple(
        (
            float(rng.uniform(0.02, 0.06)),
            float(rng.uniform(0.02, 0.06)),
            float(rng.uniform(0.02, 0.06)),
            float(rng.uniform(0, 2 * np.pi)),
            float(rng.uniform(0, 2 * np.pi)),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for _ in range(3)
    )
    return Anatomy(
        A=A,
        fat=fat,
        muscle=muscle,
        muscle_post=muscle_post,
        rib_t=rib_t,
        A_c=A_c,
        B_c=B_c,
        y_shift=0.5 * (ry_post - ry_ant),
        t_dome_r=t_dome_r,
        t_dome_l=t_dome_r - float(rng.uniform(0.03, 0.06)),
        t_apex=float(rng.uniform(0.92, 0.95)),
        t_carina=float(rng.uniform(0.60, 0.65)),
        t_arch=float(rng.uniform(0.70, 0.74)),
        heart_dx=float(rng.uniform(0.10, 0.20)) * A_c,
        rib_pitch=float(rng.uniform(22.0, 27.0)),
        rib_drop=float(rng.uniform(55.0, 80.0)),
        rib_phase=float(rng.uniform(0.0, 30.0)),
        vert_phase=float(rng.uniform(0.0, 25.0)),
        blood_hu=250.0 if spec.contrast else 40.0,
        tex=tex,
    )


def _ell(X: F32, Y: F32, cx: Any, cy: Any, rx: Any, ry: Any) -> Bool:
    """Inside an axis-aligned ellipse (parameters may broadcast along z)."""
    rx = np.maximum(rx, 1e-3)
    ry = np.maximum(ry, 1e-3)
    out: Bool = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 < 1.0
    return out


def _ell2(X: F32, Y: F32, rx: Any, ry_ant: Any, ry_post: Any) -> Bool:
    """Inside an ellipse centred at 0 with a different half-depth anterior and posterior."""
    ry = np.where(Y > 0, ry_post, ry_ant)
    out: Bool = (X / rx) ** 2 + (Y / ry) ** 2 < 1.0
    return out


def _tube2d(X: F32, Y: F32, p0: tuple[float, float], p1: tuple[float, float], r: float) -> Bool:
    """In-plane capsule of radius ``r`` around the segment ``p0``-``p1``."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    u = np.clip(((X - p0[0]) * vx + (Y - p0[1]) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    out: Bool = (X - p0[0] - u * vx) ** 2 + (Y - p0[1] - u * vy) ** 2 < r * r
    return out


def _band(t: F32, lo: float, hi: float) -> Bool:
    out: Bool = (t >= lo) & (t <= hi)
    return out


def _cap(t: F32, centre: float, half: float) -> F32:
    """Ellipsoidal radius factor along z: 1 at ``centre``, 0 beyond ``half``."""
    out: F32 = np.sqrt(np.clip(1.0 - ((t - centre) / half) ** 2, 0.0, 1.0)).astype(np.float32)
    return out


def _texture(an: Anatomy, X: F32, Y: F32, Z: F32) -> F32:
    """Smooth pseudo-random texture in about [-1, 1] (products of separable cosines)."""
    out = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), np.float32)
    for kx, ky, kz, px, py, pz in an.tex:
        cx = np.cos(kx * X + px).astype(np.float32)
        cy = np.cos(ky * Y + py).astype(np.float32)
        cz = np.cos(kz * Z + pz).astype(np.float32)
        out += cz * (cy * cx)
    out *= np.float32(1.0 / math.sqrt(len(an.tex) / 8.0) / 2.0)
    return out


def dome_t(an: Anatomy, X: F32, Y: F32) -> F32:
    """Height (in template units t) of the diaphragm under each in-plane point."""
    v = Y / an.B_c
    post = 0.05 * np.clip(v, 0.0, 1.0)
    right = an.t_dome_r - 0.16 * (
        ((X + 0.45 * an.A_c) / (0.6 * an.A_c)) ** 2 + ((v + 0.1) / 0.8) ** 2
    )
    left = an.t_dome_l - 0.16 * (
        ((X - 0.45 * an.A_c) / (0.6 * an.A_c)) ** 2 + ((v + 0.1) / 0.8) ** 2
    )
    out: F32 = (np.maximum(right, left) - post).astype(np.float32)
    return out


def compose_chunk(an: Anatomy, X: F32, Y: F32, t: F32, Z: F32, dome: F32) -> tuple[F32, U8]:
    """Base anatomy (no vessels, airways or lesions) for the slices with template heights ``t``.

    Returns the HU array and the lung labels of the chunk.
    """
    shape = (t.shape[0], Y.shape[1], X.shape[2])
    hu = np.full(shape, -1000.0, np.float32)

    def put(mask: Any, value: float) -> None:
        np.copyto(hu, np.float32(value), where=mask)

    s = (1.0 - 0.22 * np.clip((t - 0.35) / 0.65, 0.0, 1.0) ** 1.5).astype(np.float32)
    A_c, B_c = an.A_c * s, an.B_c * s
    A_r, B_r = A_c + an.rib_t, B_c + an.rib_t
    A_m, B_m = A_r + an.muscle, B_r + an.muscle
    B_mp = B_r + an.muscle_post
    # body, subcutaneous fat, muscle layer
    body = _ell2(X, Y, A_m + an.fat, B_m + an.fat, B_mp + an.fat)
    put(body, -100.0)
    put(_ell2(X, Y, A_m, B_m, B_mp), 40.0)
    for side in (-1.0, 1.0):  # paraspinal muscles
        put(_ell(X, Y, side * 32.0, B_c + 30.0, 30.0, 24.0) & (B_c < Y) & body, 48.0)
    # rib ring: intercostal muscle, ribs (cortex + marrow) and costal cartilage
    ring = _ell(X, Y, 0.0, 0.0, A_r, B_r) & ~_ell(X, Y, 0.0, 0.0, A_c, B_c)
    theta = np.arctan2(Y / (an.B_c + an.rib_t), X / (an.A_c + an.rib_t))  # elliptic angle
    deg = np.degrees(theta)
    s_rib = an.rib_drop * (1.0 - np.sin(theta)) / 2.0
    phase = np.mod((Z + an.rib_phase + s_rib) / an.rib_pitch, 1.0)
    w = 0.45
    in_ribs = (phase < w) & (np.abs(deg - 90.0) > 12.0) & _band(t, -0.1, 0.97)
    cart = np.abs(deg + 90.0) < 40.0
    sternal = np.abs(deg + 90.0) < 14.0
    rib_core = (
        _ell(X, Y, 0.0, 0.0, A_r - 1.6, B_r - 1.6)
        & ~_ell(X, Y, 0.0, 0.0, A_c + 1.6, B_c + 1.6)
        & (phase > 0.2 * w)
        & (phase < 0.8 * w)
    )
    bone = ring & in_ribs & ~cart
    put(bone, 800.0)
    put(bone & rib_core, 220.0)
    put(ring & in_ribs & cart & ~sternal, 110.0)
    # sternum
    st = _ell(X, Y, 0.0, -(B_c + 0.5 * an.rib_t), 16.0, 6.5) & _band(t, 0.28, 0.90)
    put(st, 650.0)
    put(st & _ell(X, Y, 0.0, -(B_c + 0.5 * an.rib_t), 13.5, 4.0), 200.0)

    cavity = _ell(X, Y, 0.0, 0.0, A_c, B_c)
    put(cavity, -85.0)  # mediastinal / extrapleural fat
    below = t < dome
    abdomen = cavity & below
    put(abdomen & (0.3 * an.A_c > X), 58.0)  # liver
    put(abdomen & (0.3 * an.A_c <= X), 42.0)  # spleen / stomach wall

    # mediastinal structures (geometry), drawn after the lungs are cut out
    x_h, y_h = an.heart_dx, -0.2 * an.B_c
    t_hc, t_hh = an.t_dome_l + 0.09, 0.17
    t_htop = t_hc + t_hh
    r_h = _cap(t, t_hc, t_hh)
    heart_rx, heart_ry = 0.45 * an.A_c * r_h, 0.5 * an.B_c * r_h
    y_aa, x_aa = -0.2 * an.B_c, -6.0
    x_ad, y_ad = an.r_vb + 12.0, an.y_vb - 8.0
    x_pt, y_pt = 20.0, -0.38 * an.B_c
    t_pa = an.t_carina - 0.03
    hil_r, hil_l = an.hilum(-1), an.hilum(1)
    tv = t[:, 0, 0]
    # (slices, region, region + pleural margin, HU); 2-D regions apply to a range of slices
    structures: list[tuple[slice, Bool, Bool, float]] = []

    def add(region_fn: Any, hu_value: float, lo: float = -9.0, hi: float = 9.0) -> None:
        idx = np.flatnonzero((tv >= lo) & (tv <= hi))
        if len(idx):
            ks = slice(int(idx[0]), int(idx[-1]) + 1)
            structures.append((ks, region_fn(ks, 0.0), region_fn(ks, 3.0), hu_value))

    def add2d(region_fn: Any, hu_value: float, lo: float = -9.0, hi: float = 9.0) -> None:
        add(lambda ks, m: region_fn(m), hu_value, lo, hi)

    def heart(ks: slice, m: float) -> Bool:
        out: Bool = _ell(X, Y, x_h, y_h, heart_rx[ks] + m, heart_ry[ks] + m) & ~below[ks]
        return out

    add(heart, 48.0, t_hc - t_hh, t_htop)
    add2d(lambda m: _ell(X, Y, 0.0, an.y_vb, an.r_vb + m, an.r_vb + m), 230.0)
    add2d(lambda m: _ell(X, Y, x_ad, y_ad, 12.0 + m, 12.0 + m), an.blood_hu, hi=an.t_arch)
    add2d(
        lambda m: _ell(X, Y, x_aa, y_aa, 15.0 + m, 15.0 + m), an.blood_hu, t_htop - 0.08, an.t_arch
    )
    mid = (26.0, an.y_tr - 14.0)
    add2d(
        lambda m: (
            _tube2d(X, Y, (x_aa, y_aa), mid, 13.0 + m) | _tube2d(X, Y, mid, (x_ad, y_ad), 13.0 + m)
        ),
        an.blood_hu,
        an.t_arch - 0.025,
        an.t_arch + 0.025,
    )
    add2d(lambda m: _ell(X, Y, x_pt, y_pt, 13.0 + m, 13.0 + m), an.blood_hu, t_htop - 0.06, t_pa)
    add2d(
        lambda m: (
            _tube2d(X, Y, (x_pt, y_pt), (hil_l[0], hil_l[1]), 10.0 + m)
            | _tube2d(X, Y, (x_pt, y_pt), (hil_r[0], hil_r[1]), 10.0 + m)
        ),
        an.blood_hu,
        t_pa - 0.02,
        t_pa + 0.02,
    )
    add2d(
        lambda m: _ell(X, Y, -24.0, -0.15 * an.B_c, 10.0 + m, 10.0 + m),
        an.blood_hu,
        t_htop - 0.04,
        0.86,
    )
    for bx, by in ((-9.0, an.y_tr - 16.0), (6.0, an.y_tr - 19.0), (17.0, an.y_tr - 6.0)):
        add2d(
            lambda m, bx=bx, by=by: _ell(X, Y, bx, by, 6.5 + m, 6.5 + m), an.blood_hu, lo=an.t_arch
        )
    add2d(lambda m: _ell(X, Y, 5.0, an.y_oes, 9.0 + m, 6.0 + m), 38.0)
    add2d(lambda m: _ell(X, Y, 0.0, an.y_tr, 11.0 + m, 11.0 + m), 35.0, lo=an.t_carina)

    # lungs
    v = Y / B_c
    hw = 4.0 + 14.0 * np.exp(-(((v - 0.05) / 0.4) ** 2)) + 8.0 * (_band(t, 0.6, 0.85) & (v < 0.4))
    t_a0 = an.t_apex - 0.2
    sc = _cap(t, t_a0, an.t_apex - t_a0)
    sc = np.where(t > t_a0, sc, np.float32(10.0))
    lungs_zone = cavity & (t > dome + 0.01)
    for ks, _, widened, _ in structures:
        lungs_zone[ks] &= ~widened
    labels = np.zeros(shape, np.uint8)
    for side, label in ((-1.0, LungLabel.RIGHT), (1.0, LungLabel.LEFT)):
        half = (-hw > X) if side < 0 else (hw < X)
        apex = _ell(X, Y, side * 0.45 * A_c, 0.15 * B_c, 0.62 * A_c * sc, 0.9 * B_c * sc)
        np.copyto(labels, np.uint8(label), where=lungs_zone & half & apex)
    lung = labels > 0
    parenchyma = -855.0 + 35.0 * v - 10.0 * (t - 0.5) + 12.0 * _texture(an, X, Y, Z)
    np.copyto(hu, parenchyma, where=lung)

    # draw the mediastinal structures
    for ks, region, _, value in structures:
        np.copyto(hu[ks], np.float32(value), where=region)
    heart_in = (
        _ell(X, Y, x_h - 4.0, y_h - 3.0, 0.72 * heart_rx, 0.72 * heart_ry) & (r_h > 0) & ~below
    )
    put(heart_in, an.blood_hu)
    vb = _ell(X, Y, 0.0, an.y_vb, an.r_vb, an.r_vb)
    disc = np.mod(Z + an.vert_phase, 27.0) < 5.0
    put(vb & ~_ell(X, Y, 0.0, an.y_vb, an.r_vb - 2.0, an.r_vb - 2.0), 650.0)
    put(vb & disc, 85.0)
    # posterior elements: pedicles, lamina, canal, spinous and transverse processes
    y_c = an.y_vb + an.r_vb + 8.0
    ax = np.abs(X)
    post = (
        (_ell(X, Y, 0.0, y_c, 14.0, 14.0) & (y_c - 4.0 < Y))
        | ((ax < 4.0) & (y_c + 10.0 < Y) & (y_c + 32.0 > Y))
        | ((np.abs(Y - y_c + 2.0) < 5.0) & (ax > 10.0) & (ax < 34.0))
        | ((ax > 8.0) & (ax < 14.0) & (an.y_vb + an.r_vb - 4.0 < Y) & (y_c > Y))
    )
    put(post & body, 550.0)
    put(_ell(X, Y, 0.0, y_c, 8.0, 8.0), 25.0)
    trachea = _ell(X, Y, 0.0, an.y_tr, 9.0, 9.0) & (t > an.t_carina)
    put(trachea, -1000.0)
    put(_ell(X, Y, 5.0, an.y_oes, 2.0, 1.5) & _band(t, 0.5, 0.95), -900.0)  # oesophageal air
    return hu, labels
