"""Small dialect helpers shared by the services' SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.selectable import FromClause, Join

__all__ = ["dialect_insert", "driving_join", "insert_ignore", "upsert"]


class _DrivingJoin(Join):
    inherit_cache = True


@compiles(_DrivingJoin, "sqlite")
def _cross_join(join: _DrivingJoin, compiler: SQLCompiler, **kw: Any) -> str:
    kw["asfrom"] = True
    assert join.onclause is not None  # driving_join always gives one
    return (f"{compiler.process(join.left, **kw)} CROSS JOIN "
            f"{compiler.process(join.right, **kw)} ON {compiler.process(join.onclause, **kw)}")


def driving_join(short: FromClause, long: FromClause, onclause: Any) -> Join:
    """An inner join read from ``short``, probing ``long`` per row. SQLite keeps no
    statistics unless asked, so its planner may read a million-row side and probe an empty
    one instead; CROSS JOIN is how SQLite is told the order. Elsewhere a plain JOIN (the
    planner knows the sizes)."""
    return _DrivingJoin(short, long, onclause)


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
