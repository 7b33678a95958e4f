"""The DICOM peers that the settings name, built once: the PACS's DICOMweb service, the
delivery destinations, the retractors of superseded results, and the TLS contexts.

The bridge (:class:`ct_triage.server.bridge.Bridge`) and the HTTP API use these; the
protocol code lives in :mod:`ct_triage.dicom_bridge` (``deliver``, ``dicomweb``, ``query``,
``retract``, ``tls``).
"""

from __future__ import annotations

import ssl
from dataclasses import replace

from ct_triage.dicom_bridge.destinations import CStoreDestination, Destination, StowDestination
from ct_triage.dicom_bridge.dicomweb import BasicAuth, BearerToken, DicomWebNode
from ct_triage.dicom_bridge.dimse import PacsNode
from ct_triage.dicom_bridge.query import DimseClient
from ct_triage.dicom_bridge.retract import (
    DicomWebRetractor,
    OrthancRetractor,
    Retractor,
    parse_retract_target,
)
from ct_triage.dicom_bridge.tls import client_ssl_context, server_ssl_context
from ct_triage.server.settings import Settings, parse_dimse_node

__all__ = [
    "build_destinations",
    "build_retractors",
    "dicomweb_node",
    "tls_client",
    "tls_server",
]


def tls_server(settings: Settings) -> ssl.SSLContext | None:
    """The DICOM listener's TLS context (``None``: plain DICOM); a CA asks for client certs."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_ssl_context(
        settings.tls_cert,
        settings.tls_key,
        ca=settings.tls_ca,
        require_client_cert=settings.tls_ca is not None,
    )


def tls_client(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of our DICOM associations (``None`` without ``tls_ca``)."""
    if settings.tls_ca is None:
        return None
    return client_ssl_context(settings.tls_ca, settings.tls_cert, settings.tls_key)


def dicomweb_node(settings: Settings, url: str | None = None) -> DicomWebNode | None:
    """The PACS's DICOMweb service from the settings (``None`` when not configured)."""
    url = url or settings.pacs_dicomweb_url
    if not url:
        return None
    auth: BasicAuth | BearerToken | None = None
    if settings.pacs_dicomweb_token:
        auth = BearerToken(settings.pacs_dicomweb_token)
    elif settings.pacs_dicomweb_user:
        auth = BasicAuth(settings.pacs_dicomweb_user, settings.pacs_dicomweb_password or "")
    return DicomWebNode(url=url, auth=auth)


def build_destinations(settings: Settings) -> dict[str, Destination]:
    """Delivery destinations named by ``settings.destinations``, with the delivery timeouts."""
    out: dict[str, Destination] = {}
    for spec in settings.destinations:
        kind, _, target = spec.partition(":")
        if kind == "dimse":
            aet, host, port = parse_dimse_node(target)
            node = PacsNode(aet, host, port, tls=tls_client(settings))
            client = DimseClient(
                settings.ae_title,
                connect_timeout_s=settings.delivery_connect_timeout_s,
                acse_timeout_s=settings.delivery_association_timeout_s,
                dimse_timeout_s=settings.delivery_store_timeout_s,
                network_timeout_s=max(
                    settings.delivery_store_timeout_s, settings.delivery_association_timeout_s
                ),
            )
            out[spec] = CStoreDestination(node, client=client)
        else:
            web = dicomweb_node(settings, target)
            assert web is not None
            out[spec] = StowDestination(replace(web, timeout_s=settings.delivery_store_timeout_s))
    return out


def build_retractors(settings: Settings) -> dict[str, Retractor]:
    """Where superseded results are deleted (``settings.retract_superseded``)."""
    out: dict[str, Retractor] = {}
    for spec in settings.retract_superseded:
        kind, url = parse_retract_target(spec)
        node = dicomweb_node(settings, url)
        assert node is not None
        node = replace(node, timeout_s=settings.delivery_connect_timeout_s)
        out[spec] = OrthancRetractor(node) if kind == "orthanc" else DicomWebRetractor(node)
    return out
