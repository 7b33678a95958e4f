"""The images and the compose stack, built and run for real with Debian's Docker engine.

What hospital IT does, step by step (README, "Deployment"), on 127.0.0.1 only:

1. a bookworm base from ``debootstrap`` + ``docker import`` (``scripts/docker-base.sh``,
   cached per machine), standing in for the official images Docker Hub would give;
2. the CPU image and an Orthanc image (Debian ``orthanc`` + ``orthanc-dicomweb``) built on it
   (``scripts/docker-build.sh``), with the host's CA bundle as a BuildKit secret;
3. a data folder bind-mounted with the wrong owner: one line naming the ``chown``;
4. ``deploy/compose.hostnet.yaml`` (compose.yaml's stack on host networking, nothing
   pulled) on free, non-default ports; the health check turns healthy;
5. phantom studies pushed into the Orthanc container with ``storescu`` from the host; Orthanc
   routes them to the triage container; SEG, SR and overlay come back into Orthanc;
6. ``docker restart`` of the triage container mid-batch: every study gets its results, once;
7. ``docker-compose stop`` drains on SIGTERM (exit 0, JSON log on stdout); ``down`` and
   ``up`` again keep jobs and results (volumes), and nothing is analysed again;
8. the GPU image builds on the same stand-in base (its CUDA base cannot be pulled here).

Everything the test made (containers, network, volumes, images) is removed at the end; the
cached base image stays. Skipped, with the reason, only when no Docker engine can be started
(with ``CI`` set, that is a failure instead). Timings are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from orthanc import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Debian's client: BuildKit built in (a newer client without buildx has only the old builder).
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
ORTHANC_AUTH = ("triage", "change-me-orthanc")  # deploy/compose.yaml's (test-only) account
T = TypeVar("T")


def _run(
    cmd: list[str], *, timeout: float = 900, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
        cwd=REPO,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def _wait(what: str, fn: Callable[[], T | None], timeout_s: float, every_s: float = 1.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def _engine_up() -> bool:
    return _run([DOCKER, "info"], timeout=30, check=False).returncode == 0


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running Docker engine: the one already running, else Debian's dockerd started here
    (and stopped at the end)."""
    proc: subprocess.Popen[bytes] | None = None
    reason = None
    if not _engine_up():
        if not Path(DOCKERD).exists():
            reason = "no Docker engine (Debian docker.io; scripts/install-system-deps.sh)"
        elif os.getuid() != 0:
            reason = "dockerd is not running and only root can start it here"
        else:
            log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [DOCKERD, "--host", "unix:///var/run/docker.sock"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 60
            while not _engine_up() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            if not _engine_up():
                errors = [ln for ln in log.read_text().splitlines() if "level=error" in ln]
                reason = "dockerd did not start: " + " | ".join(errors[-3:] or ["(no error)"])
    if reason is not None:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)


@dataclass
class Images:
    base: str
    cpu: str
    orthanc: str
    timings: dict[str, float] = field(default_factory=dict)


def _build(kind: str, tag: str, base: str) -> float:
    t0 = time.monotonic()
    _run(
        ["bash", "scripts/docker-build.sh", kind, tag],
        env={"BASE_IMAGE": base, "DOCKER": DOCKER, "CA_FILE": _host_ca()},
    )
    return time.monotonic() - t0


def _host_ca() -> str:
    """The host's CA bundle (on networks that intercept TLS it holds the proxy's CA)."""
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(var) and Path(os.environ[var]).is_file():
            return os.environ[var]
    return "/etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(scope="module")
def images(engine: None) -> Iterator[Images]:
    """The stand-in base (cached), then the CPU and Orthanc images under test-only tags."""
    run = uuid.uuid4().hex[:8]
    t0 = time.monotonic()
    base = _run(["bash", "scripts/docker-base.sh"], env={"DOCKER": DOCKER}).stdout.strip()
    imgs = Images(
        base=base, cpu=f"ct-triage-ci/triage:{run}", orthanc=f"ct-triage-ci/orthanc:{run}"
    )
    imgs.timings["base"] = time.monotonic() - t0
    try:
        imgs.timings["build cpu"] = _build("cpu", imgs.cpu, base)
        imgs.timings["build orthanc"] = _build("orthanc", imgs.orthanc, base)
        size = _run([DOCKER, "image", "inspect", "-f", "{{.Size}}", imgs.cpu]).stdout
        imgs.timings["cpu image MB"] = int(size) / 1e6
        yield imgs
    finally:
        print("\ndocker timings:", json.dumps({k: round(v, 1) for k, v in imgs.timings.items()}))
        _run([DOCKER, "image", "rm", "-f", imgs.cpu, imgs.orthanc], check=False)


def test_bind_mount_with_wrong_owner_is_one_line(images: Images) -> None:
    host_dir = Path(tempfile.mkdtemp(prefix="ct-triage-data-"))
    host_dir.chmod(0o755)  # owned by this (root) user, not by the image's uid 10001
    try:
        proc = _run(
            [DOCKER, "run", "--rm", "--network", "none", "-v", f"{host_dir}:/data", images.cpu],
            check=False,
            timeout=120,
        )
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ct-triage: error: cannot write to the data folder /data")
    assert "chown -R 10001:10001 <the folder mounted at /data>" in lines[0]


@dataclass
class Stack:
    """One compose project on free host ports."""

    images: Images
    project: str = field(default_factory=lambda: f"ctci{uuid.uuid4().hex[:8]}")
    ports: dict[str, int] = field(
        default_factory=lambda: {
            k: free_port()
            for k in (
                "ORTHANC_HTTP_PORT",
                "ORTHANC_DICOM_PORT",
                "TRIAGE_HTTP_PORT",
                "TRIAGE_DICOM_PORT",
            )
        }
    )

    @property
    def env(self) -> dict[str, str]:
        return {
            **{k: str(v) for k, v in self.ports.items()},
            "CT_TRIAGE_IMAGE": self.images.cpu,
            "ORTHANC_IMAGE": self.images.orthanc,
            "TRIAGE_QUIET_PERIOD_S": "3",
            "TRIAGE_HEALTH_INTERVAL": "3s",
        }

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        files = ["-f", "deploy/compose.hostnet.yaml"]
        return _run(
            ["docker-compose", "-p", self.project, *files, *args], env=self.env, timeout=timeout
        )

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    @property
    def orthanc(self) -> str:
        return f"http://127.0.0.1:{self.ports['ORTHANC_HTTP_PORT']}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['TRIAGE_HTTP_PORT']}"

    def health(self) -> str:
        fmt = "{{if .State.Health}}{{.State.Health.Status}}{{end}}"
        return _run([DOCKER, "inspect", "-f", fmt, self.container("triage")]).stdout.strip()

    def wait_healthy(self, timeout_s: float = 180) -> float:
        t0 = time.monotonic()
        _wait("the triage container to be healthy", lambda: self.health() == "healthy", timeout_s)
        return time.monotonic() - t0

    def results(self, study_uid: str) -> dict[str, int]:
        """``{modality: instance count}`` of ``study_uid`` in the Orthanc container."""
        with httpx.Client(auth=ORTHANC_AUTH, timeout=30) as c:
            found = c.post(f"{self.orthanc}/tools/lookup", content=study_uid).json()
            ids = [f["ID"] for f in found if f["Type"] == "Study"]
            if not ids:
                return {}
            counts: dict[str, int] = {}
            for series in c.get(f"{self.orthanc}/studies/{ids[0]}/series").json():
                modality = series["MainDicomTags"].get("Modality", "?")
                counts[modality] = counts.get(modality, 0) + len(series["Instances"])
            return counts


def _phantoms(folder: Path, seeds: list[int]) -> dict[str, list[Path]]:
    """Synthetic chest CTs (``ct-triage phantom``), by StudyInstanceUID."""
    import pydicom

    out: dict[str, list[Path]] = {}
    for seed in seeds:
        target = folder / f"seed{seed}"
        _run(
            [
                sys.executable,
                "-m",
                "ct_triage.server.cli",
                "phantom",
                str(target),
                "--seed",
                str(seed),
                "--slices",
                "60",
            ],
            timeout=300,
        )
        files = sorted((target / "dicom").glob("*.dcm"))
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        out[uid] = files
    return out


def _storescu(port: int, files: list[Path]) -> None:
    """DCMTK's storescu from the host into the Orthanc container."""
    _run(
        [
            "storescu",
            "-aec",
            "ORTHANC",
            "-aet",
            "MODALITY",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ]
    )


def _token(stack: Stack) -> str:
    out = _run(
        [
            DOCKER,
            "exec",
            stack.container("triage"),
            "ct-triage",
            "token",
            "create",
            "--role",
            "viewer",
            "--name",
            "docker test",
        ]
    ).stdout
    m = re.search(r"ctt_\S+", out)
    assert m is not None, out
    return m.group(0)


def _jobs(stack: Stack, token: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{stack.api}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    r.raise_for_status()
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


def _complete(counts: dict[str, int]) -> bool:
    return all(counts.get(m, 0) >= 1 for m in ("SEG", "SR", "OT"))


def test_compose_stack_push_restart_and_volumes(images: Images, tmp_path: Path) -> None:
    stack = Stack(images)
    timings = images.timings
    assert shutil.which("storescu"), "storescu (DCMTK) missing: scripts/install-system-deps.sh"
    studies = _phantoms(tmp_path, [101, 102, 103, 104])
    first_uid, *batch = list(studies)
    try:
        t0 = time.monotonic()
        up = stack.compose("up", "-d", "--no-build")
        assert "Pulling" not in up.stdout + up.stderr
        stack.wait_healthy()
        timings["up to healthy s"] = time.monotonic() - t0
        # Healthy on the non-default port: the probe asked CT_TRIAGE_HTTP_PORT, not 8000.
        assert stack.ports["TRIAGE_HTTP_PORT"] != 8000
        probe = _run([DOCKER, "exec", stack.container("triage"), "ct-triage", "health"])
        assert probe.stdout.startswith(f"ok: http://127.0.0.1:{stack.ports['TRIAGE_HTTP_PORT']}/")

        # One study: push -> SEG + SR + overlay back in the Orthanc container.
        t0 = time.monotonic()
        _storescu(stack.ports["ORTHANC_DICOM_PORT"], studies[first_uid])
        counts = _wait(
            "SEG, SR and overlay in Orthanc",
            lambda: c if _complete(c := stack.results(first_uid)) else None,
            240,
            0.5,
        )
        timings["push to SEG+SR+overlay s"] = time.monotonic() - t0
        assert counts["SEG"] == 1, counts

        # A batch, and `docker restart` of the triage container while it runs.
        for uid in batch:
            _storescu(stack.ports["ORTHANC_DICOM_PORT"], studies[uid])
        triage = stack.container("triage")
        _wait(  # Orthanc forwards each stable series in one association
            "the batch to reach the triage container",
            lambda: _run([DOCKER, "logs", triage]).stdout.count("accepted") >= 2,
            120,
            0.5,
        )
        _run([DOCKER, "restart", triage], timeout=120)
        _wait(
            "every study's results after the restart",
            lambda: all(_complete(stack.results(u)) for u in studies),
            420,
            2,
        )
        token = _token(stack)
        stack.wait_healthy()
        time.sleep(5)  # anything re-analysed or re-sent by mistake would arrive now
        for uid in studies:
            counts = stack.results(uid)
            assert counts["SEG"] == 1, (uid, counts)  # delivered once: no second analysis
            assert counts["CT"] == 60, (uid, counts)  # nothing lost, nothing added
        jobs = _jobs(stack, token)
        assert sorted(j["study_uid"] for j in jobs) == sorted(studies), jobs
        assert all(j["state"] == "done" for j in jobs), jobs

        # SIGTERM drains: exit code 0, and the log is JSON on stdout.
        stack.compose("stop", "triage", timeout=120)
        state = _run([DOCKER, "inspect", "-f", "{{.State.ExitCode}}", triage]).stdout.strip()
        assert state == "0"
        logs = _run([DOCKER, "logs", triage])
        records = [json.loads(ln) for ln in logs.stdout.splitlines()]
        assert records, logs.stderr
        assert records[-1]["message"].startswith("stopped:"), records[-3:]

        # down && up: the volumes keep the jobs, results and tokens; nothing runs again.
        stack.compose("down", timeout=180)
        t0 = time.monotonic()
        stack.compose("up", "-d", "--no-build")
        stack.wait_healthy()
        timings["restart up to healthy s"] = time.monotonic() - t0
        again = _jobs(stack, token)
        assert sorted(j["id"] for j in again) == sorted(j["id"] for j in jobs)
        assert all(j["state"] == "done" for j in again)
        for uid in studies:
            assert stack.results(uid)["SEG"] == 1
    finally:
        stack.compose("down", "-v", "--remove-orphans", timeout=300)


def test_gpu_image_builds_on_the_stand_in_base(images: Images) -> None:
    """The CUDA base cannot be pulled here: the GPU image is built with BASE_IMAGE set to
    the Debian stand-in, which proves the Dockerfile, the pins and onnxruntime-gpu install."""
    tag = f"ct-triage-ci/triage-gpu:{uuid.uuid4().hex[:8]}"
    try:
        images.timings["build gpu s"] = _build("gpu", tag, images.base)
        code = "import onnxruntime as o; print(' '.join(o.get_available_providers()))"
        out = _run(
            [DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", code]
        ).stdout
        assert "CUDAExecutionProvider" in out.split()
        assert "CPUExecutionProvider" in out.split()
        health = _run(
            [DOCKER, "run", "--rm", "--network", "none", tag, "health", "--timeout", "1"],
            check=False,
        )
        assert health.returncode == 1
        assert health.stdout.startswith("unhealthy: http://127.0.0.1:8000/healthz")
    finally:
        _run([DOCKER, "image", "rm", "-f", tag], check=False)
