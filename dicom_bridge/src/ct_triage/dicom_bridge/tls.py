"""TLS contexts for DICOM associations (PS3.15 Annex B secure transport profiles).

DICOM over TLS follows PS3.15 B.9 "BCP 195 TLS Secure Transport Connection Profile" (and
its successors): TLS 1.2 or later, server authenticated by certificate, client optionally
authenticated by certificate (mutual TLS). The contexts built here plug into pynetdicom:

* acceptor: ``ae.start_server(address, ssl_context=server_ssl_context(...))``;
* requestor: ``ae.associate(host, port, tls_args=(client_ssl_context(...), hostname))``.

Every missing or unreadable file raises :class:`~ct_triage.models.errors.TriageError`
naming the file, so a misconfiguration is reported at start-up, not on the first study.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from ct_triage.models.errors import TriageError

__all__ = ["client_ssl_context", "server_ssl_context"]

logger = logging.getLogger(__name__)


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise TriageError(f"TLS {what} file {path} does not exist")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise TriageError(f"TLS {what} file {path} is not readable: {exc.strerror}") from exc


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    _check_file(cert, "certificate")
    _check_file(key, "private key")
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except ssl.SSLError as exc:
        raise TriageError(
            f"TLS certificate {cert} and key {key} cannot be loaded (not PEM, encrypted, "
            f"or the key does not match the certificate): {exc.reason or exc}"
        ) from exc


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    _check_file(ca, "CA certificate")
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TriageError(f"TLS CA certificate {ca} cannot be loaded: {exc.reason or exc}") from exc


def server_ssl_context(
    cert: Path, key: Path, *, ca: Path | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """TLS context for our Storage SCP (association acceptor), PS3.15 B.9.

    Parameters
    ----------
    cert, key
        PEM server certificate (chain) and its private key.
    ca
        PEM CA bundle used to verify client certificates.
    require_client_cert
        Mutual TLS: refuse peers without a certificate signed by ``ca``.

    Returns
    -------
    ssl.SSLContext
        TLS 1.2 or later.

    Raises
    ------
    TriageError
        A file is missing or unreadable, or ``require_client_cert`` without ``ca``.
    """
    if require_client_cert and ca is None:
        raise TriageError("TLS client certificates are required but no CA file is configured")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cert, key)
    if ca is not None:
        _load_ca(ctx, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    logger.info(
        "DICOM TLS server context: certificate %s, client certificates %s",
        cert.name,
        "required" if require_client_cert else ("verified if sent" if ca else "not requested"),
    )
    return ctx


def client_ssl_context(
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """TLS context for our associations as requestor (C-FIND/C-MOVE/C-STORE SCU), PS3.15 B.9.

    Parameters
    ----------
    ca
        PEM CA bundle that signed the peer's certificate (always verified).
    cert, key
        Our client certificate and key, for peers that require mutual TLS (both or none).
    check_hostname
        Check the peer certificate's subjectAltName against the host name passed in
        pynetdicom's ``tls_args=(context, hostname)``.

    Returns
    -------
    ssl.SSLContext
        TLS 1.2 or later, peer certificate required.

    Raises
    ------
    TriageError
        A file is missing or unreadable, or only one of ``cert`` / ``key`` is given.
    """
    if (cert is None) != (key is None):
        raise TriageError("TLS client certificate and key must be given together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, ca)
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key)
    return ctx
