"""``ct-triage serve`` refuses to start, with one clear line, on every misconfiguration;
a PACS that is not up yet is not one (degraded start-up, unless strict), and
``ct-triage health`` reports either state."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from orthanc import OrthancServer, free_port, orthanc_available

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


def test_unreachable_pacs_with_strict_startup(tmp_path: Path) -> None:
    proc = _serve(
        tmp_path,
        CT_TRIAGE_PACS=f"ORTHANC@127.0.0.1:{free_port()}",
        CT_TRIAGE_STRICT_STARTUP="true",
    )
    assert proc.returncode == 1
    line = _last_line(proc)
    assert "PACS check failed" in line
    assert "refused" in line


@pytest.mark.skipif(
    os.getuid() == 0,
    reason="root writes anywhere; tests/docker checks this with the image's uid 10001",
)
def test_unwritable_data_dir_names_the_chown(tmp_path: Path) -> None:
    """A data folder this user cannot write (as a bind mount owned by someone else): one
    line with the owner, our uid and the chown, no traceback."""
    data = tmp_path / "mounted"
    data.mkdir()
    data.chmod(0o555)
    proc = _serve(tmp_path, CT_TRIAGE_DATA_DIR=str(data))
    assert proc.returncode == 1, proc.stderr
    line = _last_line(proc)
    assert "cannot write to the data folder" in line
    assert f"chown -R {os.getuid()}:{os.getgid()} " in line
    assert "Traceback" not in proc.stderr + proc.stdout


def _health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ct_triage.server.cli", "health", "--timeout", "2"],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(orthanc_available() is not None, reason=str(orthanc_available()))
def test_pacs_not_up_yet_starts_degraded_then_recovers(tmp_path: Path) -> None:
    """The PACS comes up after us: serve runs degraded (health says why), retries, becomes
    healthy without a restart, and drains on SIGTERM (exit 0, JSON log on stdout)."""
    pacs_port, http_port = free_port(), free_port()
    env = {
        "CT_TRIAGE_DATA_DIR": str(tmp_path / "data"),
        "CT_TRIAGE_HTTP_HOST": "127.0.0.1",
        "CT_TRIAGE_HTTP_PORT": str(http_port),
        "CT_TRIAGE_DICOM_HOST": "127.0.0.1",
        "CT_TRIAGE_DICOM_PORT": str(free_port()),
        "CT_TRIAGE_PACS": f"ORTHANC@127.0.0.1:{pacs_port}",
        "CT_TRIAGE_STARTUP_RETRY_S": "0.5",
        "CT_TRIAGE_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ct_triage.server.cli", "serve"],
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pacs = OrthancServer(root=tmp_path / "pacs", dicom_port=pacs_port)
    try:
        deadline = time.monotonic() + 90
        health = _health(env)
        while "does not answer" in health.stdout and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
            health = _health(env)
        assert health.returncode == 1, health.stdout
        assert health.stdout.startswith("degraded: pacs: PACS not answering"), health.stdout
        assert "127.0.0.1" not in health.stdout.split("(http")[0]  # no PACS address shown
        pacs.start()
        while _health(env).returncode != 0:
            assert time.monotonic() < deadline, _health(env).stdout
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        assert _health(env).stdout.startswith("ok: http://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        pacs.stop()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    assert any(m.startswith("degraded: PACS not answering") for m in messages), messages
    assert any("no longer degraded" in m for m in messages), messages
    assert messages[-1].startswith("stopped:"), messages


def test_health_without_a_server(tmp_path: Path) -> None:
    port = free_port()
    proc = _health({"CT_TRIAGE_HTTP_PORT": str(port), "CT_TRIAGE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 1
    assert proc.stdout.strip().startswith(f"unhealthy: http://127.0.0.1:{port}/healthz")
