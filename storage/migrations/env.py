"""Alembic environment: migrations run on the connection the application hands over."""

from __future__ import annotations

from alembic import context

from consentgate.storage.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("consentgate runs its migrations at start-up (storage.db.Database)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
