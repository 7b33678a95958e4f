"""Series selection: group DICOM headers into series and choose the one chest CT to analyse.

A series (PS3.3 C.7.3.1, General Series Module) is identified by SeriesInstanceUID. Each
series gets one human-readable :class:`SeriesVerdict` (taken or declined, and why), so a
technologist can see why a study was declined. The checks, in order:

1. Modality (0008,0060) is one of :attr:`SelectionRules.modalities` (CT by default).
2. It holds images (Rows/Columns present): SR, SEG, presentation states are not images.
3. It is not a localizer: ImageType (0008,0008) value 3 is ``LOCALIZER`` for CT
   (PS3.3 C.8.2.1.1.1), or the description names a scout/topogram/surview.
4. It is single-frame (one slice per instance; the enhanced multi-frame CT IOD is not
   supported).
5. It is not a reformat or a screen capture: ImageType values 3+ or the description name
   MPR/MIP/MinIP/a projection/a volume rendering/a reformat, or the SOP Class is Secondary
   Capture. ImageType values 1-2 other than ``ORIGINAL\\PRIMARY`` (PS3.3 C.7.6.1.1.2) alone
   do not decline a series: some scanners write ``ORIGINAL\\SECONDARY\\AXIAL`` on their
   only axial series (GE, as in LIDC-IDRI). Such a series is ranked after every
   ORIGINAL/PRIMARY one and its verdict says so; :attr:`SelectionRules.require_original_primary`
   declines it instead.
6. All slices share one ImageOrientationPatient (PS3.3 C.7.6.2.1.1) and it is axial within
   :attr:`SelectionRules.axial_tolerance_deg`.
7. GantryDetectorTilt (0018,1120) is zero.
8. SliceThickness (0018,0050) is at most :attr:`SelectionRules.max_slice_thickness_mm`.
9. At least :attr:`SelectionRules.min_slices` instances.

Among the series that pass, the ranking is: ORIGINAL/PRIMARY first, then lung (sharp)
reconstruction kernel, then the thinnest slices, then the most instances.

One study is analysed per call: an input holding several StudyInstanceUIDs is declined
(combining series of different studies, or silently picking one, could report on the wrong
examination), and so is a study whose images disagree on PatientID (an empty PatientID
counts as a value of its own). Body part is not checked from headers (BodyPartExamined is
unreliable); the compute stage checks that the volume contains lungs.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from ct_triage.dicom_bridge.inputs import DicomHeader
from ct_triage.models.errors import StudyDeclined

__all__ = [
    "DEFAULT_LUNG_KERNELS",
    "SelectionRules",
    "SeriesCandidate",
    "SeriesChoice",
    "SeriesVerdict",
    "group_series",
    "is_lung_kernel",
    "select_series",
]

logger = logging.getLogger(__name__)

#: Reconstruction kernels meant for lung reading, upper case. Siemens names are matched on
#: their core (``B70f``, ``B70s`` -> ``B70``; ``Bl57d`` -> ``BL57``).
DEFAULT_LUNG_KERNELS: tuple[str, ...] = (
    # Siemens (classic B/I, and Bl/Br families of Definition/Force/Edge)
    "B60", "B70", "B80", "I70", "I80", "BL56", "BL57", "BL64", "BR59", "BR60", "BR64", "BR69",
    # GE
    "LUNG", "BONEPLUS", "BONE", "EDGE", "CHEST", "HD LUNG",
    # Philips
    "L", "LC", "YA", "YB", "YC", "YD",
    # Canon / Toshiba
    "FC50", "FC51", "FC52", "FC53", "FC55", "FC56", "FC86",
)  # fmt: skip

_LOCALIZER_WORDS = ("SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM", "LOCALIZER", "LOCALISER")
#: Words (whole tokens of ImageType values 3+ or of the description) that mark a reformat,
#: a projection or a rendering: never the source images of a volume.
_REFORMAT_WORDS = frozenset(
    {
        "MPR", "MIP", "MINIP", "MINIMUM", "MAXIMUM", "REFORMAT", "REFORMATTED", "PROJECTION",
        "CPR", "CURVED", "VR", "VRT", "RENDERING", "RENDER", "3D", "SSD", "MINIMIP",
    }
)  # fmt: skip
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_SIEMENS_CORE = re.compile(r"^([A-Z]{1,2}\d{2})[A-Z]?$")
_MAX_LISTED = 4


@dataclass(frozen=True, slots=True)
class SelectionRules:
    """Configurable rules of series selection.

    Parameters
    ----------
    modalities
        Accepted Modality values.
    min_slices
        Fewest instances a series needs. 40 slices cover the lungs (about 25 cm) at 5 mm
        spacing with a margin; lower it only for tests or known partial scans.
    max_slice_thickness_mm
        Thickest accepted SliceThickness; 5 mm is the upper limit for quantifying
        ground-glass opacity in practice.
    require_original_primary
        Decline DERIVED or SECONDARY series. When ``False`` (the default) an axial series
        with no reformat marker is accepted whatever ImageType values 1-2 say, ranked after
        every ORIGINAL/PRIMARY one.
    axial_tolerance_deg
        Largest angle between the slice normal and the patient's feet-head axis.
    max_gantry_tilt_deg
        Largest accepted ``abs(GantryDetectorTilt)``.
    lung_kernels
        Upper-case kernel names preferred as lung reconstructions (see
        :data:`DEFAULT_LUNG_KERNELS`); any kernel containing ``LUNG`` also counts.
    description_lung_hint
        Also count a series as a lung reconstruction when its SeriesDescription contains
        ``LUNG`` (many sites name them so).
    """

    modalities: tuple[str, ...] = ("CT",)
    min_slices: int = 40
    max_slice_thickness_mm: float = 5.0
    require_original_primary: bool = False
    axial_tolerance_deg: float = 10.0
    max_gantry_tilt_deg: float = 0.01
    lung_kernels: tuple[str, ...] = DEFAULT_LUNG_KERNELS
    description_lung_hint: bool = True

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ValueError("SelectionRules.min_slices must be >= 1")
        if not self.max_slice_thickness_mm > 0:
            raise ValueError("SelectionRules.max_slice_thickness_mm must be > 0")
        if not 0 <= self.axial_tolerance_deg < 90:
            raise ValueError("SelectionRules.axial_tolerance_deg must be in [0, 90)")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    try:  # MultiValue
        return "\\".join(str(v) for v in value).strip()
    except TypeError:
        return str(value).strip()


def _float_or_none(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


@dataclass(frozen=True, slots=True)
class SeriesCandidate:
    """The instances of one series and the header facts selection uses.

    Parameters
    ----------
    key
        Grouping key: SeriesInstanceUID, or a substitute built from the study, frame of
        reference, series number and description when the UID is missing (seen in
        anonymised exports).
    headers
        The instances, sorted by path.
    """

    key: str
    study_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    description: str
    modality: str
    headers: tuple[DicomHeader, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files of the series."""
        return tuple(h.path for h in self.headers)

    @property
    def label(self) -> str:
        """How a technologist names it: ``series 3 'Topogram'``."""
        number = f"series {self.series_number}" if self.series_number is not None else "series"
        if self.description:
            return f"{number} '{self.description}'"
        if self.series_number is None:
            return f"series {self.series_instance_uid or '(no UID)'}"
        return number

    @property
    def first(self) -> Dataset:
        """The header of the first instance."""
        return self.headers[0].dataset

    @property
    def kernel(self) -> str:
        """ConvolutionKernel (0018,1210), values joined by a backslash."""
        return _text(self.first, "ConvolutionKernel")

    @property
    def slice_thickness_mm(self) -> float | None:
        """SliceThickness of the first instance, or ``None``."""
        return _float_or_none(self.first.get("SliceThickness"))


@dataclass(frozen=True, slots=True)
class SeriesVerdict:
    """Why one series was taken or declined.

    ``str(verdict)`` reads e.g. ``"series 3 'Topogram' (2 images): declined, is a
    localizer (scout/topogram)"``.
    """

    label: str
    series_instance_uid: str
    n_instances: int
    taken: bool
    reason: str

    def __str__(self) -> str:
        word = "taken" if self.taken else "declined"
        return f"{self.label} ({self.n_instances} images): {word}, {self.reason}"


@dataclass(frozen=True, slots=True)
class SeriesChoice:
    """The chosen series and one verdict per series of the study (chosen one first)."""

    series: SeriesCandidate
    reasons: tuple[SeriesVerdict, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        """Files of the chosen series (pass these to :func:`~.load.load_series`)."""
        return self.series.paths


def _series_key(ds: Dataset) -> str:
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return uid
    return "no-uid|{}|{}|{}|{}".format(
        _text(ds, "StudyInstanceUID"),
        _text(ds, "FrameOfReferenceUID"),
        _text(ds, "SeriesNumber"),
        _text(ds, "SeriesDescription"),
    )


def _int_or_none(value: object) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None


def group_series(headers: Iterable[DicomHeader]) -> tuple[SeriesCandidate, ...]:
    """Group headers by SeriesInstanceUID (PS3.3 C.7.3.1).

    Returns
    -------
    tuple of SeriesCandidate
        Sorted by series number (missing last), then UID.
    """
    groups: dict[str, list[DicomHeader]] = {}
    for header in headers:
        groups.setdefault(_series_key(header.dataset), []).append(header)
    out: list[SeriesCandidate] = []
    for key, members in groups.items():
        members.sort(key=lambda h: h.path)
        ds = members[0].dataset
        out.append(
            SeriesCandidate(
                key=key,
                study_instance_uid=_text(ds, "StudyInstanceUID"),
                series_instance_uid=_text(ds, "SeriesInstanceUID"),
                series_number=_int_or_none(ds.get("SeriesNumber")),
                description=_text(ds, "SeriesDescription"),
                modality=_text(ds, "Modality").upper(),
                headers=tuple(members),
            )
        )
    out.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.key))
    return tuple(out)


def _image_type(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("ImageType")
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip().upper() for v in value.split("\\"))
    return tuple(str(v).strip().upper() for v in value)


def _orientation(ds: Dataset) -> tuple[float, ...] | None:
    value = ds.get("ImageOrientationPatient")
    try:
        values = tuple(round(float(v), 3) for v in value)  # TypeError: absent or one value
    except (TypeError, ValueError):
        return None
    return values if len(values) == 6 else None


def _plane_name(normal: npt.NDArray[np.float64]) -> str:
    axis = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[axis]


def is_lung_kernel(candidate: SeriesCandidate, rules: SelectionRules) -> bool:
    """Whether the series is a lung (sharp) reconstruction by kernel or description."""
    wanted = {k.upper() for k in rules.lung_kernels}
    for token in _text(candidate.first, "ConvolutionKernel").upper().split("\\"):
        token = token.strip()
        if not token:
            continue
        if token in wanted or "LUNG" in token:
            return True
        core = _SIEMENS_CORE.match(token)
        if core and core.group(1) in wanted:
            return True
    return rules.description_lung_hint and "LUNG" in candidate.description.upper()


def _check(candidate: SeriesCandidate, rules: SelectionRules) -> tuple[int, str | None]:
    """Run the checks; return (how many passed, reason of the first failure or None)."""
    n = len(candidate.headers)
    first = candidate.first
    stage = 0
    modality = candidate.modality or "(no modality)"
    if candidate.modality not in rules.modalities:
        return stage, f"is {modality}, not {'/'.join(rules.modalities)}"
    stage += 1
    if "Rows" not in first or "Columns" not in first:
        return stage, "holds no images"
    stage += 1
    image_types = [_image_type(h.dataset) for h in candidate.headers]
    description = candidate.description.upper()
    if any("LOCALIZER" in it for it in image_types) or any(
        word in description for word in _LOCALIZER_WORDS
    ):
        return stage, "is a localizer (scout/topogram)"
    stage += 1
    frames = max(_int_or_none(h.dataset.get("NumberOfFrames")) or 1 for h in candidate.headers)
    if frames > 1:
        return stage, "is a multi-frame (enhanced) image, which is not supported"
    stage += 1
    marker = _reformat_marker(image_types, description)
    if marker:
        return stage, f"is a reformat or rendering ({marker}), not source axial images"
    if str(first.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE_PREFIX):
        return stage, "is a secondary capture (screen shots), not CT images"
    if rules.require_original_primary and any(_is_derived(it) for it in image_types):
        return stage, "is DERIVED/SECONDARY (ORIGINAL/PRIMARY required by the settings)"
    stage += 1
    orientations = {_orientation(h.dataset) for h in candidate.headers}
    if None in orientations:
        return stage, "has no image orientation (ImageOrientationPatient)"
    if len(orientations) > 1:
        return stage, f"mixes {len(orientations)} slice orientations"
    iop = next(iter(orientations))
    assert iop is not None
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    norm = float(np.linalg.norm(normal))
    if norm < 1e-3:
        return stage, "has an invalid image orientation"
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])) / norm)))
    if angle > rules.axial_tolerance_deg:
        return stage, f"is not axial ({_plane_name(normal)}, {angle:.0f} degrees from axial)"
    stage += 1
    tilts = {_float_or_none(h.dataset.get("GantryDetectorTilt")) or 0.0 for h in candidate.headers}
    tilt = max(tilts, key=abs)
    if abs(tilt) > rules.max_gantry_tilt_deg:
        return stage, f"is gantry-tilted ({tilt:g} degrees); gantry-tilted series are not supported"
    stage += 1
    thickness = candidate.slice_thickness_mm
    if thickness is not None and thickness > rules.max_slice_thickness_mm:
        return stage, f"has {thickness:g} mm slices (limit {rules.max_slice_thickness_mm:g} mm)"
    stage += 1
    if n < rules.min_slices:
        what = "is a single slice" if n == 1 else f"has only {n} slices"
        return stage, f"{what} (need >= {rules.min_slices})"
    stage += 1
    return stage, None


def _is_derived(image_type: tuple[str, ...]) -> bool:
    return image_type[:1] == ("DERIVED",) or image_type[1:2] == ("SECONDARY",)


def _reformat_word(text: str) -> str | None:
    """The first whole word of ``text`` (upper case) that marks a reformat, if any."""
    return next((w for w in re.split(r"[^A-Z0-9]+", text) if w in _REFORMAT_WORDS), None)


def _reformat_marker(image_types: list[tuple[str, ...]], description: str) -> str | None:
    """Where a reformat word stands: ImageType values 3+ or the description, if anywhere."""
    for it in image_types:
        for value in it[2:]:
            if _reformat_word(value):
                return f"ImageType {value}"
    word = _reformat_word(description.upper())
    return f"description '{word}'" if word else None


def _describe_taken(candidate: SeriesCandidate, lung: bool) -> str:
    kernel = candidate.kernel or "unknown"
    thickness = candidate.slice_thickness_mm
    thick = f"{thickness:g} mm slices" if thickness is not None else "unknown thickness"
    what = f"lung kernel {kernel}" if lung else f"kernel {kernel} (not a lung kernel)"
    image_types = {_image_type(h.dataset) for h in candidate.headers}
    derived = sorted("\\".join(it) for it in image_types if _is_derived(it))
    if derived:
        return (
            f"{what}, {thick}; ImageType {derived[0]} is not ORIGINAL/PRIMARY but marks no "
            "reformat: analysed as an axial acquisition (no ORIGINAL/PRIMARY series ranks higher)"
        )
    return f"{what}, {thick}"


def select_series(
    headers: Iterable[DicomHeader], rules: SelectionRules | None = None
) -> SeriesChoice:
    """Choose the series of one study to analyse.

    Parameters
    ----------
    headers
        Headers of one study (e.g. :attr:`~.inputs.DiscoveredInput.headers`).
    rules
        Selection rules; defaults to :class:`SelectionRules`.

    Returns
    -------
    SeriesChoice
        The chosen series and one verdict per series (the chosen one first, then the
        others in ranking order).

    Raises
    ------
    StudyDeclined
        No series qualifies (one line listing the best candidates' reasons), or the input
        holds more than one study or more than one patient.
    """
    rules = rules or SelectionRules()
    all_series = group_series(headers)
    if not all_series:
        raise StudyDeclined("No DICOM series to choose from")
    studies = {s.study_instance_uid for s in all_series}
    if len(studies) > 1:
        raise StudyDeclined(
            f"The input holds {len(studies)} different studies; send one study at a time "
            "(series of different studies are never combined)"
        )
    patients = {_text(h.dataset, "PatientID") for s in all_series for h in s.headers}
    if len(patients) > 1:
        # One StudyInstanceUID, several patients: a mix-up at the modality or the PACS.
        # Analysing it would report one patient's lungs under the other's name.
        raise StudyDeclined(
            f"The study holds images of {len(patients)} different patients (PatientID "
            "differs between images of one StudyInstanceUID); send one patient's study "
            "at a time"
        )
    qualified: list[tuple[tuple[bool, bool, float, int], SeriesCandidate, bool]] = []
    declined: list[tuple[int, SeriesCandidate, str]] = []
    for series in all_series:
        stage, reason = _check(series, rules)
        if reason is not None:
            declined.append((stage, series, reason))
            continue
        lung = is_lung_kernel(series, rules)
        original = not any(_is_derived(_image_type(h.dataset)) for h in series.headers)
        thickness = series.slice_thickness_mm
        rank = (
            original,
            lung,
            -(thickness if thickness is not None else math.inf),
            len(series.headers),
        )
        qualified.append((rank, series, lung))
    declined.sort(key=lambda d: (-d[0], -len(d[1].headers)))
    if not qualified:
        parts = [f"{s.label} {reason}" for _stage, s, reason in declined[:_MAX_LISTED]]
        if len(declined) > _MAX_LISTED:
            parts.append(f"and {len(declined) - _MAX_LISTED} more series")
        message = "No usable chest CT series: " + "; ".join(parts)
        for _stage, s, reason in declined:
            logger.info("series %s: declined, %s", s.series_number, reason)
        raise StudyDeclined(message)
    qualified.sort(key=lambda q: q[0], reverse=True)
    _rank, chosen, chosen_lung = qualified[0]
    verdicts = [
        SeriesVerdict(
            chosen.label,
            chosen.series_instance_uid,
            len(chosen.headers),
            True,
            _describe_taken(chosen, chosen_lung),
        )
    ]
    for _r, series, lung in qualified[1:]:
        verdicts.append(
            SeriesVerdict(
                series.label,
                series.series_instance_uid,
                len(series.headers),
                False,
                f"usable, but {chosen.label} ranks higher "
                f"(this one: {_describe_taken(series, lung)})",
            )
        )
    for _stage, series, reason in declined:
        verdicts.append(
            SeriesVerdict(
                series.label, series.series_instance_uid, len(series.headers), False, reason
            )
        )
    for verdict in verdicts:
        logger.info("%s (uid %s)", verdict, verdict.series_instance_uid)
    return SeriesChoice(chosen, tuple(verdicts))
