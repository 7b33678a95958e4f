"""Retrieve one series from a PACS: C-MOVE (PS3.4 C.4.2) and C-GET (PS3.4 C.4.3).

Study Root Query/Retrieve Information Model (PS3.4 Annex C) at the SERIES level. C-MOVE
asks the PACS to send the series to a named storage AE (our listener); C-GET receives it
over the same association, with the SCP role for the CT storage SOP classes (PS3.7
D.3.3.4), each instance written durably before we answer Success.

A retrieve that stops part way raises :class:`~ct_triage.dicom_bridge.pacs_errors.RetrieveFailed`
carrying the partial :class:`~ct_triage.dicom_bridge.qr_results.RetrieveResult` (the files
already received are kept). Logs carry UIDs, AE titles and counts, never a patient name or
ID.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)
from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ct_triage.dicom_bridge.dimse import DimseScu, PacsNode
from ct_triage.dicom_bridge.instance_files import check_uid, write_instance_bytes
from ct_triage.dicom_bridge.pacs_errors import RetrieveFailed
from ct_triage.dicom_bridge.qr_results import (
    STATUS_CANCEL,
    STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_MOVE_DESTINATION_UNKNOWN,
    STATUS_OUT_OF_RESOURCES_MATCHES,
    STATUS_OUT_OF_RESOURCES_SUBOPERATIONS,
    STATUS_PENDING,
    STATUS_STORE_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    STATUS_WARNING_SUBOPERATIONS_FAILED,
    RetrieveResult,
    format_status,
    multi_value,
    status_of,
)

__all__ = ["CT_STORAGE_SOP_CLASSES", "get_series", "move_series"]

LOGGER = logging.getLogger(__name__)

#: CT storage SOP classes (PS3.4 B.5) accepted in the SCP role during C-GET.
CT_STORAGE_SOP_CLASSES: Final[tuple[str, ...]] = (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)


def _series_identifier(study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = check_uid(study_uid, "StudyInstanceUID")
    ds.SeriesInstanceUID = check_uid(series_uid, "SeriesInstanceUID")
    return ds


def move_series(
    scu: DimseScu, node: PacsNode, study_uid: str, series_uid: str, dest_aet: str
) -> RetrieveResult:
    """C-MOVE one series to the storage AE ``dest_aet`` (PS3.4 C.4.2).

    The PACS opens its own association to ``dest_aet`` (which it must know by AE
    title) and sends the instances there.

    Raises
    ------
    RetrieveFailed
        Failure/cancel status, move destination unknown, or abort part way (the
        partial counts are in ``.result``).
    """
    model = StudyRootQueryRetrieveInformationModelMove
    ident = _series_identifier(study_uid, series_uid)
    state = _RetrieveState(study_uid, series_uid)
    with scu.associate(node, [(model, None)], purpose="C-MOVE") as assoc:
        for status, identifier in assoc.send_c_move(ident, dest_aet, model):
            state.update(status, identifier)
    return state.finish(f"C-MOVE of series {series_uid} from {node} to {dest_aet}")


def get_series(
    scu: DimseScu,
    node: PacsNode,
    study_uid: str,
    series_uid: str,
    dest_dir: Path,
    *,
    sop_classes: Sequence[str] = CT_STORAGE_SOP_CLASSES,
) -> RetrieveResult:
    """C-GET one series over this association, writing each instance to ``dest_dir``.

    We propose the SCP role for ``sop_classes`` (PS3.4 C.4.3, PS3.7 D.3.3.4); each
    C-STORE sub-operation is written as ``<SOPInstanceUID>.dcm`` and fsynced before we
    answer Success.

    Raises
    ------
    RetrieveFailed
        Failure/cancel status or abort part way; ``.result.files`` lists what arrived.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    model = StudyRootQueryRetrieveInformationModelGet
    ident = _series_identifier(study_uid, series_uid)
    state = _RetrieveState(study_uid, series_uid)

    def on_store(event: Any) -> int:
        try:
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            path = write_instance_bytes(dest_dir, sop_uid, event.encoded_dataset())
        except (OSError, ValueError):
            LOGGER.exception("C-GET: could not store a received instance in %s", dest_dir)
            return STATUS_STORE_OUT_OF_RESOURCES
        state.files.append(path)
        return STATUS_SUCCESS

    contexts: list[tuple[str, Sequence[str] | None]] = [(model, None)]
    contexts += [(uid, None) for uid in sop_classes]
    with scu.associate(
        node,
        contexts,
        scp_roles=sop_classes,
        handlers=[(evt.EVT_C_STORE, on_store)],
        purpose="C-GET",
    ) as assoc:
        for status, identifier in assoc.send_c_get(ident, model):
            state.update(status, identifier)
    return state.finish(f"C-GET of series {series_uid} from {node}")


@dataclass
class _RetrieveState:
    """Accumulates C-MOVE/C-GET responses (PS3.4 C.4.2.1.5 / C.4.3.1.4 counts)."""

    study_uid: str
    series_uid: str
    final: int | None = None
    aborted: bool = False
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    comment: str = ""
    failed_uids: tuple[str, ...] = ()
    files: list[Path] = field(default_factory=list)

    def update(self, status: Dataset, identifier: Dataset | None) -> None:
        code = status_of(status)
        if code is None:
            self.aborted = True
            return
        self.remaining = int(status.get("NumberOfRemainingSuboperations", self.remaining) or 0)
        self.completed = int(status.get("NumberOfCompletedSuboperations", self.completed) or 0)
        self.failed = int(status.get("NumberOfFailedSuboperations", self.failed) or 0)
        self.warning = int(status.get("NumberOfWarningSuboperations", self.warning) or 0)
        if code == STATUS_PENDING:
            return
        self.final = code
        # Remaining is optional in a final response (PS3.4 C.4.2.3.1): nothing is left.
        self.remaining = int(status.get("NumberOfRemainingSuboperations", 0) or 0)
        self.comment = str(status.get("ErrorComment", "") or "")
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            self.failed_uids = multi_value(identifier.FailedSOPInstanceUIDList)

    def result(self) -> RetrieveResult:
        return RetrieveResult(
            study_instance_uid=self.study_uid,
            series_instance_uid=self.series_uid,
            status=None if self.aborted else self.final,
            completed=max(self.completed, len(self.files)),
            failed=self.failed,
            warning=self.warning,
            remaining=self.remaining,
            files=tuple(self.files),
            failed_sop_instance_uids=self.failed_uids,
        )

    def finish(self, what: str) -> RetrieveResult:
        res = self.result()
        counts = (
            f"completed {res.completed}, failed {res.failed}, warning {res.warning}, "
            f"remaining {res.remaining}"
        )
        if self.aborted or self.final is None:
            LOGGER.warning("%s stopped part way (%s)", what, counts)
            raise RetrieveFailed(
                f"{what} stopped part way: the association was aborted or timed out "
                f"({counts}; {len(res.files)} file(s) received and kept)",
                res,
                transient=True,
            )
        if self.final in (STATUS_SUCCESS, STATUS_WARNING_SUBOPERATIONS_FAILED):
            LOGGER.info("%s: status %s (%s)", what, format_status(self.final), counts)
            return res
        reason = {
            STATUS_CANCEL: "cancelled",
            STATUS_MOVE_DESTINATION_UNKNOWN: "move destination unknown to the PACS",
            STATUS_OUT_OF_RESOURCES_MATCHES: "PACS out of resources (matches)",
            STATUS_OUT_OF_RESOURCES_SUBOPERATIONS: "PACS out of resources (sub-operations)",
            STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: "identifier does not match SOP class",
        }.get(self.final, "failure")
        detail = f": {self.comment}" if self.comment else ""
        LOGGER.warning("%s failed: status %s (%s)", what, format_status(self.final), counts)
        raise RetrieveFailed(
            f"{what} failed with status {format_status(self.final)} ({reason}{detail}; {counts})",
            res,
            transient=self.final
            in (STATUS_OUT_OF_RESOURCES_MATCHES, STATUS_OUT_OF_RESOURCES_SUBOPERATIONS),
        )
