"""Fuzzing ``ct-triage analyze`` with mutated headers and pixels (issue 16).

Each example takes the small analysable phantom series of :mod:`hostile_series` (16 slices of
128 x 128, about 1 s to analyse), applies one to three mutations drawn by Hypothesis and runs
the real ``analyze`` entry point in-process (``ct_triage.server.cli.main``, which maps
:class:`~ct_triage.models.errors.TriageError` to its exit code). Mutations: attribute
removal; wrong values written as raw bytes (NaN, inf, zero, negative, huge, empty, garbage,
wrong multiplicity) into numbers, UIDs, codes and text; odd and unknown character sets with
non-ASCII names; inconsistent geometry (moved, swapped or re-oriented slices); truncated files
and shortened Pixel Data; exact and conflicting duplicates; mixed patients and series.

Property: exit 0 with a readable SEG and SR that carry valid UIDs of one study and come from
an input of one patient, or exit 2 with exactly one ``ct-triage: declined: ...`` line; never
exit 1, never a traceback.

CI runs a short, fixed-seed set (``derandomize=True``; ``CT_TRIAGE_FUZZ_EXAMPLES``, default
12, about 20 s). A long run, with a random seed and statistics of the outcomes::

    CT_TRIAGE_FUZZ_EXAMPLES=300 CT_TRIAGE_FUZZ_RANDOM=1 \\
        .venv/bin/pytest tests/unit/test_fuzz_analyze.py -q -p no:cacheprovider \\
        --hypothesis-show-statistics

(about 300-400 examples in 5 minutes on a 2-core machine; Hypothesis stops at the first
failure and shrinks it). Long runs of 2026-12-06 (random seeds, ~12 minutes, ~860 cases
in all) found four product bugs, each fixed with a test in ``test_hostile_inputs.py``: an
invalid StudyDate/StudyTime/PatientSex failed highdicom in the SEG writer; a non-numeric
RescaleIntercept and a NaN RescaleSlope failed or corrupted the rescale; a one-valued
ImageOrientationPatient raised TypeError in selection; and two harness bugs (here).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from hostile_series import analyze_env, run_analyze, write_small_phantom
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, generate_uid

N_SLICES = 16
EXAMPLES = int(os.environ.get("CT_TRIAGE_FUZZ_EXAMPLES", "12"))
RANDOM = os.environ.get("CT_TRIAGE_FUZZ_RANDOM", "") not in ("", "0")

Files = list[tuple[str, Dataset | bytes]]


@pytest.fixture(scope="module")
def base_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_small_phantom(tmp_path_factory.mktemp("fuzz-base") / "dicom", n_slices=N_SLICES)


@pytest.fixture(scope="module")
def analysing() -> Iterator[None]:
    with analyze_env():
        yield


def _raw(ds: Dataset, keyword: str, value: bytes) -> None:
    """Store ``value`` as the element's bytes, exactly (pydicom validates nothing)."""
    number = tag_for_keyword(keyword)
    assert number is not None, keyword
    tag = Tag(number)
    vr = dictionary_VR(tag)
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


# --- mutations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Remove:
    keyword: str
    slice: int | None  # None: every slice

    def apply(self, files: Files) -> None:
        for _i, ds in _targets(files, self.slice):
            if self.keyword in ds:
                delattr(ds, self.keyword)


@dataclass(frozen=True)
class SetRaw:
    keyword: str
    value: bytes
    slice: int | None

    def apply(self, files: Files) -> None:
        for _i, ds in _targets(files, self.slice):
            _raw(ds, self.keyword, self.value)


@dataclass(frozen=True)
class SetUS:
    keyword: str
    value: int
    slice: int | None

    def apply(self, files: Files) -> None:
        for _i, ds in _targets(files, self.slice):
            setattr(ds, self.keyword, self.value)


@dataclass(frozen=True)
class Charset:
    value: bytes
    name: str

    def apply(self, files: Files) -> None:
        for _i, ds in _targets(files, None):
            _raw(ds, "SpecificCharacterSet", self.value)
            _raw(ds, "PatientName", self.name.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class MoveSlice:
    slice: int
    dz: float

    def apply(self, files: Files) -> None:
        for _i, ds in _targets(files, self.slice):
            try:
                x, y, z = (float(v) for v in ds.ImagePositionPatient)
            except (AttributeError, TypeError, ValueError):
                continue  # an earlier mutation broke it already
            _raw(ds, "ImagePositionPatient", f"{x}\\{y}\\{z + self.dz}".encode())


@dataclass(frozen=True)
class SwapPositions:
    a: int
    b: int

    def apply(self, files: Files) -> None:
        ds_a, ds_b = files[self.a][1], files[self.b][1]
        tag = Tag(0x00200032)  # ImagePositionPatient, swapped as stored
        if not (isinstance(ds_a, Dataset) and isinstance(ds_b, Dataset)):
            return
        if tag not in ds_a or tag not in ds_b:
            return
        raw_a, raw_b = ds_a.get_item(tag), ds_b.get_item(tag)
        ds_a._dict[tag], ds_b._dict[tag] = raw_b, raw_a


@dataclass(frozen=True)
class Truncate:
    slice: int
    keep: float  # fraction of the file kept

    def apply(self, files: Files) -> None:
        name, ds = files[self.slice]
        data = _encode(ds)
        files[self.slice] = (name, data[: int(len(data) * self.keep)])


@dataclass(frozen=True)
class ShortPixels:
    slice: int
    keep: float

    def apply(self, files: Files) -> None:
        for _i, ds in _targets(files, self.slice):
            data = ds.PixelData
            ds.PixelData = data[: int(len(data) * self.keep) // 2 * 2]


@dataclass(frozen=True)
class Duplicate:
    slice: int
    exact: bool

    def apply(self, files: Files) -> None:
        name, ds = files[self.slice]
        if self.exact or not isinstance(ds, Dataset):
            copy: Dataset | bytes = ds if isinstance(ds, bytes) else _encode(ds)
        else:
            twin = pydicom.dcmread(io.BytesIO(_encode(ds)))
            twin.InstanceNumber = 900 + self.slice  # same SOP Instance UID, other content
            copy = twin
        files.append((f"dup/{name}", copy))


@dataclass(frozen=True)
class OtherPatient:
    slice: int | None

    def apply(self, files: Files) -> None:
        for _i, ds in _targets(files, self.slice):
            ds.PatientID = "FUZZ-OTHER"


@dataclass(frozen=True)
class SecondSeries:
    other_patient: bool

    def apply(self, files: Files) -> None:
        series = str(generate_uid())
        for name, ds in list(files[:6]):
            if not isinstance(ds, Dataset):
                continue
            twin = pydicom.dcmread(io.BytesIO(_encode(ds)))
            twin.SeriesInstanceUID = series
            twin.SeriesNumber = 77
            twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            if self.other_patient:
                twin.PatientID = "FUZZ-OTHER"
            files.append((f"second-{series[-8:]}/{name}", twin))


Mutation = (
    Remove
    | SetRaw
    | SetUS
    | Charset
    | MoveSlice
    | SwapPositions
    | Truncate
    | ShortPixels
    | Duplicate
    | OtherPatient
    | SecondSeries
)


def _targets(files: Files, index: int | None) -> Iterator[tuple[int, Dataset]]:
    for i, (_name, ds) in enumerate(files):
        if (index is None or i == index) and isinstance(ds, Dataset):
            yield i, ds


def _encode(ds: Dataset | bytes) -> bytes:
    if isinstance(ds, bytes):
        return ds
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


# --- strategies --------------------------------------------------------------------------------

REMOVABLE = [
    "SpecificCharacterSet", "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID",
    "SeriesInstanceUID", "FrameOfReferenceUID", "Modality", "ImageType", "PatientID",
    "PatientName", "StudyDate", "StudyTime", "SliceThickness", "PixelSpacing",
    "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "PixelRepresentation", "PhotometricInterpretation", "SamplesPerPixel",
    "RescaleSlope", "RescaleIntercept", "PixelData", "SeriesNumber", "InstanceNumber",
    "ConvolutionKernel", "PositionReferenceIndicator",
]  # fmt: skip
NUMBERS = [b"NaN", b"inf", b"-inf", b"0", b"-1", b"1e9", b"1e-9", b"65535", b"", b"abc", b"1e400"]
DS_VM = {
    "SliceThickness": 1, "PixelSpacing": 2, "ImagePositionPatient": 3,
    "ImageOrientationPatient": 6, "RescaleSlope": 1, "RescaleIntercept": 1,
    "SliceLocation": 1, "SpacingBetweenSlices": 1, "GantryDetectorTilt": 1,
    "PatientWeight": 1,
}  # fmt: skip
UIDS = ["StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"]
BAD_UIDS = [b"", b"1.2.abc", b"1..2", b"1." + b"2" * 70, b"1.2.3\n4", b"1.02.3", b".1.2"]
TEXT = {
    "PatientName": [b"", "M\u00fcller^J\u00fcrgen".encode("latin-1"), b"A" * 200, b"\x00\xff"],
    "PatientID": [b"", b"X" * 100, b"\\"],
    "StudyDate": [b"20201345", b"abcd", b""],
    "StudyTime": [b"256199", b"x"],
    "PatientSex": [b"X", b"female"],
    "Modality": [b"", b"MR", b"ct"],
    "ImageType": [b"DERIVED\\SECONDARY", b"", b"ORIGINAL"],
    "PhotometricInterpretation": [b"MONOCHROME1", b"RGB", b""],
    "SOPClassUID": [b"1.2.840.10008.5.1.4.1.1.7", b"1.2.3"],
    "SeriesNumber": [b"abc", b"99999999999999"],
    "ConvolutionKernel": [b"\xff\xfe", b"LUNG" * 10],
}
US = ["Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel"]
CHARSETS = [
    b"", b"ISO_IR 999", b"ISO_IR 100", b"ISO_IR 192", b"GB18030", b"\\ISO 2022 IR 87",
    b"ISO 2022 IR 100", b"ISO 2022 IR 87\\ISO 2022 IR 6", b"ISO_IR 100\\ISO_IR 144",
]  # fmt: skip
NAMES = ["Yamada^Tarou", "M\u00fcller^J\u00fcrgen", "\u5c71\u7530^\u592a\u90ce", "Bad\udcff"]

slices = st.integers(0, N_SLICES - 1)
scopes = st.none() | slices


@st.composite
def _ds_value(draw: st.DrawFn) -> SetRaw:
    keyword = draw(st.sampled_from(sorted(DS_VM)))
    vm = draw(st.sampled_from([DS_VM[keyword], DS_VM[keyword], 1, 2]))
    parts = draw(st.lists(st.sampled_from(NUMBERS), min_size=vm, max_size=vm))
    return SetRaw(keyword, b"\\".join(parts), draw(scopes))


@st.composite
def _text_value(draw: st.DrawFn) -> SetRaw:
    keyword = draw(st.sampled_from(sorted(TEXT)))
    return SetRaw(keyword, draw(st.sampled_from(TEXT[keyword])), draw(scopes))


mutation: st.SearchStrategy[Mutation] = st.one_of(
    st.builds(Remove, st.sampled_from(REMOVABLE), scopes),
    _ds_value(),
    _text_value(),
    st.builds(SetRaw, st.sampled_from(UIDS), st.sampled_from(BAD_UIDS), scopes),
    st.builds(SetUS, st.sampled_from(US), st.sampled_from([0, 1, 7, 8, 32, 65535]), scopes),
    st.builds(Charset, st.sampled_from(CHARSETS), st.sampled_from(NAMES)),
    st.builds(
        MoveSlice,
        slices,
        st.sampled_from([0.0, 0.004, 3.0, -10.0, 1e6]) | st.floats(-30, 30),
    ),
    st.builds(SwapPositions, slices, slices),
    st.builds(Truncate, slices, st.sampled_from([0.01, 0.1, 0.5, 0.99])),
    st.builds(ShortPixels, slices, st.sampled_from([0.0, 0.5, 0.99])),
    st.builds(Duplicate, slices, st.booleans()),
    st.builds(OtherPatient, scopes),
    st.builds(SecondSeries, st.booleans()),
)


# --- the property ------------------------------------------------------------------------------


def _write_case(base: list[Path], mutations: list[Mutation], folder: Path) -> set[str]:
    """Write the mutated series into ``folder``; return the PatientIDs its readable files hold."""
    files: Files = [(p.name, pydicom.dcmread(p)) for p in base]
    for m in mutations:
        m.apply(files)
    for name, ds in files:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encode(ds))
    patients: set[str] = set()
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        try:
            patients.add(str(pydicom.dcmread(path, stop_before_pixels=True).get("PatientID", "")))
        except Exception:  # a file the mutation broke: not a patient of the input
            continue
    return patients


def _check_result(out: Path, patients: set[str]) -> None:
    seg = pydicom.dcmread(out / "seg.dcm")
    sr = pydicom.dcmread(out / "sr.dcm")
    assert len(patients) == 1, f"a result from an input of {len(patients)} patients"
    assert str(seg.StudyInstanceUID) == str(sr.StudyInstanceUID)
    for ds in (seg, sr):
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert UID(str(ds[kw].value)).is_valid, f"{kw} {ds[kw].value!r}"
    assert (out / "report.json").is_file()


@pytest.mark.usefixtures("analysing")
@settings(
    max_examples=EXAMPLES,
    derandomize=not RANDOM,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_analyze_exits_0_with_results_or_2_with_one_line(
    base_series: list[Path], mutations: list[Mutation]
) -> None:
    work = Path(tempfile.mkdtemp(prefix="ct-triage-fuzz-"))
    try:
        patients = _write_case(base_series, mutations, work / "in")
        out = work / "out"
        rc, err = run_analyze(work / "in", out)
        assert "Traceback" not in err, err
        assert rc in (0, 2), err
        if rc == 0:
            event("exit 0")
            _check_result(out, patients)
        else:
            lines = [line for line in err.splitlines() if line.startswith("ct-triage:")]
            assert len(lines) == 1, err
            assert lines[0].startswith("ct-triage: declined: "), lines[0]
            assert not out.exists()
            event("exit 2: " + " ".join(lines[0].split()[2:6]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
