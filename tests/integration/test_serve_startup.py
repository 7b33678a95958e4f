"""``ct-triage serve`` refuses to start, with one clear line, on every misconfiguration."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from orthanc import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "CT_TRIAGE_DATA_DIR": str(tmp_path / "data"),
        "CT_TRIAGE_HTTP_HOST": "127.0.0.1",
        "CT_TRIAGE_HTTP_PORT": str(free_port()),
        "CT_TRIAGE_DICOM_HOST": "127.0.0.1",
        "CT_TRIAGE_DICOM_PORT": str(free_port()),
    }
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ct_triage.server.cli", "serve"],
        env=dict(os.environ, **base),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ct-triage:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_http_port_in_use(tmp_path: Path, busy_port: int) -> None:
    proc = _serve(tmp_path, CT_TRIAGE_HTTP_PORT=str(busy_port))
    assert proc.returncode == 1
    assert "CT_TRIAGE_HTTP_PORT" in _last_line(proc)


def test_dicom_port_in_use(tmp_path: Path, busy_port: int) -> None:
    proc = _serve(tmp_path, CT_TRIAGE_DICOM_PORT=str(busy_port))
    assert proc.returncode == 1
    line = _last_line(proc)
    assert "DICOM" in line
    assert "in use" in line


def test_unknown_execution_provider(tmp_path: Path) -> None:
    proc = _serve(tmp_path, CT_TRIAGE_PROVIDER="rocm")
    assert proc.returncode == 1
    line = _last_line(proc)
    assert "configuration error" in line
    assert "CT_TRIAGE_PROVIDER" in line


def test_missing_model(tmp_path: Path) -> None:
    proc = _serve(tmp_path, CT_TRIAGE_MODEL_DIR=str(tmp_path / "no-model"))
    assert proc.returncode == 1
    assert "manifest.json" in _last_line(proc)


def test_unreachable_pacs(tmp_path: Path) -> None:
    proc = _serve(tmp_path, CT_TRIAGE_PACS=f"ORTHANC@127.0.0.1:{free_port()}")
    assert proc.returncode == 1
    line = _last_line(proc)
    assert "PACS check failed" in line
    assert "refused" in line
