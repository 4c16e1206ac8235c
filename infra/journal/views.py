"""Operator views: ``ballast matching report`` and ``ballast cycle show`` (CONTRACT.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from domain.matching import MATCHED, OPTED_IN, payment_state
from infra.journal import repository as repo


def report(conn: Connection, cycle_id: str | None = None, limit: int | None = None,
           offset: int = 0) -> dict[str, Any]:
    """Participations with what they received and from which payments; payments left
    unmatched; payments left for review because they fit several participations.

    Unmatched payments belong to no cycle: they are listed whatever ``cycle_id``.
    Ambiguous ones are listed for a cycle when one of their candidates is in it.
    ``limit``/``offset`` page each of the three lists (the console shows a page at a time).
    """
    if cycle_id is not None:
        repo.cycle(conn, cycle_id)
    parts = conn.execute(
        text(
            "SELECT p.participation_id, p.cycle_id, p.user_id, p.character_name, p.status, p.amount, "
            "p.pledged, p.payer_character_id, p.match_type, p.validated_at, p.created_at, "
            "COALESCE(array_agg(l.journal_id ORDER BY l.linked_at, l.journal_id) "
            "FILTER (WHERE l.journal_id IS NOT NULL), '{}') AS journal_ids "
            "FROM journal_participations p "
            "LEFT JOIN journal_payment_links l ON l.participation_id = p.participation_id "
            "WHERE CAST(:c AS text) IS NULL OR p.cycle_id = :c "
            "GROUP BY p.participation_id ORDER BY p.cycle_id, p.created_at, p.participation_id "
            "LIMIT :n OFFSET :off"
        ),
        {"c": cycle_id, "n": limit, "off": offset},
    )
    pending = conn.execute(text(
        "SELECT e.journal_id, e.character_id, e.first_party_id, e.amount, e.reason, e.date, "
        "e.review_state, e.review_note " + repo.CANDIDATE_PAYMENTS + " ORDER BY e.date, e.journal_id"
    ))
    unmatched, ambiguous = [], []
    cycle_of: dict[str, str] | None = None
    for r in pending:
        doc = {
            "journal_id": r.journal_id,
            "character_id": r.character_id,
            "payer_character_id": r.first_party_id,
            "amount": r.amount,
            "memo": r.reason,
            "date": r.date.isoformat(),
        }
        note = r.review_note or {}
        if r.review_state == "ambiguous":
            tied = note.get("participation_ids", [])
            if cycle_id is not None:
                cycle_of = cycle_of if cycle_of is not None else _cycles_of(conn, cycle_id)
                if not any(cycle_of.get(p) == cycle_id for p in tied):
                    continue
            ambiguous.append({**doc, "participation_ids": tied, "score": note.get("score")})
        else:
            unmatched.append({**doc, "reviewed": r.review_state is not None,
                              "near_participation_ids": note.get("participation_ids", []),
                              "near_score": note.get("score")})
    if limit is not None:
        unmatched, ambiguous = (unmatched[offset:offset + limit], ambiguous[offset:offset + limit])
    return {
        "participations": [
            {
                "participation_id": p.participation_id,
                "status": p.status,
                "amount": p.amount,
                "pledged": p.pledged,
                "payer_character_id": p.payer_character_id,
                "journal_ids": list(p.journal_ids),
                "match_type": p.match_type,
                "cycle_id": p.cycle_id,
                "user_id": p.user_id,
                "character_name": p.character_name,
                "payment": _paid(p.amount, p.pledged) if p.status == OPTED_IN else None,
                "validated_at": p.validated_at.isoformat() if p.validated_at else None,
                "created_at": p.created_at.isoformat(),
            }
            for p in parts
        ],
        "unmatched": unmatched,
        "ambiguous": ambiguous,
    }


def _paid(received: int, pledged: int) -> str:
    """``exact``, ``partial`` or ``over``: what the participation received against its pledge."""
    state = payment_state(received, pledged)
    return "exact" if state == MATCHED else state


def _cycles_of(conn: Connection, cycle_id: str) -> dict[str, str]:
    rows = conn.execute(
        text("SELECT participation_id, cycle_id FROM journal_participations WHERE cycle_id = :c"),
        {"c": cycle_id},
    )
    return {r.participation_id: r.cycle_id for r in rows}


def cycle_view(conn: Connection, cycle_id: str) -> dict[str, Any]:
    """A cycle: status, how many participations, what was confirmed, the initial capital."""
    cyc = repo.cycle(conn, cycle_id)
    counts = conn.execute(
        text(
            "SELECT status, count(*) AS n, COALESCE(sum(amount), 0) AS received "
            "FROM journal_participations WHERE cycle_id = :c GROUP BY status"
        ),
        {"c": cycle_id},
    )
    by_status = {r.status: {"count": int(r.n), "amount": int(r.received)} for r in counts}
    balance = conn.execute(
        text("SELECT balance FROM accounts WHERE code = :a"), {"a": f"cycle:{cycle_id}"}
    ).scalar_one_or_none()
    return {
        "cycle_id": cyc.cycle_id,
        "status": cyc.status,
        "participations": sum(s["count"] for s in by_status.values()),
        "confirmed_amount": by_status.get(OPTED_IN, {}).get("amount", 0),
        "initial_capital": cyc.initial_capital,
        "by_status": {k: v["count"] for k, v in sorted(by_status.items())},
        "account_balance": int(balance or 0),
        "opened_at": cyc.opened_at.isoformat() if cyc.opened_at else None,
    }
