"""What the routes share: the resources the application's lifespan owns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

from ct_triage.models.identity import ModelIdentity
from ct_triage.server.api.audit import AuditLog
from ct_triage.server.api.auth import TokenStore
from ct_triage.server.api.config import ApiConfig
from ct_triage.server.api.metrics import ApiMetrics
from ct_triage.server.jobs.model import JobStore
from ct_triage.server.settings import Settings
from ct_triage.server.startup import ServiceHealth

if TYPE_CHECKING:
    from ct_triage.dicom_bridge.qr_results import StudyMatch

#: ``(date_from, date_to, modality) -> studies``: the PACS query behind batch queries.
StudyFinder = Callable[[date, date, str], "Sequence[StudyMatch]"]
#: Raises (any exception, with a readable message) when the PACS does not answer.
PacsCheck = Callable[[], None]


@dataclass(frozen=True, slots=True)
class ApiContext:
    """Everything a request handler may use; built once by the lifespan.

    Parameters
    ----------
    settings
        The process settings.
    config
        The API's view of them.
    store
        The job store.
    tokens
        The API tokens.
    audit
        The audit log.
    metrics
        The Prometheus registry and its collectors.
    model
        The model loaded in this process (``None``: not loaded here; readiness fails).
    model_version
        The model version used in job keys (from the model, else from its manifest).
    study_finder
        PACS query for batches (``None``: no PACS configured).
    pacs_check
        PACS reachability check for readiness (``None``: no PACS configured).
    health
        Why the service is degraded, if it is (``/healthz``).
    """

    settings: Settings
    config: ApiConfig
    store: JobStore
    tokens: TokenStore
    audit: AuditLog
    metrics: ApiMetrics
    model: ModelIdentity | None
    model_version: str
    study_finder: StudyFinder | None
    pacs_check: PacsCheck | None
    health: ServiceHealth = field(default_factory=ServiceHealth)
