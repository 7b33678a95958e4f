"""Query/Retrieve SCU (pull mode): C-FIND against a PACS, and the client for C-MOVE/C-GET.

Implements the SCU side of the Study Root Query/Retrieve Information Model
(PS3.4 Annex C): C-FIND at the STUDY and SERIES levels (PS3.4 C.4.1) here; C-MOVE of one
series to a named storage AE (PS3.4 C.4.2) and C-GET of one series over the same
association (PS3.4 C.4.3, PS3.7 D.3.3.4) in :mod:`ct_triage.dicom_bridge.retrieve`.
:class:`DimseClient` offers all of them, on top of the association layer
(:class:`~ct_triage.dicom_bridge.dimse.DimseScu`: associations, C-ECHO).

Every failure surfaces as a :class:`~ct_triage.dicom_bridge.pacs_errors.PacsError` that
names the node (AE title, host, port) and says what happened (see
:mod:`ct_triage.dicom_bridge.pacs_errors`).

Logs carry UIDs, AE titles and counts, never a patient name or ID (no patient attribute
is even requested as a return key).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Final

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from ct_triage.dicom_bridge import retrieve
from ct_triage.dicom_bridge.dimse import DimseScu, PacsNode
from ct_triage.dicom_bridge.instance_files import check_uid
from ct_triage.dicom_bridge.pacs_errors import PacsError, PacsUnreachable
from ct_triage.dicom_bridge.qr_results import (
    STATUS_PENDING,
    STATUS_PENDING_WARNING,
    STATUS_SUCCESS,
    RetrieveResult,
    SeriesMatch,
    StudyMatch,
    format_status,
    status_of,
)

__all__ = ["DimseClient"]

LOGGER = logging.getLogger(__name__)

_PENDING_STATUSES: Final = frozenset({STATUS_PENDING, STATUS_PENDING_WARNING})


def _date_range(value: tuple[date, date]) -> str:
    start, end = value
    if end < start:
        raise ValueError(f"date range ends ({end}) before it starts ({start})")
    return f"{start:%Y%m%d}-{end:%Y%m%d}"


class DimseClient(DimseScu):
    """A Query/Retrieve SCU: C-FIND, C-MOVE and C-GET (and C-ECHO) for one calling AE.

    Takes the parameters of :class:`~ct_triage.dicom_bridge.dimse.DimseScu` (calling AE
    title, timeouts, maximum PDU).
    """

    # -- C-FIND --------------------------------------------------------------------------
    def _find(self, node: PacsNode, query: Dataset) -> list[Dataset]:
        model = StudyRootQueryRetrieveInformationModelFind
        out: list[Dataset] = []
        with self.associate(node, [(model, None)], purpose="C-FIND") as assoc:
            final: int | None = None
            comment = ""
            for status, identifier in assoc.send_c_find(query, model):
                code = status_of(status)
                if code is None:
                    raise PacsUnreachable(
                        f"C-FIND to {node} got no response within {self.dimse_timeout_s:g} s "
                        "or the association was aborted"
                    )
                if code in _PENDING_STATUSES:
                    if identifier is not None:
                        out.append(identifier)
                    continue
                final = code
                comment = str(status.get("ErrorComment", "") or "")
            if final != STATUS_SUCCESS:
                raise PacsError(
                    f"C-FIND at level {query.QueryRetrieveLevel} to {node} ended with status "
                    f"{format_status(final)}{': ' + comment if comment else ''}"
                )
        return out

    def find_studies(
        self,
        node: PacsNode,
        *,
        study_uid: str | None = None,
        accession: str | None = None,
        modality: str | None = "CT",
        date_range: tuple[date, date] | None = None,
    ) -> list[StudyMatch]:
        """Study Root C-FIND at STUDY level (PS3.4 C.4.1, C.6.2.1).

        Parameters
        ----------
        node
            The PACS.
        study_uid, accession
            Single-value matching on StudyInstanceUID / AccessionNumber.
        modality
            Matched against ModalitiesInStudy (``None``: any).
        date_range
            Inclusive StudyDate range matching (PS3.4 C.2.2.2.5).

        Returns
        -------
        list of StudyMatch
            In the order the PACS returned them.
        """
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = check_uid(study_uid, "StudyInstanceUID") if study_uid else ""
        q.AccessionNumber = accession or ""
        q.StudyDate = _date_range(date_range) if date_range else ""
        q.StudyTime = ""
        q.ModalitiesInStudy = modality or ""
        q.StudyDescription = ""
        q.NumberOfStudyRelatedInstances = ""
        matches = [StudyMatch.from_dataset(ds) for ds in self._find(node, q)]
        if modality:
            # ModalitiesInStudy matching is optional for the SCP (PS3.4 C.6.2.1.2).
            matches = [
                m for m in matches if not m.modalities_in_study or modality in m.modalities_in_study
            ]
        LOGGER.info(
            "C-FIND STUDY on %s: %d match(es) (by uid=%s, accession given=%s, range=%s)",
            node,
            len(matches),
            bool(study_uid),
            bool(accession),
            q.StudyDate or "-",
        )
        return matches

    def find_series(
        self, node: PacsNode, study_uid: str, *, modality: str | None = None
    ) -> list[SeriesMatch]:
        """Study Root C-FIND at SERIES level within one study (PS3.4 C.4.1, C.6.2.1)."""
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = check_uid(study_uid, "StudyInstanceUID")
        q.SeriesInstanceUID = ""
        q.Modality = modality or ""
        q.SeriesNumber = ""
        q.SeriesDescription = ""
        q.NumberOfSeriesRelatedInstances = ""
        matches = [SeriesMatch.from_dataset(ds, study_uid) for ds in self._find(node, q)]
        LOGGER.info("C-FIND SERIES on %s for study %s: %d series", node, study_uid, len(matches))
        return matches

    # -- C-MOVE / C-GET ------------------------------------------------------------------
    def move_series(
        self, node: PacsNode, study_uid: str, series_uid: str, dest_aet: str
    ) -> RetrieveResult:
        """C-MOVE one series to the storage AE ``dest_aet`` (PS3.4 C.4.2).

        See :func:`ct_triage.dicom_bridge.retrieve.move_series`.

        Raises
        ------
        RetrieveFailed
            Failure/cancel status, move destination unknown, or abort part way (the
            partial counts are in ``.result``).
        """
        return retrieve.move_series(self, node, study_uid, series_uid, dest_aet)

    def get_series(
        self,
        node: PacsNode,
        study_uid: str,
        series_uid: str,
        dest_dir: Path,
        *,
        sop_classes: Sequence[str] = retrieve.CT_STORAGE_SOP_CLASSES,
    ) -> RetrieveResult:
        """C-GET one series over this association, writing each instance to ``dest_dir``.

        See :func:`ct_triage.dicom_bridge.retrieve.get_series`.

        Raises
        ------
        RetrieveFailed
            Failure/cancel status or abort part way; ``.result.files`` lists what arrived.
        """
        return retrieve.get_series(
            self, node, study_uid, series_uid, dest_dir, sop_classes=sop_classes
        )
