"""Reading and validating the ``.npz`` cases of ``ct-triage evaluate``.

The format is the one of ``../shared/data/README.md`` (see :mod:`ct_triage.models.evaluation`).
"""

from __future__ import annotations

import logging
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ct_triage.models.errors import InvalidInput
from ct_triage.models.segmentation import LesionLabel
from ct_triage.models.volume import Volume

__all__ = ["NOMINAL_SPACING_MM", "EvaluationCase", "load_case"]

logger = logging.getLogger(__name__)

#: Spacing (mm) given to the model for an axis whose spacing is unknown (``NaN``), and as the
#: slice spacing of a 2-D slice.
NOMINAL_SPACING_MM = 1.0

#: Values each truth array may hold.
_ALLOWED_VALUES: dict[str, tuple[int, ...]] = {
    "lesion_mask": (0, 1),
    "lesion_class": (0, int(LesionLabel.GGO), int(LesionLabel.CONSOLIDATION)),
    "lung_mask": (0, 1),
}

#: HU floor: padding / outside-field-of-view values (e.g. -3024) become air, as the DICOM
#: loader does before ``analyze`` (see :class:`~ct_triage.models.volume.Volume`).
_AIR_HU = -1024


@dataclass(frozen=True, slots=True)
class EvaluationCase:
    """One validated ``.npz`` case, lifted to 3-D.

    Parameters
    ----------
    file
        File name (relative to the data folder).
    original_shape
        Shape of ``image`` in the file (2-D or 3-D).
    spacing_mm
        Spacing from the file in its own axis order, ``None`` for unknown axes.
    volume
        The HU volume given to the model; a 2-D slice becomes ``(1, y, x)``.
    lesion_mask, lesion_class, lung_mask
        Truths on the volume grid (``uint8``), ``None`` when the file has none.
    """

    file: str
    original_shape: tuple[int, ...]
    spacing_mm: tuple[float | None, ...]
    volume: Volume
    lesion_mask: npt.NDArray[np.uint8] | None
    lesion_class: npt.NDArray[np.uint8] | None
    lung_mask: npt.NDArray[np.uint8] | None

    @property
    def dims(self) -> int:
        """2 for a slice, 3 for a volume."""
        return len(self.original_shape)

    @property
    def spacing_known(self) -> bool:
        """Whether the file gave the spacing of every axis."""
        return all(s is not None for s in self.spacing_mm)

    @property
    def lesion_truth(self) -> npt.NDArray[np.bool_] | None:
        """Truth lesion voxels (``lesion_mask > 0`` or ``lesion_class > 0``), if any truth."""
        masks = [m > 0 for m in (self.lesion_mask, self.lesion_class) if m is not None]
        if not masks:
            return None
        return np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]


def _invalid(path: Path, why: str) -> InvalidInput:
    return InvalidInput(f"{path.name}: {why}")


def _read_image(
    path: Path, image: npt.NDArray[Any]
) -> npt.NDArray[np.int16] | npt.NDArray[np.float32]:
    if image.ndim not in (2, 3):
        raise _invalid(path, f"image must be 2-D (y, x) or 3-D (z, y, x), got shape {image.shape}")
    if image.size == 0:
        raise _invalid(path, f"image is empty (shape {image.shape})")
    if image.dtype.kind not in "iuf":
        raise _invalid(path, f"image must hold numbers (HU), got dtype {image.dtype}")
    if image.dtype.kind == "f":
        if not np.all(np.isfinite(image)):
            raise _invalid(path, "image contains NaN or infinite values")
        return np.maximum(image.astype(np.float32), np.float32(_AIR_HU))
    info = np.iinfo(np.int16)
    if image.dtype != np.int16 and (int(image.min()) < info.min or int(image.max()) > info.max):
        return np.maximum(image.astype(np.float32), np.float32(_AIR_HU))
    return np.maximum(image.astype(np.int16), np.int16(_AIR_HU))


def _read_spacing(path: Path, raw: npt.NDArray[Any] | None, ndim: int) -> tuple[float | None, ...]:
    if raw is None:
        logger.warning("%s: no spacing; treating it as unknown", path.name)
        return (None,) * ndim
    if raw.dtype.kind not in "iuf":
        raise _invalid(path, f"spacing must be numbers (mm), got dtype {raw.dtype}")
    values = np.asarray(raw, dtype=np.float64).ravel()
    if values.size != ndim:
        raise _invalid(path, f"spacing has {values.size} values for a {ndim}-D image")
    out: list[float | None] = []
    for v in values.tolist():
        if math.isnan(v):
            out.append(None)
        elif not (math.isfinite(v) and v > 0):
            raise _invalid(
                path, f"spacing must be positive mm values or NaN, got {values.tolist()}"
            )
        else:
            out.append(float(v))
    return tuple(out)


def _read_mask(
    path: Path, name: str, raw: npt.NDArray[Any], shape: tuple[int, ...]
) -> npt.NDArray[np.uint8]:
    if raw.shape != shape:
        raise _invalid(path, f"{name} shape {raw.shape} does not match image shape {shape}")
    if raw.dtype.kind not in "biuf":
        raise _invalid(path, f"{name} must be an integer mask, got dtype {raw.dtype}")
    allowed = _ALLOWED_VALUES[name]
    ok = np.isin(raw, allowed)
    if not np.all(ok):
        bad = np.unique(raw[~ok])[:5].tolist()
        raise _invalid(path, f"{name} holds values {bad} outside the allowed set {list(allowed)}")
    return raw.astype(np.uint8)


def load_case(path: Path, *, nominal_spacing_mm: float = NOMINAL_SPACING_MM) -> EvaluationCase:
    """Read and validate one ``.npz`` case (format of ``../shared/data/README.md``).

    Parameters
    ----------
    path
        The ``.npz`` file.
    nominal_spacing_mm
        Spacing given to the model for unknown axes and as the slice spacing of a 2-D slice.

    Returns
    -------
    EvaluationCase
        The case, lifted to 3-D; HU below -1024 (padding) are set to -1024.

    Raises
    ------
    InvalidInput
        One line naming the file: unreadable archive, no ``image``, an image that is not 2-D or
        3-D, bad ``spacing``, a truth of another shape than the image or with values outside
        its allowed set.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise _invalid(path, "not an .npz archive (a bare .npy array?)")
        with loaded as npz:
            if "image" not in npz.files:
                raise _invalid(path, f"no 'image' array (arrays: {', '.join(npz.files) or 'none'})")
            raw = {k: npz[k] for k in ("image", "spacing", *_ALLOWED_VALUES) if k in npz.files}
    except InvalidInput:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        detail = " ".join(str(exc).split())
        raise _invalid(
            path, f"cannot read the .npz archive ({type(exc).__name__}: {detail})"
        ) from exc

    image = _read_image(path, raw["image"])
    shape = tuple(int(n) for n in image.shape)
    spacing = _read_spacing(path, raw.get("spacing"), image.ndim)
    masks = {
        name: _read_mask(path, name, raw[name], shape) for name in _ALLOWED_VALUES if name in raw
    }
    model_spacing = tuple(nominal_spacing_mm if s is None else s for s in spacing)
    if image.ndim == 2:
        image = image[np.newaxis]
        masks = {k: m[np.newaxis] for k, m in masks.items()}
        model_spacing = (nominal_spacing_mm, *model_spacing)
    z, y, x = model_spacing
    case = EvaluationCase(
        file=path.name,
        original_shape=shape,
        spacing_mm=spacing,
        volume=Volume(hu=image, spacing=(z, y, x)),
        lesion_mask=masks.get("lesion_mask"),
        lesion_class=masks.get("lesion_class"),
        lung_mask=masks.get("lung_mask"),
    )
    if case.lesion_mask is not None and case.lesion_class is not None:
        n_diff = int(np.count_nonzero((case.lesion_mask > 0) != (case.lesion_class > 0)))
        if n_diff:
            logger.warning(
                "%s: lesion_mask and lesion_class disagree on %d voxels; scoring their union",
                path.name,
                n_diff,
            )
    return case
