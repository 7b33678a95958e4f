"""What the people who run the server meet: token data folders, the start-up PACS check.

* ``ct-triage token create`` run from another folder writes into that folder's
  ``./ct-triage-data``: it says where it wrote, warns when no server used that folder, and the
  server's 401 says the token is unknown to it (not just "invalid").
* The start-up PACS check (QIDO-RS) sends one ``Accept`` type, so a real Orthanc logs no
  "Unsupported return MIME type" error for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from integration.test_api import API, Live, model, start_server  # noqa: F401
from orthanc import OrthancServer, orthanc_available

from ct_triage.dicom_bridge.dicomweb import DicomWebClient
from ct_triage.models.lesions import LesionSegmenter
from ct_triage.server.destinations import dicomweb_node
from ct_triage.server.jobs.factory import create_job_store
from ct_triage.server.jobs.model import JobStore
from ct_triage.server.settings import Settings

pytestmark = pytest.mark.integration


def _cli(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CT_TRIAGE_")}
    return subprocess.run(
        [sys.executable, "-m", "ct_triage.server.cli", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def live(tmp_path: Path, model: LesionSegmenter) -> Iterator[Live]:  # noqa: F811
    store: JobStore = create_job_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    server, live = start_server(tmp_path, store, model.identity)
    try:
        yield live
    finally:
        server.stop()
        store.close()


def test_token_from_another_folder_says_where_and_the_401_says_why(
    live: Live, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    made = _cli(["token", "create", "--role", "viewer", "--name", "lost"], cwd=elsewhere, env={})
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    wrong_dir = (elsewhere / "ct-triage-data").resolve()
    assert f"Stored in {wrong_dir / 'api-tokens.db'}" in made.stderr
    assert "no server has used" in made.stderr
    with live.client(token=token) as lost:
        r = lost.get(f"{API}/worklist")
    assert r.status_code == 401
    assert "unknown to this server" in r.json()["detail"]
    assert "CT_TRIAGE_DATA_DIR" in r.json()["detail"]
    assert token.split("_", 2)[2] not in r.text  # the secret is never echoed
    # Made with the server's data folder, it works (and no warning: the server uses it).
    made = _cli(
        ["token", "create", "--role", "viewer", "--name", "ward 3"],
        cwd=elsewhere,
        env={"CT_TRIAGE_DATA_DIR": str(live.data_dir)},
    )
    assert made.returncode == 0, made.stderr
    assert "no server has used" not in made.stderr
    ward_token = made.stdout.strip().splitlines()[-1]
    with live.client(token=ward_token) as ward:
        assert ward.get(f"{API}/worklist").status_code == 200
    # A revoked token is told apart from an unknown one.
    with live.client("admin") as admin:
        token_id = ward_token.split("_")[1]
        assert admin.delete(f"{API}/tokens/{token_id}").status_code == 200
    with live.client(token=ward_token) as ward:
        r = ward.get(f"{API}/worklist")
    assert r.status_code == 401
    assert "revoked" in r.json()["detail"]
    with httpx.Client(base_url=live.url, headers={"Authorization": "Bearer nope"}) as anon:
        assert "not a chest-ct-triage API token" in anon.get(f"{API}/jobs").json()["detail"]


def test_startup_qido_check_leaves_no_error_in_orthancs_log(tmp_path: Path) -> None:
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    orthanc = OrthancServer(root=tmp_path / "orthanc")
    orthanc.start()
    try:
        settings = Settings(
            data_dir=tmp_path / "data",
            dicom_port=None,
            pacs_dicomweb_url=orthanc.dicomweb_url,
            pacs_dicomweb_user=orthanc.username,
            pacs_dicomweb_password=orthanc.password,
        )
        node = dicomweb_node(settings)
        assert node is not None
        with DicomWebClient(node) as client:  # what Bridge.check_pacs and /readyz do
            assert client.search_studies(limit=1) == []
            client.search_series("1.2.826.0.1.3680043.8.498.1")
        log = orthanc.root / "orthanc.log"
        assert "Unsupported return MIME type" not in log.read_text(errors="replace")
        # Control: the list dicomweb-client sends by itself is what Orthanc logs an error for.
        r = httpx.get(
            f"{orthanc.dicomweb_url}/studies",
            params={"limit": "1"},
            headers={"Accept": "application/dicom+json, application/json"},
            auth=orthanc.auth,
        )
        assert r.status_code == 200
        assert "Unsupported return MIME type" in log.read_text(errors="replace")
    finally:
        orthanc.stop()
