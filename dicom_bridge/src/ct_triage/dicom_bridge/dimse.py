"""The DIMSE association layer: who we call (:class:`PacsNode`) and how (:class:`DimseScu`).

:class:`DimseScu` opens associations for one calling AE title with its timeouts (PS3.8
7.1), proposing the presentation contexts and SCP/SCU roles (PS3.7 D.3.3.4) a service
needs, and answers C-ECHO (PS3.4 Annex A). The services on top of it are
:mod:`ct_triage.dicom_bridge.query` (C-FIND), :mod:`ct_triage.dicom_bridge.retrieve`
(C-MOVE, C-GET) and :class:`~ct_triage.dicom_bridge.destinations.CStoreDestination`
(C-STORE).

Every failure to associate surfaces as a :class:`~ct_triage.dicom_bridge.pacs_errors.PacsError`
that names the node (AE title, host, port) and says what happened: the TCP connection could
not be opened (:class:`~ct_triage.dicom_bridge.pacs_errors.PacsUnreachable`), or the
association was rejected, with the reason from the A-ASSOCIATE-RJ (PS3.8 9.3.4;
:class:`~ct_triage.dicom_bridge.pacs_errors.AssociationRejected`), or the peer aborted or
timed out.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association

from ct_triage.dicom_bridge.pacs_errors import AssociationRejected, PacsError, PacsUnreachable
from ct_triage.dicom_bridge.qr_results import STATUS_SUCCESS, format_status, status_of

__all__ = [
    "DEFAULT_CALLING_AET",
    "DimseScu",
    "PacsNode",
    "keep_responses_for_waiting_sender",
]

LOGGER = logging.getLogger(__name__)

DEFAULT_CALLING_AET: Final = "CT_TRIAGE"


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


class DimseScu:
    """Our side of DIMSE for one calling AE title, with its timeouts: associations, C-ECHO.

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
            status = status_of(assoc.send_c_echo())
        if status != STATUS_SUCCESS:
            raise PacsError(f"C-ECHO to {node} answered status {format_status(status)}")
