"""Engine, session factory and schema migration."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from fleetward._files import narrow, private_file

__all__ = ["Base", "Database", "utcnow"]

_MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> dt.datetime:
    """Current UTC time, timezone-aware, at microsecond precision."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every fleetward table."""


def _sqlite_pragmas(engine: Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy issue BEGIN itself (below) instead of pysqlite.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Write transactions take the write lock up front. With deferred
        # transactions two writers that both read the audit chain head would
        # race, and the loser would get SQLITE_BUSY at once instead of
        # waiting. Read transactions stay deferred: WAL lets them run beside
        # the writer.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _private_sqlite_files(database: Path) -> None:
    """Create the database file at 0600 before SQLite does (and narrow an old one).

    SQLite would create it 0644 less the umask, and it gives the ``-wal`` and
    ``-shm`` files the database file's mode, so a private database file makes
    all three private (rule 3 of :mod:`fleetward._files`).
    """
    if not database.parent.is_dir():
        return  # SQLite will say what is wrong when it opens it
    private_file(database)
    for suffix in ("-wal", "-shm", ".writer-lock"):
        narrow(database.with_name(database.name + suffix))


class Database:
    """Engines and session factories for one database URL.

    :meth:`session` is a write unit of work; :meth:`read` is a read-only
    one. On SQLite they use two engines (``BEGIN IMMEDIATE`` vs ``BEGIN``)
    and writers of one process queue on a lock, which wakes them at once
    instead of SQLite's sleep-and-retry busy handler. On PostgreSQL both
    share one engine.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
        self.engine = create_engine(url, **kwargs)
        self._write_lock: threading.Lock | None = None
        self._lock_path: str | None = None
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine, immediate=True)
            self.read_engine = create_engine(url, **kwargs)
            _sqlite_pragmas(self.read_engine, immediate=False)
            self._write_lock = threading.Lock()
            database = self.engine.url.database
            if database and database != ":memory:":
                self._lock_path = database + ".writer-lock"
                _private_sqlite_files(Path(database))
        else:
            self.read_engine = self.engine
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.readers = sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite database."""
        return self.engine.dialect.name == "sqlite"

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write session whose transaction commits on success, rolls back on error."""
        if self._write_lock is None:
            with self.sessions() as session, session.begin():
                yield session
            return
        with self._write_lock, self._process_lock(), self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def _process_lock(self) -> Iterator[None]:
        """Queue writers of several processes (``serve --workers N``) on a file
        lock: it wakes the next writer the moment the lock is released, where
        SQLite's busy handler sleeps and polls (tens of ms under load)."""
        if self._lock_path is None:
            yield
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (never blocks on, nor blocks, the writer on SQLite)."""
        with self.readers() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
