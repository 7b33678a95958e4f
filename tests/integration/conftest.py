"""Fixtures shared by the integration tests: a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg import PostgresServer, postgres_available


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (skips with the reason when it cannot run)."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    server = PostgresServer(root=tmp_path_factory.mktemp("pg"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
