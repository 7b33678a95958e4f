"""Result writers: DICOM SEG, Comprehensive 3D SR (TID 1500), SC overlay, preview PNG.

Everything is read back with highdicom / pydicom and, where ``dciodvfy`` is installed,
checked against the IOD definitions.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from dicom_factory import SeriesSpec, make_slice
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from scipy import ndimage

from ct_triage.dicom_bridge.part10 import save_dataset
from ct_triage.dicom_bridge.writers import codes
from ct_triage.dicom_bridge.writers.overlay import (
    OverlayRequest,
    banner_height,
    write_overlay_series,
    write_preview_png,
)
from ct_triage.dicom_bridge.writers.planar import (
    KeySection,
    largest_cross_sections,
    trace_outline,
)
from ct_triage.dicom_bridge.writers.seg import (
    SEGMENTS,
    SegRequest,
    segment_masks,
    segments_overlap,
    write_seg,
)
from ct_triage.dicom_bridge.writers.sr import (
    NotAnalysedSrRequest,
    SrRequest,
    round_measurement,
    write_not_analysed_sr,
    write_outlines_sr,
    write_sr,
)
from ct_triage.dicom_bridge.writers.summary import (
    declined_page,
    result_page,
    write_summary,
)
from ct_triage.kernels import overlay as kov
from ct_triage.models.identity import DISCLAIMER, DISCLAIMER_SHORT, ModelIdentity
from ct_triage.models.quality import QualityFlag, QualityReport
from ct_triage.models.quantify import (
    LesionVolumes,
    Quantification,
    Sided,
    TriageCategory,
    Zone,
)
from ct_triage.models.segmentation import LesionLabel, Segmentation

N_SLICES, ROWS, COLS = 20, 64, 64
MODEL = ModelIdentity("ct-triage-lesion-unet2d", "1.2.3", "ab" * 32, "CPUExecutionProvider")
DCIODVFY = shutil.which("dciodvfy") or (
    "/usr/bin/dciodvfy" if Path("/usr/bin/dciodvfy").exists() else None
)


# --- fixtures -----------------------------------------------------------------------------


def make_source(n: int = N_SLICES, rows: int = ROWS, cols: int = COLS) -> tuple[Dataset, ...]:
    """CT headers without Pixel Data, in volume z order (increasing z position)."""
    spec = SeriesSpec(
        n_slices=n,
        rows=rows,
        columns=cols,
        with_pixels=False,
        spacing_mm=2.5,
        extra=(
            ("PatientBirthDate", "19700101"),
            ("PatientSex", "O"),
            ("StudyDate", "20240102"),
            ("StudyTime", "101500"),
            ("StudyID", "1"),
            ("AccessionNumber", "ACC1"),
            ("ReferringPhysicianName", ""),
            ("PositionReferenceIndicator", ""),
        ),
    )
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    return tuple(
        make_slice(
            spec, i, study_uid=study, series_uid=series, frame_of_reference_uid=frame_of_reference
        )
        for i in range(n)
    )


def make_segmentation(n: int = N_SLICES) -> Segmentation:
    """Right lung on columns 4-29, left on 34-59 (slices 2-17); GGO on 5-7, consolidation 9-10."""
    lungs = np.zeros((n, ROWS, COLS), np.uint8)
    lungs[2:18, 10:54, 4:30] = 1
    lungs[2:18, 10:54, 34:60] = 2
    lesions = np.zeros_like(lungs)
    lesions[5:8, 20:30, 8:20] = 1
    lesions[9:11, 30:40, 40:50] = 2
    return Segmentation(lungs=lungs, lesions=lesions, spacing=(2.5, 0.75, 0.75))


def make_hu(seg: Segmentation) -> npt.NDArray[np.int16]:
    hu = np.full(seg.lungs.shape, 40, np.int16)
    hu[seg.lungs > 0] = -850
    hu[seg.lesions == 1] = -500
    hu[seg.lesions == 2] = 20
    return hu


def make_quantification() -> Quantification:
    zones = tuple(
        Zone(lung, zone, 100.0 + i, 1.23456 * i, 1.0 / 3.0 * i)
        for i, (lung, zone) in enumerate(
            (lung, zone) for lung in ("right", "left") for zone in ("upper", "middle", "lower")
        )
    )
    return Quantification(
        lung_volume_ml=Sided(left=1234.5678, right=1456.789, total=2691.3568),
        lesion_volume_ml=LesionVolumes(total=12.3456, ggo=10.005, consolidation=2.3406),
        percent_involvement=Sided(left=0.1234, right=0.75449, total=0.4587),
        zones=zones,
        severity_score=3,
        severity_regions={"right_upper": 1, "right_middle": 1, "left_upper": 1},
        triage=TriageCategory.MILD,
    )


@pytest.fixture(scope="module")
def source() -> tuple[Dataset, ...]:
    return make_source()


@pytest.fixture(scope="module")
def segmentation() -> Segmentation:
    return make_segmentation()


@pytest.fixture(scope="module")
def seg_ds(source: tuple[Dataset, ...], segmentation: Segmentation) -> Dataset:
    return write_seg(SegRequest(source=source, segmentation=segmentation, model=MODEL))


def _save(ds: Dataset, path: Path) -> Path:
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _dciodvfy(path: Path) -> list[str]:
    if DCIODVFY is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    proc = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return (proc.stdout + proc.stderr).splitlines()


def _findings(path: Path) -> list[str]:
    """dciodvfy's errors and warnings about ``path`` (we allow neither)."""
    return [ln for ln in _dciodvfy(path) if ln.startswith(("Error", "Warning"))]


# --- kernels.overlay ----------------------------------------------------------------------


def test_window_to_uint8_maps_the_lung_window() -> None:
    out = kov.window_to_uint8(np.array([-2000, -1350, -600, 150, 3000], np.int16))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255]


def test_outline_is_the_inner_one_pixel_boundary() -> None:
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    edge = kov.outline(mask)
    assert edge.sum() == 16
    assert not edge[2:5, 2:5].any()
    assert kov.outline(np.ones((3, 3), bool)).sum() == 8  # the image border counts as outside


def test_burn_outlines_colours_lesions_and_blends_lungs() -> None:
    gray = np.full((10, 10), 100, np.uint8)
    lungs = np.zeros((10, 10), np.uint8)
    lungs[1:9, 1:9] = 1
    lesions = np.zeros_like(lungs)
    lesions[3:5, 3:5] = 1
    lesions[6:8, 6:8] = 2
    rgb = kov.burn_outlines(gray, lungs, lesions)
    assert rgb.shape == (10, 10, 3)
    assert tuple(rgb[3, 3]) == kov.GGO_COLOR
    assert tuple(rgb[6, 6]) == kov.CONSOLIDATION_COLOR
    lung_px = tuple(int(v) for v in rgb[1, 4])
    assert lung_px != (100, 100, 100)
    assert lung_px not in (kov.GGO_COLOR, kov.CONSOLIDATION_COLOR)
    assert tuple(rgb[0, 0]) == (100, 100, 100)


def test_key_slices(segmentation: Segmentation) -> None:
    assert kov.key_slices(segmentation.lungs, segmentation.lesions, 24) == [5, 6, 7, 9, 10]
    few = kov.key_slices(segmentation.lungs, segmentation.lesions, 2)
    assert len(few) == 2
    no_lesion = kov.key_slices(segmentation.lungs, np.zeros_like(segmentation.lesions), 24)
    assert 1 <= len(no_lesion) <= 5
    assert all(2 <= k < 18 for k in no_lesion)


def test_preview_montage_shape(segmentation: Segmentation) -> None:
    hu = make_hu(segmentation)
    img = kov.preview_montage(
        hu, segmentation.lungs, segmentation.lesions, segmentation.spacing, tile_height=64
    )
    assert img.dtype == np.uint8
    assert img.ndim == 3
    assert img.shape[0] == 64
    assert img.shape[2] == 3
    # GGO outline colour appears in the montage.
    assert (img == np.asarray(kov.GGO_COLOR, np.uint8)).all(axis=-1).any()


# --- SEG ----------------------------------------------------------------------------------


def test_seg_request_validates_shapes(source: tuple[Dataset, ...]) -> None:
    seg = make_segmentation(n=N_SLICES - 1)
    with pytest.raises(ValueError, match="slices"):
        SegRequest(source=source, segmentation=seg, model=MODEL)
    small = make_source(rows=32)
    with pytest.raises(ValueError, match="32x64"):
        SegRequest(source=small, segmentation=make_segmentation(), model=MODEL)


def test_segments_overlap_matches_highdicom_definition(segmentation: Segmentation) -> None:
    masks = segment_masks(segmentation)
    assert masks.shape == (*segmentation.lungs.shape, 4)
    assert segments_overlap(masks)  # lungs include the lesions
    assert not segments_overlap(masks[..., :2])
    assert (masks.sum(axis=-1) > 1).any() == segments_overlap(masks)
    # the answer segment_masks derives from the label maps is the same
    assert getattr(masks, "overlap", None) is True
    no_lesions = Segmentation(segmentation.lungs, np.zeros_like(segmentation.lesions), (1, 1, 1))
    lungs_only = segment_masks(no_lesions)
    assert getattr(lungs_only, "overlap", None) is False
    assert not segments_overlap(np.asarray(lungs_only))


def test_seg_round_trip(
    tmp_path: Path, source: tuple[Dataset, ...], segmentation: Segmentation, seg_ds: Dataset
) -> None:
    path = _save(seg_ds, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)

    assert seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert seg.SegmentsOverlap == "YES"
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source[0].SeriesInstanceUID
    assert seg.SeriesNumber == 9001
    assert "AI" in seg.SeriesDescription
    assert DISCLAIMER_SHORT in seg.SeriesDescription
    assert len(seg.SeriesDescription) <= 64
    assert seg.ImageComments == DISCLAIMER
    assert seg.PatientID == source[0].PatientID
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence} == {
        s.SOPInstanceUID for s in source
    }

    assert seg.segment_numbers == [1, 2, 3, 4]
    for spec in SEGMENTS:
        desc = seg.get_segment_description(spec.number)
        assert desc.segment_label == spec.label
        assert desc.segmented_property_type == spec.property_type
        assert desc.segmented_property_category == spec.category
        assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert desc.algorithm_identification is not None
        algo = desc.algorithm_identification[0]
        assert algo.AlgorithmName == MODEL.name
        assert algo.AlgorithmVersion == MODEL.version
    assert seg.get_segment_description(1).segmented_property_type.value == "3341006"
    assert seg.get_segment_description(2).segmented_property_type.value == "44029006"

    # Every frame sits on its source slice (UID and plane position) and omits empty frames.
    by_uid = {s.SOPInstanceUID: k for k, s in enumerate(source)}
    masks = segment_masks(segmentation)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = frame.DerivationImageSequence
        ref_uid = derivation.SourceImageSequence[0].ReferencedSOPInstanceUID
        k = by_uid[ref_uid]
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in source[k].ImagePositionPatient])
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        assert masks[k, :, :, number - 1].any()
    assert int(seg.NumberOfFrames) == int(masks.any(axis=(1, 2)).sum())

    pixels = seg.get_pixels_by_source_instance(
        [s.SOPInstanceUID for s in source], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels.astype(bool), masks)


def test_seg_from_headers_without_type2_attributes(segmentation: Segmentation) -> None:
    source = make_source()
    stripped = []
    for ds in source:
        ds = Dataset(ds)
        for kw in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyID", "AccessionNumber"):
            if kw in ds:
                del ds[kw]
        stripped.append(ds)
    seg = write_seg(SegRequest(source=tuple(stripped), segmentation=segmentation, model=MODEL))
    assert seg.PatientBirthDate in ("", None)
    assert "PatientBirthDate" not in stripped[0]  # the caller's headers are untouched


def test_seg_with_empty_segments(source: tuple[Dataset, ...]) -> None:
    empty = Segmentation(
        lungs=make_segmentation().lungs,
        lesions=np.zeros((N_SLICES, ROWS, COLS), np.uint8),
        spacing=(2.5, 0.75, 0.75),
    )
    seg = write_seg(SegRequest(source=source, segmentation=empty, model=MODEL))
    assert len(seg.SegmentSequence) == 4
    assert seg.SegmentsOverlap == "NO"


def test_seg_dciodvfy(tmp_path: Path, seg_ds: Dataset) -> None:
    lines = _dciodvfy(_save(seg_ds, tmp_path / "seg.dcm"))
    assert not [ln for ln in lines if ln.startswith("Error")], lines


# --- SR -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sr_ds(source: tuple[Dataset, ...], seg_ds: Dataset, segmentation: Segmentation) -> Dataset:
    return write_sr(
        SrRequest(
            source=source,
            seg=seg_ds,
            quantification=make_quantification(),
            model=MODEL,
            sections=largest_cross_sections(segmentation),
        )
    )


def test_round_measurement() -> None:
    assert round_measurement(1.23456) == 1.23
    assert round_measurement(-0.001) == 0.0
    assert str(round_measurement(-0.001)) == "0.0"
    assert round_measurement(7) == 7.0


Row = tuple[float, str, list[str]]


def _values(group: object, name: Code) -> list[Row]:
    """(value, unit, ["site/laterality", ...]) of each measurement ``name`` in ``group``."""
    out: list[Row] = []
    for m in group.get_measurements(name=name):  # type: ignore[attr-defined]
        sites = [
            f"{s.value.value}/{s.laterality.value if s.laterality else ''}" for s in m.finding_sites
        ]
        out.append((float(m.value), m.unit.value, sites))
    return out


def test_sr_round_trip(
    tmp_path: Path, source: tuple[Dataset, ...], seg_ds: Dataset, sr_ds: Dataset
) -> None:
    q = make_quantification()
    sr = hd.sr.srread(_save(sr_ds, tmp_path / "sr.dcm"))
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.StudyInstanceUID == source[0].StudyInstanceUID
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert DISCLAIMER_SHORT in sr.SeriesDescription
    assert sr.SeriesDate
    assert sr.SeriesTime
    schemes = {
        code.CodingSchemeDesignator
        for item in _walk(sr_ds.ContentSequence)
        for kw in ("ConceptNameCodeSequence", "ConceptCodeSequence", "MeasurementUnitsCodeSequence")
        for code in item.get(kw, [])
    }
    assert schemes <= {"DCM", "SCT", "LN", "UCUM", "UMLS", "RFC5646"}, schemes  # standard only
    evidence = {
        i.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert seg_ds.SOPInstanceUID in evidence
    assert source[0].SOPInstanceUID in evidence

    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    (observer,) = report.get_observer_contexts()
    attrs = observer.observer_identifying_attributes
    assert isinstance(attrs, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attrs.name == MODEL.name
    assert attrs.manufacturer_name == "chest-ct-triage"

    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == 4
    by_segment = {}
    for group in groups:
        ref = group.referenced_segment
        assert ref is not None
        assert ref[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg_ds.SOPInstanceUID
        number = int(ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber)
        by_segment[number] = group
    assert sorted(by_segment) == [1, 2, 3, 4]

    r = round_measurement
    right, left, ggo, cons = (by_segment[i] for i in (1, 2, 3, 4))
    assert _values(right, codes.VOLUME) == [(r(q.lung_volume_ml.right), "ml", [])]
    assert _values(left, codes.VOLUME) == [(r(q.lung_volume_ml.left), "ml", [])]
    assert _values(ggo, codes.VOLUME) == [(r(q.lesion_volume_ml.ggo), "ml", [])]
    assert _values(cons, codes.VOLUME) == [(r(q.lesion_volume_ml.consolidation), "ml", [])]
    for side, group, lat in (("right", right, "24028007"), ("left", left, "7771000")):
        percents = _values(group, codes.PERCENT_INVOLVEMENT)
        total = q.percent_involvement.right if side == "right" else q.percent_involvement.left
        expected: list[Row] = [(r(total), "%", [])] + [
            (r(z.percent_involvement), "%", [f"{codes.ZONES[z.zone].value}/{lat}"])
            for z in q.zones
            if z.lung == side
        ]
        assert percents == expected

    whole, lesions = report.get_image_measurement_groups()
    assert _values(whole, codes.VOLUME) == [(r(q.lung_volume_ml.total), "ml", [])]
    assert _values(lesions, codes.VOLUME) == [(r(q.lesion_volume_ml.total), "ml", [])]
    assert _values(whole, codes.PERCENT_INVOLVEMENT) == [(r(q.percent_involvement.total), "%", [])]
    assert _values(whole, codes.SEVERITY_SCORE) == [(3.0, "{score}", [])]
    assert _values(whole, codes.TRIAGE_PRIORITY) == [(4.0, "{rank}", [])]
    (triage,) = whole.get_qualitative_evaluations(name=codes.TRIAGE_CATEGORY)
    assert triage.value == codes.TRIAGE_VALUES[TriageCategory.MILD]
    (gate,) = whole.get_qualitative_evaluations(name=codes.SUMMARY_OF_ANALYSES)
    assert gate.value == codes.ALL_SUCCEEDED_WITH_FINDINGS

    # planar groups: the largest lesion section of each lung, outlined on its CT slice
    planar = report.get_planar_roi_measurement_groups()
    assert len(planar) == 2
    sections = largest_cross_sections(make_segmentation())
    for outlined, section in zip(planar, sections, strict=True):
        region = outlined.roi
        assert isinstance(region, hd.sr.ImageRegion)
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        data = region.value
        np.testing.assert_allclose(data, section.outline)
        assert (data[0] == data[-1]).all()
        (image,) = region.ContentSequence[0].ReferencedSOPSequence
        assert image.ReferencedSOPInstanceUID == source[section.slice_index].SOPInstanceUID
        assert _values(outlined, codes.AREA)[0][:2] == (r(section.area_mm2), "mm2")
    assert [s.kind for s in sections] == [LesionLabel.GGO, LesionLabel.CONSOLIDATION]
    # every container is SEPARATE, so renderers label each value (dsr2html: "Volume: ...")
    containers = [i for i in _walk(sr_ds.ContentSequence) if i.ValueType == "CONTAINER"]
    assert containers
    assert all(c.ContinuityOfContent == "SEPARATE" for c in containers)

    texts = [item.TextValue for item in _walk(sr_ds.ContentSequence) if item.ValueType == "TEXT"]
    assert DISCLAIMER in texts


def _walk(items: pydicom.Sequence) -> list[Dataset]:
    out: list[Dataset] = []
    for item in items:
        out.append(item)
        if "ContentSequence" in item:
            out.extend(_walk(item.ContentSequence))
    return out


def test_sr_rejects_non_finite(source: tuple[Dataset, ...], seg_ds: Dataset) -> None:
    q = make_quantification()
    bad = replace(q, percent_involvement=Sided(left=float("nan"), right=0.0, total=0.0))
    with pytest.raises(ValueError, match="not finite"):
        SrRequest(source=source, seg=seg_ds, quantification=bad, model=MODEL)


def test_sr_dciodvfy(tmp_path: Path, sr_ds: Dataset) -> None:
    assert _findings(_save(sr_ds, tmp_path / "sr.dcm")) == []


@pytest.mark.skipif(shutil.which("dsr2html") is None, reason="dsr2html (dcmtk) missing")
def test_dsr2html_labels_the_values(tmp_path: Path, sr_ds: Dataset) -> None:
    proc = subprocess.run(
        ["dsr2html", str(_save(sr_ds, tmp_path / "sr.dcm"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(re.sub(r"<[^>]+>", " ", proc.stdout).split())
    q = make_quantification()
    assert f"Volume: {round_measurement(q.lung_volume_ml.right)} ml" in text
    assert f"Extent: {round_measurement(q.percent_involvement.total)} %" in text
    assert "Severity: Mild" in text
    assert "Score: 3.0 {score}" in text
    assert "Area: " in text


def _shoelace(outline: npt.NDArray[np.float64]) -> float:
    x, y = outline[:, 0], outline[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def test_planar_outline_and_sections() -> None:
    square = np.zeros((8, 8), bool)
    square[2:5, 3:7] = True
    # the pixel edges, clockwise from the top-left corner, closed: x = column, y = row
    assert trace_outline(square).tolist() == [[3, 2], [7, 2], [7, 5], [3, 5], [3, 2]]
    single = np.zeros((4, 4), bool)
    single[1, 2] = True
    assert trace_outline(single).tolist() == [[2, 1], [3, 1], [3, 2], [2, 2], [2, 1]]
    diagonal = np.eye(4, dtype=bool)  # pixels touching at corners: one 8-connected region
    assert _shoelace(trace_outline(diagonal)) == 4.0
    rng = np.random.default_rng(7)
    for _ in range(50):  # the outline encloses exactly the region's pixels
        blob = ndimage.gaussian_filter(rng.random((32, 32)), 2.5) > 0.5
        labels, n = ndimage.label(blob, structure=np.ones((3, 3), bool))
        if n == 0:
            continue
        region = ndimage.binary_fill_holes(labels == 1 + np.argmax(np.bincount(labels.ravel())[1:]))
        assert _shoelace(trace_outline(region)) == np.count_nonzero(region)
    seg = make_segmentation()
    right, left = largest_cross_sections(seg)
    assert (right.side, left.side) == ("right", "left")
    assert 5 <= right.slice_index <= 7
    assert 9 <= left.slice_index <= 10
    assert right.area_mm2 == pytest.approx(10 * 12 * 0.75 * 0.75)
    assert left.area_mm2 == pytest.approx(10 * 10 * 0.75 * 0.75)
    for section in (right, left):  # the outline encloses the reported area
        assert _shoelace(section.outline) * 0.75 * 0.75 == pytest.approx(section.area_mm2)
    empty = Segmentation(seg.lungs, np.zeros_like(seg.lesions), seg.spacing)
    assert largest_cross_sections(empty) == ()


def test_outlines_sr_has_only_image_coordinate_groups(
    tmp_path: Path, source: tuple[Dataset, ...], seg_ds: Dataset, segmentation: Segmentation
) -> None:
    sections = largest_cross_sections(segmentation)
    req = SrRequest(
        source=source,
        seg=seg_ds,
        quantification=make_quantification(),
        model=MODEL,
        sections=sections,
    )
    ds = write_outlines_sr(req)
    path = _save(ds, tmp_path / "outlines.dcm")
    assert _findings(path) == []
    assert "outlines" in ds.SeriesDescription
    assert DISCLAIMER_SHORT in ds.SeriesDescription
    sr = hd.sr.srread(path)
    content = sr.content
    assert isinstance(content, hd.sr.MeasurementReport)
    groups = content.get_image_measurement_groups()
    assert len(groups) == len(sections) == 2
    for group, section in zip(groups, sections, strict=True):
        # every group: one Area measurement inferred from the outline on its CT slice
        assert group.tracking_identifier == "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
        (area,) = group.get_measurements(name=codes.AREA)
        assert float(area.value) == round_measurement(section.area_mm2)
        (scoord,) = area.referenced_coordinates
        np.testing.assert_allclose(scoord.value, section.outline)
        (ref,) = scoord.ContentSequence[0].ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == source[section.slice_index].SOPInstanceUID
        # the lung and finding of the section, as the full SR's planar group names them
        lung = codes.RIGHT_LUNG if section.side == "right" else codes.LEFT_LUNG
        assert [site.value for site in group.finding_sites] == [lung]
        ggo = section.kind == LesionLabel.GGO
        assert group.finding_type == (codes.GROUND_GLASS_OPACITY if ggo else codes.CONSOLIDATION)
    assert not content.get_volumetric_roi_measurement_groups()
    texts = [i.TextValue for i in _walk(ds.ContentSequence) if i.ValueType == "TEXT"]
    assert DISCLAIMER in texts
    with pytest.raises(ValueError, match="no sections"):
        write_outlines_sr(replace(req, sections=()))


def test_sr_rejects_a_section_off_the_series(source: tuple[Dataset, ...], seg_ds: Dataset) -> None:
    bad = KeySection("right", len(source), LesionLabel.GGO, 1.0, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="not in source"):
        SrRequest(
            source=source,
            seg=seg_ds,
            quantification=make_quantification(),
            model=MODEL,
            sections=(bad,),
        )


def test_not_analysed_sr(tmp_path: Path, source: tuple[Dataset, ...]) -> None:
    reason = "no CT series: series 1 (MR, 20 images) is not CT"
    sr_ds = write_not_analysed_sr(
        NotAnalysedSrRequest(evidence=source[:3], reason=reason, model=MODEL)
    )
    path = _save(sr_ds, tmp_path / "declined.dcm")
    assert _findings(path) == []
    sr = hd.sr.srread(path)
    assert sr.StudyInstanceUID == source[0].StudyInstanceUID
    assert sr.SeriesDate
    assert "not analysed" in sr.SeriesDescription.lower()
    items = _walk(sr_ds.ContentSequence)
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert f"Not analysed: {reason}" in texts
    assert DISCLAIMER in texts
    coded = [i.ConceptCodeSequence[0].CodeValue for i in items if i.ValueType == "CODE"]
    assert codes.NONE_SUCCEEDED.value in coded
    with pytest.raises(ValueError, match="reason"):
        NotAnalysedSrRequest(evidence=source[:1], reason=" ", model=MODEL)


# --- overlay ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overlay(source: tuple[Dataset, ...], segmentation: Segmentation) -> list[Dataset]:
    req = OverlayRequest(
        source=source, hu=make_hu(segmentation), segmentation=segmentation, model=MODEL
    )
    return write_overlay_series(req)


def test_overlay_key_slices_reference_their_source(
    tmp_path: Path,
    source: tuple[Dataset, ...],
    segmentation: Segmentation,
    overlay: list[Dataset],
) -> None:
    keys = sorted(kov.key_slices(segmentation.lungs, segmentation.lesions, 24), reverse=True)
    assert len(overlay) == len(keys)
    assert len({ds.SeriesInstanceUID for ds in overlay}) == 1
    assert overlay[0].SeriesInstanceUID != source[0].SeriesInstanceUID
    for n, (k, ds) in enumerate(zip(keys, overlay, strict=True), start=1):
        ds = pydicom.dcmread(_save(ds, tmp_path / f"ov{n}.dcm"))
        src = source[k]
        assert ds.InstanceNumber == n
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == src.SOPClassUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.BurnedInAnnotation == "YES"
        assert ds.RecognizableVisualFeatures == "NO"
        assert ds.ConversionType == "WSD"
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        for ct_only in (
            "FrameOfReferenceUID",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "SliceLocation",
            "SliceThickness",
        ):
            assert ct_only not in ds
        assert ds.SeriesDate
        assert ds.SeriesTime
        assert ds.PatientID == src.PatientID
        assert DISCLAIMER_SHORT in ds.SeriesDescription
        assert ds.pixel_array.shape == (ROWS, COLS, 3)


def test_overlay_banner_and_outlines(segmentation: Segmentation, overlay: list[Dataset]) -> None:
    k = max(kov.key_slices(segmentation.lungs, segmentation.lesions, 24))  # superior first
    plain = kov.render_slice(
        make_hu(segmentation)[k], segmentation.lungs[k], segmentation.lesions[k]
    )
    burned = overlay[0].pixel_array
    band = banner_height(ROWS, COLS)
    assert band < ROWS
    # The banner rows changed (text drawn), everything below is the plain rendering.
    assert (burned[:band] != plain[:band]).any()
    assert (burned[:band] > 160).all(axis=-1).any()  # light text on the dark band
    np.testing.assert_array_equal(burned[band:], plain[band:])
    lesion_colours = [np.asarray(c, np.uint8) for c in (kov.GGO_COLOR, kov.CONSOLIDATION_COLOR)]
    assert any((burned == c).all(axis=-1).any() for c in lesion_colours)


def test_overlay_all_and_no_lesion(source: tuple[Dataset, ...], segmentation: Segmentation) -> None:
    hu = make_hu(segmentation)
    all_ = write_overlay_series(
        OverlayRequest(source=source, hu=hu, segmentation=segmentation, model=MODEL, slices="all")
    )
    assert len(all_) == N_SLICES
    clean = Segmentation(segmentation.lungs, np.zeros_like(segmentation.lesions), (2.5, 0.75, 0.75))
    few = write_overlay_series(
        OverlayRequest(source=source, hu=hu, segmentation=clean, model=MODEL)
    )
    assert 1 <= len(few) <= 5


def test_overlay_dciodvfy(tmp_path: Path, overlay: list[Dataset]) -> None:
    assert _findings(_save(overlay[0], tmp_path / "ov.dcm")) == []


# --- summary page -------------------------------------------------------------------------


def test_summary_page_shows_images_and_numbers(
    tmp_path: Path, source: tuple[Dataset, ...], segmentation: Segmentation
) -> None:
    q = replace(
        make_quantification(),
        triage=TriageCategory.INDETERMINATE,
        quality=QualityReport((QualityFlag("small_lungs", "lungs 300 mL, expected >= 1500"),)),
    )
    hu = make_hu(segmentation)
    page = result_page(source=source, hu=hu, segmentation=segmentation, quant=q, model=MODEL)
    body = "\n".join(page.lines)
    assert "Triage: INDETERMINATE" in body
    assert "priority 2 of 5" in body
    assert "severity score: 3 / 25" in body
    assert "right 0.8 %" in body
    assert "left 0.1 %" in body
    assert "total 0.5 %" in body
    assert "total 2691.4 mL" in body
    assert "consolidation 2.3 mL" in body
    assert "!NEEDS A HUMAN: lung segmentation unreliable: lungs 300 mL" in body
    assert f"{MODEL.name} {MODEL.version}" in body
    ds = write_summary(page)
    path = _save(ds, tmp_path / "summary.dcm")
    assert _findings(path) == []
    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == source[0].StudyInstanceUID
    assert back.PatientID == source[0].PatientID
    assert back.SeriesDate
    assert DISCLAIMER_SHORT in back.SeriesDescription
    assert DISCLAIMER in back.ImageComments
    assert "NEEDS A HUMAN" not in back.ImageComments[:30]
    rgb = back.pixel_array
    assert rgb.shape[2] == 3
    assert rgb.shape[1] >= 1024
    assert page.images is not None
    h, _w = page.images.shape[:2]
    # the montage (with the outlines' colours) is on the page under the title
    found = np.argwhere((rgb == np.asarray(kov.GGO_COLOR, np.uint8)).all(axis=-1))
    assert len(found)
    assert found[:, 0].max() < 12 + 40 + h
    # text below the images: light pixels, and the warning line in its own colour
    assert (rgb[12 + 40 + h :] > 200).all(axis=-1).any()
    assert (rgb[12 + 40 + h :] == (255, 90, 60)).all(axis=-1).any()


def test_declined_page(tmp_path: Path, source: tuple[Dataset, ...]) -> None:
    page = declined_page(header=source[0], reason="no CT series in the study", model=MODEL)
    ds = write_summary(page)
    assert "not analysed" in ds.SeriesDescription.lower()
    assert "NOT ANALYSED: no CT series in the study" in ds.ImageComments
    assert _findings(_save(ds, tmp_path / "declined.dcm")) == []


# --- preview ------------------------------------------------------------------------------


def test_preview_png(tmp_path: Path, segmentation: Segmentation) -> None:
    path = tmp_path / "preview.png"
    write_preview_png(make_hu(segmentation), segmentation, path, title_lines=["Triage: MILD"])
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode == "RGB"
        assert img.width >= 480
        assert img.height > 64


# --- part10.save_dataset ------------------------------------------------------------------


def _pydicom_bytes(ds: Dataset, path: Path) -> bytes:
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


@pytest.mark.parametrize("which", ["seg", "sr", "overlay"])
def test_save_dataset_writes_the_bytes_pydicom_writes(
    tmp_path: Path, which: str, seg_ds: Dataset, sr_ds: Dataset, overlay: list[Dataset]
) -> None:
    ds = {"seg": seg_ds, "sr": sr_ds, "overlay": overlay[0]}[which]
    save_dataset(ds, tmp_path / "fast.dcm")
    assert (tmp_path / "fast.dcm").read_bytes() == _pydicom_bytes(ds, tmp_path / "ref.dcm")


def test_save_dataset_hands_what_it_does_not_encode_to_pydicom(
    tmp_path: Path, sr_ds: Dataset
) -> None:
    """Character sets, date objects, odd lengths, undefined-length sequences: same bytes."""
    import datetime

    from pydicom.valuerep import DA

    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset(sr_ds.file_meta)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sr_ds.SOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDate = DA(datetime.date(2024, 1, 2))
    ds.ContentDate = "20240102"
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL"]
    ds.PixelSpacing = [0.5, "0.703125"]
    ds.InstanceNumber = 7
    ds.Rows = 3
    ds.add_new(0x00091010, "LO", "private ascii")
    ds.ReferencedSeriesSequence = [pydicom.Dataset()]
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence = []
    ds["ReferencedSeriesSequence"].is_undefined_length = True
    ds.SourceImageSequence = [pydicom.Dataset()]
    ds.SourceImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    ds.SourceImageSequence[0].is_undefined_length_sequence_item = True
    ds.ContentSequence = [pydicom.Dataset()]
    ds.ContentSequence[0].SpecificCharacterSet = "ISO_IR 100"
    ds.ContentSequence[0].TextValue = "Lunge rechts, Milchglas, Größe"
    save_dataset(ds, tmp_path / "fast.dcm")
    assert (tmp_path / "fast.dcm").read_bytes() == _pydicom_bytes(ds, tmp_path / "ref.dcm")
    back = pydicom.dcmread(tmp_path / "fast.dcm")
    assert str(back.PatientName) == "Müller^Jürgen"


def test_save_dataset_other_transfer_syntaxes_go_to_pydicom(tmp_path: Path, sr_ds: Dataset) -> None:
    ds = pydicom.Dataset(sr_ds)
    ds.file_meta = pydicom.dataset.FileMetaDataset(sr_ds.file_meta)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    save_dataset(ds, tmp_path / "fast.dcm")
    assert (tmp_path / "fast.dcm").read_bytes() == _pydicom_bytes(ds, tmp_path / "ref.dcm")
    assert pydicom.dcmread(tmp_path / "fast.dcm").file_meta.TransferSyntaxUID == (
        pydicom.uid.ImplicitVRLittleEndian
    )
