"""The shadow persona pool: seeded by migration 0003, grown by operators."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.dialects.postgresql import insert

from domain.challenges import PERSONA_CATEGORIES
from domain.errors import Refused
from infra.db import tables as t


def listing(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(text(
        "SELECT p.id, p.code, p.display_name, p.category, p.active, "
        "(SELECT count(*) FROM treasury_matches m WHERE m.persona_id = p.id "
        " AND m.status <> 'reserved') AS matches "
        "FROM shadow_personas p ORDER BY p.id"))
    return [{"persona_id": r.id, "code": r.code, "display_name": r.display_name,
             "category": r.category, "active": r.active, "matches": int(r.matches)} for r in rows]


def add(conn: Connection, code: str, display_name: str, category: str) -> dict[str, Any]:
    """Add a persona to the pool; refused when the category is unknown or the code is taken."""
    if category not in PERSONA_CATEGORIES:
        raise Refused(f"unknown category {category!r}; one of {', '.join(PERSONA_CATEGORIES)}")
    if not code or len(code) > 64 or not display_name or len(display_name) > 64:
        raise Refused("code and display name must be 1-64 characters")
    persona_id = PersonaRepository(conn).add(code, display_name, category)
    if persona_id is None:
        raise Refused(f"persona {code!r} already exists")
    return {"persona_id": persona_id, "code": code, "display_name": display_name,
            "category": category, "active": True, "matches": 0}


class PersonaRepository:
    """``uow.personas``: the shadow persona pool, in the unit's transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, code: str, display_name: str, category: str) -> int | None:
        """A new active persona; its id, or None when ``code`` is taken (nothing written)."""
        p = t.shadow_personas
        return self.conn.execute(
            insert(p).values(code=code, display_name=display_name, category=category)
            .on_conflict_do_nothing(index_elements=[p.c.code]).returning(p.c.id)
        ).scalar_one_or_none()
