"""Alembic environment: runs migrations on the connection handed in."""

from __future__ import annotations

import importlib

from alembic import context

# The tables belong to the domains, which sit above the store; the runtime
# gathers them (fleetward.runtime.schema). Loaded by name so the store never
# imports upward: migrations are a script the runtime runs.
metadata = importlib.import_module("fleetward.runtime.schema").metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - offline use is not supported
    raise RuntimeError("fleetward migrations run through Database.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
