"""``ct-triage``: the command line, one module per verb.

:mod:`~ct_triage.server.cli.main` parses the arguments and reports errors; ``analyze``,
``demo``, ``phantom``, ``evaluate``, ``serve``, ``health``, ``pull``, ``batch``, ``worker``
and ``token`` each hold one verb (``add_parser`` and ``run``). ``python -m
ct_triage.server.cli`` is the same as ``ct-triage``.
"""

from __future__ import annotations

from ct_triage.server.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
