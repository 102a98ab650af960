"""Reading the database directly in tests: what was really written, not what the API says."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from consentgate.storage import models


async def counts(db: Any) -> dict[str, int]:
    """Row counts of every table: a change-nothing check compares two of these."""
    out = {}
    async with db.read() as conn:
        for name, table in models.metadata.tables.items():
            out[name] = int((await conn.execute(select(func.count()).select_from(table)))
                            .scalar_one())
    return out


async def rows(db: Any, table: str, **where: Any) -> list[Any]:
    t = models.metadata.tables[table]
    stmt = select(t)
    for k, v in where.items():
        stmt = stmt.where(t.c[k] == v)
    async with db.read() as conn:
        return list((await conn.execute(stmt.order_by(*t.primary_key.columns))).all())
