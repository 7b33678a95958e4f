"""The synthetic chest CT phantom: determinism, HU realism, truth masks, DICOM round trip."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from scipy import ndimage

from ct_triage.dicom_bridge.synthetic import QUIRKS, write_phantom_series
from ct_triage.models.errors import TriageError
from ct_triage.models.phantom import (
    INVOLVEMENT_RANGES,
    Phantom,
    PhantomSpec,
    generate,
    percent_involvement,
    save_truth,
    spec_from_seed,
)
from ct_triage.models.segmentation import LesionLabel, LungLabel


def _small_spec(seed: int, severity: str) -> PhantomSpec:
    """A quick 256 x 256 phantom at 1.4 mm / 5 mm (same anatomy template as 512 x 512)."""
    spec = spec_from_seed(seed, severity=severity, slice_spacing_mm=5.0, pixel_spacing_mm=1.4)
    return replace(spec, rows=256, cols=256)


@pytest.fixture(scope="module")
def full() -> Phantom:
    """A realistic 512 x 512 moderate phantom, 48 slices around the mid chest."""
    spec = replace(
        spec_from_seed(7, n_slices=48, severity="moderate", slice_spacing_mm=3.0),
        target_involvement=0.35,
    )
    return generate(spec)


@pytest.fixture(scope="module")
def by_severity() -> dict[str, Phantom]:
    return {sev: generate(_small_spec(11, sev)) for sev in ("none", "mild", "moderate", "severe")}


def test_spec_from_seed_defaults_are_realistic() -> None:
    for seed in range(20):
        spec = spec_from_seed(seed)
        assert (spec.rows, spec.cols) == (512, 512)
        assert 0.6 <= spec.pixel_spacing_mm <= 0.9
        assert spec.slice_spacing_mm in (2.5, 3.0)
        assert 80 <= spec.n_slices <= 130
        assert spec.severity in INVOLVEMENT_RANGES
    assert spec_from_seed(5) == spec_from_seed(5)
    assert spec_from_seed(5, n_slices=300, severity="none").n_slices == 300


def test_invalid_spec_raises_triage_error() -> None:
    with pytest.raises(TriageError, match="severity"):
        spec_from_seed(1, severity="critical")
    with pytest.raises(TriageError, match="n_slices"):
        spec_from_seed(1, n_slices=2)


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path: Path) -> None:
    def write(seed: int, name: str) -> tuple[bytes, list[bytes]]:
        ph = generate(replace(_small_spec(seed, "mild"), n_slices=10))
        save_truth(ph, tmp_path / name / "truth.npz")
        paths = write_phantom_series(ph, tmp_path / name / "dicom")
        return (tmp_path / name / "truth.npz").read_bytes(), [p.read_bytes() for p in paths]

    truth_a, dicom_a = write(3, "a")
    truth_b, dicom_b = write(3, "b")
    truth_c, dicom_c = write(4, "c")
    assert truth_a == truth_b
    assert dicom_a == dicom_b
    assert truth_a != truth_c
    assert dicom_a[0] != dicom_c[0]


def test_truth_npz_format(tmp_path: Path, by_severity: dict[str, Phantom]) -> None:
    ph = by_severity["mild"]
    save_truth(ph, tmp_path / "truth.npz")
    with np.load(tmp_path / "truth.npz", allow_pickle=False) as z:
        assert z["image"].dtype == np.int16
        np.testing.assert_array_equal(z["image"], ph.volume.hu)
        assert z["spacing"].dtype == np.float64
        assert tuple(z["spacing"]) == ph.volume.spacing
        for key in ("lung_mask", "lesion_mask", "lesion_class", "lung_labels"):
            assert z[key].dtype == np.uint8
            assert z[key].shape == ph.volume.shape
        assert str(z["source"]) == "synthetic:ct-triage-phantom seed=11"
        assert not bool(z["hu_is_approx"])


def test_hu_ranges(full: Phantom) -> None:
    hu: npt.NDArray[np.int16] = np.asarray(full.volume.hu, dtype=np.int16)
    lung = full.lung_mask.astype(bool)
    parenchyma = lung & (full.lesion_mask == 0)
    assert abs(float(np.median(hu[parenchyma])) + 850.0) <= 60.0
    ggo = full.lesion_class == LesionLabel.GGO
    cons = full.lesion_class == LesionLabel.CONSOLIDATION
    assert ggo.sum() > 1000
    assert -750.0 <= float(np.median(hu[ggo])) <= -300.0
    if cons.sum() > 200:
        assert -100.0 <= float(np.median(hu[cons])) <= 60.0
    # dependent (posterior) lung is denser than anterior lung
    rows = np.nonzero(parenchyma)[1]
    front = parenchyma.copy()
    front[:, int(np.median(rows)) :, :] = False
    back = parenchyma & ~front
    assert float(np.mean(hu[back])) > float(np.mean(hu[front]))
    # body tissues: fat, muscle / soft tissue, bone; air outside
    body = (hu > -500) & ~lung
    assert np.count_nonzero(body & (hu > -150) & (hu < -60)) > 50_000
    assert np.count_nonzero(body & (hu > 20) & (hu < 80)) > 100_000
    assert np.count_nonzero(hu > 500) > 5_000
    assert hu[:, 5, 5].max() == -1024  # outside the circular field of view
    assert abs(float(np.median(hu[:, 60:80, 250:262])) + 1000.0) < 30.0  # air above the body


def test_severe_phantom_has_consolidation_hu(by_severity: dict[str, Phantom]) -> None:
    ph = by_severity["severe"]
    cons = ph.lesion_class == LesionLabel.CONSOLIDATION
    assert cons.sum() > 500
    assert -100.0 <= float(np.median(np.asarray(ph.volume.hu)[cons])) <= 60.0


def _assert_truth_consistent(ph: Phantom) -> None:
    lung = ph.lung_mask.astype(bool)
    np.testing.assert_array_equal(lung, ph.lung_labels > 0)
    np.testing.assert_array_equal(ph.lesion_mask.astype(bool), ph.lesion_class > 0)
    assert not np.any(ph.lesion_mask.astype(bool) & ~lung), "lesions must lie inside the lungs"
    assert set(np.unique(ph.lesion_class)) <= {0, 1, 2}
    assert set(np.unique(ph.lung_labels)) <= {0, 1, 2}


def test_truth_masks(full: Phantom, by_severity: dict[str, Phantom]) -> None:
    for ph in (full, *by_severity.values()):
        _assert_truth_consistent(ph)
    right = full.lung_labels == LungLabel.RIGHT
    left = full.lung_labels == LungLabel.LEFT
    cols = full.volume.shape[2]
    assert right.sum() > 0
    assert left.sum() > 0
    # patient left = higher column index (column 0 is the patient's right)
    assert np.nonzero(right)[2].max() < cols // 2
    assert np.nonzero(left)[2].min() > cols // 2
    # the lungs do not touch: a classical 2-D connected-component split separates them
    lung = full.lung_mask.astype(bool)
    for k in range(0, lung.shape[0], 4):
        if right[k].any() and left[k].any():
            grown = ndimage.binary_dilation(right[k], iterations=2)
            assert not np.any(grown & left[k])
    # both lungs vary along z: the apex is smaller than the base region
    area = lung.sum(axis=(1, 2))
    assert area.max() > 0


def test_lung_shape_varies_along_z(by_severity: dict[str, Phantom]) -> None:
    ph = by_severity["none"]
    area = ph.lung_mask.sum(axis=(1, 2)).astype(float)
    nz = len(area)
    peak = int(np.argmax(area))
    assert 0.1 * nz < peak < 0.7 * nz  # widest below the middle, not at the apex
    top = area[np.nonzero(area)[0].max() - 2]
    assert top < 0.5 * area.max()  # small apex
    assert area[0] < 0.5 * area.max()  # liver / diaphragm at the base
    # cardiac notch: at the heart level the left lung is smaller than the right one
    k = int(0.35 * nz)
    assert (ph.lung_labels[k] == LungLabel.LEFT).sum() < (
        ph.lung_labels[k] == LungLabel.RIGHT
    ).sum()


def test_severity_controls_involvement(by_severity: dict[str, Phantom]) -> None:
    assert by_severity["none"].lesion_mask.sum() == 0
    pct = {sev: percent_involvement(ph)["total"] for sev, ph in by_severity.items()}
    assert pct["none"] == 0.0 < pct["mild"] < pct["moderate"] < pct["severe"]
    assert pct["mild"] < 10.0
    assert 10.0 <= pct["moderate"] <= 45.0
    assert pct["severe"] > 40.0
    # bilateral disease
    for sev in ("moderate", "severe"):
        per_lung = percent_involvement(by_severity[sev])
        assert per_lung["left"] > 0.0
        assert per_lung["right"] > 0.0


def _read_hu(paths: list[Path]) -> tuple[npt.NDArray[np.int16], list[float]]:
    """A minimal correct reader: rescale, padding to -1024, sort along the slice normal."""
    slices = []
    for path in paths:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.int32)
        hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        if "PixelPaddingValue" in ds:
            hu[stored == int(ds.PixelPaddingValue)] = -1024
        slices.append((float(ds.ImagePositionPatient[2]), hu.astype(np.int16)))
    slices.sort(key=lambda item: item[0])
    return np.stack([s for _, s in slices]), [z for z, _ in slices]


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_dicom_round_trip(tmp_path: Path, quirk: str, by_severity: dict[str, Phantom]) -> None:
    ph = by_severity["moderate"]
    paths = write_phantom_series(ph, tmp_path / "dicom", quirk=quirk)
    assert [p.name for p in paths[:2]] == ["CT000001.dcm", "CT000002.dcm"]
    shuffled = paths[::-1]
    hu, zs = _read_hu(shuffled)
    np.testing.assert_array_equal(hu, ph.volume.hu)
    np.testing.assert_allclose(np.diff(zs), ph.volume.spacing[0], atol=1e-4)
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert [float(v) for v in ds.PixelSpacing] == [ph.volume.spacing[1]] * 2
    assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(list(ph.volume.origin))
    assert ds.PatientID == "PHANTOM-11"
    if QUIRKS[quirk].padding is not None:
        stored = ds.pixel_array
        assert stored[0, 0] == QUIRKS[quirk].padding
        assert int(ds.PixelPaddingValue) == QUIRKS[quirk].padding


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_dciodvfy_reports_no_error(tmp_path: Path, quirk: str) -> None:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    ph = generate(replace(_small_spec(2, "mild"), n_slices=4))
    paths = write_phantom_series(ph, tmp_path, quirk=quirk)
    result = subprocess.run([exe, str(paths[1])], capture_output=True, text=True, check=False)
    report = result.stdout + result.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report
