"""The shadow persona pool: seeded by migration 0003, grown by operators."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from domain.challenges import PERSONA_CATEGORIES
from domain.errors import Refused


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
    row = conn.execute(
        text("INSERT INTO shadow_personas (code, display_name, category) VALUES (:c, :d, :k) "
             "ON CONFLICT (code) DO NOTHING RETURNING id"),
        {"c": code, "d": display_name, "k": category},
    ).scalar_one_or_none()
    if row is None:
        raise Refused(f"persona {code!r} already exists")
    return {"persona_id": row, "code": code, "display_name": display_name, "category": category,
            "active": True, "matches": 0}
