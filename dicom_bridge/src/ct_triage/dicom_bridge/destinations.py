"""Where results go: C-STORE and STOW-RS destinations, each reporting every instance.

A :class:`Destination` sends files and reports each instance as stored, rejected
(permanent: a C-STORE failure status, PS3.4 B.2.3, or a STOW-RS FailedSOPSequence item,
PS3.18 10.5.3) or not sent (transient: refused connection, timeout, abort, HTTP 5xx). It
never raises for a network or PACS problem; the durable, retried queue in front of it is
:class:`~ct_triage.dicom_bridge.deliver.Outbox`.

The timeouts of each step (TCP connect, association, each C-STORE response or STOW-RS
request) are the destination's (:class:`~ct_triage.dicom_bridge.dimse.DimseScu`,
:class:`~ct_triage.dicom_bridge.dicomweb.DicomWebNode`), so an unresponsive one only delays
itself.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association

from ct_triage.dicom_bridge.dicomweb import DicomWebClient, DicomWebNode
from ct_triage.dicom_bridge.dimse import DimseScu, PacsNode
from ct_triage.dicom_bridge.pacs_errors import PacsError
from ct_triage.dicom_bridge.part10 import read_file_meta

__all__ = [
    "CStoreDestination",
    "Destination",
    "InstanceOutcome",
    "InstanceState",
    "SendResult",
    "StowDestination",
    "not_sent_result",
]

LOGGER = logging.getLogger(__name__)

# C-STORE statuses, PS3.4 B.2.3 and PS3.7 C.
STATUS_SUCCESS: Final = 0x0000
STATUS_WARNING_COERCION: Final = 0xB000
STATUS_WARNING_ELEMENTS_DISCARDED: Final = 0xB006
STATUS_WARNING_DATASET_MISMATCH: Final = 0xB007
_WARNING_STATUSES: Final = frozenset(
    {STATUS_WARNING_COERCION, STATUS_WARNING_ELEMENTS_DISCARDED, STATUS_WARNING_DATASET_MISMATCH}
)


class InstanceState(enum.Enum):
    """What happened to one instance in one send."""

    STORED = "stored"
    REJECTED = "rejected"  # permanent: the destination refused this instance
    NOT_SENT = "not_sent"  # transient: network / availability problem


@dataclass(frozen=True)
class InstanceOutcome:
    """Outcome for one file: its SOP Instance UID, state, DIMSE/STOW status and reason."""

    path: Path
    sop_instance_uid: str
    state: InstanceState
    status: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class SendResult:
    """Per-instance outcomes of one :meth:`Destination.send`."""

    outcomes: tuple[InstanceOutcome, ...]

    @property
    def ok(self) -> bool:
        """Every instance stored."""
        return all(o.state is InstanceState.STORED for o in self.outcomes)

    @property
    def rejected(self) -> tuple[InstanceOutcome, ...]:
        """Instances refused by the destination (permanent)."""
        return tuple(o for o in self.outcomes if o.state is InstanceState.REJECTED)

    @property
    def not_sent(self) -> tuple[InstanceOutcome, ...]:
        """Instances not delivered for a transient reason."""
        return tuple(o for o in self.outcomes if o.state is InstanceState.NOT_SENT)


class Destination(Protocol):
    """Somewhere results go. ``send`` never raises for network or PACS problems."""

    def send(self, files: Sequence[Path]) -> SendResult:
        """Send ``files``; report every one of them."""
        ...


def not_sent_result(files: Sequence[Path], uids: Sequence[str], reason: str) -> SendResult:
    """A :class:`SendResult` with every file not sent (transient), for ``reason``."""
    return SendResult(
        tuple(
            InstanceOutcome(p, u, InstanceState.NOT_SENT, reason=reason)
            for p, u in zip(files, uids, strict=True)
        )
    )


class CStoreDestination:
    """C-STORE SCU to one storage SCP (PS3.4 Annex B).

    One association per :meth:`send`, proposing each SOP class present with the file's
    transfer syntax and the uncompressed little-endian ones.
    """

    def __init__(self, node: PacsNode, *, client: DimseScu | None = None) -> None:
        self.node = node
        self.client = client or DimseScu()
        # pynetdicom's switch (a process-wide setting, >= 2.0) that makes send_c_store(path)
        # stream the file's encoded dataset instead of decoding and re-encoding it. Set here,
        # when a C-STORE destination exists, not when the module is imported; only this class
        # passes paths, and only with an accepted context in the file's own transfer syntax.
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True

    def __repr__(self) -> str:
        return f"CStoreDestination({self.node})"

    def send(self, files: Sequence[Path]) -> SendResult:
        """C-STORE every file; failure statuses are permanent, no answer is transient.

        Only the File Meta Information is read up front. A file whose own transfer syntax the
        peer accepted for its SOP class is streamed as it is on disk (pynetdicom's chunked
        send: no decode, no re-encode; a 300-slice SEG takes ~0.1 s instead of ~2 s); any
        other file is decoded and left to pynetdicom to re-encode.
        """
        metas = [read_file_meta(p) for p in files]
        uids = [m.sop_instance_uid for m in metas]
        contexts: dict[str, list[str]] = {}
        for meta in metas:
            syntaxes = contexts.setdefault(meta.sop_class_uid, [])
            for ts in (meta.transfer_syntax_uid, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                if str(ts) not in syntaxes:
                    syntaxes.append(str(ts))
        outcomes: list[InstanceOutcome] = []
        try:
            with self.client.associate(
                self.node, list(contexts.items()), purpose="C-STORE"
            ) as assoc:
                accepted_ts: dict[str, set[str]] = {}
                for cx in assoc.accepted_contexts:
                    accepted_ts.setdefault(str(cx.abstract_syntax), set()).add(
                        str(cx.transfer_syntax[0])
                    )
                for path, uid, meta in zip(files, uids, metas, strict=True):
                    if not assoc.is_established:
                        outcomes.append(
                            InstanceOutcome(
                                path,
                                uid,
                                InstanceState.NOT_SENT,
                                reason=f"association to {self.node} was lost",
                            )
                        )
                        continue
                    taken = accepted_ts.get(meta.sop_class_uid)
                    if not taken:
                        outcomes.append(
                            InstanceOutcome(
                                path,
                                uid,
                                InstanceState.REJECTED,
                                reason=f"{self.node} does not accept SOP class "
                                f"{meta.sop_class_uid}",
                            )
                        )
                        continue
                    source: Path | Dataset = (
                        path if meta.transfer_syntax_uid in taken else pydicom.dcmread(path)
                    )
                    outcomes.append(self._store_one(assoc, path, uid, source))
        except PacsError as exc:
            LOGGER.warning("C-STORE to %s: %s", self.node, exc)
            done = {o.sop_instance_uid for o in outcomes}
            rest = [(p, u) for p, u in zip(files, uids, strict=True) if u not in done]
            state = InstanceState.NOT_SENT if exc.transient else InstanceState.REJECTED
            outcomes += [InstanceOutcome(p, u, state, reason=str(exc)) for p, u in rest]
        return SendResult(tuple(outcomes))

    def _store_one(
        self, assoc: Association, path: Path, uid: str, source: Path | Dataset
    ) -> InstanceOutcome:
        status_ds = assoc.send_c_store(source)
        status = status_ds.get("Status")
        if status is None:
            return InstanceOutcome(
                path,
                uid,
                InstanceState.NOT_SENT,
                reason=f"no C-STORE response from {self.node} (timeout or abort)",
            )
        code = int(status)
        if code == STATUS_SUCCESS or code in _WARNING_STATUSES:
            return InstanceOutcome(path, uid, InstanceState.STORED, status=code)
        comment = str(status_ds.get("ErrorComment", "") or "")
        return InstanceOutcome(
            path,
            uid,
            InstanceState.REJECTED,
            status=code,
            reason=f"{self.node} rejected the instance with C-STORE status 0x{code:04X}"
            + (f" ({comment})" if comment else ""),
        )


class StowDestination:
    """STOW-RS to one DICOMweb service (PS3.18 10.5)."""

    def __init__(self, node: DicomWebNode) -> None:
        self.node = node

    def __repr__(self) -> str:
        return f"StowDestination({self.node.url})"

    def send(self, files: Sequence[Path]) -> SendResult:
        """STOW-RS every file as stored on disk; FailedSOPSequence items are permanent,
        HTTP 5xx transient."""
        uids = [read_file_meta(p).sop_instance_uid for p in files]
        try:
            with DicomWebClient(self.node) as client:
                result = client.store(list(files))
        except PacsError as exc:
            LOGGER.warning("STOW-RS to %s: %s", self.node.url, exc)
            if exc.transient:
                return not_sent_result(files, uids, str(exc))
            return SendResult(
                tuple(
                    InstanceOutcome(p, u, InstanceState.REJECTED, reason=str(exc))
                    for p, u in zip(files, uids, strict=True)
                )
            )
        outcomes = []
        for path, o in zip(files, result.outcomes, strict=True):
            if o.stored:
                outcomes.append(InstanceOutcome(path, o.sop_instance_uid, InstanceState.STORED))
            else:
                outcomes.append(
                    InstanceOutcome(
                        path,
                        o.sop_instance_uid,
                        InstanceState.REJECTED,
                        status=o.failure_reason,
                        reason=f"{self.node.url} rejected the instance (HTTP "
                        f"{result.http_status}; {o.detail or 'no reason given'})",
                    )
                )
        return SendResult(tuple(outcomes))
