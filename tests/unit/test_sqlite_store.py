"""The one SQLite helper of our stores (WAL, FULL, busy timeout, autocommit; issue 20)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from ct_triage.models.sqlite_store import connect, ensure_columns, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_by_name ON items(name);
"""


def _names(db: sqlite3.Connection) -> list[str]:
    return [str(r[0]) for r in db.execute("SELECT name FROM items ORDER BY id")]


def test_connect_sets_wal_full_busy_timeout_and_autocommit(tmp_path: Path) -> None:
    db = connect(tmp_path / "a.db", schema=_SCHEMA, busy_timeout_s=12.5)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 12500
        assert db.isolation_level is None
        db.execute("INSERT INTO items (name) VALUES ('a')")
        assert not db.in_transaction  # autocommit: nothing left open
    finally:
        db.close()
    with sqlite3.connect(tmp_path / "a.db") as other:  # committed, seen by another connection
        assert _names(other) == ["a"]
        assert other.execute("PRAGMA index_list(items)").fetchall()[0][1] == "items_by_name"


def test_the_schema_may_be_applied_again_and_keeps_the_rows(tmp_path: Path) -> None:
    db = connect(tmp_path / "a.db", schema=_SCHEMA)
    db.execute("INSERT INTO items (name) VALUES ('kept')")
    db.close()
    db = connect(tmp_path / "a.db", schema=_SCHEMA)
    try:
        assert _names(db) == ["kept"]
    finally:
        db.close()


def test_a_failing_schema_raises_and_a_negative_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        connect(tmp_path / "a.db", schema="CREATE TABLE broken (")
    with pytest.raises(ValueError, match="busy_timeout_s"):
        connect(tmp_path / "a.db", busy_timeout_s=-1.0)
    (tmp_path / "not.db").write_bytes(b"this is not a database file, just text" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        connect(tmp_path / "not.db", schema=_SCHEMA)


def test_a_transaction_commits_all_of_its_statements(tmp_path: Path) -> None:
    db = connect(tmp_path / "a.db", schema=_SCHEMA)
    try:
        with transaction(db) as tx:
            assert tx is db
            assert db.in_transaction
            db.execute("INSERT INTO items (name) VALUES ('a')")
            db.execute("INSERT INTO items (name) VALUES ('b')")
        assert not db.in_transaction
        with sqlite3.connect(tmp_path / "a.db") as other:
            assert _names(other) == ["a", "b"]
    finally:
        db.close()


def _insert_then_raise(db: sqlite3.Connection) -> None:
    with transaction(db):
        db.execute("INSERT INTO items (name) VALUES ('lost')")
        raise RuntimeError("boom")


def _insert_then_violate_not_null(db: sqlite3.Connection) -> None:
    with transaction(db):
        db.execute("INSERT INTO items (name) VALUES ('lost too')")
        db.execute("INSERT INTO items (name) VALUES (NULL)")


def test_an_exception_rolls_the_whole_transaction_back_and_is_raised(tmp_path: Path) -> None:
    db = connect(tmp_path / "a.db", schema=_SCHEMA)
    try:
        db.execute("INSERT INTO items (name) VALUES ('before')")
        with pytest.raises(RuntimeError, match="boom"):
            _insert_then_raise(db)
        assert not db.in_transaction
        assert _names(db) == ["before"]
        with pytest.raises(sqlite3.IntegrityError):
            _insert_then_violate_not_null(db)
        assert _names(db) == ["before"]
    finally:
        db.close()


def test_a_failed_commit_is_rolled_back_and_the_connection_stays_usable(tmp_path: Path) -> None:
    db = connect(
        tmp_path / "a.db",
        schema="CREATE TABLE parent (id INTEGER PRIMARY KEY);"
        "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER"
        " REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);",
    )
    try:
        db.execute("PRAGMA foreign_keys=ON")
        with pytest.raises(sqlite3.IntegrityError), transaction(db):
            db.execute("INSERT INTO child (parent_id) VALUES (7)")  # checked only at COMMIT
        assert not db.in_transaction
        assert db.execute("SELECT COUNT(*) FROM child").fetchone()[0] == 0
        with transaction(db):
            db.execute("INSERT INTO parent (id) VALUES (7)")
            db.execute("INSERT INTO child (parent_id) VALUES (7)")
        assert db.execute("SELECT COUNT(*) FROM child").fetchone()[0] == 1
    finally:
        db.close()


def test_immediate_takes_the_write_lock_at_begin_and_deferred_does_not(tmp_path: Path) -> None:
    first = connect(tmp_path / "a.db", schema=_SCHEMA)
    second = connect(tmp_path / "a.db", busy_timeout_s=0.0)
    try:
        with transaction(first, immediate=False):
            assert _names(first) == []  # a read takes no write lock
            with transaction(second):
                second.execute("INSERT INTO items (name) VALUES ('second')")
        with transaction(first):  # BEGIN IMMEDIATE: the write lock is held from here
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                second.execute("BEGIN IMMEDIATE")
            assert not second.in_transaction
            first.execute("INSERT INTO items (name) VALUES ('first')")
        assert _names(second) == ["second", "first"]
    finally:
        first.close()
        second.close()


def test_transactions_do_not_nest(tmp_path: Path) -> None:
    db = connect(tmp_path / "a.db", schema=_SCHEMA)
    try:
        with transaction(db):
            db.execute("INSERT INTO items (name) VALUES ('outer')")
            with pytest.raises(sqlite3.OperationalError), transaction(db):
                pass  # pragma: no cover - BEGIN fails before the block runs
        assert _names(db) == ["outer"]
    finally:
        db.close()


def test_check_same_thread_is_passed_on(tmp_path: Path) -> None:
    shared = connect(tmp_path / "a.db", schema=_SCHEMA, check_same_thread=False)
    private = connect(tmp_path / "a.db")
    errors: list[BaseException] = []

    def use_both() -> None:
        shared.execute("INSERT INTO items (name) VALUES ('from a thread')")
        try:
            private.execute("SELECT 1")
        except sqlite3.ProgrammingError as exc:
            errors.append(exc)

    try:
        thread = threading.Thread(target=use_both)
        thread.start()
        thread.join()
        assert _names(shared) == ["from a thread"]
        assert len(errors) == 1
    finally:
        shared.close()
        private.close()


def test_ensure_columns_adds_only_the_missing_ones(tmp_path: Path) -> None:
    db = connect(tmp_path / "a.db", schema="CREATE TABLE series (uid TEXT PRIMARY KEY);")
    try:
        db.execute("INSERT INTO series (uid) VALUES ('1.2')")
        wanted = {"sender_done": "REAL", "calling_ae": "TEXT NOT NULL DEFAULT ''"}
        assert ensure_columns(db, "series", wanted) == ["sender_done", "calling_ae"]
        assert ensure_columns(db, "series", wanted) == []
        assert db.execute("SELECT uid, sender_done, calling_ae FROM series").fetchall() == [
            ("1.2", None, "")
        ]
        with pytest.raises(ValueError, match="identifier"):
            ensure_columns(db, "series", {"x; DROP TABLE series": "REAL"})
        with pytest.raises(ValueError, match="identifier"):
            ensure_columns(db, "series(x)", {"y": "REAL"})
        with pytest.raises(ValueError, match="no table"):
            ensure_columns(db, "missing", {"y": "REAL"})
    finally:
        db.close()
