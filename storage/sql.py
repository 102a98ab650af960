"""Small dialect helpers shared by the services' SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert

__all__ = ["dialect_insert", "insert_ignore", "upsert"]


def dialect_insert(conn: AsyncConnection, table: Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def upsert(
    conn: AsyncConnection, table: Table, keys: Sequence[str], values: dict[str, Any],
    update: dict[str, Any],
) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET update: one statement on both backends."""
    stmt = dialect_insert(conn, table).values(**values)
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=update)  # type: ignore[no-any-return]


def insert_ignore(conn: AsyncConnection, table: Table, keys: Sequence[str],
                  values: dict[str, Any]) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO NOTHING."""
    stmt = dialect_insert(conn, table).values(**values)
    return stmt.on_conflict_do_nothing(index_elements=list(keys))  # type: ignore[no-any-return]
