"""The PACS as the API sees it: a study query for batches and a reachability check.

Both are built from the settings with the bridge's clients (C-FIND / C-ECHO over DIMSE, or
QIDO-RS when only DICOMweb is configured); ``None`` when no PACS is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from ct_triage.dicom_bridge.dicomweb import DicomWebClient
from ct_triage.dicom_bridge.dimse import PacsNode
from ct_triage.dicom_bridge.qr_results import StudyMatch
from ct_triage.dicom_bridge.query import DimseClient
from ct_triage.dicom_bridge.tls import client_ssl_context
from ct_triage.server.api.context import PacsCheck, StudyFinder
from ct_triage.server.destinations import dicomweb_node
from ct_triage.server.settings import Settings, parse_dimse_node


def _dimse_node(settings: Settings) -> PacsNode | None:
    if not settings.pacs:
        return None
    tls = (
        client_ssl_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
        if settings.tls_ca is not None
        else None
    )
    return PacsNode(*parse_dimse_node(settings.pacs), tls=tls)


def pacs_functions(settings: Settings) -> tuple[StudyFinder | None, PacsCheck | None]:
    """The study finder and the reachability check of the configured PACS."""
    node = _dimse_node(settings)
    web = dicomweb_node(settings)
    if node is not None:
        client = DimseClient(settings.ae_title)

        def find_dimse(date_from: date, date_to: date, modality: str) -> Sequence[StudyMatch]:
            return client.find_studies(node, modality=modality, date_range=(date_from, date_to))

        def echo() -> None:
            client.echo(node)

        return find_dimse, echo
    if web is not None:

        def find_web(date_from: date, date_to: date, modality: str) -> Sequence[StudyMatch]:
            with DicomWebClient(web) as c:
                return c.search_studies(modality=modality, date_range=(date_from, date_to))

        def qido() -> None:
            with DicomWebClient(web) as c:
                c.search_studies(limit=1)

        return find_web, qido
    return None, None
