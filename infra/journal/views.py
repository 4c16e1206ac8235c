"""Operator views: ``ballast matching report`` and ``ballast cycle show`` (CONTRACT.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from domain import accounts
from domain.matching import AWAITING, MATCHED, OPTED_IN, Candidate, payment_state, suggest
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
            "character_id": repo.game_id(r.character_id),
            "payer_character_id": repo.game_id(r.first_party_id),
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
    awaiting = conn.execute(
        text(
            "SELECT p.participation_id, p.cycle_id, p.user_id, p.character_name, p.memo, p.pledged, "
            "p.created_at, CAST(EXTRACT(EPOCH FROM now() - p.created_at) AS bigint) AS age "
            "FROM journal_participations p WHERE p.status = :awaiting "
            "AND (CAST(:c AS text) IS NULL OR p.cycle_id = :c) ORDER BY p.created_at, p.participation_id"
        ),
        {"c": cycle_id, "awaiting": AWAITING},
    )
    _add_suggestions(conn, unmatched, cycle_id)
    return {
        "awaiting": [
            {"participation_id": a.participation_id, "cycle_id": a.cycle_id, "user_id": a.user_id,
             "character_name": a.character_name, "memo": a.memo, "pledged": a.pledged,
             "created_at": a.created_at.isoformat(), "age_seconds": int(a.age)}
            for a in awaiting
        ],
        "participations": [
            {
                "participation_id": p.participation_id,
                "status": p.status,
                "amount": p.amount,
                "pledged": p.pledged,
                "payer_character_id": repo.game_id(p.payer_character_id),
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


def _add_suggestions(conn: Connection, unmatched: list[dict[str, Any]], cycle_id: str | None) -> None:
    """Each payment without a usable memo gets ranked suggestions (same amount as a pledge,
    the payer's known character, nearest date) for a person to review; nothing is linked."""
    if not unmatched:
        return
    parts = conn.execute(
        text(
            "SELECT p.participation_id, p.user_id, lower(p.character_name) AS name, p.pledged, "
            "CAST(EXTRACT(EPOCH FROM p.created_at) AS bigint) AS at "
            "FROM journal_participations p JOIN journal_cycles c USING (cycle_id) "
            "WHERE c.status = 'planned' AND p.status IN (:awaiting, :opted) "
            "AND (CAST(:c AS text) IS NULL OR p.cycle_id = :c)"
        ),
        {"awaiting": AWAITING, "opted": OPTED_IN, "c": cycle_id},
    ).all()
    if not parts:
        for u in unmatched:
            u["suggestions"] = []
        return
    # Character ids are the game's integers in documents and text in the tables.
    payers = sorted({str(u["payer_character_id"]) for u in unmatched
                     if u["payer_character_id"] is not None})
    names = dict(conn.execute(
        text("SELECT character_id, lower(name) FROM journal_characters "
             "WHERE character_id = ANY(CAST(:ids AS text[]))"), {"ids": payers}).all())
    paid_for = {(r.payer, r.user_id) for r in conn.execute(
        text("SELECT DISTINCT l.payer_character_id AS payer, p.user_id FROM journal_payment_links l "
             "JOIN journal_participations p USING (participation_id) "
             "WHERE l.payer_character_id = ANY(CAST(:ids AS text[]))"), {"ids": payers})}
    by_id = {p.participation_id: p for p in parts}
    by_amount: dict[int, list] = {}
    by_name: dict[str, list] = {}
    by_user: dict[str, list] = {}
    for p in parts:
        by_amount.setdefault(int(p.pledged), []).append(p)
        by_name.setdefault(p.name, []).append(p)
        by_user.setdefault(p.user_id, []).append(p)
    for u in unmatched:
        payer = None if u["payer_character_id"] is None else str(u["payer_character_id"])
        known = {p.participation_id for p in by_name.get(names.get(payer, ""), [])}
        known |= {p.participation_id for (who, user) in paid_for if who == payer
                  for p in by_user.get(user, [])}
        pool = {p.participation_id: p for p in by_amount.get(int(u["amount"]), [])}
        pool.update({pid: by_id[pid] for pid in known})
        paid_at = int(datetime.fromisoformat(u["date"]).timestamp())
        u["suggestions"] = [
            {"participation_id": s.participation_id, "reasons": list(s.reasons),
             "seconds_apart": s.seconds_apart}
            for s in suggest(int(u["amount"]), paid_at,
                             [Candidate(p.participation_id, int(p.pledged), int(p.at),
                                        p.participation_id in known) for p in pool.values()])
        ]


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
        text("SELECT balance FROM accounts WHERE code = :a"), {"a": accounts.cycle(cycle_id)}
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
        "closing_capital": None if cyc.closing_capital is None else int(cyc.closing_capital),
        "closed_at": cyc.closed_at.isoformat() if cyc.closed_at else None,
        "closed_by": cyc.closed_by,
    }
