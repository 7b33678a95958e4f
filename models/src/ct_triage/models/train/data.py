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
from ct_triage.models.volume import Volume

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
    #: (K, S, S) soft one-hot labels (zeros outside); float16 for the many phantom slices
    onehot: npt.NDArray[np.float32] | npt.NDArray[np.float16]
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


#: Folds of the cross-validation over the MedSeg slices (``fold`` 0..N_FOLDS-1).
N_FOLDS = 5


def medseg_split(data_dir: Path, fold: int | None = None) -> tuple[list[Path], list[Path]]:
    """A train / validation split of the MedSeg slices (seeded, by sorted index).

    ``fold=None``: the fixed split of earlier models (10 validation slices). ``fold=k``
    (0..4): fold ``k`` of a seeded 5-fold partition of all slices (each slice is validated in
    exactly one fold). ``fold=-1``: every slice trains, the validation list is empty (the
    model shipped after cross-validation).
    """
    files = sorted((data_dir / MEDSEG_DIR).glob("*.npz"))
    if len(files) <= N_VALIDATION:
        raise FileNotFoundError(f"expected the MedSeg slices in {data_dir / MEDSEG_DIR}")
    if fold is not None:
        if fold == -1:
            return files, []
        if not 0 <= fold < N_FOLDS:
            raise ValueError(f"fold must be -1 or in 0..{N_FOLDS - 1}, got {fold}")
        order = np.random.default_rng(SPLIT_SEED + 1).permutation(len(files))
        held = set(order[fold::N_FOLDS].tolist())
        return (
            [f for i, f in enumerate(files) if i not in held],
            [f for i, f in enumerate(files) if i in held],
        )
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


SEMISEG_DIR = Path("covid_semiseg_unlabelled")
#: How to turn each source's stored arrays into the radiological convention (anterior up,
#: the patient's right on the image left), decided by looking at every volume's slices: the
#: coronacases volumes are stored with the spine on the left (rotate 90 degrees
#: counter-clockwise), the Radiopaedia volumes with the spine on the right and the heart
#: below (transpose).
SEMISEG_ORIENTATION = {"coronacases": "rot90", "radiopaedia": "transpose"}
#: Approximate HU of an 8-bit lung-window slice, as the MedSeg slices were calibrated:
#: healthy lung (the median grey of the dark lung pixels) at -850 HU, 1500 HU per 255 grey.
_APPROX_LUNG_HU = -850.0
#: The median soft-tissue HU that the MedSeg calibration gives its slices (measured: +40 to
#: +250, about +90 typical); the second calibration point of the unlabelled slices.
_APPROX_TISSUE_HU = 90.0
#: A pseudo-labelled pixel denser than this (approximate HU) is consolidation, else GGO
#: (Semi-Inf-Net's pseudo-labels are binary).
PSEUDO_CONSOLIDATION_HU = -250.0
_PSEUDO_MAX_HU = 300.0


def _oriented(img: npt.NDArray[np.generic], name: str) -> npt.NDArray[np.generic]:
    for key, how in SEMISEG_ORIENTATION.items():
        if key in name:
            return np.rot90(img, 1) if how == "rot90" else img.T
    raise ValueError(f"no orientation known for {name}")


def _otsu(img: npt.NDArray[np.float32]) -> float:
    """Otsu's threshold of an 8-bit image."""
    hist, _ = np.histogram(img, 256, (0, 256))
    p = hist / max(1, hist.sum())
    w = np.cumsum(p)
    m = np.cumsum(p * np.arange(256))
    between = (m[-1] * w - m) ** 2 / (w * (1 - w) + 1e-9)
    return float(np.argmax(between))


def semiseg_samples(data_dir: Path, size: int, *, every: int = 2) -> list[Sample]:
    """The unlabelled real COVID-19 slices with Semi-Inf-Net's (noisy) pseudo-labels.

    Every ``every``-th slice of each volume (neighbours are near duplicates), oriented by
    :data:`SEMISEG_ORIENTATION`, with approximate HU (a two-point calibration per volume, see
    the code); pseudo-lesion pixels are consolidation above
    :data:`PSEUDO_CONSOLIDATION_HU`, GGO below. The whole image is the box (thorax crops).
    """
    from PIL import Image
    from scipy import ndimage

    root = data_dir / SEMISEG_DIR
    files = sorted((root / "images").glob("*.jpg"))
    by_volume: dict[str, list[tuple[int, Path]]] = {}
    for f in files:
        volume, _, index = f.stem.rpartition("_")
        by_volume.setdefault(volume, []).append((int(index), f))
    out: list[Sample] = []
    for volume, items in sorted(by_volume.items()):
        items.sort()
        chosen = items[::every]
        images = [np.asarray(Image.open(f).convert("L"), dtype=np.float32) for _, f in chosen]
        masks = []
        for _, f in chosen:
            label = root / "pseudo_labels" / f"{f.stem}.png"
            m = np.asarray(Image.open(label).convert("L")) > 127
            masks.append(m)
        # two-point calibration per volume (the sources used different windows): the median
        # grey of the dark (lung) and bright (soft tissue) pixels inside the body, split at
        # Otsu's threshold, go to -850 HU and to the soft-tissue HU the MedSeg calibration
        # gives on average
        dark, bright = [], []
        for img in images:
            t = _otsu(img)
            body = ndimage.binary_fill_holes(ndimage.binary_opening(img > t, iterations=2))
            dark.append(img[body & (img <= t)])
            bright.append(img[body & (img > t)])
        lung_u8 = float(np.median(np.concatenate(dark))) if dark else 0.0
        tissue_u8 = float(np.median(np.concatenate(bright))) if bright else 255.0
        if tissue_u8 - lung_u8 < 20:
            logger.warning("semi: volume %s has no lung/tissue contrast, skipped", volume)
            continue
        slope = (_APPROX_TISSUE_HU - _APPROX_LUNG_HU) / (tissue_u8 - lung_u8)
        for (_, f), img, m in zip(chosen, images, masks, strict=True):
            img = np.asarray(_oriented(img, volume), dtype=np.float32)
            m = np.asarray(_oriented(m, volume))
            hu = np.clip((img - lung_u8) * slope + _APPROX_LUNG_HU, -1024.0, 3071.0)
            # the pseudo-labels mark bone and things outside the patient at times: keep the
            # pixels inside the body that are not bone
            body = ndimage.binary_fill_holes(ndimage.binary_opening(hu > -500, iterations=2))
            m = m & body & (hu < _PSEUDO_MAX_HU)
            cls = np.where(m, np.where(hu > PSEUDO_CONSOLIDATION_HU, 2, 1), 0).astype(np.uint8)
            g, oh = _cache(hu, cls, whole_image_box(hu.shape), size)
            out.append(Sample(g, oh.astype(np.float16), f.name, "semiseg"))
    logger.info(
        "semi-supervised: %d pseudo-labelled slices from %d volumes", len(out), len(by_volume)
    )
    return out


def negative_volume_samples(paths: list[Path], size: int, margin_mm: float) -> list[Sample]:
    """Lung slices of real lesion-free chest CT volumes (``.npz`` with ``image``, ``spacing``).

    Nodules and masses are not pneumonia: every pixel is background. The box is the lung box
    of the whole volume from the classical lungs, as at inference. Make the ``.npz`` from a
    DICOM series with ``python -m ct_triage.dicom_bridge.to_npz``.
    """
    from ct_triage.models.lungs import segment_lungs

    out: list[Sample] = []
    for path in paths:
        with np.load(path) as d:
            img = d["image"].astype(np.int16)
            sp = tuple(float(v) for v in d["spacing"])
        volume = Volume(hu=img, spacing=(sp[0], sp[1], sp[2]))
        lungs = segment_lungs(volume)
        box = lung_box(lungs, (sp[1], sp[2]), margin_mm=margin_mm)
        if box is None:
            continue
        zero = np.zeros(img.shape[1:], np.uint8)
        for z in np.flatnonzero(np.count_nonzero(lungs, axis=(1, 2)) > 200):
            g, oh = _cache(img[z], zero, box, size)
            out.append(Sample(g, oh.astype(np.float16), f"{path.name}[{z}]", "healthy"))
    return out


#: Severities of the training phantoms, cycled by volume index.
PHANTOM_SEVERITIES = ("none", "mild", "moderate", "severe")
#: Bumped whenever the cached phantom slices would change (generator or preprocessing).
_PHANTOM_CACHE_VERSION = 2


def _phantom_volume_samples(
    seed: int, severity: str, size: int, margin_mm: float, per_volume: int
) -> list[Sample]:
    from ct_triage.models import phantom

    case = phantom.generate(phantom.spec_from_seed(seed, severity=severity))
    hu = np.asarray(case.volume.hu)
    sp = case.volume.spacing
    lungs = np.asarray(case.lung_labels)
    lesions = np.asarray(case.lesion_class)
    box = lung_box(lungs, (float(sp[1]), float(sp[2])), margin_mm=margin_mm)
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    if box is None or zs.size == 0:
        return []
    rng = np.random.default_rng([seed, 7])
    pick = np.sort(rng.choice(zs, size=min(per_volume, zs.size), replace=False))
    out = []
    for z in pick:
        g, oh = _cache(hu[z], lesions[z], box, size)
        out.append(Sample(g, oh.astype(np.float16), f"phantom{seed}[{z}]", "phantom"))
    return out


def phantom_samples(
    n_volumes: int,
    size: int,
    margin_mm: float,
    *,
    seed0: int = 1000,
    per_volume: int = 32,
    cache_dir: Path | None = None,
) -> list[Sample]:
    """Slices of the project's synthetic phantom (exact truth, true HU).

    Volume ``k`` is ``spec_from_seed(seed0 + k)`` with the severity
    ``PHANTOM_SEVERITIES[k % 4]`` (spacings and field of view vary with the seed); up to
    ``per_volume`` lung-bearing slices of each are kept, so the network learns true-HU CT,
    healthy lung and the fading edges of the phantom lesions. Training seeds start at
    ``seed0`` (1000) and never meet the validation seeds (below 100). With ``cache_dir`` the
    cached slices of each volume are stored there and reused (``.npz``; a phantom takes a few
    seconds to generate).

    Raises
    ------
    ct_triage.models.phantom.PhantomError
        And any other error of the generator: it stops the run rather than silently train
        on fewer phantoms than the configuration says.
    """
    if n_volumes <= 0:
        return []
    out: list[Sample] = []
    for k in range(n_volumes):
        seed, severity = seed0 + k, PHANTOM_SEVERITIES[k % len(PHANTOM_SEVERITIES)]
        key = f"v{_PHANTOM_CACHE_VERSION}_{seed}_{severity}_{size}_{margin_mm:g}_{per_volume}"
        path = cache_dir / f"phantom_{key}.npz" if cache_dir is not None else None
        if path is not None and path.is_file():
            with np.load(path) as d:
                out += [
                    Sample(h, o, str(n), "phantom")
                    for h, o, n in zip(d["hu"], d["onehot"], d["names"], strict=True)
                ]
            continue
        samples = _phantom_volume_samples(seed, severity, size, margin_mm, per_volume)
        if path is not None and samples:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                path,
                hu=np.stack([s.hu for s in samples]),
                onehot=np.stack([s.onehot for s in samples]),
                names=np.array([s.source for s in samples]),
            )
        out += samples
        logger.info("phantom %d (%s): %d slices", seed, severity, len(samples))
    return out


@dataclass(frozen=True, slots=True)
class PhantomCase:
    """A held-out phantom volume for the percent-involvement check (never trained on)."""

    name: str
    volume: Volume
    lungs: npt.NDArray[np.uint8]  # classical lungs (what ``analyze`` computes)
    true_percent: float  # phantom truth, lesion voxels / lung voxels x 100


def phantom_cases(seeds: dict[int, str], n_slices: int | None) -> list[PhantomCase]:
    """Generate held-out phantoms (seed -> severity) and their classical lung labels."""
    from ct_triage.models import phantom
    from ct_triage.models.lungs import segment_lungs

    out = []
    for seed, severity in seeds.items():
        ph = phantom.generate(phantom.spec_from_seed(seed, n_slices=n_slices, severity=severity))
        out.append(
            PhantomCase(
                name=f"phantom{seed}-{severity}",
                volume=ph.volume,
                lungs=segment_lungs(ph.volume),
                true_percent=phantom.percent_involvement(ph)["total"],
            )
        )
    return out
