"""Shared fixtures. Real data comes from ``../shared/data`` (never copied into the repo)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from orthanc import OrthancServer, orthanc_available

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("CT_TRIAGE_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$CT_TRIAGE_SHARED_DATA``); skips when it is absent."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set CT_TRIAGE_SHARED_DATA)")
    return path


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A running Orthanc on free loopback ports (skips when Orthanc is not installed)."""
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    server = OrthancServer(root=tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop()
