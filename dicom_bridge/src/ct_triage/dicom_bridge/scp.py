"""The Storage SCP (push mode): receive, validate, spool durably, acknowledge.

An SCP of the Storage Service Class (PS3.4 Annex B) and the Verification Service Class
(PS3.4 Annex A, C-ECHO). The C-STORE handler validates the request, hands the encoded
instance to :class:`~ct_triage.dicom_bridge.spool.Spool` (which makes it durable) and only
then answers Success; it never runs inference. Status codes (PS3.4 B.2.3, PS3.7 Annex C):

* :data:`STATUS_SUCCESS` ``0x0000`` -- on disk and indexed (or a duplicate, or our own
  output that is acknowledged and ignored);
* :data:`STATUS_OUT_OF_RESOURCES` ``0xA700`` -- the spool could not write (disk full, I/O
  error, permissions); the peer should retry later;
* :data:`STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS` ``0xA900`` -- the data set's SOP Class
  differs from the request's Affected SOP Class, or a CT image lacks what loading needs (no
  Pixel Data, no valid Rows/Columns, PixelSpacing, position, orientation or rescale; see
  :mod:`.usable`);
* :data:`STATUS_CANNOT_UNDERSTAND` ``0xC000`` -- the header does not decode, a UID is
  missing or unsafe, or a CT image's pixel data are truncated or do not decode;
* :data:`STATUS_INSTANCE_MISMATCH` ``0xC001`` -- the data set's SOP Instance UID differs
  from the request's Affected SOP Instance UID;
* :data:`STATUS_PROCESSING_FAILURE` ``0x0110`` -- anything unexpected (logged once with its
  traceback); the association stays up.

An instance refused for what it holds (``0xA900``, ``0xC000``) is never spooled, so it cannot
make its series decline; the response's ErrorComment says why, and a later good copy of the
same SOP Instance UID is stored as usual.

Only the SOP Classes below are negotiated: CT Image Storage (analysed), Enhanced and Legacy
Converted Enhanced CT (spooled so that selection can decline them with a reason), and our
own output classes (Segmentation, Comprehensive 3D SR, Secondary Capture) so that a PACS
that forwards everything back gets no errors; those are acknowledged and not analysed.
Calling AE titles can be restricted: others get A-ASSOCIATE-RJ, permanent, "calling AE title
not recognised" (PS3.8 9.3.4). TLS follows PS3.15 B.9 (see :mod:`.tls`).

How each association ended is handed to the spool (:meth:`Spool.association_ended`): a
normal A-RELEASE after a series lets it complete after a short settle time instead of the
quiet period; an A-ABORT (or a dropped connection) holds its series until a later
association completes it (see :mod:`.spool`, "When is a series complete?").
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    Comprehensive3DSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    LegacyConvertedEnhancedCTImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from ct_triage.models.errors import InvalidInput, TriageError

from .spool import Spool, StoreAction, read_instance_header
from .usable import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    check_ct_image,
)

__all__ = [
    "ANALYSED_SOP_CLASSES",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "STATUS_INSTANCE_MISMATCH",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_SUCCESS",
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "StorageSCP",
]

logger = logging.getLogger(__name__)

#: Verification SOP Class (PS3.4 A.4; PS3.6 Annex A).
VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")

# --- C-STORE response statuses (PS3.4 B.2.3, PS3.7 C) -----------------------------------
#: Success (PS3.7 C.1.1).
STATUS_SUCCESS = 0x0000
#: Refused: Out of Resources (PS3.4 B.2.3, A7xx).
STATUS_OUT_OF_RESOURCES = 0xA700
#: Error: Cannot understand (Cxxx): SOP Instance UID differs from the request's.
STATUS_INSTANCE_MISMATCH = 0xC001
#: Failure: Processing failure (PS3.7 C.4.2), for unexpected errors.
STATUS_PROCESSING_FAILURE = 0x0110

#: Storage SOP Classes whose instances are spooled for selection and analysis.
ANALYSED_SOP_CLASSES: tuple[UID, ...] = (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)
#: Every Storage SOP Class negotiated (analysed ones plus our own output classes).
STORAGE_SOP_CLASSES: tuple[UID, ...] = (
    *ANALYSED_SOP_CLASSES,
    SegmentationStorage,
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
)
#: Transfer syntaxes accepted (PS3.5 Annex A); pydicom/pylibjpeg decode all of them.
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2K,
    RLELossless,
)


@dataclass
class _AssocStats:
    calling_ae: str
    stored: int = 0
    duplicate: int = 0
    ignored: int = 0
    failed: int = 0
    #: Instances of each series this association carried (stored or duplicate).
    series: dict[str, int] = field(default_factory=dict)


class StorageSCP:
    """Our DICOM listener: Verification and Storage SCP in front of a :class:`Spool`.

    Parameters
    ----------
    spool
        Where acknowledged instances go.
    ae_title
        Our AE title (the called AE title peers use; not enforced).
    host
        Listening address (``"0.0.0.0"`` for all IPv4 interfaces).
    port
        Listening port; ``0`` asks the OS for a free one (read it back from :attr:`port`).
    allowed_calling_aets
        When given, only these calling AE titles may associate.
    ssl_context
        TLS server context (:func:`~ct_triage.dicom_bridge.tls.server_ssl_context`).
    max_pdu_size
        Maximum PDU length we receive (bytes; 0 = unlimited), PS3.8 D.1.
    max_associations
        Concurrent associations accepted.
    acse_timeout_s, dimse_timeout_s, network_timeout_s
        Timeouts of association negotiation, of DIMSE messages and of an idle connection.
    """

    def __init__(
        self,
        spool: Spool,
        *,
        ae_title: str = "CT_TRIAGE",
        host: str = "0.0.0.0",
        port: int = 11112,
        allowed_calling_aets: frozenset[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_pdu_size: int = 262_144,
        max_associations: int = 10,
        acse_timeout_s: float = 30.0,
        dimse_timeout_s: float = 60.0,
        network_timeout_s: float = 60.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise TriageError(f"DICOM port {port} is out of range")
        if not ae_title or len(ae_title) > 16:
            raise TriageError(f"AE title {ae_title!r} must have 1 to 16 characters")
        self.spool = spool
        self.ae_title = ae_title
        self.host = host
        self._requested_port = port
        self._ssl_context = ssl_context
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = max_pdu_size
        ae.maximum_associations = max_associations
        ae.acse_timeout = acse_timeout_s
        ae.dimse_timeout = dimse_timeout_s
        ae.network_timeout = network_timeout_s
        if allowed_calling_aets is not None:
            if not allowed_calling_aets:
                raise TriageError("allowed_calling_aets is empty: no peer could associate")
            ae.require_calling_aet = sorted(allowed_calling_aets)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self._ae = ae
        self._server: ThreadedAssociationServer | None = None
        self._stats: dict[int, _AssocStats] = {}
        self._stats_lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port actually listened on (after :meth:`start`), else the requested one."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        """``True`` between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def start(self) -> None:
        """Start listening in background threads (returns at once).

        Raises
        ------
        TriageError
            The address cannot be bound (port in use, permission).
        """
        if self._server is not None:
            return
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_DIMSE_RECV, self._on_dimse_recv),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        try:
            server = self._ae.start_server(
                (self.host, self._requested_port),
                block=False,
                ssl_context=self._ssl_context,
                evt_handlers=handlers,
            )
        except OSError as exc:
            raise TriageError(
                f"DICOM listener cannot bind {self.host}:{self._requested_port}: "
                f"{exc.strerror or exc}"
            ) from exc
        assert server is not None  # block=False always returns the server
        self._server = server
        logger.info(
            "Storage SCP %s listening on %s:%d%s",
            self.ae_title,
            self.host,
            self.port,
            " (TLS)" if self._ssl_context else "",
        )

    #: How long :meth:`stop` lets open associations finish (a sender mid-series completes
    #: it, instead of having its remaining C-STOREs refused by a closed spool).
    DRAIN_S: float = 20.0

    def stop(self) -> None:
        """Stop listening, let open associations finish for up to :attr:`DRAIN_S` seconds,
        then abort the rest (idempotent)."""
        if self._server is None:
            return
        server = self._server
        server.shutdown()  # no new associations from here on
        open_assocs = server.active_associations
        self._server = None
        deadline = time.monotonic() + self.DRAIN_S
        for assoc in open_assocs:
            assoc.join(max(0.0, deadline - time.monotonic()))
            if assoc.is_alive():
                logger.warning("association still open after %g s: aborted", self.DRAIN_S)
                assoc.abort()
        logger.info("Storage SCP %s stopped", self.ae_title)

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- event handlers (PS3.7 DIMSE services; PS3.8 association events) -------------------
    def _on_established(self, event: evt.Event) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        with self._stats_lock:
            self._stats[id(event.assoc)] = _AssocStats(calling)
        logger.info("association from %s (%s) accepted", calling, event.assoc.requestor.address)
        # pynetdicom's own DIMSE logging handlers run before ours on the same events and
        # raise on a command without an Affected SOP Instance UID, which stops the handler
        # loop before _on_dimse_recv. They only write DEBUG lines; this association drops them.
        for event_type in (evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT):
            for bound in list(event.assoc.get_handlers(event_type)):
                handler = bound[0] if isinstance(bound, tuple) else bound
                if callable(handler) and handler != self._on_dimse_recv:
                    event.assoc.unbind(event_type, handler)

    def _on_rejected(self, event: evt.Event) -> None:
        logger.warning(
            "association from %s (%s) rejected",
            str(event.assoc.requestor.ae_title).strip(),
            event.assoc.requestor.address,
        )

    def _on_closed(self, event: evt.Event) -> None:
        with self._stats_lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None:
            return
        released = event.event is evt.EVT_RELEASED
        how = "released" if released else "aborted"
        if stats.series:
            try:
                self.spool.association_ended(stats.series, released=released)
            except Exception:  # the instances are safe; completion falls back to the timers
                logger.exception("recording the end of the association failed")
        logger.info(
            "association from %s %s: %d stored, %d duplicate, %d ignored, %d failed",
            stats.calling_ae,
            how,
            stats.stored,
            stats.duplicate,
            stats.ignored,
            stats.failed,
        )

    def _on_c_echo(self, event: evt.Event) -> int:
        """Verification SCP (PS3.4 A.4)."""
        return STATUS_SUCCESS

    def _count(self, event: evt.Event, field: str) -> None:
        with self._stats_lock:
            stats = self._stats.get(id(event.assoc))
            if stats is not None:
                setattr(stats, field, getattr(stats, field) + 1)

    def _carried(self, event: evt.Event, series_uid: str) -> None:
        with self._stats_lock:
            stats = self._stats.get(id(event.assoc))
            if stats is not None:
                stats.series[series_uid] = stats.series.get(series_uid, 0) + 1

    def _on_dimse_recv(self, event: evt.Event) -> None:
        """Answer a C-STORE request pynetdicom would silently drop.

        pynetdicom ignores a request whose command lacks a required field (an empty or
        over-long Affected SOP Instance UID, say): no handler runs, no response is sent, and
        the sender waits for its DIMSE timeout, then aborts the association with the rest of
        its series unsent. Such a request gets a failure status (0xC000) here instead, so the
        sender moves on to its next instance. Runs in the association's reader thread, before
        pynetdicom dispatches the message.
        """
        message = event.message
        if not isinstance(message, C_STORE_RQ):  # only C-STORE requests: nothing else decoded
            return
        if getattr(message, "command_set", None) is None or message.context_id is None:
            return
        try:
            request = message.message_to_primitive()
        except Exception:  # pynetdicom aborts the association on an undecodable message
            return
        if not isinstance(request, C_STORE) or request.is_valid_request:
            return
        if request.MessageID is None:
            return  # no way to address a response
        logger.warning(
            "C-STORE from %s refused (0x%04X): the request's command is incomplete "
            "(Affected SOP Instance/Class UID missing or invalid)",
            str(event.assoc.requestor.ae_title).strip(),
            STATUS_CANNOT_UNDERSTAND,
        )
        self._count(event, "failed")
        response = C_STORE()
        response.MessageIDBeingRespondedTo = request.MessageID
        if request.AffectedSOPClassUID is not None:
            response.AffectedSOPClassUID = request.AffectedSOPClassUID
        response.Status = STATUS_CANNOT_UNDERSTAND
        response.ErrorComment = "C-STORE request incomplete: Affected SOP UID"  # type: ignore[assignment]
        event.assoc.dimse.send_msg(response, message.context_id)

    def _on_c_store(self, event: evt.Event) -> int | Dataset:
        """Storage SCP (PS3.4 B.2.2): validate, spool durably, then acknowledge."""
        calling = str(event.assoc.requestor.ae_title).strip()
        request = cast(C_STORE, event.request)
        affected_uid = str(request.AffectedSOPInstanceUID or "")
        status = STATUS_PROCESSING_FAILURE
        try:
            data = event.encoded_dataset()
            header = read_instance_header(data)
            if header.sop_class_uid != str(request.AffectedSOPClassUID):
                logger.warning(
                    "C-STORE %s from %s: data set SOP Class %s differs from the request's %s",
                    affected_uid,
                    calling,
                    header.sop_class_uid,
                    request.AffectedSOPClassUID,
                )
                status = STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS
            elif header.sop_instance_uid != affected_uid:
                logger.warning(
                    "C-STORE %s from %s: data set SOP Instance UID differs from the request's",
                    affected_uid,
                    calling,
                )
                status = STATUS_INSTANCE_MISMATCH
            elif header.sop_class_uid == CTImageStorage and (refusal := check_ct_image(data)):
                logger.warning(
                    "C-STORE %s from %s refused (0x%04X), not spooled: %s",
                    affected_uid,
                    calling,
                    refusal.status,
                    refusal.reason,
                )
                self._count(event, "failed")
                response = Dataset()
                response.Status = refusal.status
                response.ErrorComment = refusal.error_comment
                return response
            else:
                outcome = self.spool.store(data, calling_ae=calling, header=header)
                status = STATUS_SUCCESS
                if outcome.action is not StoreAction.IGNORED:
                    self._carried(event, outcome.series_uid)
                self._count(
                    event,
                    {
                        StoreAction.STORED: "stored",
                        StoreAction.REPLACED: "stored",
                        StoreAction.DUPLICATE: "duplicate",
                        StoreAction.IGNORED: "ignored",
                    }[outcome.action],
                )
                return status
        except InvalidInput as exc:
            logger.warning("C-STORE %s from %s not understood: %s", affected_uid, calling, exc)
            status = STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            logger.error(
                "C-STORE %s from %s refused, spool cannot write: %s",
                affected_uid,
                calling,
                exc.strerror or exc,
            )
            status = STATUS_OUT_OF_RESOURCES
        except Exception:
            logger.exception("C-STORE %s from %s failed unexpectedly", affected_uid, calling)
            status = STATUS_PROCESSING_FAILURE
        self._count(event, "failed")
        return status
