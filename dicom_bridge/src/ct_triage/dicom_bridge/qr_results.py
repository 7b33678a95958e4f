"""What a Query/Retrieve exchange answers: DIMSE status codes, matches, retrieve outcomes.

Shared by the DIMSE clients (:mod:`ct_triage.dicom_bridge.query` for C-FIND,
:mod:`ct_triage.dicom_bridge.retrieve` for C-MOVE/C-GET) and the DICOMweb client
(:mod:`ct_triage.dicom_bridge.dicomweb`, QIDO-RS), which return the same match types. No
patient attribute is kept in a match, by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydicom.dataset import Dataset

__all__ = [
    "RetrieveResult",
    "SeriesMatch",
    "StudyMatch",
    "format_status",
    "int_or_none",
    "multi_value",
    "status_of",
]

# DIMSE status codes, PS3.4 C.4.1.1.4 (C-FIND), C.4.2.1.5 (C-MOVE), C.4.3.1.4 (C-GET)
# and PS3.7 Annex C.
STATUS_SUCCESS: Final = 0x0000
STATUS_PENDING: Final = 0xFF00
STATUS_PENDING_WARNING: Final = 0xFF01  # C-FIND: optional keys not supported
STATUS_CANCEL: Final = 0xFE00
STATUS_WARNING_SUBOPERATIONS_FAILED: Final = 0xB000
STATUS_MOVE_DESTINATION_UNKNOWN: Final = 0xA801
STATUS_OUT_OF_RESOURCES_MATCHES: Final = 0xA701
STATUS_OUT_OF_RESOURCES_SUBOPERATIONS: Final = 0xA702
STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
STATUS_STORE_OUT_OF_RESOURCES: Final = 0xA700  # C-STORE sub-operation answer (PS3.4 B.2.3)


@dataclass(frozen=True)
class StudyMatch:
    """One STUDY-level C-FIND / QIDO-RS match (no patient attributes, by design)."""

    study_instance_uid: str
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    modalities_in_study: tuple[str, ...] = ()
    study_description: str = ""
    number_of_instances: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyMatch:
        """Build from a C-FIND identifier or a QIDO-RS DICOM JSON item."""
        return cls(
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            accession_number=str(ds.get("AccessionNumber", "") or ""),
            study_date=str(ds.get("StudyDate", "") or ""),
            study_time=str(ds.get("StudyTime", "") or ""),
            modalities_in_study=multi_value(ds.get("ModalitiesInStudy")),
            study_description=str(ds.get("StudyDescription", "") or ""),
            number_of_instances=int_or_none(ds.get("NumberOfStudyRelatedInstances")),
        )


@dataclass(frozen=True)
class SeriesMatch:
    """One SERIES-level C-FIND / QIDO-RS match."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    number_of_instances: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset, study_uid: str = "") -> SeriesMatch:
        """Build from a C-FIND identifier or a QIDO-RS DICOM JSON item."""
        return cls(
            study_instance_uid=str(ds.get("StudyInstanceUID", "") or study_uid),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            modality=str(ds.get("Modality", "") or ""),
            series_number=int_or_none(ds.get("SeriesNumber")),
            series_description=str(ds.get("SeriesDescription", "") or ""),
            number_of_instances=int_or_none(ds.get("NumberOfSeriesRelatedInstances")),
        )


@dataclass(frozen=True)
class RetrieveResult:
    """Outcome of a C-MOVE / C-GET (PS3.4 C.4.2.1.5, C.4.3.1.4 sub-operation counts).

    Attributes
    ----------
    status
        The final DIMSE status, or ``None`` when no final response came (abort, timeout).
    completed, failed, warning, remaining
        Sub-operation counts. For C-GET, ``completed`` is at least the number of files we
        wrote (peers that omit the counts are corrected by what we actually received).
    files
        C-GET only: the instances written under ``dest_dir`` (fsynced), in arrival order.
    failed_sop_instance_uids
        From FailedSOPInstanceUIDList (0008,0058) when the peer sent it.
    """

    study_instance_uid: str
    series_instance_uid: str
    status: int | None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    files: tuple[Path, ...] = ()
    failed_sop_instance_uids: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Success status, nothing failed and nothing left."""
        return self.status == STATUS_SUCCESS and self.failed == 0 and self.remaining == 0


def multi_value(value: Any) -> tuple[str, ...]:
    """A multi-valued attribute (PS3.5 6.4, ``\\``-separated when a string) as a tuple."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    try:
        return tuple(str(v) for v in value)
    except TypeError:
        return (str(value),)


def int_or_none(value: Any) -> int | None:
    """An IS / US value as an ``int``; ``None`` when absent, empty or not a number."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def status_of(response: Dataset) -> int | None:
    """The Status (0000,0900) of a DIMSE response; ``None`` when there was no response."""
    value = response.get("Status")
    return None if value is None else int(value)


def format_status(code: int | None) -> str:
    """A status for messages: ``0xA801``, or ``none``."""
    return "none" if code is None else f"0x{code:04X}"
