"""End to end: synthetic chest CT (exact truth) → ``ct-triage analyze`` → SEG, SR, overlay, JSON.

The same pipeline as the CLI and the server; the lesion model is the shipped ONNX model.
Tolerances are stated here and the measured errors are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.phantom import Phantom, generate, spec_from_seed
from ct_triage.models.quantify import quantify
from ct_triage.models.segmentation import Segmentation
from ct_triage.server.cli import main

#: Tolerance of the model-driven numbers against the phantom truth.
POI_TOLERANCE_PP = 3.0  # percent of lung involved, percentage points (measured <= 1.7)
LUNG_VOLUME_TOLERANCE = 0.05  # relative

SEEDS = {"none": 11, "mild": 12, "moderate": 13, "severe": 14}


@dataclass(frozen=True)
class Case:
    phantom: Phantom
    dicom_dir: Path
    out: Path
    report: dict[str, Any]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("e2e")
    result: dict[str, Case] = {}
    for severity, seed in SEEDS.items():
        ph = generate(spec_from_seed(seed, n_slices=60, severity=severity))
        dicom_dir = root / f"{severity}-dicom"
        write_phantom_series(ph, dicom_dir)
        out = root / f"{severity}-out"
        assert main(["analyze", str(dicom_dir), "--out", str(out)]) == 0
        report = json.loads((out / "report.json").read_text())
        result[severity] = Case(ph, dicom_dir, out, report)
    return result


def _truth_percent(ph: Phantom) -> dict[str, float]:
    lungs, lesions = ph.lung_labels, ph.lesion_class > 0
    out: dict[str, float] = {}
    for side, label in (("right", 1), ("left", 2)):
        n = np.count_nonzero(lungs == label)
        out[side] = 100.0 * np.count_nonzero(lesions & (lungs == label)) / n
    out["total"] = 100.0 * np.count_nonzero(lesions & (lungs > 0)) / np.count_nonzero(lungs)
    return out


def test_all_outputs_written(cases: dict[str, Case]) -> None:
    for case in cases.values():
        names = {p.name for p in case.out.iterdir()}
        assert {
            "report.json",
            "seg.dcm",
            "sr.dcm",
            "summary.dcm",
            "overlay",
            "preview.png",
        } <= names
        assert list((case.out / "overlay").glob("*.dcm"))
        r = case.report
        assert r["schema_version"]
        assert "NOT FOR PRIMARY DIAGNOSIS" in r["disclaimer"]
        assert r["model"]["execution_provider"] == "CPUExecutionProvider"
        assert r["model"]["network_slice_step"] == 1  # 3 mm slices: every slice runs
        assert len(r["model"]["sha256"]) == 64
        for stage in (
            "discover",
            "select",
            "load",
            "lungs",
            "inference",
            "postprocess",
            "quantify",
            "write_seg",
            "write_sr",
            "total",
        ):
            assert stage in r["timings_s"]


def test_quantification_matches_truth_within_tolerance(cases: dict[str, Case]) -> None:
    for severity, case in cases.items():
        truth = _truth_percent(case.phantom)
        got = case.report["percent_involvement"]
        vox_ml = case.phantom.volume.voxel_volume_ml
        true_lung_ml = np.count_nonzero(case.phantom.lung_mask) * vox_ml
        errors = {k: abs(got[k] - truth[k]) for k in ("left", "right", "total")}
        print(
            f"{severity}: percent involved truth {truth['total']:.2f} got {got['total']:.2f}; "
            f"lung mL truth {true_lung_ml:.0f} got {case.report['lung_volume_ml']['total']:.0f}"
        )
        assert max(errors.values()) <= POI_TOLERANCE_PP, (severity, truth, got)
        rel = abs(case.report["lung_volume_ml"]["total"] - true_lung_ml) / true_lung_ml
        assert rel <= LUNG_VOLUME_TOLERANCE, (severity, rel)


def test_triage_orders_the_severities(cases: dict[str, Case]) -> None:
    cats = {s: c.report["triage"]["category"] for s, c in cases.items()}
    assert cats["none"] == "normal"
    assert cats["severe"] == "severe"
    prios = [cases[s].report["triage"]["priority"] for s in ("none", "mild", "moderate", "severe")]
    assert prios == sorted(prios, reverse=True)
    scores = [cases[s].report["severity_score"] for s in ("none", "mild", "moderate", "severe")]
    assert scores == sorted(scores)


def test_quantify_exact_on_truth_masks(cases: dict[str, Case]) -> None:
    """Fed the truth masks, the quantifier gives exactly the truth's numbers."""
    for case in cases.values():
        ph = case.phantom
        q = quantify(Segmentation(ph.lung_labels, ph.lesion_class, ph.volume.spacing))
        truth = _truth_percent(ph)
        assert q.percent_involvement.total == pytest.approx(truth["total"], abs=1e-9)
        assert q.percent_involvement.left == pytest.approx(truth["left"], abs=1e-9)
        vox_ml = ph.volume.voxel_volume_ml
        assert q.lung_volume_ml.total == pytest.approx(
            np.count_nonzero(ph.lung_mask) * vox_ml, rel=1e-12
        )
        assert q.lesion_volume_ml.ggo == pytest.approx(
            np.count_nonzero(ph.lesion_class == 1) * vox_ml, rel=1e-12
        )


def test_seg_frames_land_on_their_source_slices(cases: dict[str, Case]) -> None:
    case = cases["moderate"]
    src = {}
    for p in case.dicom_dir.glob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        src[str(ds.SOPInstanceUID)] = float(ds.ImagePositionPatient[2])
    first = pydicom.dcmread(next(case.dicom_dir.glob("*.dcm")), stop_before_pixels=True)
    seg = hd.seg.segread(case.out / "seg.dcm")
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert len(labels) == 4
    z0 = float(case.phantom.volume.origin[2])
    dz = case.phantom.volume.spacing[0]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
        assert src[ref_uid] == pytest.approx(z)
        assert 0 <= (z - z0) / dz < case.phantom.volume.shape[0]
    # The masks read back equal what was measured: lesion volume from the SEG = report.
    vol = seg.get_volume(combine_segments=False)
    arr = vol.array  # (z, y, x, segments)
    vox_ml = float(np.prod(case.phantom.volume.spacing)) / 1000.0
    ggo_ml = np.count_nonzero(arr[..., 2]) * vox_ml
    assert ggo_ml == pytest.approx(case.report["lesion_volume_ml"]["ggo"], abs=0.01)


def _sr_numbers(sr: pydicom.Dataset) -> list[float]:
    values: list[float] = []

    def walk(items: Any) -> None:
        for item in items:
            if item.ValueType == "NUM":
                values.append(float(item.MeasuredValueSequence[0].NumericValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return values


def test_sr_measurements_equal_report(cases: dict[str, Case]) -> None:
    case = cases["severe"]
    sr = pydicom.dcmread(case.out / "sr.dcm")
    seg = pydicom.dcmread(case.out / "seg.dcm", stop_before_pixels=True)
    numbers = _sr_numbers(sr)
    r = case.report
    expected = [
        r["lung_volume_ml"]["left"],
        r["lung_volume_ml"]["right"],
        r["lung_volume_ml"]["total"],
        r["lesion_volume_ml"]["ggo"],
        r["lesion_volume_ml"]["consolidation"],
        r["lesion_volume_ml"]["total"],
        r["percent_involvement"]["left"],
        r["percent_involvement"]["right"],
        r["percent_involvement"]["total"],
        float(r["severity_score"]),
    ]
    for value in expected:
        assert any(abs(n - value) < 1e-9 for n in numbers), (value, numbers)
    assert r["outputs"]["seg"]["sop_instance_uid"] == seg.SOPInstanceUID
    assert r["outputs"]["sr"]["sop_instance_uid"] == sr.SOPInstanceUID
    assert sr.StudyInstanceUID == seg.StudyInstanceUID


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
def test_dciodvfy_reports_no_errors_and_no_warnings(cases: dict[str, Case]) -> None:
    """Every object written for the phantoms (SEG, both SRs, summary, every overlay image;
    a normal and a moderate study) passes the IOD checks without an error or a warning."""
    files = [f for severity in ("none", "moderate") for f in cases[severity].out.rglob("*.dcm")]
    names = {f.name for f in files}
    assert {"seg.dcm", "sr.dcm", "summary.dcm", "sr-outlines.dcm"} <= names
    for f in files:
        proc = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, check=False)
        lines = (proc.stdout + proc.stderr).splitlines()
        findings = [ln for ln in lines if ln.startswith(("Error", "Warning"))]
        assert not findings, (f.name, findings)


def test_every_object_says_not_for_diagnosis_and_names_the_model(cases: dict[str, Case]) -> None:
    case = cases["mild"]
    model = f"{case.report['model']['name']}"
    for f in sorted(case.out.rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        text = str(ds)
        assert "not for primary diagnosis" in text.lower(), f.name
        assert model in text, f.name


def test_zip_input_gives_same_numbers(cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases["mild"]
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(case.dicom_dir.glob("*.dcm")):
            zf.write(p, arcname=f"STUDY/SERIES1/{p.name}")
    out = tmp_path / "zip-out"
    assert main(["analyze", str(zpath), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["percent_involvement"] == case.report["percent_involvement"]
    assert report["lung_volume_ml"] == case.report["lung_volume_ml"]


def test_rerun_into_previous_result_replaces_it(cases: dict[str, Case]) -> None:
    case = cases["none"]
    old_sr = pydicom.dcmread(case.out / "sr.dcm", stop_before_pixels=True).SOPInstanceUID
    assert main(["analyze", str(case.dicom_dir), "--out", str(case.out)]) == 0
    new_sr = pydicom.dcmread(case.out / "sr.dcm", stop_before_pixels=True).SOPInstanceUID
    assert new_sr != old_sr
    assert not [p for p in case.out.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
