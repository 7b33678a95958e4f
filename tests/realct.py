"""Derived variants of a real CT series, made from its own pixels (for the real-CT suite).

Each variant is what another scanner or protocol would have sent for the same patient:

* ``smooth``: in-plane Gaussian blur, sigma 1 px (a stand-in for a soft reconstruction kernel);
* ``noisy``: Gaussian noise, sigma 20 HU (a lower dose);
* ``slab5``: 5 mm slabs, the mean of neighbouring slice pairs of a 2.5 mm series;
* ``crop200``: a ~200 mm field of view centred on the heart (lungs cut by the image edge);
* ``circle200``: the same field of view reconstructed in a circle, the outside padded with
  -3024 HU as scanners do (lungs cut by the reconstruction circle);
* ``secondary``: the same pixels with ImageType ``ORIGINAL\\SECONDARY\\AXIAL`` (LIDC style).

Only the reconstructed field of view is transformed: padding stays padding. Every variant is
a new series (new Series and SOP Instance UIDs) of the same study.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage as ndi

__all__ = ["VARIANTS", "heart_box", "read_series", "reconstruction_circle", "write_variant"]

_PAD_HU = -3024
_FOV_MM = 200.0


def read_series(folder: Path) -> list[Dataset]:
    """The CT slices of ``folder`` sorted inferior to superior."""
    datasets: list[Dataset] = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    datasets = [ds for ds in datasets if "PixelData" in ds]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return datasets


def _hu(ds: Dataset) -> npt.NDArray[np.float32]:
    stored = ds.pixel_array.astype(np.float32)
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    pad = ds.get("PixelPaddingValue")
    if pad is not None:
        hu[ds.pixel_array == int(pad)] = _PAD_HU
    hu[hu < -1024] = _PAD_HU
    return hu


def _store(ds: Dataset, hu: npt.NDArray[np.float32]) -> None:
    stored = np.round((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
    if int(ds.PixelRepresentation) == 1:
        arr = np.clip(stored, -32768, 32767).astype(np.int16)
    else:
        arr = np.clip(stored, 0, 65535).astype(np.uint16)
    if "PixelPaddingValue" in ds:
        del ds.PixelPaddingValue
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()


def _blur(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    inside = hu > -1100
    out = ndi.gaussian_filter(np.where(inside, hu, -1000.0), sigma=1.0)
    return np.where(inside, out, hu).astype(np.float32)


def _noise(seed: int) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)

    def add(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        inside = hu > -1100
        noisy = hu + rng.normal(0.0, 20.0, hu.shape).astype(np.float32)
        return np.where(inside, noisy, hu).astype(np.float32)

    return add


def heart_box(datasets: list[Dataset]) -> tuple[int, int, int]:
    """(row0, col0, size) of a ~200 mm square centred on the heart (left of the body centre)."""
    mid = datasets[len(datasets) // 2]
    hu = _hu(mid)
    body = ndi.binary_fill_holes(hu > -300)
    ys, xs = np.nonzero(body)
    sy, sx = (float(v) for v in mid.PixelSpacing)
    size = round(_FOV_MM / sx)
    # the heart lies anterior and to the patient's left of the body centre (column 0 = right)
    cy = float(ys.mean()) - 15.0 / sy
    cx = float(xs.mean()) + 35.0 / sx
    row0 = int(np.clip(round(cy - size / 2), 0, hu.shape[0] - size))
    col0 = int(np.clip(round(cx - size / 2), 0, hu.shape[1] - size))
    return row0, col0, size


def reconstruction_circle(size: int) -> npt.NDArray[np.bool_]:
    """The reconstruction circle inscribed in a ``size`` x ``size`` image."""
    yy, xx = np.mgrid[:size, :size]
    r = (size - 1) / 2
    inside: npt.NDArray[np.bool_] = (yy - r) ** 2 + (xx - r) ** 2 <= r**2
    return inside


def _crop(datasets: list[Dataset], *, circle: bool) -> list[Dataset]:
    row0, col0, size = heart_box(datasets)
    out = []
    for ds in datasets:
        new = copy.deepcopy(ds)
        hu = _hu(ds)[row0 : row0 + size, col0 : col0 + size].copy()
        if circle:
            hu[~reconstruction_circle(size)] = _PAD_HU
        rx = np.asarray([float(v) for v in ds.ImageOrientationPatient[:3]])
        cy_ = np.asarray([float(v) for v in ds.ImageOrientationPatient[3:]])
        sy, sx = (float(v) for v in ds.PixelSpacing)
        origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
        new.ImagePositionPatient = [f"{v:.4f}" for v in origin + rx * col0 * sx + cy_ * row0 * sy]
        _store(new, hu)
        out.append(new)
    return out


def _slab(datasets: list[Dataset]) -> list[Dataset]:
    out = []
    for a, b in zip(datasets[0::2], datasets[1::2], strict=False):
        new = copy.deepcopy(a)
        ha, hb = _hu(a), _hu(b)
        both = (ha > -1100) & (hb > -1100)
        _store(new, np.where(both, (ha + hb) / 2, _PAD_HU).astype(np.float32))
        za, zb = float(a.ImagePositionPatient[2]), float(b.ImagePositionPatient[2])
        pos = [float(v) for v in a.ImagePositionPatient]
        pos[2] = (za + zb) / 2
        new.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        new.SliceThickness = f"{abs(zb - za) * 2:g}"
        new.SliceLocation = f"{pos[2]:.4f}"
        out.append(new)
    return out


def _pixels(
    fn: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
) -> Callable[[list[Dataset]], list[Dataset]]:
    def apply(datasets: list[Dataset]) -> list[Dataset]:
        out = []
        for ds in datasets:
            new = copy.deepcopy(ds)
            _store(new, fn(_hu(ds)))
            out.append(new)
        return out

    return apply


def _secondary(datasets: list[Dataset]) -> list[Dataset]:
    out = []
    for ds in datasets:
        new = copy.deepcopy(ds)
        new.ImageType = ["ORIGINAL", "SECONDARY", "AXIAL"]
        out.append(new)
    return out


#: name -> transform of the sorted slices.
VARIANTS: dict[str, Callable[[list[Dataset]], list[Dataset]]] = {
    "smooth": _pixels(_blur),
    "noisy": lambda ds: _pixels(_noise(20))(ds),
    "slab5": _slab,
    "crop200": lambda ds: _crop(ds, circle=False),
    "circle200": lambda ds: _crop(ds, circle=True),
    "secondary": _secondary,
}


def write_variant(datasets: list[Dataset], name: str, out: Path) -> Path:
    """Write variant ``name`` of ``datasets`` as a new series of the same study into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for i, ds in enumerate(VARIANTS[name](datasets), start=1):
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i
        ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} {name}".strip()
        ds.save_as(out / f"{i:04d}.dcm", enforce_file_format=True)
    return out
