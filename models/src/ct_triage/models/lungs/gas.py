"""Pure gas: bowel and stomach gas, the trachea and the main bronchi are not lung.

Step 3 of :mod:`ct_triage.models.lungs`: lung parenchyma (about -900..-700 HU) is
interleaved with vessels and septa, whereas gas is pure air. Air whose box mean is within
a margin of the air level (measured on the air around the patient) is removed with its rim
(:func:`find_gas`), and in-plane pieces that mostly border it go too
(:func:`gas_contact_pieces`).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ct_triage.kernels.accelerated import dilate_inplane_fast, label_fast, label_inplane_fast
from ct_triage.kernels.components import INPLANE_CONNECTIVITY, keep_components, label_counts
from ct_triage.models.lungs.body import DEFAULT_AIR_HU
from ct_triage.models.lungs.grid import odd

#: A 9 mm box mean below (air level + this) is pure gas (bowel, stomach, trachea), not lung.
#: The air level is measured on the air around the patient (scanners read it at -1010..-980).
_GAS_CORE_MARGIN_HU = 35.0
_AIR_LEVEL_MAX_HU = -960.0
_GAS_BOX_MM = 4.0
_GAS_BOX_Z_MM = 2.0
_GAS_CORE_MIN_ML = 0.2
_GAS_MARGIN_MM = 4.0
#: Drop a component when more than this fraction of its voxels touches removed gas.
GAS_CONTACT_MAX = 0.25


def find_gas(
    hu: npt.NDArray[np.float32],
    air: npt.NDArray[np.bool_],
    body: npt.NDArray[np.bool_],
    candidates: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
) -> tuple[npt.NDArray[np.bool_], float]:
    """The pure gas among the lung ``candidates``, grown back by its rim; and the air level.

    Parameters
    ----------
    hu
        HU on the working grid.
    air
        Air voxels inside the field of view.
    body
        The body (:func:`~ct_triage.models.lungs.body.body_mask`).
    candidates
        Air inside the body.
    spacing
        Working-grid spacing ``(z, y, x)`` in mm.

    Returns
    -------
    tuple
        The gas mask (within ``candidates``) and the air level in HU.
    """
    vox_ml = float(np.prod(spacing)) / 1000.0
    box = (
        odd(_GAS_BOX_Z_MM / spacing[0]),
        odd(_GAS_BOX_MM / spacing[1]),
        odd(_GAS_BOX_MM / spacing[2]),
    )
    smooth = ndi.uniform_filter(hu, size=box, mode="nearest")
    air_level = _air_level(hu, air & ~body)
    core = (smooth < air_level + _GAS_CORE_MARGIN_HU) & candidates
    core_lab, n_core = label_fast(core, 6)
    gas = np.zeros_like(core)
    if n_core:
        core_counts = label_counts(core_lab, n_core)
        gas = keep_components(core_lab, core_counts * vox_ml >= _GAS_CORE_MIN_ML)
    if gas.any():
        # the core is half a box inside the gas: grow it back, plus the partial-volume rim
        margin = _GAS_MARGIN_MM + _GAS_BOX_MM / 2
        r_xy = max(1, math.ceil(margin / min(spacing[1], spacing[2])))
        r_z = math.floor((_GAS_MARGIN_MM + _GAS_BOX_Z_MM / 2) / spacing[0])
        # the growth stays within r_xy in-plane and r_z across slices of the core: work on
        # that box only (outside it nothing is set, with or without the box)
        region = _grown_box(gas, (r_z, r_xy, r_xy))
        grown = ndi.binary_dilation(
            gas[region], INPLANE_CONNECTIVITY, iterations=r_xy, mask=candidates[region]
        )
        if r_z:
            zs = np.zeros((3, 3, 3), dtype=bool)
            zs[:, 1, 1] = True
            grown = ndi.binary_dilation(grown, zs, iterations=r_z, mask=candidates[region])
        gas[region] = grown
    return gas, air_level


def _grown_box(mask: npt.NDArray[np.bool_], pad: tuple[int, ...]) -> tuple[slice, ...]:
    """Bounding box of ``mask`` (not empty) grown by ``pad`` voxels per axis, clipped."""
    box = []
    for axis, (n, p) in enumerate(zip(mask.shape, pad, strict=True)):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(present[0]) - p), min(n, int(present[-1]) + p + 1)))
    return tuple(box)


def gas_contact_pieces(
    cand: npt.NDArray[np.bool_], gas: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """In-plane pieces of ``cand`` that mostly border removed gas (bowel wall, faeces)."""
    lab, n = label_inplane_fast(cand)
    if n == 0:
        return np.zeros_like(cand)
    counts = label_counts(lab, n)
    rim = cand & dilate_inplane_fast(gas)
    contact = np.bincount(lab[rim], minlength=n + 1)
    frac = contact / np.maximum(counts, 1)
    return keep_components(lab, frac > GAS_CONTACT_MAX)


def _air_level(hu: npt.NDArray[np.float32], outside: npt.NDArray[np.bool_]) -> float:
    """Median HU of the air around the patient, ignoring clipped / padding voxels.

    Only voxels at or below ``_AIR_LEVEL_MAX_HU`` count: where the field of view cuts the
    body, lung parenchyma (-900..-700 HU on the working grid) can lie outside the body mask
    and must not raise the level at which pure gas is recognised.
    """
    values = hu[outside]
    values = values[(values > -1023.0) & (values <= _AIR_LEVEL_MAX_HU)]
    if values.size < 1000:
        return DEFAULT_AIR_HU
    return float(np.clip(np.median(values), -1020.0, -960.0))
