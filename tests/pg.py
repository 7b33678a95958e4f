"""A throw-away PostgreSQL server for integration tests (Debian ``postgresql`` binaries).

:class:`PostgresServer` runs ``initdb`` and ``postgres`` under a temporary folder, listening
on a free loopback port and on a unix socket in that folder, with trust authentication for
loopback only. PostgreSQL refuses to run as root: when the tests run as root, the server runs
as the ``postgres`` system user (``runuser``) and the folder is handed to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from orthanc import free_port

PG_VERSIONS = ("17", "16", "15")


def pg_bindir() -> Path | None:
    """Folder of ``initdb``/``postgres`` (newest Debian version first), or None."""
    env = os.environ.get("CT_TRIAGE_PG_BINDIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(f"/usr/lib/postgresql/{v}/bin") for v in PG_VERSIONS]
    for c in candidates:
        if (c / "initdb").is_file() and (c / "postgres").is_file():
            return c
    return None


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return []
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--"] if runuser else []


def postgres_available() -> str | None:
    """``None`` when a PostgreSQL server can be started here, else the reason to skip."""
    if pg_bindir() is None:
        return (
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql, or set CT_TRIAGE_PG_BINDIR)"
        )
    if os.geteuid() == 0 and not _run_as():
        return "running as root without a 'postgres' user and runuser: initdb refuses root"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


@dataclass
class PostgresServer:
    """One PostgreSQL cluster under ``root`` (``root/data``, socket in ``root/sock``)."""

    root: Path
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout_s: float = 30.0) -> None:
        """initdb (first time) and start the server; wait until it accepts connections."""
        bindir = pg_bindir()
        assert bindir is not None
        prefix = _run_as()
        data, sock = self.root / "data", self.root / "sock"
        self.root.mkdir(parents=True, exist_ok=True)
        sock.mkdir(exist_ok=True)
        if prefix:
            pw = pwd.getpwnam("postgres")
            for p in (self.root, sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            # The folders above tmp_path must let the postgres user reach ``root``.
            parent = self.root.parent
            while parent != parent.parent and parent != Path("/tmp"):
                os.chmod(parent, os.stat(parent).st_mode | 0o711)
                parent = parent.parent
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [
                    *prefix,
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                check=True,
                capture_output=True,
            )
        log = (self.root / "postgres.log").open("ab")
        self._proc = subprocess.Popen(
            [
                *prefix,
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(sock),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=60",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        import psycopg

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited; log:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.dsn, connect_timeout=1):
                    return
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not start in {timeout_s} s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL."""
        if self._proc is None:
            return
        # ``runuser`` forwards the signal to the server.
        self._proc.send_signal(2)
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def log_tail(self, n: int = 30) -> str:
        path = self.root / "postgres.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    def fresh_database(self, name: str) -> str:
        """Create an empty database; return its DSN."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
