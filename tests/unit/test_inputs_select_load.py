"""Input discovery, series selection and series loading (synthetic series and real data)."""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from dicom_factory import SeriesSpec, expected_hu, write_series

from ct_triage.dicom_bridge.inputs import ZipLimits, discover, extract_zip
from ct_triage.dicom_bridge.load import load_series
from ct_triage.dicom_bridge.select import SelectionRules, select_series
from ct_triage.models.errors import InvalidInput, StudyDeclined

SMALL = SelectionRules(min_slices=4)
SPEC = SeriesSpec(n_slices=8)


def _load(folder: Path) -> npt.NDArray[np.int16] | npt.NDArray[np.float32]:
    return load_series(sorted(folder.rglob("*.dcm"))).volume.hu


# --------------------------------------------------------------------------- discovery


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on corrupt files
def test_discover_nested_skips_junk_and_reports_corrupt(tmp_path: Path) -> None:
    write_series(tmp_path / "a" / "b" / "c", SPEC)
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "a" / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 300)
    (tmp_path / "a" / "empty").write_bytes(b"")
    corrupt = tmp_path / "a" / "broken.dcm"
    corrupt.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"garbage")
    cut = tmp_path / "a" / "cut.dcm"
    cut.write_bytes((tmp_path / "a" / "b" / "c" / "IM0000.dcm").read_bytes()[:300])
    found = discover(tmp_path)
    assert len(found.headers) == 8
    assert found.non_dicom_count == 3
    assert sorted(u.path.name for u in found.unreadable) == ["broken.dcm", "cut.dcm"]
    assert all(u.reason for u in found.unreadable)
    assert all("PixelData" not in h.dataset for h in found.headers)


@pytest.mark.parametrize("junk", [False, True])
def test_empty_or_junk_folder_is_invalid(tmp_path: Path, junk: bool) -> None:
    if junk:
        (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidInput, match="No DICOM files found in"):
        discover(tmp_path)


def test_single_file_input(tmp_path: Path) -> None:
    paths = write_series(tmp_path, SPEC)
    found = discover(paths[0])
    assert [h.path for h in found.headers] == [paths[0]]


def test_not_a_zip_is_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(InvalidInput, match="not a readable zip archive"):
        extract_zip(bad, tmp_path / "out")


def test_missing_input_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        discover(tmp_path / "nope")


def _zip_folder(folder: Path, zip_path: Path) -> None:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())


def test_zip_is_extracted_and_loaded(tmp_path: Path) -> None:
    write_series(tmp_path / "src" / "study" / "ct", SPEC)
    (tmp_path / "src" / "junk.txt").write_text("x")
    archive = tmp_path / "in.zip"
    _zip_folder(tmp_path / "src", archive)
    found = discover(archive, work_dir=tmp_path / "work")
    assert len(found.headers) == 8
    assert found.non_dicom_count == 1
    assert found.root == (tmp_path / "work").resolve()
    loaded = load_series(select_series(found.headers, SMALL).paths)
    assert loaded.volume.shape == (8, 16, 16)


@pytest.mark.parametrize(
    "name", ["../evil.dcm", "a/../../evil.dcm", "/etc/evil", "C:/evil", "..\\x"]
)
def test_zip_slip_is_rejected(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    with pytest.raises(InvalidInput, match="points outside the archive folder"):
        discover(archive, work_dir=tmp_path / "work")
    assert not (tmp_path / "evil.dcm").exists()


def test_zip_symlink_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidInput, match="is a link"):
        extract_zip(archive, tmp_path)


def test_zip_bomb_ratio_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (16 * 1024**2))
    with pytest.raises(InvalidInput, match="zip bomb"):
        discover(archive, work_dir=tmp_path / "work")
    assert not any((tmp_path / "work").rglob("zeros.dcm"))


def test_zip_size_and_entry_caps(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(5):
            zf.writestr(f"f{i}.bin", b"x" * 1000)
    with pytest.raises(InvalidInput, match="5 entries"):
        extract_zip(archive, tmp_path / "a", limits=ZipLimits(max_entries=4))
    with pytest.raises(InvalidInput, match="expands to"):
        extract_zip(archive, tmp_path / "b", limits=ZipLimits(max_total_bytes=4000))


def test_zip_lying_about_size_is_stopped(tmp_path: Path) -> None:
    """A member whose inflated size exceeds its declared size is cut off."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bin", b"y" * 5000)
    data = bytearray(buf.getvalue())
    # Patch the declared uncompressed size (central directory) down to 10 bytes.
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    archive = tmp_path / "liar.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match=r"zip bomb|corrupt"):
        extract_zip(archive, tmp_path / "out")


# --------------------------------------------------------------------------- selection


def test_selection_prefers_thin_lung_kernel(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    write_series(
        tmp_path / "scout",
        replace(
            SPEC,
            n_slices=2,
            series_number=1,
            series_description="Topogram 0.6 T20s",
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
            study_uid=study,
        ),
    )
    write_series(
        tmp_path / "soft",
        replace(
            SPEC,
            n_slices=6,
            spacing_mm=5.0,
            series_number=2,
            series_description="Thorax 5.0 Br40",
            kernel="Br40f",
            manufacturer="SIEMENS",
            study_uid=study,
        ),
    )
    write_series(
        tmp_path / "lung",
        replace(
            SPEC,
            n_slices=30,
            spacing_mm=1.0,
            series_number=3,
            series_description="Thorax 1.0",
            kernel="Bl57d",
            manufacturer="SIEMENS",
            study_uid=study,
        ),
    )
    choice = select_series(discover(tmp_path).headers, SMALL)
    assert choice.series.series_number == 3
    assert len(choice.paths) == 30
    verdicts = {v.label: v for v in choice.reasons}
    assert choice.reasons[0].taken
    assert "lung kernel Bl57d" in choice.reasons[0].reason
    soft = verdicts["series 2 'Thorax 5.0 Br40'"]
    assert not soft.taken
    assert "ranks higher" in soft.reason
    scout = verdicts["series 1 'Topogram 0.6 T20s'"]
    assert not scout.taken
    assert "localizer" in scout.reason
    assert "declined" in str(scout)
    assert sum(v.taken for v in choice.reasons) == 1


def test_thinnest_then_most_instances_without_lung_kernel(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    write_series(tmp_path / "a", replace(SPEC, spacing_mm=2.0, series_number=4, study_uid=study))
    write_series(tmp_path / "b", replace(SPEC, spacing_mm=1.0, series_number=5, study_uid=study))
    write_series(
        tmp_path / "c", replace(SPEC, n_slices=9, spacing_mm=1.0, series_number=6, study_uid=study)
    )
    assert select_series(discover(tmp_path).headers, SMALL).series.series_number == 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"modality": "MR"}, "is MR, not CT"),
        (
            {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER"), "series_description": "Scout"},
            "is a localizer",
        ),
        ({"n_slices": 3}, r"has only 3 slices \(need >= 4\)"),
        ({"n_slices": 1}, r"is a single slice \(need >= 4\)"),
        (
            {"image_type": ("DERIVED", "SECONDARY", "MPR")},
            r"is a reformat or rendering \(ImageType MPR\)",
        ),
        (
            {"image_type": ("DERIVED", "SECONDARY", "AXIAL"), "series_description": "MinIP"},
            r"is a reformat or rendering \(description 'MINIP'\)",
        ),
        (
            {"image_type": ("ORIGINAL", "PRIMARY", "AXIAL", "MIP")},
            r"is a reformat or rendering \(ImageType MIP\)",
        ),
        ({"orientation": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)}, r"is not axial \(coronal, 90 degrees"),
        ({"orientation": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)}, r"is not axial \(sagittal"),
        (
            {"tilt_deg": 12.0},
            r"is gantry-tilted \(12 degrees\); gantry-tilted series are not supported",
        ),
        ({"thickness_mm": 8.0}, r"has 8 mm slices \(limit 5 mm\)"),
    ],
)
def test_selection_declines_with_clear_reason(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    write_series(tmp_path, replace(SPEC, **change))  # type: ignore[arg-type]
    with pytest.raises(
        StudyDeclined, match=r"^No usable chest CT series: series 2 '\w+' " + message
    ) as info:
        select_series(discover(tmp_path).headers, SMALL)
    assert "\n" not in str(info.value)
    assert "Synthetic" not in str(info.value)


@pytest.mark.parametrize(
    "image_type", [("ORIGINAL", "SECONDARY", "AXIAL"), ("DERIVED", "PRIMARY", "AXIAL")]
)
def test_secondary_axial_series_is_analysed_when_it_is_the_only_one(
    tmp_path: Path, image_type: tuple[str, ...]
) -> None:
    """LIDC-IDRI style: a GE scanner's only axial series says ORIGINAL\\SECONDARY\\AXIAL."""
    write_series(tmp_path, replace(SPEC, image_type=image_type))
    choice = select_series(discover(tmp_path).headers, SMALL)
    assert choice.reasons[0].taken
    assert "is not ORIGINAL/PRIMARY but marks no reformat" in choice.reasons[0].reason
    strict = replace(SMALL, require_original_primary=True)
    with pytest.raises(StudyDeclined, match="ORIGINAL/PRIMARY required by the settings"):
        select_series(discover(tmp_path).headers, strict)


def test_original_series_preferred_over_secondary_lung_kernel(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    write_series(
        tmp_path / "a",
        replace(
            SPEC,
            series_number=3,
            image_type=("ORIGINAL", "SECONDARY", "AXIAL"),
            kernel="LUNG",
            study_uid=study,
        ),
    )
    write_series(tmp_path / "b", replace(SPEC, series_number=4, kernel="STANDARD", study_uid=study))
    choice = select_series(discover(tmp_path).headers, SMALL)
    assert choice.series.series_number == 4
    assert not choice.reasons[1].taken
    assert "ranks higher" in choice.reasons[1].reason


def test_secondary_capture_is_declined(tmp_path: Path) -> None:
    paths = write_series(tmp_path, SPEC)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.save_as(path)
    with pytest.raises(StudyDeclined, match="is a secondary capture"):
        select_series(discover(tmp_path).headers, SMALL)


def test_default_rules_need_40_slices(tmp_path: Path) -> None:
    write_series(tmp_path, replace(SPEC, n_slices=20))
    with pytest.raises(StudyDeclined, match=r"has only 20 slices \(need >= 40\)"):
        select_series(discover(tmp_path).headers)


def test_decline_lists_best_candidate_first(tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    write_series(
        tmp_path / "s",
        replace(
            SPEC,
            n_slices=2,
            series_number=3,
            series_description="Topogram",
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
            study_uid=study,
        ),
    )
    write_series(tmp_path / "t", replace(SPEC, n_slices=20, series_number=5, study_uid=study))
    with pytest.raises(StudyDeclined) as info:
        select_series(discover(tmp_path).headers)
    assert str(info.value) == (
        "No usable chest CT series: series 5 'Chest' has only 20 slices (need >= 40); "
        "series 3 'Topogram' is a localizer (scout/topogram)"
    )


def test_more_than_one_study_is_declined(tmp_path: Path) -> None:
    write_series(tmp_path / "one", SPEC)
    write_series(tmp_path / "two", SPEC)
    with pytest.raises(StudyDeclined, match="holds 2 different studies; send one study at a time"):
        select_series(discover(tmp_path).headers, SMALL)


def test_mixed_orientations_in_one_series(tmp_path: Path) -> None:
    uids = {"study_uid": "1.2.3.4", "series_uid": "1.2.3.4.5", "frame_of_reference_uid": "1.2.3.6"}
    write_series(tmp_path, replace(SPEC, file_prefix="A", **uids))  # type: ignore[arg-type]
    write_series(
        tmp_path,
        replace(
            SPEC,
            file_prefix="B",
            orientation=(1.0, 0.0, 0.0, 0.0, 0.9962, -0.0872),
            first_position=(-6.0, -6.0, 50.0),
            **uids,  # type: ignore[arg-type]
        ),
    )
    with pytest.raises(StudyDeclined, match="mixes 2 slice orientations"):
        select_series(discover(tmp_path).headers, SMALL)
    with pytest.raises(StudyDeclined, match="different orientations"):
        _load(tmp_path)


def test_selection_rules_validate() -> None:
    with pytest.raises(ValueError, match="min_slices"):
        SelectionRules(min_slices=0)


# --------------------------------------------------------------------------- loading


def test_load_sorts_and_converts_exactly(tmp_path: Path) -> None:
    spec = replace(SPEC, spacing_mm=1.25, first_position=(-10.0, 20.0, -300.0))
    write_series(tmp_path, spec)
    loaded = load_series(sorted(tmp_path.iterdir()), max_workers=3)
    vol = loaded.volume
    expected = np.stack([expected_hu(spec, i) for i in range(spec.n_slices)])
    assert vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.hu, expected)
    assert vol.spacing == pytest.approx((1.25, 0.75, 0.75))
    assert vol.origin == pytest.approx((-10.0, 20.0, -300.0))
    assert vol.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    zs = [float(ds.ImagePositionPatient[2]) for ds in loaded.datasets]
    assert zs == sorted(zs)
    assert all("PixelData" not in ds for ds in loaded.datasets)
    assert loaded.modality == "CT"
    assert loaded.series_number == 2
    assert loaded.series_description == "Chest"
    assert loaded.series_instance_uid == loaded.datasets[0].SeriesInstanceUID
    assert loaded.frame_of_reference_uid == loaded.datasets[0].FrameOfReferenceUID


def test_load_feet_pointing_normal_is_reordered_head_up(tmp_path: Path) -> None:
    # Column cosine -y: the normal points to the feet; z must still run feet -> head.
    spec = replace(SPEC, orientation=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    write_series(tmp_path, spec)
    loaded = load_series(sorted(tmp_path.iterdir()))
    zs = [float(ds.ImagePositionPatient[2]) for ds in loaded.datasets]
    assert zs == sorted(zs)
    assert loaded.volume.direction[8] == pytest.approx(1.0)
    # slice k of the volume is the pixel data of datasets[k]
    first_index = int(loaded.datasets[0].InstanceNumber) - 1
    np.testing.assert_array_equal(loaded.volume.hu[0], expected_hu(spec, first_index))


def test_load_rle_rescale_and_padding(tmp_path: Path) -> None:
    spec = replace(SPEC, rle=True, slope=0.5, intercept=-1024.0, padding_value=-3000)
    write_series(tmp_path, spec)
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID.is_compressed
    hu = _load(tmp_path)
    expected = np.stack([expected_hu(spec, i) for i in range(spec.n_slices)])
    expected[:, :2, :2] = -1024
    np.testing.assert_array_equal(hu, expected)


def test_padding_range_on_unsigned_stored_values(tmp_path: Path) -> None:
    # Unsigned storage, padding range 0..10 stored (= -1024..-1014 HU); the 2x2 corner is 0.
    spec = replace(
        SPEC,
        pixel_representation=0,
        padding_value=0,
        extra=(("PixelPaddingRangeLimit", 10),),
    )
    write_series(tmp_path, spec)
    hu = _load(tmp_path)
    assert (hu[:, :2, :2] == -1024).all()
    expected = np.stack([expected_hu(spec, i) for i in range(spec.n_slices)]).astype(np.int32)
    stored = expected + 1024
    keep = (stored > 10) | (stored < 0)
    keep[:, :2, :2] = False
    np.testing.assert_array_equal(hu[keep], expected[keep])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"missing": (4,)}, r"missing slice\(s\) between positions -97.00 and -95.00 mm"),
        (
            {"positions_along_normal": (0.0, 1.0, 2.0, 3.0, 4.3, 5.3, 6.3, 7.3)},
            "irregular slice spacing",
        ),
        (
            {"positions_along_normal": (0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0)},
            "at the same position",
        ),
        ({"tilt_deg": 15.0}, "gantry-tilted series are not supported"),
        (
            {"tilt_deg": 15.0, "extra": (("GantryDetectorTilt", 0.0),)},
            "drift .* sideways .* gantry-tilted series are not supported",
        ),
        ({"photometric": "MONOCHROME1"}, "only MONOCHROME2"),
    ],
)
def test_load_declines_bad_geometry(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    write_series(tmp_path, replace(SPEC, **change))  # type: ignore[arg-type]
    with pytest.raises(StudyDeclined, match=message) as info:
        _load(tmp_path)
    assert not isinstance(info.value, InvalidInput)
    assert "\n" not in str(info.value)


def test_load_two_series_is_declined(tmp_path: Path) -> None:
    write_series(tmp_path / "a", SPEC)
    write_series(tmp_path / "b", SPEC)
    with pytest.raises(StudyDeclined, match="hold 2 series"):
        _load(tmp_path)


def test_load_no_pixel_data(tmp_path: Path) -> None:
    write_series(tmp_path, replace(SPEC, with_pixels=False))
    with pytest.raises(InvalidInput, match=r"IM000\d.dcm has no pixel data"):
        _load(tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on corrupt files
@pytest.mark.parametrize("rle", [False, True])
def test_load_truncated_pixel_data_names_file_not_patient(tmp_path: Path, rle: bool) -> None:
    paths = write_series(tmp_path, replace(SPEC, rle=rle))
    victim = paths[3]
    victim.write_bytes(victim.read_bytes()[:-200])
    with pytest.raises(InvalidInput, match=victim.name) as info:
        _load(tmp_path)
    assert "Synthetic" not in str(info.value)
    assert "SYNTH-0001" not in str(info.value)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on corrupt files
def test_load_garbage_file_is_invalid(tmp_path: Path) -> None:
    paths = write_series(tmp_path, SPEC)
    paths[0].write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    with pytest.raises(InvalidInput, match=paths[0].name):
        _load(tmp_path)


# --------------------------------------------------------------------------- real data


def test_real_dcmqi_3slice_hu(shared_data: Path) -> None:
    folder = shared_data / "dicom" / "dcmqi_ct_3slice"
    with pytest.raises(StudyDeclined, match=r"has only 3 slices \(need >= 40\)"):
        select_series(discover(folder).headers)
    choice = select_series(discover(folder).headers, SelectionRules(min_slices=3))
    loaded = load_series(choice.paths)
    reference = np.load(shared_data / "real_hu_ct" / "dcmqi_ct_3slice.npz")["image"]
    # The reference keeps the scanner's outside-FOV value (stored PixelPaddingValue -2000 ->
    # -3024 HU); we map padding to -1024 and are otherwise identical, voxel for voxel.
    assert (reference == -3024).sum() == 3 * 55772
    np.testing.assert_array_equal(loaded.volume.hu, np.maximum(reference, -1024))
    assert loaded.volume.spacing == pytest.approx((1.0, 0.810547, 0.810547))
    assert [d.InstanceNumber for d in loaded.datasets] == [3, 2, 1]  # z ascending


def test_real_jpeg2000_series(shared_data: Path) -> None:
    folder = shared_data / "dicom" / "totalseg_abdomen_20slices_j2k"
    found = discover(folder)
    with pytest.raises(StudyDeclined, match=r"^No usable chest CT series: .* has only 20 slices"):
        select_series(found.headers)
    # Anonymised: no Study/Series/SOP Instance UIDs in the data set; still one series.
    choice = select_series(found.headers, SelectionRules(min_slices=20))
    loaded = load_series(choice.paths)
    assert loaded.volume.shape == (20, 512, 512)
    assert loaded.volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert loaded.series_instance_uid == ""
    assert all(ds.SOPInstanceUID for ds in loaded.datasets)
    # Independent decoder: GDCM (via SimpleITK) on the same files, sorted by position.
    sitk = pytest.importorskip("SimpleITK")
    ordered = [
        str(p)
        for p in sorted(
            folder.iterdir(),
            key=lambda p: float(
                pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]
            ),
        )
    ]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(ordered)
    reference = sitk.GetArrayFromImage(reader.Execute())
    np.testing.assert_array_equal(loaded.volume.hu, np.maximum(reference, -1024))


def test_real_tcia_singles(shared_data: Path) -> None:
    folder = shared_data / "dicom" / "tcia_covid19_ny_sbu_singles"
    found = discover(folder)
    assert len(found.headers) == 10
    with pytest.raises(StudyDeclined, match="holds 10 different studies"):
        select_series(found.headers)
    for header in found.headers:
        with pytest.raises(StudyDeclined, match=r"is a single slice \(need >= 40\)"):
            select_series([header])
    one = found.headers[0]
    choice = select_series([one], SelectionRules(min_slices=1))
    loaded = load_series(choice.paths)
    assert loaded.volume.shape == (1, 512, 512)
    assert loaded.volume.spacing[0] == pytest.approx(float(one.dataset.SliceThickness))
    assert loaded.volume.hu.min() >= -1024


def test_to_npz_writes_a_chest_volume_for_training(shared_data: Path, tmp_path: Path) -> None:
    from ct_triage.dicom_bridge.to_npz import main as to_npz

    out = tmp_path / "chest.npz"
    assert to_npz([str(shared_data / "dicom" / "lidc_idri_0001"), str(out)]) == 0
    with np.load(out) as d:
        assert d["image"].dtype == np.int16
        assert d["image"].shape == (133, 512, 512)
        assert d["spacing"].tolist() == pytest.approx([2.5, 0.703125, 0.703125])
    # a series the selection declines is one line and exit 2, nothing written
    assert to_npz([str(shared_data / "dicom" / "dcmqi_ct_3slice"), str(tmp_path / "x.npz")]) == 2
    assert not (tmp_path / "x.npz").exists()
