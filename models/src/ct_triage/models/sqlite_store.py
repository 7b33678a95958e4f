"""SQLite files of our own stores: one way to open them and one way to write to them.

The spool index, the delivery outbox, the API tokens and the bridge's state each keep a small
SQLite file. :func:`connect` opens one the same way for all of them:

* ``journal_mode=WAL``: readers do not block the writer, and a commit is one append;
* ``synchronous=FULL``: a committed transaction survives a power cut (with WAL, ``NORMAL``
  could lose the last commits), which the spool needs before it acknowledges an instance;
* a busy timeout: a writer waits this long for another connection's write lock instead of
  failing at once with ``database is locked``;
* ``isolation_level=None`` (autocommit): the :mod:`sqlite3` module never opens a
  transaction behind the caller's back; every write that needs several statements says so
  with :func:`transaction`;
* the schema (``CREATE TABLE IF NOT EXISTS ...``) applied at once, and
  :func:`ensure_columns` for columns added after a file was first written.

Standard library only, so that every part can use it (the bridge, the server, the compute
package); it knows nothing of DICOM.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["connect", "ensure_columns", "transaction"]

#: A table or column name as we accept it in :func:`ensure_columns` (no quoting needed).
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def connect(
    path: Path | str,
    *,
    schema: str | None = None,
    busy_timeout_s: float = 30.0,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """Open (or create) a SQLite file: WAL, ``synchronous=FULL``, autocommit, busy timeout.

    Parameters
    ----------
    path
        The database file; its folder must exist.
    schema
        SQL script run once the connection is set up (``CREATE TABLE IF NOT EXISTS ...``,
        several statements allowed), or ``None``.
    busy_timeout_s
        How long a statement waits for another connection's lock before it fails with
        ``sqlite3.OperationalError: database is locked``.
    check_same_thread
        As :func:`sqlite3.connect`: pass ``False`` for a connection that several threads
        share, and serialise its use with a lock of your own.

    Returns
    -------
    sqlite3.Connection
        With ``isolation_level=None``: statements commit on their own unless inside
        :func:`transaction`.

    Raises
    ------
    sqlite3.Error
        The file cannot be opened or is not a database, or the schema fails; the connection
        is closed.
    """
    if busy_timeout_s < 0:
        raise ValueError("busy_timeout_s must be >= 0")
    db = sqlite3.connect(
        path,
        timeout=busy_timeout_s,
        isolation_level=None,
        check_same_thread=check_same_thread,
    )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if schema is not None:
            db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """One transaction: ``BEGIN [IMMEDIATE]`` … ``COMMIT``, or ``ROLLBACK`` on any exception.

    Parameters
    ----------
    db
        A connection in autocommit mode (from :func:`connect`); transactions do not nest. A
        connection shared by threads must be held under the caller's lock for the whole
        block.
    immediate
        ``True`` (default) takes the write lock at ``BEGIN`` (``BEGIN IMMEDIATE``), so that
        a read-then-write block cannot fail half-way with ``database is locked`` and two
        connections cannot both read the same state and then both write; ``False`` begins a
        deferred transaction (a consistent snapshot for reads).

    Yields
    ------
    sqlite3.Connection
        ``db`` itself.

    Raises
    ------
    sqlite3.Error
        ``BEGIN`` or ``COMMIT`` failed (a failed ``COMMIT`` is rolled back); an exception of
        the block is re-raised after the rollback.
    """
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield db
    except BaseException:
        _rollback(db)
        raise
    try:
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite may have rolled it back already)."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):  # keep the exception that got us here
            db.execute("ROLLBACK")


def ensure_columns(db: sqlite3.Connection, table: str, columns: Mapping[str, str]) -> list[str]:
    """Add the columns that an older file of ``table`` lacks (``ALTER TABLE ... ADD COLUMN``).

    Parameters
    ----------
    db
        The connection.
    table
        An existing table.
    columns
        Column name -> declaration (``"REAL"``, ``"TEXT NOT NULL DEFAULT ''"``), in the
        order to add them.

    Returns
    -------
    list of str
        The names of the columns added (empty when the table had them all).

    Raises
    ------
    ValueError
        A table or column name is not a plain identifier, or the table does not exist.
    """
    for name in (table, *columns):
        if not _IDENTIFIER_RE.fullmatch(name):
            raise ValueError(f"not a plain SQL identifier: {name!r}")
    present = {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}
    if not present:
        raise ValueError(f"no table {table!r}")
    added = [name for name in columns if name not in present]
    for name in added:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {columns[name]}")
    return added
