"""The house rules of the code base that a test can check (issue 20)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_packages_changes_no_third_party_setting() -> None:
    """Importing our modules leaves pynetdicom's process-wide settings as they were."""
    code = (
        "from pynetdicom import _config as c\n"
        "before = {k: getattr(c, k) for k in dir(c) if k.isupper()}\n"
        "import ct_triage.dicom_bridge.deliver, ct_triage.dicom_bridge.scp\n"
        "import ct_triage.server.cli\n"
        "after = {k: getattr(c, k) for k in dir(c) if k.isupper()}\n"
        "changed = sorted(k for k in before if before[k] is not after[k])\n"
        "print(','.join(changed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "", f"changed at import: {done.stdout.strip()}"
