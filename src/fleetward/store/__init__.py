"""Storage: SQLAlchemy engine and sessions, Alembic migrations.

SQLite (WAL) is the embedded default; PostgreSQL is used when the database URL
points at one. Services take a :class:`~sqlalchemy.orm.Session`; the unit of
work (a request, a CLI command) commits.
"""

from fleetward.store.db import Base, Database, utcnow

__all__ = ["Base", "Database", "utcnow"]
