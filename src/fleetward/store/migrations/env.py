"""Alembic environment: runs migrations on the connection handed in."""

from __future__ import annotations

from alembic import context

from fleetward.store.models import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - offline use is not supported
    raise RuntimeError("fleetward migrations run through Database.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
