"""What can be checked of the deployment files without a Docker engine (fast).

Checked: the compose files validate (Debian ``docker-compose`` when installed), every
``CT_TRIAGE_*`` variable compose sets is a real setting and the set builds valid settings,
every image can be replaced by a variable and restarts unless stopped, the Dockerfiles take
``BASE_IMAGE``, install from the pinned constraints, run as a non-root user with the
``ct-triage health`` check and the ``ct-triage`` entrypoint, copy only what exists and what
``.dockerignore`` lets through; the pins cover every runtime requirement.
Building and running the images and the stack: ``tests/docker/``.
"""

from __future__ import annotations

import os
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


def _compose(name: str = "compose.yaml") -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return data


def test_hostnet_compose_is_the_same_stack_on_host_networking() -> None:
    """compose.hostnet.yaml (what tests/docker runs) stays in step with compose.yaml."""
    bridge, host = _compose()["services"], _compose("compose.hostnet.yaml")["services"]
    for name in ("orthanc", "triage"):
        assert host[name]["network_mode"] == "host"
        assert host[name]["pull_policy"] == "never"
        assert "ports" not in host[name]
        assert host[name]["image"] == bridge[name]["image"]
        assert host[name]["volumes"] == bridge[name]["volumes"]
        assert host[name]["restart"] == bridge[name]["restart"]
        extra = set(host[name]["environment"]) - set(bridge[name]["environment"])
        assert extra <= {"CT_TRIAGE_HTTP_HOST", "CT_TRIAGE_DICOM_HOST"}, extra
        assert set(bridge[name]["environment"]) <= set(host[name]["environment"])
    assert host["triage"]["healthcheck"] == bridge["triage"]["healthcheck"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_validates() -> None:
    files = ["-f", str(DEPLOY / "compose.yaml")]
    hostnet = ["-f", str(DEPLOY / "compose.hostnet.yaml")]
    for args in (
        [*files],
        [*files, "--profile", "postgres"],
        [*files, "--profile", "triton"],
        hostnet,
    ):
        proc = subprocess.run(
            ["docker-compose", *args, "config", "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("name", "pacs_host"), [("compose.yaml", "orthanc"), ("compose.hostnet.yaml", "127.0.0.1")]
)
def test_compose_triage_environment_is_valid_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, pacs_host: str
) -> None:
    env = _compose(name)["services"]["triage"]["environment"]
    fields = {f"CT_TRIAGE_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in env if k.startswith("CT_TRIAGE_") and k not in fields)
    assert not unknown, f"compose sets unknown settings: {unknown}"
    for key, value in env.items():
        # compose's ${VAR:-default}, at its default
        monkeypatch.setenv(key, re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value)))
    monkeypatch.setenv("CT_TRIAGE_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.destinations == [f"dimse:ORTHANC@{pacs_host}:4242"]
    assert settings.pacs == f"ORTHANC@{pacs_host}:4242"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_runs_non_root_with_healthcheck(name: str) -> None:
    text = (DEPLOY / name).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users
    assert users[-1] not in ("root", "0")
    assert re.search(r"^ARG BASE_IMAGE=\S+\nFROM \$\{BASE_IMAGE\}$", text, flags=re.M)
    assert re.search(r'^    CMD \["ct-triage", "health"\]$', text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["ct-triage"\]', text, flags=re.M)
    assert "-c requirements/constraints.txt" in text
    assert "id=ca" in text
    assert "id=pipconf" in text
    ignored = _dockerignore()
    for src in re.findall(r"^COPY\s+(.+)\s+\S+$", text, flags=re.M):
        for part in src.split():
            assert (REPO / part).exists(), part
            assert _allowed(part.rstrip("/"), ignored), f"{part} is excluded by .dockerignore"


def _dockerignore() -> list[str]:
    return [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]


def _allowed(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins (``!`` re-includes)."""
    import fnmatch

    keep = True
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        pat_re = pat.replace("**/", "*")
        if fnmatch.fnmatch(path, pat_re) or path.startswith(pat + "/"):
            keep = neg
    return keep


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = _dockerignore()
    assert patterns[0] == "*"
    for path in (".venv", "demo-out", "tests", ".git", ".mypy_cache"):
        assert not _allowed(path, patterns), path
    for path in ("server", "models", "requirements/constraints.txt"):
        assert _allowed(path, patterns), path
    assert not _allowed("server/src/ct_triage/server/__pycache__", patterns)


def test_compose_images_are_variables_and_restart() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        assert re.fullmatch(r"\$\{[A-Z_]+_IMAGE:-\S+\}", svc["image"]), (name, svc["image"])
        assert svc.get("restart") == "unless-stopped", name


def test_constraints_pin_every_runtime_requirement() -> None:
    sys.path.insert(0, str(REPO / "requirements"))
    try:
        import runtime  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    text = (REPO / "requirements" / "constraints.txt").read_text()
    pinned = {
        re.sub(r"[-_.]+", "-", ln.split("==")[0]).lower()
        for ln in text.splitlines()
        if "==" in ln and not ln.startswith("#")
    }
    for gpu in (False, True):
        for req in runtime.direct_requirements(gpu=gpu):
            assert runtime._name(req) in pinned, f"{req} has no pin in constraints.txt"
    assert "torch" not in pinned


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


def test_extra_ca_certs_are_trusted_for_https(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CT_TRIAGE_EXTRA_CA_CERTS (the run-time CA hook): a server signed by a private CA is
    refused before and trusted after, as DICOMweb over HTTPS through a hospital CA."""
    import http.server
    import ssl
    import threading

    import requests
    from tlsca import make_ca

    from ct_triage.server.startup import install_extra_ca

    pki = make_ca(tmp_path / "pki", name="Hospital CA")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/"
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    try:
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=10)
        folder = tmp_path / "extra"
        folder.mkdir()
        (folder / "hospital.crt").write_bytes(pki.ca_cert.read_bytes())
        bundle = install_extra_ca(folder, workdir=tmp_path)
        assert requests.get(url, timeout=10).status_code in (200, 404)
        assert bundle.read_text().count("BEGIN CERTIFICATE") > 100  # the public roots stay
    finally:
        server.shutdown()
        for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"):
            os.environ.pop(var, None)


def test_extra_ca_certs_without_a_certificate_is_one_line(tmp_path: Path) -> None:
    from ct_triage.server.startup import StartupError, install_extra_ca

    (tmp_path / "empty.pem").write_text("not a certificate\n")
    with pytest.raises(StartupError, match="no PEM certificate found"):
        install_extra_ca(tmp_path / "empty.pem", workdir=tmp_path)


def test_health_url_follows_the_configured_port_and_scheme(tmp_path: Path) -> None:
    from ct_triage.server.startup import health_url

    s = Settings(data_dir=tmp_path, http_port=18001)
    assert health_url(s) == "http://127.0.0.1:18001/healthz"
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    s = Settings(
        data_dir=tmp_path, http_host="::1", http_port=8443, http_tls_cert=cert, http_tls_key=cert
    )
    assert health_url(s) == "https://[::1]:8443/healthz"
