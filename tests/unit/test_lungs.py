"""Classical lung segmentation on a synthetic chest and on real HU volumes."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage as ndi

from ct_triage.models.errors import StudyDeclined
from ct_triage.models.lungs import check_contains_lungs, segment_lungs
from ct_triage.models.segmentation import LungLabel
from ct_triage.models.volume import Volume


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 1.0


def synthetic_chest(
    shape: tuple[int, int, int] = (48, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 2.0, 2.0),
    *,
    touching: bool = False,
    seed: int = 0,
) -> tuple[Volume, npt.NDArray[np.uint8]]:
    """A chest: body, two lungs with vessels, trachea + bronchi, stomach gas, a table.

    Returns the volume and the truth lung labels (vessels inside the lungs included, airways
    excluded). ``touching`` makes the lungs meet at an anterior junction.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z = (np.arange(nz, dtype=np.float32) * spacing[0])[:, None, None]
    y = (np.arange(ny, dtype=np.float32) * spacing[1])[None, :, None]
    x = (np.arange(nx, dtype=np.float32) * spacing[2])[None, None, :]
    cy, cx = ny * spacing[1] / 2, nx * spacing[2] / 2
    height = nz * spacing[0]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = ((y - cy) / (0.40 * ny * spacing[1])) ** 2 + ((x - cx) / (0.46 * nx * spacing[2])) ** 2
    hu[np.broadcast_to(body <= 1, shape)] = 40.0
    table_y = cy + 0.44 * ny * spacing[1]
    hu[:, (y[0, :, 0] > table_y) & (y[0, :, 0] < table_y + 2 * spacing[1]), :] = 300.0
    truth = np.zeros(shape, dtype=np.uint8)
    half_w = 0.19 * nx * spacing[2]
    gap = 0.0 if touching else 0.05 * nx * spacing[2]
    z_top = 0.95 * height
    z_base = 0.12 * height
    for label, sign in ((LungLabel.RIGHT, -1.0), (LungLabel.LEFT, 1.0)):
        lx = cx + sign * (gap / 2 + half_w)
        # an ellipsoid-ish lung: narrower towards the apex
        taper = np.clip((z_top - z) / (z_top - z_base), 0, 1) ** 0.5
        r = ((y - cy) / (0.30 * ny * spacing[1])) ** 2 + ((x - lx) / half_w) ** 2
        inside = (r <= taper**2 * 1.0) & (z >= z_base) & (z <= z_top)
        truth[inside] = label
    if touching:
        # anterior junction: the lungs meet in front of the mediastinum
        truth[
            (truth == 0)
            & (np.abs(x - cx) < 3 * spacing[2])
            & (y < cy - 0.2 * ny * spacing[1])
            & (y > cy - 0.28 * ny * spacing[1])
            & (z > 0.4 * height)
            & (z < 0.8 * height)
        ] = 0
    lung = truth > 0
    hu[lung] = -860.0 + rng.normal(0, 25, size=int(lung.sum())).astype(np.float32)
    # vessels: small dense blobs inside the lungs (part of the lungs)
    where = np.nonzero(lung)
    for idx in rng.integers(0, len(where[0]), size=60):
        pz, py, px = (int(a[idx]) for a in where)
        hu[max(0, pz - 1) : pz + 1, max(0, py - 1) : py + 2, max(0, px - 1) : px + 2] = 40.0
    # trachea down the middle, then a bronchus into each lung (air, not lung)
    airway = ((y - (cy - 0.05 * ny * spacing[1])) ** 2 + (x - cx) ** 2 <= 8.0**2) & (
        z > 0.6 * height
    )
    for sign in (-1.0, 1.0):
        t = np.clip((0.6 * height - z) / (0.15 * height), 0, 1)
        bx = cx + sign * t * (gap / 2 + half_w * 0.6)
        airway |= (
            ((y - (cy - 0.05 * ny * spacing[1])) ** 2 + (x - bx) ** 2 <= 5.0**2)
            & (z > 0.45 * height)
            & (z <= 0.6 * height)
        )
    hu[airway] = -1000.0
    truth[airway] = 0
    # stomach gas under the left hemidiaphragm
    stomach = (
        ((z - 0.06 * height) / (0.06 * height)) ** 2
        + ((y - (cy - 0.1 * ny * spacing[1])) / 15.0) ** 2
        + ((x - (cx + half_w)) / 25.0) ** 2
    ) <= 1
    hu[stomach & (truth == 0)] = -1000.0
    hu += rng.normal(0, 10, size=shape[1:]).astype(np.float32)[None]  # noise, cheaply
    return Volume(np.clip(hu, -1024, 3000).astype(np.int16), spacing), truth


def test_synthetic_chest_dice_and_sides() -> None:
    volume, truth = synthetic_chest()
    lungs = segment_lungs(volume)
    assert lungs.dtype == np.uint8
    assert lungs.shape == volume.shape
    assert dice(lungs > 0, truth > 0) >= 0.95
    for side in (LungLabel.RIGHT, LungLabel.LEFT):
        assert dice(lungs == side, truth == side) >= 0.95
    # right lung on the low column side
    assert (
        np.nonzero(lungs == LungLabel.RIGHT)[2].mean()
        < np.nonzero(lungs == LungLabel.LEFT)[2].mean()
    )
    check_contains_lungs(volume, lungs)


def test_touching_lungs_are_split() -> None:
    volume, truth = synthetic_chest(touching=True, seed=1)
    lungs = segment_lungs(volume)
    for side in (LungLabel.RIGHT, LungLabel.LEFT):
        assert dice(lungs == side, truth == side) >= 0.93


def test_flipped_direction_swaps_sides() -> None:
    volume, truth = synthetic_chest(seed=2)
    flipped = Volume(
        volume.hu, volume.spacing, direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    )
    lungs = segment_lungs(flipped)
    assert dice(lungs == LungLabel.LEFT, truth == LungLabel.RIGHT) >= 0.95


def _cut(
    volume: Volume, truth: npt.NDArray[np.uint8], x0: int, x1: int, *, circle: bool = False
) -> tuple[Volume, npt.NDArray[np.uint8]]:
    """Columns x0:x1 of a chest (a field of view that cuts it), optionally as a circle padded
    with the loader's -1024 HU (a small reconstruction circle)."""
    hu: npt.NDArray[np.int16] = np.array(volume.hu[:, :, x0:x1], dtype=np.int16)
    cut = np.array(truth[:, :, x0:x1])
    if circle:
        ny, nx = hu.shape[1:]
        yy, xx = np.mgrid[:ny, :nx]
        outside = ((yy - (ny - 1) / 2) / (ny / 2)) ** 2 + ((xx - (nx - 1) / 2) / (nx / 2)) ** 2 > 1
        hu[:, outside] = -1024
        cut[:, outside] = 0
    return Volume(hu, volume.spacing), cut


@pytest.mark.parametrize("circle", [False, True])
def test_lungs_cut_by_the_field_of_view_stay_lung_on_their_side(circle: bool) -> None:
    """A field of view off to the patient's left cuts the right lung open at the image edge
    (or the reconstruction circle); it is still lung, and still the right lung."""
    volume, truth = synthetic_chest(seed=3)
    nx = volume.shape[2]
    small, cut = _cut(volume, truth, nx // 5, nx, circle=circle)
    assert (cut == LungLabel.RIGHT)[:, :, 0].any()  # the right lung really is cut
    lungs = segment_lungs(small)
    for side in (LungLabel.RIGHT, LungLabel.LEFT):
        assert dice(lungs == side, cut == side) >= 0.9, side


def test_sides_follow_the_mediastinum_not_the_body_centre() -> None:
    """The side of each lung is decided at the valley between them (the mediastinum), not at
    the body's centre, which a field of view or an arm can move into one lung."""
    from ct_triage.models.lungs.sides import mediastinum_x

    lungs = np.zeros((10, 40, 120), dtype=bool)
    lungs[:, 5:35, 20:50] = True  # right lung
    lungs[:, 5:35, 70:100] = True  # left lung
    body = np.zeros_like(lungs)
    body[:, :, 0:80] = True  # body centre at column 40, inside the right lung
    assert mediastinum_x(lungs, body, (2.0, 2.0, 2.0)) == pytest.approx(60.0, abs=3)
    # one lung only: no valley, the body centre is all there is
    assert mediastinum_x(lungs & (np.arange(120) < 60), body, (2.0, 2.0, 2.0)) == pytest.approx(
        39.5
    )


def test_fine_grid_is_downsampled_and_refined() -> None:
    volume, truth = synthetic_chest((40, 192, 192), (2.5, 0.7, 0.7), seed=3)
    lungs = segment_lungs(volume)
    assert dice(lungs > 0, truth > 0) >= 0.95


def test_no_body_gives_no_lungs() -> None:
    air = Volume(np.full((5, 32, 32), -1000, dtype=np.int16), (2.0, 2.0, 2.0))
    lungs = segment_lungs(air)
    assert not lungs.any()
    with pytest.raises(StudyDeclined, match="no lungs visible"):
        check_contains_lungs(air, lungs)


def test_solid_phantom_without_air_is_declined() -> None:
    hu = np.full((10, 64, 64), -1000, dtype=np.int16)
    hu[:, 8:56, 8:56] = 40
    volume = Volume(hu, (3.0, 1.0, 1.0))
    lungs = segment_lungs(volume)
    assert not lungs.any()
    with pytest.raises(StudyDeclined):
        check_contains_lungs(volume, lungs)


def test_check_validates_arguments() -> None:
    volume, _ = synthetic_chest((8, 32, 32))
    with pytest.raises(ValueError, match="do not match"):
        check_contains_lungs(volume, np.zeros((1, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="min_slice_fraction"):
        check_contains_lungs(volume, np.zeros(volume.shape, np.uint8), min_slice_fraction=2.0)


def test_slice_fraction_rule() -> None:
    volume, truth = synthetic_chest()
    few = truth.copy()
    few[:-2] = 0  # lots of lung on two slices only
    with pytest.raises(StudyDeclined):
        check_contains_lungs(volume, few, min_lung_ml=0.0, min_slice_fraction=0.1)
    check_contains_lungs(volume, few, min_lung_ml=0.0, min_slice_fraction=0.0)


@pytest.mark.slow
def test_full_size_speed() -> None:
    volume, truth = synthetic_chest((300, 512, 512), (1.0, 0.7, 0.7), seed=4)
    start = time.perf_counter()
    lungs = segment_lungs(volume)
    elapsed = time.perf_counter() - start
    assert dice(lungs > 0, truth > 0) >= 0.95
    assert elapsed < 15.0  # ~3 s measured on 2 cores; generous for loaded CI machines


# ---------------------------------------------------------------------------- real HU data


def _load(path: Path) -> tuple[Volume, dict[str, npt.NDArray[np.generic]]]:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    hu = arrays["image"].astype(np.int16)
    hu[hu < -1024] = -1024  # padding, as the loader does
    spacing = tuple(float(s) for s in arrays["spacing"])
    return Volume(hu, (spacing[0], spacing[1], spacing[2])), arrays


def test_real_lung_base_dice(shared_data: Path) -> None:
    volume, arrays = _load(shared_data / "real_hu_ct" / "totalseg_example_ct_sm.npz")
    lungs = segment_lungs(volume)
    assert (
        dice(lungs > 0, np.asarray(arrays["lung_mask"], dtype=np.uint8) > 0) >= 0.95
    )  # measured 0.964
    # TotalSegmentator lobes: 1, 2 left upper/lower; 3, 4, 5 right upper/middle/lower
    lobes = arrays["lung_lobes"]
    truth_side = np.select(
        [np.isin(lobes, (3, 4, 5)), np.isin(lobes, (1, 2))], [LungLabel.RIGHT, LungLabel.LEFT], 0
    )
    both = (lungs > 0) & (truth_side > 0)
    assert float(np.mean(lungs[both] == truth_side[both])) > 0.99
    for side in (LungLabel.RIGHT, LungLabel.LEFT):
        assert dice(lungs == side, truth_side == side) >= 0.93
    check_contains_lungs(volume, lungs)


def test_real_three_slices_find_lung_bases(shared_data: Path) -> None:
    volume, _ = _load(shared_data / "real_hu_ct" / "dcmqi_ct_3slice.npz")
    lungs = segment_lungs(volume)
    per_slice_ml = (
        np.stack([np.count_nonzero(lungs == s, axis=(1, 2)) for s in (1, 2)], 1)
        * volume.voxel_volume_ml
    )
    assert (per_slice_ml > 5).all()  # both lung bases on every slice (~8 mL each)
    right_x = np.nonzero(lungs == LungLabel.RIGHT)[2].mean()
    left_x = np.nonzero(lungs == LungLabel.LEFT)[2].mean()
    assert right_x < 256 < left_x


def _load_dicom_series(folder: Path) -> Volume:
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("pylibjpeg")
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    try:
        hu = np.stack(
            [
                ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                for ds in datasets
            ]
        )
    except Exception as exc:  # no JPEG 2000 decoder in this environment
        pytest.skip(f"cannot decode {folder.name}: {exc}")
    z = abs(float(datasets[1].ImagePositionPatient[2]) - float(datasets[0].ImagePositionPatient[2]))
    row, col = (float(v) for v in datasets[0].PixelSpacing)
    return Volume(np.maximum(hu, -1024).astype(np.int16), (z, row, col))


def test_abdomen_series_is_declined(shared_data: Path) -> None:
    volume = _load_dicom_series(shared_data / "dicom" / "totalseg_abdomen_20slices_j2k")
    lungs = segment_lungs(volume)
    with pytest.raises(StudyDeclined, match="no lungs visible"):
        check_contains_lungs(volume, lungs)


# ---------------------------------------------------------------------------- phantom


@pytest.mark.skipif(
    importlib.util.find_spec("ct_triage.models.phantom") is None,
    reason="ct_triage.models.phantom is not available",
)
@pytest.mark.parametrize("seed", [0, 1])
def test_project_phantom(seed: int) -> None:
    from ct_triage.models import phantom

    case = phantom.generate(phantom.spec_from_seed(seed))
    lungs = segment_lungs(case.volume)
    truth = np.asarray(case.lung_labels)
    # dense subpleural lesions are not air: score outside consolidation
    dense = np.asarray(case.lesion_class) == 2
    assert dice((lungs > 0) & ~dense, (truth > 0) & ~dense) >= 0.95
    for side in (LungLabel.RIGHT, LungLabel.LEFT):
        assert dice((lungs == side) & ~dense, (truth == side) & ~dense) >= 0.9


_MEDSEG_SLICES = ("002", "004", "005", "013", "024")


def _medseg_volume(path: Path) -> tuple[Volume, npt.NDArray[np.bool_]]:
    data = np.load(path)
    volume = Volume(data["image"][None].astype(np.int16), (1.0, 1.0, 1.0))
    return volume, data["lesion_class"][None] > 0


def test_medseg_thorax_crops_find_both_lungs(shared_data: Path) -> None:
    """2-D thorax crops whose lungs touch the image border (1-slice volumes, nominal 1 mm)."""
    folder = shared_data / "medseg_covid_slices" / "train"
    paths = sorted(folder.glob("*.npz"))
    if not paths:
        pytest.skip(f"no MedSeg slices in {folder}")
    both = 0
    for path in paths:
        volume, _ = _medseg_volume(path)
        lungs = segment_lungs(volume)
        areas = [int(np.count_nonzero(lungs == side)) for side in (LungLabel.RIGHT, LungLabel.LEFT)]
        both += min(areas) >= 1000  # 10 cm2 at the nominal 1 mm
    assert both >= 0.95 * len(paths)


@pytest.mark.parametrize("name", _MEDSEG_SLICES)
def test_medseg_lesions_lie_near_the_lungs(shared_data: Path, name: str) -> None:
    """Truth lesions lie within the lungs dilated by 10 mm (what combine keeps)."""
    path = shared_data / "medseg_covid_slices" / "train" / f"medseg_infnet_train_{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    volume, lesions = _medseg_volume(path)
    lungs = segment_lungs(volume)
    assert np.count_nonzero(lungs == LungLabel.RIGHT) >= 1000
    assert np.count_nonzero(lungs == LungLabel.LEFT) >= 1000
    dist = ndi.distance_transform_edt(lungs[0] == 0, sampling=volume.spacing[1:])
    near = lesions[0] & (dist <= 10.0)
    assert np.count_nonzero(near) >= 0.95 * np.count_nonzero(lesions)
