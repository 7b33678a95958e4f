"""A real Orthanc PACS for integration tests (Debian ``orthanc`` + ``orthanc-dicomweb``).

Each :class:`OrthancServer` runs ``/usr/sbin/Orthanc`` on free loopback ports with a
configuration, storage and index written under a temporary folder, with:

* ``TCP_NODELAY=1`` in its environment (DCMTK's Nagle delay otherwise makes C-STORE ~5x slower);
* ``RemoteAccessAllowed`` false and HTTP basic authentication with a test-only user;
* the DICOMweb plugin (``/dicom-web/``);
* registered DICOM modalities given by the test (AE title, host, port), e.g. our own SCP so
  that C-MOVE can send to it.

The server can be stopped and started again on the same ports and storage (fault tests).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    """Ask the OS for a free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_available() -> str | None:
    """``None`` when Orthanc and its DICOMweb plugin are installed, else the reason."""
    if not ORTHANC_BIN.exists():
        return f"{ORTHANC_BIN} missing (Debian package orthanc; scripts/install-system-deps.sh)"
    if not DICOMWEB_PLUGIN.exists():
        return f"{DICOMWEB_PLUGIN} missing (Debian package orthanc-dicomweb)"
    return None


@dataclass
class OrthancServer:
    """One Orthanc process under ``root``.

    Parameters
    ----------
    root
        Folder for the configuration, storage, index and log.
    aet
        Orthanc's own AE title.
    modalities
        ``{name: (aet, host, port)}`` DICOM nodes Orthanc knows (for C-MOVE destinations).
    """

    root: Path
    aet: str = "ORTHANC"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    username: str = "ct-triage-test"
    password: str = "not-a-real-secret"
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    extra_config: dict[str, Any] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def _config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "Name": "ct-triage-test-pacs",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "SaveJobs": False,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "SslEnabled": False,
            "ExecuteLuaEnabled": False,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self, timeout_s: float = 30.0) -> None:
        """Start Orthanc and wait until its REST API answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        log = (self.root / "orthanc.log").open("ab")
        self._proc = subprocess.Popen(
            [str(ORTHANC_BIN), str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.root,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self._proc.returncode}; log:\n{self.log_tail()}"
                )
            try:
                r = httpx.get(f"{self.url}/system", auth=self.auth, timeout=1.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def log_tail(self, n: int = 40) -> str:
        path = self.root / "orthanc.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    # Small REST helpers for assertions -------------------------------------------------
    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", auth=self.auth, timeout=30.0)
        r.raise_for_status()
        return r.json()

    def get_bytes(self, path: str) -> bytes:
        r = httpx.get(f"{self.url}{path}", auth=self.auth, timeout=30.0)
        r.raise_for_status()
        return r.content

    def upload(self, files: list[Path]) -> None:
        """Store files through the REST API (the way a modality's push would end up)."""
        with httpx.Client(auth=self.auth, timeout=60.0) as client:
            for f in files:
                r = client.post(f"{self.url}/instances", content=f.read_bytes())
                r.raise_for_status()

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def series_by_modality(self, modality: str) -> list[dict[str, Any]]:
        out = []
        for sid in self.get("/series"):
            s = self.get(f"/series/{sid}")
            if s["MainDicomTags"].get("Modality") == modality:
                out.append(s)
        return out

    def clear(self) -> None:
        with httpx.Client(auth=self.auth, timeout=60.0) as client:
            for pid in client.get(f"{self.url}/patients").json():
                client.delete(f"{self.url}/patients/{pid}")


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
