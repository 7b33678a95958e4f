"""What can be checked of the deployment without a Docker engine (none runs here).

Checked: the compose file validates (Debian ``docker-compose`` when installed), every
``CT_TRIAGE_*`` variable it sets is a real setting and the set builds valid settings, the
Dockerfiles run as a non-root user with a health check and the ``ct-triage`` entrypoint, copy
only folders that exist, and the entrypoint command and health-check program run here.
Not checked here: building and running the images (needs a Docker engine).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ct_triage.server.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_validates() -> None:
    for profile in ([], ["--profile", "postgres"], ["--profile", "triton"]):
        proc = subprocess.run(
            ["docker-compose", "-f", str(DEPLOY / "compose.yaml"), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


def test_compose_triage_environment_is_valid_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = _compose()["services"]["triage"]["environment"]
    fields = {f"CT_TRIAGE_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in env if k.startswith("CT_TRIAGE_") and k not in fields)
    assert not unknown, f"compose sets unknown settings: {unknown}"
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("CT_TRIAGE_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.destinations == ["dimse:ORTHANC@orthanc:4242"]
    assert settings.pacs == "ORTHANC@orthanc:4242"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_runs_non_root_with_healthcheck(name: str) -> None:
    text = (DEPLOY / name).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users
    assert users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["ct-triage"\]', text, flags=re.M)
    for src in re.findall(r"^COPY\s+(\S+)\s", text, flags=re.M):
        assert (REPO / src).exists(), src
    # The health check is a Python one-liner: it must at least compile.
    m = re.search(r'CMD \["python", "-c", "(.*)"\]\s*$', text, flags=re.M)
    assert m is not None
    compile(json.loads(f'"{m.group(1)}"'), "<healthcheck>", "exec")


def test_entrypoint_command_runs() -> None:
    """The image runs ``ct-triage serve``; here: the same entrypoint, asked for its help."""
    for args in (["--help"], ["serve", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "ct_triage.server.cli", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "ct-triage" in proc.stdout
