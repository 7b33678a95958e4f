"""Training data: the MedSeg COVID-19 slices, real-HU healthy slices and (when available)
synthetic phantom slices, all cached on the network grid with the inference preprocessing.

Every sample is stored as HU on the ``S x S`` network grid (``-1024`` outside the image) and
a one-hot ``(K, S, S)`` label map, built with :func:`ct_triage.models.preprocess.crop_resize`
exactly as the inference path crops and resamples. Augmentation happens later, in torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ct_triage.models.preprocess import CropBox, crop_resize, lung_box, whole_image_box

logger = logging.getLogger(__name__)

NUM_CLASSES = 3
MEDSEG_DIR = Path("medseg_covid_slices") / "train"
#: Seed of the fixed validation split (by file index in sorted order).
SPLIT_SEED = 20240
N_VALIDATION = 10


@dataclass(frozen=True, slots=True)
class Sample:
    """One cached 2-D training sample on the network grid."""

    hu: npt.NDArray[np.float32]  # (S, S) HU, -1024 outside the source image
    onehot: npt.NDArray[np.float32]  # (K, S, S) soft one-hot labels (zeros outside)
    source: str
    kind: str  # "medseg" | "healthy" | "phantom"


@dataclass(frozen=True, slots=True)
class MedsegSlice:
    """A full-resolution MedSeg slice (validation is scored on the original grid)."""

    name: str
    hu: npt.NDArray[np.int16]
    lesion_class: npt.NDArray[np.uint8]


def default_data_dir() -> Path:
    """``../shared/data`` next to the repository (``$CT_TRIAGE_SHARED_DATA`` overrides)."""
    import os

    env = os.environ.get("CT_TRIAGE_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[5].parent / "shared" / "data"


def medseg_split(data_dir: Path) -> tuple[list[Path], list[Path]]:
    """The fixed train / validation split of the MedSeg slices (seeded, by sorted index)."""
    files = sorted((data_dir / MEDSEG_DIR).glob("*.npz"))
    if len(files) <= N_VALIDATION:
        raise FileNotFoundError(f"expected the MedSeg slices in {data_dir / MEDSEG_DIR}")
    rng = np.random.default_rng(SPLIT_SEED)
    val_idx = set(rng.choice(len(files), size=N_VALIDATION, replace=False).tolist())
    train = [f for i, f in enumerate(files) if i not in val_idx]
    val = [f for i, f in enumerate(files) if i in val_idx]
    return train, val


def load_medseg(path: Path) -> MedsegSlice:
    """Read one MedSeg ``.npz`` slice."""
    with np.load(path) as d:
        return MedsegSlice(
            path.name, d["image"].astype(np.int16), d["lesion_class"].astype(np.uint8)
        )


def _onehot(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (labels[None] == np.arange(NUM_CLASSES)[:, None, None]).astype(
        np.float32
    )
    return out


def _cache(
    hu: npt.NDArray[np.generic], labels: npt.NDArray[np.integer], box: CropBox, size: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    grid = crop_resize(hu.astype(np.float32) + 1024.0, box, size) - 1024.0
    return grid.astype(np.float32), crop_resize(_onehot(labels), box, size)


def medseg_samples(files: list[Path], size: int) -> list[Sample]:
    """MedSeg slices: the image is already a thorax crop, so the box is the whole image."""
    out = []
    for f in files:
        s = load_medseg(f)
        hu, oh = _cache(s.hu, s.lesion_class, whole_image_box(s.hu.shape), size)
        out.append(Sample(hu, oh, f.name, "medseg"))
    return out


def _body_lungs(hu: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """A crude lung mask for an unlabelled real slice: dark air not connected to the border."""
    from scipy import ndimage

    air = np.asarray(hu) < -400
    lab, _ = ndimage.label(air)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    lungs = air & ~np.isin(lab, border)
    return np.asarray(ndimage.binary_opening(lungs, iterations=2), dtype=bool)


def healthy_samples(data_dir: Path, size: int, margin_mm: float) -> list[Sample]:
    """Real true-HU slices without lesion labels, used as lesion-free examples.

    ``real_hu_ct/totalseg_example_ct_sm.npz`` (lung bases; TotalSegmentator lung mask) and
    ``real_hu_ct/dcmqi_ct_3slice.npz`` (lower chest; crude threshold lung mask). We assume no
    lesion on these slices (none is visible).
    """
    out: list[Sample] = []
    root = data_dir / "real_hu_ct"
    ts = root / "totalseg_example_ct_sm.npz"
    if ts.is_file():
        with np.load(ts) as d:
            img, lung, sp = d["image"], d["lung_mask"], d["spacing"]
        box = lung_box(lung, (float(sp[1]), float(sp[2])), margin_mm=margin_mm)
        for z in np.flatnonzero(lung.sum(axis=(1, 2)) > 50):
            if box is not None:
                hu, oh = _cache(img[z], np.zeros(img.shape[1:], np.uint8), box, size)
                out.append(Sample(hu, oh, f"{ts.name}[{z}]", "healthy"))
    dq = root / "dcmqi_ct_3slice.npz"
    if dq.is_file():
        with np.load(dq) as d:
            img, sp = d["image"], d["spacing"]
        img = np.where(img < -1024, -1024, img)
        lung = np.stack([_body_lungs(s) for s in img])
        box = lung_box(lung, (float(sp[1]), float(sp[2])), margin_mm=margin_mm)
        if box is not None and lung.sum() > 500:
            for k in range(img.shape[0]):
                hu, oh = _cache(img[k], np.zeros(img.shape[1:], np.uint8), box, size)
                out.append(Sample(hu, oh, f"{dq.name}[{k}]", "healthy"))
    return out


def phantom_samples(
    n_volumes: int, size: int, margin_mm: float, *, seed0: int = 1000, per_volume: int = 12
) -> list[Sample]:
    """Slices of the project's synthetic phantom (exact truth), if the module exists.

    Lesion-bearing slices and healthy slices are both kept, so the network learns true-HU
    CT and healthy lung. Returns ``[]`` when :mod:`ct_triage.models.phantom` is absent.
    """
    if n_volumes <= 0:
        return []
    try:
        from ct_triage.models import phantom  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        logger.warning("ct_triage.models.phantom is not available: training without phantoms")
        return []
    out: list[Sample] = []
    rng = np.random.default_rng(seed0)
    for k in range(n_volumes):
        try:
            case = phantom.generate(phantom.spec_from_seed(seed0 + k))
        except Exception as exc:  # a colleague's generator: never let it stop a training run
            logger.warning("phantom %d failed (%s): training without further phantoms", k, exc)
            break
        hu = np.asarray(case.volume.hu)
        sp = case.volume.spacing
        lungs = np.asarray(case.lung_labels)
        lesions = np.asarray(case.lesion_class)
        box = lung_box(lungs, (float(sp[1]), float(sp[2])), margin_mm=margin_mm)
        zs = np.flatnonzero(lungs.any(axis=(1, 2)))
        if box is None or zs.size == 0:
            continue
        pick = rng.choice(zs, size=min(per_volume, zs.size), replace=False)
        for z in pick:
            g, oh = _cache(hu[z], lesions[z], box, size)
            out.append(Sample(g, oh, f"phantom{seed0 + k}[{z}]", "phantom"))
    return out
