"""Hostile and careless inputs (issue 16): no traceback, no silent mix-up.

Each test reproduces one numbered item of the issue and failed before its fix:

1. headers real scanners send (empty/unknown SpecificCharacterSet, SliceThickness missing or
   NaN, Study/Series/Frame of Reference UID missing from an anonymised export) analyse to
   SEG + SR; a UID missing from some images only, or invalid, is declined at intake in one
   line (all of these used to crash the SEG writer after the analysis);
2. impossible geometry (PixelSpacing 0, negative, NaN, 1e9; Rows/Columns 65535) is declined
   before any big allocation;
3. zip archives with clashing names (a file ``study`` beside ``study/...``, repeated
   names) keep every file;
4. two patients under one StudyInstanceUID are declined;
5. exact duplicate files are read once; two different files with one SOP Instance UID
   are declined with that reason;
8. an OUT that cannot be written, or a full disk, is one line (exit 1), not a traceback.
"""

from __future__ import annotations

import errno
import math
import shutil
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import SeriesSpec, write_series
from hostile_series import analyze_env, run_analyze, write_small_phantom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from ct_triage.dicom_bridge import inputs
from ct_triage.dicom_bridge.inputs import DicomHeader, discover, extract_zip
from ct_triage.dicom_bridge.load import load_series
from ct_triage.dicom_bridge.select import SelectionRules, select_series
from ct_triage.dicom_bridge.writers.seg import output_character_set
from ct_triage.models.errors import InvalidInput, StudyDeclined
from ct_triage.server import pipeline

Mutation = Callable[[Dataset], None]

BASE = SeriesSpec(n_slices=12, rows=32, columns=32)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The small analysable phantom series (16 slices, 128 x 128)."""
    return write_small_phantom(tmp_path_factory.mktemp("phantom") / "dicom")


@pytest.fixture(scope="module")
def analysing() -> Iterator[None]:
    with analyze_env():
        yield


def _mutated(files: list[Path], dest: Path, mutation: Mutation) -> Path:
    dest.mkdir(parents=True)
    for path in files:
        ds = pydicom.dcmread(path)
        mutation(ds)
        ds.save_as(dest / path.name)
    return dest


def _set(keyword: str, value: object) -> Mutation:
    def apply(ds: Dataset) -> None:
        setattr(ds, keyword, value)

    return apply


def _raw(tag: int, vr: str, value: str) -> Mutation:
    """Store ``value`` as written (e.g. ``"NaN"`` in a DS), bypassing pydicom's checks."""

    raw = value.encode("ascii")
    raw += b"\0" if vr == "UI" and len(raw) % 2 else b" " * (len(raw) % 2)

    def apply(ds: Dataset) -> None:
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)

    return apply


def _remove(keyword: str) -> Mutation:
    def apply(ds: Dataset) -> None:
        if keyword in ds:
            delattr(ds, keyword)

    return apply


def _one_line(err: str) -> list[str]:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("ct-triage:")]
    assert len(lines) == 1, err
    return lines


# --- 1. writers and intake ------------------------------------------------------------------

ANALYSED: dict[str, Mutation] = {
    "charset_empty": _set("SpecificCharacterSet", ""),
    "charset_unknown": _set("SpecificCharacterSet", "ISO_IR 999"),
    "slice_thickness_missing": _remove("SliceThickness"),
    "slice_thickness_nan": _raw(0x00180050, "DS", "NaN"),
    "study_uid_missing": _remove("StudyInstanceUID"),
    "series_uid_missing": _remove("SeriesInstanceUID"),
    "frame_of_reference_missing": _remove("FrameOfReferenceUID"),
    # found by the fuzzer: highdicom parses the dates, times and sex it copies
    "study_date_invalid": _raw(0x00080020, "DA", "20201345"),
    "study_time_invalid": _raw(0x00080030, "TM", "256199"),
    "patient_sex_invalid": _raw(0x00100040, "CS", "X"),
}


@pytest.mark.usefixtures("analysing")
@pytest.mark.parametrize("case", sorted(ANALYSED))
def test_careless_header_still_gives_seg_and_sr(
    case: str, phantom: list[Path], tmp_path: Path
) -> None:
    source = _mutated(phantom, tmp_path / "in", ANALYSED[case])
    out = tmp_path / "out"
    rc, err = run_analyze(source, out)
    assert rc == 0, err
    assert "Traceback" not in err
    seg = pydicom.dcmread(out / "seg.dcm")
    sr = pydicom.dcmread(out / "sr.dcm")
    thickness = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness
    assert math.isfinite(float(thickness))
    assert float(thickness) > 0
    for ds in (seg, sr):
        assert "SpecificCharacterSet" not in ds or ds.SpecificCharacterSet in ("ISO_IR 100",)
    # One study and frame of reference for SEG and SR: the source's, or one generated for
    # an anonymised source that has none (the same for every result object).
    given = pydicom.dcmread(source / phantom[0].name)
    assert str(sr.StudyInstanceUID) == str(seg.StudyInstanceUID)
    if "StudyInstanceUID" in given:
        assert str(seg.StudyInstanceUID) == str(given.StudyInstanceUID)
    if "FrameOfReferenceUID" in given:
        assert str(seg.FrameOfReferenceUID) == str(given.FrameOfReferenceUID)
    for ds in (seg, sr):
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert UID(str(ds[kw].value)).is_valid, kw


def _longer_sop_uid(ds: Dataset) -> None:
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{'9' * 64}"  # unique per file, over 64


def _frame_of_reference_missing_on_one(ds: Dataset) -> None:
    if int(ds.InstanceNumber) == 5:
        del ds.FrameOfReferenceUID


DECLINED: dict[str, tuple[Mutation, str]] = {
    "frame_of_reference_missing_on_one": (
        _frame_of_reference_missing_on_one,
        "1 of 16 images of the series have no FrameOfReferenceUID",
    ),
    "series_uid_invalid": (_set("SeriesInstanceUID", "1.2.abc.3"), "not a valid DICOM UID"),
    "study_uid_invalid": (_set("StudyInstanceUID", "1.2..3"), "not a valid DICOM UID"),
    "sop_uid_too_long": (_longer_sop_uid, "not a valid DICOM UID"),
    # found by the fuzzer: float('abc') in the rescale, NaN cast to int16
    "rescale_intercept_garbage": (_raw(0x00281052, "DS", "abc"), "RescaleSlope/Rescale"),
    "rescale_slope_nan": (_raw(0x00281053, "DS", "NaN"), "RescaleSlope/Rescale"),
    # found by the fuzzer: one value where six are due, len() of a number in selection
    "orientation_one_value": (_raw(0x00200037, "DS", "NaN"), "image orientation"),
}


@pytest.mark.usefixtures("analysing")
@pytest.mark.parametrize("case", sorted(DECLINED))
def test_missing_or_invalid_uid_declined_at_intake(
    case: str, phantom: list[Path], tmp_path: Path
) -> None:
    mutation, phrase = DECLINED[case]
    source = _mutated(phantom, tmp_path / "in", mutation)
    out = tmp_path / "out"
    rc, err = run_analyze(source, out)
    assert rc == 2, err
    (line,) = _one_line(err)
    assert "declined" in line
    assert phrase in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("ISO_IR 999", None),
        ("ISO_IR 100", "ISO_IR 100"),
        (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
        ("ISO 2022 IR 100", None),
        (["ISO 2022 IR 87", "ISO 2022 IR 6"], None),
    ],
)
def test_output_character_set_never_trusts_the_source(
    value: str | list[str], expected: str | list[str] | None
) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = value
    assert output_character_set(ds) == expected


def test_real_dcmqi_series_with_empty_charset_analyses(
    shared_data: Path, tmp_path: Path, analysing: None
) -> None:
    """The issue's real example: dcmqi_ct_3slice has SpecificCharacterSet ''."""
    source = shared_data / "dicom" / "dcmqi_ct_3slice"
    assert pydicom.dcmread(next(source.iterdir())).SpecificCharacterSet == ""
    rc, err = run_analyze(source, tmp_path / "out")
    assert "Traceback" not in err
    assert rc in (0, 2), err
    if rc == 0:
        assert (tmp_path / "out" / "seg.dcm").is_file()
        assert (tmp_path / "out" / "sr.dcm").is_file()
    else:
        _one_line(err)


# --- 2. geometry ----------------------------------------------------------------------------

GEOMETRY: dict[str, tuple[SeriesSpec, str]] = {
    "pixel_spacing_zero": (replace(BASE, pixel_spacing_mm=(0.0, 0.0)), "PixelSpacing 0 x 0"),
    "pixel_spacing_negative": (
        replace(BASE, pixel_spacing_mm=(-0.7, -0.7)),
        "not a CT pixel size",
    ),
    "pixel_spacing_huge": (replace(BASE, pixel_spacing_mm=(1e9, 1e9)), "not a CT pixel size"),
    "pixel_spacing_nan": (
        replace(BASE, extra=(("PixelSpacing", ["NaN", "NaN"]),)),
        "no valid PixelSpacing",
    ),
    "rows_columns_65535": (
        replace(BASE, extra=(("Rows", 65535), ("Columns", 65535))),
        "65535x65535",
    ),
    "field_of_view_3m": (
        replace(BASE, rows=512, columns=512, n_slices=4, pixel_spacing_mm=(4.0, 4.0)),
        "field of view",
    ),
}


@pytest.mark.parametrize("case", sorted(GEOMETRY))
def test_impossible_geometry_declined_before_allocating(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CT_TRIAGE_MIN_SLICES", "4")
    spec, phrase = GEOMETRY[case]
    write_series(tmp_path / "in", spec)
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        rc, err = run_analyze(tmp_path / "in", out)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rc == 2, err
    (line,) = _one_line(err)
    assert phrase in line, line
    assert peak < 200 * 1024**2, f"{peak / 1024**2:.0f} MiB allocated before declining"
    assert not out.exists()


def test_load_series_declines_rows_65535_without_allocating(tmp_path: Path) -> None:
    paths = write_series(tmp_path, replace(BASE, extra=(("Rows", 65535), ("Columns", 65535))))
    with pytest.raises(StudyDeclined, match="65535x65535"):
        load_series(paths)


# --- 3. zip archives with clashing names ----------------------------------------------------


def test_zip_file_beside_folder_of_the_same_name_keeps_both(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "series", BASE)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(paths[0], arcname="study")
        for p in paths[1:]:
            zf.write(p, arcname=f"study/{p.name}")
    dest = tmp_path / "x"
    dest.mkdir()
    extract_zip(archive, dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert len(files) == len(paths)
    assert "study~2" in files
    found = discover(archive, work_dir=tmp_path / "work")
    assert len(found.headers) == len(paths)


def test_zip_repeated_names_keep_every_file(tmp_path: Path) -> None:
    first = write_series(tmp_path / "a", BASE)
    second = write_series(tmp_path / "b", replace(BASE, series_number=3))
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in [*first, *second]:  # the same 12 names twice, different content
            zf.writestr(p.name, p.read_bytes())
        zf.writestr(first[0].name, first[0].read_bytes())  # an identical repeat
    dest = tmp_path / "x"
    dest.mkdir()
    extract_zip(archive, dest)
    files = [p for p in dest.iterdir() if p.is_file()]
    assert len(files) == 2 * len(first)
    found = discover(archive, work_dir=tmp_path / "work")
    assert len(found.headers) == 2 * len(first)


def test_analyze_zip_with_clashing_names_is_not_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CT_TRIAGE_MIN_SLICES", "4")
    paths = write_series(tmp_path / "series", BASE)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(paths[0], arcname="study")
        for p in paths:
            zf.write(p, arcname=f"study/{p.name}")
    rc, err = run_analyze(archive, tmp_path / "out")
    assert rc == 2, err  # the 32 x 32 test series has no lungs: a decline, not a crash
    _one_line(err)


# --- 5. duplicate instances -----------------------------------------------------------------


def test_exact_duplicate_files_are_read_once(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "in" / "a", BASE)
    (tmp_path / "in" / "copy").mkdir()
    for p in paths[:5]:
        shutil.copy(p, tmp_path / "in" / "copy" / p.name)
    found = discover(tmp_path / "in")
    assert len(found.headers) == len(paths)
    choice = select_series(found.headers, SelectionRules(min_slices=4))
    loaded = load_series(choice.paths)
    assert loaded.volume.shape[0] == len(paths)


def test_different_files_with_one_sop_instance_uid_are_declined(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "in", BASE)
    ds = pydicom.dcmread(paths[4])
    ds.SeriesDescription = "edited copy"
    ds.save_as(tmp_path / "in" / "edited.dcm")
    with pytest.raises(InvalidInput, match="same SOPInstanceUID"):
        discover(tmp_path / "in")


def test_duplicate_sop_instance_uid_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CT_TRIAGE_MIN_SLICES", "4")
    paths = write_series(tmp_path / "in", BASE)
    ds = pydicom.dcmread(paths[4])
    ds.InstanceNumber = 99
    ds.save_as(tmp_path / "in" / "edited.dcm")
    rc, err = run_analyze(tmp_path / "in", tmp_path / "out")
    assert rc == 2, err
    (line,) = _one_line(err)
    assert "same SOPInstanceUID" in line


def test_drop_duplicate_instances_keeps_first_by_path(tmp_path: Path) -> None:
    paths = write_series(tmp_path, BASE)
    copy = tmp_path / "zz-copy.dcm"
    shutil.copy(paths[0], copy)
    headers = [DicomHeader(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in paths]
    headers.append(DicomHeader(copy, pydicom.dcmread(copy, stop_before_pixels=True)))
    kept = inputs.drop_duplicate_instances(headers)
    assert [h.path for h in kept] == paths


# --- 4. two patients under one StudyInstanceUID ---------------------------------------------


def _two_patients(root: Path) -> Path:
    study = "1.2.826.0.1.3680043.8.498.1"
    write_series(root / "a", replace(BASE, study_uid=study))
    write_series(
        root / "b",
        replace(BASE, study_uid=study, series_number=3, extra=(("PatientID", "OTHER-0002"),)),
    )
    return root


def test_two_patients_under_one_study_are_declined(tmp_path: Path) -> None:
    found = discover(_two_patients(tmp_path / "in"))
    with pytest.raises(StudyDeclined, match="2 different patients"):
        select_series(found.headers, SelectionRules(min_slices=4))


def test_two_patients_declined_by_the_cli_without_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CT_TRIAGE_MIN_SLICES", "4")
    rc, err = run_analyze(_two_patients(tmp_path / "in"), tmp_path / "out")
    assert rc == 2, err
    (line,) = _one_line(err)
    assert "different patients" in line
    assert "OTHER-0002" not in err
    assert "SYNTH-0001" not in err


def test_one_patient_in_two_series_still_selects(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.2"
    write_series(tmp_path / "a", replace(BASE, study_uid=study))
    write_series(tmp_path / "b", replace(BASE, study_uid=study, series_number=3))
    choice = select_series(discover(tmp_path).headers, SelectionRules(min_slices=4))
    assert len(choice.reasons) == 2


# --- 8. unwritable OUT, full disk -----------------------------------------------------------


def test_out_under_a_file_is_one_line(tmp_path: Path, phantom: list[Path]) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    rc, err = run_analyze(phantom[0].parent, blocker / "out")
    assert rc == 1, err
    (line,) = _one_line(err)
    assert "cannot write results" in line
    assert blocker.read_text() == "a file where a folder should be"


@pytest.mark.usefixtures("analysing")
def test_full_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, phantom: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(ds: Dataset, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline, "save_dataset", disk_full)
    out = tmp_path / "out"
    rc, err = run_analyze(phantom[0].parent, out)
    assert rc == 1, err
    (line,) = _one_line(err)
    assert "cannot write results" in line
    assert "No space left on device" in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_unwritable_out_folder_is_one_line(
    tmp_path: Path, phantom: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, for whom every folder is writable: the access check is faked.
    monkeypatch.setattr("ct_triage.server.outputs.os.access", lambda *a, **k: False)
    rc, err = run_analyze(phantom[0].parent, tmp_path / "out")
    assert rc == 1, err
    (line,) = _one_line(err)
    assert "not writable" in line
    assert not (tmp_path / "out").exists()


# --- corrupt compressed pixel data ----------------------------------------------------------


def _garbled_j2k_body(ds: Dataset, seed: int = 1) -> None:
    """Keep the JPEG 2000 codestream up to its first SOD marker, random bytes after it.

    OpenJPEG decodes such a frame without raising: the header is valid, the tiles are noise.
    """
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    body = frame.find(b"\xff\x93") + 2
    assert body > 2, "no SOD marker in the codestream"
    noise = np.random.default_rng(seed).bytes(len(frame) - body)
    ds.PixelData = encapsulate([frame[:body] + noise])


def test_jpeg2000_slice_with_random_body_is_declined_not_decoded_silently(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real JPEG 2000 CT: one slice's codestream body replaced by random bytes."""
    source = sorted((shared_data / "dicom" / "totalseg_abdomen_20slices_j2k").iterdir())
    folder = tmp_path / "j2k"
    folder.mkdir()
    for i, path in enumerate(source):
        ds = pydicom.dcmread(path)
        if i == 9:
            _garbled_j2k_body(ds)
        ds.save_as(folder / path.name)
    # The garbled slice decodes without an error: the check is not the decoder's.
    garbled = pydicom.dcmread(folder / source[9].name).pixel_array
    assert garbled.shape == (512, 512)
    with pytest.raises(InvalidInput, match="decodes to noise") as caught:
        load_series(sorted(folder.iterdir()))
    assert source[9].name in str(caught.value)
    # The untouched series loads: the check does not fire on real slices.
    assert load_series(source).volume.shape[0] == len(source)


@pytest.mark.usefixtures("analysing")
def test_noise_slice_in_phantom_is_declined_on_one_line(
    phantom: list[Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "noise"
    folder.mkdir()
    for i, path in enumerate(phantom):
        ds = pydicom.dcmread(path)
        if i == len(phantom) // 2:
            arr = ds.pixel_array
            ds.PixelData = rng.integers(0, 4096, arr.shape, dtype=arr.dtype).tobytes()
        ds.save_as(folder / path.name)
    rc, err = run_analyze(folder, tmp_path / "out")
    assert rc == 2
    (line,) = _one_line(err)
    assert "decodes to noise" in line
    assert not (tmp_path / "out").exists()


def test_decline_reason_is_always_one_line() -> None:
    """A decoder's multi-line exception text never reaches the user on several lines."""
    exc = InvalidInput("cannot be decoded: plugins failed:\n  pylibjpeg: bad\n  pillow: worse")
    assert str(exc) == "cannot be decoded: plugins failed: pylibjpeg: bad pillow: worse"
    assert "\n" not in str(StudyDeclined("a\r\nb"))


def test_random_bytes_jpeg2000_slice_declined_before_the_decoder_prints(
    shared_data: Path, tmp_path: Path
) -> None:
    """A frame that is not a codestream at all is refused before OpenJPEG writes to fd 2."""
    import os
    import subprocess
    import sys

    from pydicom.encaps import encapsulate

    source = sorted((shared_data / "dicom" / "totalseg_abdomen_20slices_j2k").iterdir())
    folder = tmp_path / "j2k"
    folder.mkdir()
    for i, path in enumerate(source):
        ds = pydicom.dcmread(path)
        if i == 4:
            ds.PixelData = encapsulate([np.random.default_rng(2).bytes(20000)])
        ds.save_as(folder / path.name)
    env = {**os.environ, "CT_TRIAGE_MIN_SLICES": "10"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ct_triage.server.cli",
            "analyze",
            str(folder),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "does not start with a JPEG 2000 codestream" in done.stderr
    assert "SOC marker" not in done.stderr + done.stdout
