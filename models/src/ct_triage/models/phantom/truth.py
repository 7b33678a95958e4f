"""The phantom's ground truth as numbers (:func:`percent_involvement`) and as a file
(:func:`save_truth`, ``truth.npz``)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ct_triage.models.durable import durable_file
from ct_triage.models.metrics import percent_involved
from ct_triage.models.phantom.spec import Phantom
from ct_triage.models.segmentation import LungLabel


def percent_involvement(phantom: Phantom) -> dict[str, float]:
    """Lesion percent of each lung and of both (lesion voxels / lung voxels x 100)."""
    out: dict[str, float] = {}
    for name, sel in (
        ("right", phantom.lung_labels == LungLabel.RIGHT),
        ("left", phantom.lung_labels == LungLabel.LEFT),
        ("total", phantom.lung_labels > 0),
    ):
        out[name] = percent_involved(phantom.lesion_mask, sel) or 0.0
    return out


def save_truth(phantom: Phantom, path: Path) -> None:
    """Write ``truth.npz`` in the format of ``../shared/data/README.md`` (byte-reproducible).

    Keys: ``image`` (int16 HU), ``spacing`` (float64 z, y, x mm), ``origin`` (LPS mm of voxel
    ``[0, 0, 0]``), ``lung_mask``, ``lung_labels``, ``lesion_mask``, ``lesion_class`` (uint8),
    ``lung_mask_origin``, ``source``, ``hu_is_approx`` (False), ``severity``.
    The zip members carry a fixed timestamp so the same phantom gives identical bytes.

    Parameters
    ----------
    phantom
        From :func:`generate`.
    path
        Destination file (parents are created).
    """
    arrays: dict[str, npt.NDArray[Any]] = {
        "image": np.asarray(phantom.volume.hu, dtype=np.int16),
        "spacing": np.asarray(phantom.volume.spacing, dtype=np.float64),
        "origin": np.asarray(phantom.volume.origin, dtype=np.float64),
        "lung_mask": phantom.lung_mask,
        "lung_labels": phantom.lung_labels,
        "lesion_mask": phantom.lesion_mask,
        "lesion_class": phantom.lesion_class,
        "lung_mask_origin": np.array("synthetic:exact"),
        "source": np.array(f"synthetic:ct-triage-phantom seed={phantom.spec.seed}"),
        "hu_is_approx": np.array(False),
        "severity": np.array(phantom.spec.severity),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        durable_file(path) as fh,
        zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
    ):
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=1)
