"""Query/Retrieve SCU (pull mode): C-FIND, C-MOVE and C-GET against a PACS.

Implements the SCU side of the Study Root Query/Retrieve Information Model
(PS3.4 Annex C): C-FIND at the STUDY and SERIES levels (PS3.4 C.4.1), C-MOVE of one
series to a named storage AE (PS3.4 C.4.2) and C-GET of one series over the same
association, with SCP/SCU role selection for the CT storage SOP classes (PS3.4 C.4.3,
PS3.7 D.3.3.4).

Every failure surfaces as a :class:`PacsError` that names the node (AE title, host,
port) and says what happened: the TCP connection could not be opened, the association
was rejected (with the reason from the A-ASSOCIATE-RJ, PS3.8 9.3.4), the peer aborted or
timed out, or the retrieve ended with a failure status. A retrieve that stops part way
raises :class:`RetrieveFailed` carrying the partial :class:`RetrieveResult` (the files
already received are kept).

Logs carry UIDs, AE titles and counts, never a patient name or ID (no patient attribute
is even requested as a return key).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ct_triage.models.durable import write_durably
from ct_triage.models.errors import TriageError

__all__ = [
    "CT_STORAGE_SOP_CLASSES",
    "DEFAULT_CALLING_AET",
    "AssociationRejected",
    "DimseClient",
    "PacsError",
    "PacsNode",
    "PacsUnreachable",
    "RetrieveFailed",
    "RetrieveResult",
    "SeriesMatch",
    "StudyMatch",
]

LOGGER = logging.getLogger(__name__)

DEFAULT_CALLING_AET: Final = "CT_TRIAGE"

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

_PENDING_STATUSES: Final = frozenset({STATUS_PENDING, STATUS_PENDING_WARNING})

#: CT storage SOP classes (PS3.4 B.5) accepted in the SCP role during C-GET.
CT_STORAGE_SOP_CLASSES: Final[tuple[str, ...]] = (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

_UID_RE: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class PacsError(TriageError):
    """A PACS (DIMSE or DICOMweb) could not be queried or retrieved from, or stored to.

    Attributes
    ----------
    transient
        ``True`` when trying again later may succeed (connection refused, timeout,
        abort, HTTP 5xx); ``False`` for a refusal that will not change by itself
        (rejected association, wrong credentials, failure status).
    """

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class PacsUnreachable(PacsError):
    """No TCP connection / no answer: refused, timed out, or aborted by the peer."""

    transient = True


class AssociationRejected(PacsError):
    """The peer sent an A-ASSOCIATE-RJ (PS3.8 9.3.4) or accepted no presentation context."""


class RetrieveFailed(PacsError):
    """A C-MOVE/C-GET ended with a failure status, a cancel, or an abort part way.

    Attributes
    ----------
    result
        The partial result: sub-operation counts and the files already received.
    """

    def __init__(self, message: str, result: RetrieveResult, *, transient: bool) -> None:
        super().__init__(message, transient=transient)
        self.result = result


@dataclass(frozen=True)
class PacsNode:
    """A remote DICOM application entity (PS3.8 7.1.1.4 AE title, host, port).

    Parameters
    ----------
    ae_title
        The called AE title (at most 16 characters, PS3.5 6.2 AE).
    host, port
        Where its DICOM listener is.
    tls
        A client :class:`ssl.SSLContext` for DICOM over TLS (PS3.15 B.1); ``None`` for plain
        TCP. The server name checked is ``host``.
    """

    ae_title: str
    host: str
    port: int
    tls: ssl.SSLContext | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.ae_title or len(self.ae_title) > 16 or not self.ae_title.isprintable():
            raise ValueError(f"invalid AE title {self.ae_title!r} (1 to 16 printable chars)")
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port} for AE {self.ae_title}")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


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
            modalities_in_study=_multi(ds.get("ModalitiesInStudy")),
            study_description=str(ds.get("StudyDescription", "") or ""),
            number_of_instances=_int_or_none(ds.get("NumberOfStudyRelatedInstances")),
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
            series_number=_int_or_none(ds.get("SeriesNumber")),
            series_description=str(ds.get("SeriesDescription", "") or ""),
            number_of_instances=_int_or_none(ds.get("NumberOfSeriesRelatedInstances")),
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


def _multi(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    try:
        return tuple(str(v) for v in value)
    except TypeError:
        return (str(value),)


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _check_uid(uid: str, what: str) -> str:
    if not _UID_RE.match(uid) or len(uid) > 64:
        raise ValueError(f"{what} {uid!r} is not a valid DICOM UID (PS3.5 9.1)")
    return uid


def _date_range(value: tuple[date, date]) -> str:
    start, end = value
    if end < start:
        raise ValueError(f"date range ends ({end}) before it starts ({start})")
    return f"{start:%Y%m%d}-{end:%Y%m%d}"


def _status_of(status: Dataset) -> int | None:
    value = status.get("Status")
    return None if value is None else int(value)


def write_instance_bytes(dest_dir: Path, sop_instance_uid: str, data: bytes) -> Path:
    """Write one Part 10 file as ``<SOPInstanceUID>.dcm`` atomically and durably.

    The bytes go to a temporary file in ``dest_dir``, are fsynced, renamed into place and
    the directory entry is fsynced (:func:`ct_triage.models.durable.write_durably`), so a file
    that exists is complete.
    """
    _check_uid(sop_instance_uid, "SOP Instance UID")
    final = dest_dir / f"{sop_instance_uid}.dcm"
    write_durably(final, data, tmp_prefix=".incoming-", tmp_suffix=".part")
    return final


def keep_responses_for_waiting_sender(assoc: Association) -> None:
    """Hand a DIMSE response the association's reactor took back to the waiting sender.

    pynetdicom (checked up to 3.0.4) pauses its reactor thread around each ``send_*`` call
    with a flag that the reactor raises *before* it blocks. A reactor preempted between
    that flag and its non-blocking queue read can take the response of the request just
    sent, log "Received unexpected C-STORE service message" and drop it; the sender then
    waits the whole DIMSE timeout (120 s) for an answer that came in milliseconds, and the
    association is aborted. We saw it once in CI on a loaded 2-core machine (a batch's
    delivery stalled past its test's limit).

    This wraps the two ends on one association: ``dimse.get_msg`` counts the threads
    blocked waiting for a message, and ``_serve_request`` (where the reactor hands what it
    took) puts a non-request message back at the *front* of the queue (order kept: C-FIND
    and C-GET answer one request with several responses) while a sender waits. With no
    sender waiting, a stray response is still dropped and logged as pynetdicom does.
    """
    dimse = assoc.dimse
    queue: Any = getattr(dimse, "msg_queue", None)
    if not hasattr(assoc, "_serve_request") or not hasattr(queue, "mutex"):
        # another pynetdicom layout: leave the association as it is (the race stays possible)
        LOGGER.debug("pynetdicom internals changed: reactor response shim not installed")
        return
    get_msg, serve_request = dimse.get_msg, assoc._serve_request
    lock = threading.Lock()
    waiting = [0]

    def counted_get_msg(block: bool = False) -> Any:
        if not block:
            return get_msg(block)
        with lock:
            waiting[0] += 1
        try:
            return get_msg(block)
        finally:
            with lock:
                waiting[0] -= 1

    def serve(msg: Any, context_id: int) -> None:
        if msg is not None and not msg.is_valid_request and waiting[0]:
            with queue.mutex:
                queue.queue.appendleft((context_id, msg))
                queue.unfinished_tasks += 1
                queue.not_empty.notify()
            LOGGER.debug("returned a %s the reactor took to the waiting sender", msg.msg_type)
            return
        serve_request(msg, context_id)

    dimse.get_msg = counted_get_msg  # type: ignore[method-assign]
    assoc._serve_request = serve  # type: ignore[method-assign]


class DimseClient:
    """A DIMSE SCU for one calling AE title, with its timeouts.

    Parameters
    ----------
    calling_aet
        Our AE title, as registered in the PACS (PS3.8 7.1.1.3).
    connect_timeout_s
        TCP connect timeout.
    acse_timeout_s
        Wait for the A-ASSOCIATE-AC/RJ and A-RELEASE-RP.
    dimse_timeout_s
        Wait for each DIMSE response (for C-MOVE/C-GET: between two pending responses).
    network_timeout_s
        Idle time after which an association is aborted.
    max_pdu
        Maximum PDU length we receive (PS3.8 D.1).
    """

    def __init__(
        self,
        calling_aet: str = DEFAULT_CALLING_AET,
        *,
        connect_timeout_s: float = 10.0,
        acse_timeout_s: float = 30.0,
        dimse_timeout_s: float = 120.0,
        network_timeout_s: float = 120.0,
        max_pdu: int = 0,
    ) -> None:
        if not calling_aet or len(calling_aet) > 16:
            raise ValueError(f"invalid calling AE title {calling_aet!r} (1 to 16 chars)")
        self.calling_aet = calling_aet
        self.connect_timeout_s = connect_timeout_s
        self.acse_timeout_s = acse_timeout_s
        self.dimse_timeout_s = dimse_timeout_s
        self.network_timeout_s = network_timeout_s
        self.max_pdu = max_pdu

    # -- association ---------------------------------------------------------------------
    def _new_ae(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.connection_timeout = self.connect_timeout_s
        ae.acse_timeout = self.acse_timeout_s
        ae.dimse_timeout = self.dimse_timeout_s
        ae.network_timeout = self.network_timeout_s
        ae.maximum_pdu_size = self.max_pdu
        return ae

    @contextlib.contextmanager
    def associate(
        self,
        node: PacsNode,
        contexts: Sequence[tuple[str, Sequence[str] | None]],
        *,
        scp_roles: Sequence[str] = (),
        handlers: Sequence[tuple[Any, Any]] = (),
        purpose: str = "",
    ) -> Iterator[Association]:
        """Open an association to ``node``; release it (or abort on error) on exit.

        Parameters
        ----------
        node
            The called AE.
        contexts
            ``(abstract syntax, transfer syntaxes or None for the defaults)`` to propose.
        scp_roles
            Abstract syntaxes for which we propose the SCP role (C-GET, PS3.7 D.3.3.4).
        handlers
            pynetdicom ``(event, handler)`` pairs bound to the association.
        purpose
            Short words for error messages ("C-FIND", ...).

        Raises
        ------
        PacsUnreachable
            The TCP connection failed or the peer did not answer / aborted.
        AssociationRejected
            A-ASSOCIATE-RJ or no presentation context accepted.
        """
        ae = self._new_ae()
        for abstract, syntaxes in contexts:
            if syntaxes is None:
                ae.add_requested_context(abstract)
            else:
                ae.add_requested_context(abstract, list(syntaxes))
        roles: list[Any] = [build_role(uid, scp_role=True) for uid in scp_roles]
        tls_args = (node.tls, node.host) if node.tls is not None else None
        what = f"{purpose} association" if purpose else "association"
        LOGGER.debug("requesting %s %s -> %s", what, self.calling_aet, node)
        connected: list[bool] = []
        assoc = ae.associate(
            node.host,
            node.port,
            ae_title=node.ae_title,
            ext_neg=roles or None,
            evt_handlers=[*handlers, (evt.EVT_CONN_OPEN, lambda _e: connected.append(True))],
            tls_args=tls_args,
        )
        if not assoc.is_established:
            if not connected:
                raise PacsUnreachable(
                    f"could not open a TCP connection to DICOM node {node}: {self._probe(node)}"
                )
            raise self._association_error(assoc, node, what)
        keep_responses_for_waiting_sender(assoc)
        try:
            yield assoc
        except BaseException:
            if assoc.is_established:
                assoc.abort()
            raise
        else:
            if assoc.is_established:
                assoc.release()

    def _association_error(self, assoc: Association, node: PacsNode, what: str) -> PacsError:
        if assoc.is_rejected:
            rj = assoc.acceptor.primitive
            reason = (
                f"{rj.result_str}, source {rj.source_str}: {rj.reason_str}"
                if rj is not None
                else "no reason given"
            )
            transient = rj is not None and rj.result == 0x02
            return AssociationRejected(
                f"{what} from {self.calling_aet} to {node} was rejected ({reason}); "
                f"check that the PACS knows AE title {self.calling_aet!r} and that "
                f"{node.ae_title!r} is its AE title",
                transient=transient,
            )
        if assoc.is_aborted:
            rsp = assoc.acceptor.primitive
            if rsp is not None and rsp.result == 0x00 and not assoc.accepted_contexts:
                return AssociationRejected(
                    f"{what} from {self.calling_aet} to {node} accepted none of the proposed "
                    "presentation contexts (SOP class / transfer syntax not supported)"
                )
        return PacsUnreachable(
            f"{what} from {self.calling_aet} to {node} was aborted or got no answer "
            f"within {self.acse_timeout_s:g} s"
        )

    def _probe(self, node: PacsNode) -> str:
        """Say why a TCP connect fails (pynetdicom only logs it)."""
        try:
            with socket.create_connection((node.host, node.port), timeout=self.connect_timeout_s):
                return "connection failed (TLS handshake or transient network error)"
        except ConnectionRefusedError:
            return "connection refused (nothing listening on that port?)"
        except TimeoutError:
            return f"no answer within {self.connect_timeout_s:g} s (firewall or wrong host?)"
        except OSError as exc:
            return exc.strerror or type(exc).__name__

    # -- C-ECHO --------------------------------------------------------------------------
    def echo(self, node: PacsNode) -> None:
        """Verify the node answers C-ECHO (PS3.4 Annex A) with Success."""
        with self.associate(node, [("1.2.840.10008.1.1", None)], purpose="C-ECHO") as assoc:
            status = _status_of(assoc.send_c_echo())
        if status != STATUS_SUCCESS:
            raise PacsError(f"C-ECHO to {node} answered status {_hex(status)}")

    # -- C-FIND --------------------------------------------------------------------------
    def _find(self, node: PacsNode, query: Dataset) -> list[Dataset]:
        model = StudyRootQueryRetrieveInformationModelFind
        out: list[Dataset] = []
        with self.associate(node, [(model, None)], purpose="C-FIND") as assoc:
            final: int | None = None
            comment = ""
            for status, identifier in assoc.send_c_find(query, model):
                code = _status_of(status)
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
                    f"{_hex(final)}{': ' + comment if comment else ''}"
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
        q.StudyInstanceUID = _check_uid(study_uid, "StudyInstanceUID") if study_uid else ""
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
        q.StudyInstanceUID = _check_uid(study_uid, "StudyInstanceUID")
        q.SeriesInstanceUID = ""
        q.Modality = modality or ""
        q.SeriesNumber = ""
        q.SeriesDescription = ""
        q.NumberOfSeriesRelatedInstances = ""
        matches = [SeriesMatch.from_dataset(ds, study_uid) for ds in self._find(node, q)]
        LOGGER.info("C-FIND SERIES on %s for study %s: %d series", node, study_uid, len(matches))
        return matches

    # -- C-MOVE / C-GET ------------------------------------------------------------------
    @staticmethod
    def _series_identifier(study_uid: str, series_uid: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = _check_uid(study_uid, "StudyInstanceUID")
        ds.SeriesInstanceUID = _check_uid(series_uid, "SeriesInstanceUID")
        return ds

    def move_series(
        self, node: PacsNode, study_uid: str, series_uid: str, dest_aet: str
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
        ident = self._series_identifier(study_uid, series_uid)
        state = _RetrieveState(study_uid, series_uid)
        with self.associate(node, [(model, None)], purpose="C-MOVE") as assoc:
            for status, identifier in assoc.send_c_move(ident, dest_aet, model):
                state.update(status, identifier)
        return state.finish(f"C-MOVE of series {series_uid} from {node} to {dest_aet}")

    def get_series(
        self,
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
        ident = self._series_identifier(study_uid, series_uid)
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
        with self.associate(
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
        code = _status_of(status)
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
            self.failed_uids = _multi(identifier.FailedSOPInstanceUIDList)

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
            LOGGER.info("%s: status %s (%s)", what, _hex(self.final), counts)
            return res
        reason = {
            STATUS_CANCEL: "cancelled",
            STATUS_MOVE_DESTINATION_UNKNOWN: "move destination unknown to the PACS",
            STATUS_OUT_OF_RESOURCES_MATCHES: "PACS out of resources (matches)",
            STATUS_OUT_OF_RESOURCES_SUBOPERATIONS: "PACS out of resources (sub-operations)",
            STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: "identifier does not match SOP class",
        }.get(self.final, "failure")
        detail = f": {self.comment}" if self.comment else ""
        LOGGER.warning("%s failed: status %s (%s)", what, _hex(self.final), counts)
        raise RetrieveFailed(
            f"{what} failed with status {_hex(self.final)} ({reason}{detail}; {counts})",
            res,
            transient=self.final
            in (STATUS_OUT_OF_RESOURCES_MATCHES, STATUS_OUT_OF_RESOURCES_SUBOPERATIONS),
        )


def _hex(code: int | None) -> str:
    return "none" if code is None else f"0x{code:04X}"
