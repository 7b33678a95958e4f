"""The HTTP API (``/api/v1``), its access control, metrics and the worklist page.

Build the application with :func:`create_app`; serve it with :class:`HttpServer` (a uvicorn
server in a thread, HTTPS when a certificate is configured).
"""

from ct_triage.server.api.app import create_app
from ct_triage.server.api.serve import HttpServer, uvicorn_config

__all__ = ["HttpServer", "create_app", "uvicorn_config"]
