"""``python -m ct_triage.server.cli``: the same as ``ct-triage``."""

from __future__ import annotations

import sys

from ct_triage.server.cli.main import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
