"""Alembic environment: runs on the connection :func:`indexer.migrations.upgrade` passes in."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through indexer.migrations (sitesearch db upgrade), not the alembic command")

context.configure(connection=connection, target_metadata=None, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
