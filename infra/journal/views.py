"""Operator views: ``ballast matching report`` and ``ballast cycle show`` (CONTRACT.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, text

from domain import accounts
from domain.matching import (
    AWAITING,
    CYCLE_TAKING_PAYMENTS,
    MATCHED,
    OPTED_IN,
    TAKING_PAYMENT,
    Candidate,
    payment_state,
    suggest,
)
from infra.db.tables import accounts as accounts_t
from infra.db.tables import journal_characters as characters
from infra.db.tables import journal_participations as participations_t
from infra.db.tables import journal_payment_links as links_t
from infra.journal import repository as repo


def report(conn: Connection, cycle_id: str | None = None, limit: int | None = None,
           offset: int = 0) -> dict[str, Any]:
    """Participations with what they received and from which payments; payments left
    unmatched; payments left for review because they fit several participations.

    Unmatched payments belong to no cycle: they are listed whatever ``cycle_id``.
    Ambiguous ones are listed for a cycle when one of their candidates is in it.
    ``limit``/``offset`` page each of the three lists in SQL (the console pages each one
    on its own with ``participations``, ``unmatched`` and ``ambiguous``).
    """
    if cycle_id is not None:
        repo.cycle(conn, cycle_id)
    awaiting = conn.execute(
        text(
            "SELECT p.participation_id, p.cycle_id, p.user_id, p.character_name, p.memo, p.pledged, "
            "p.created_at, CAST(EXTRACT(EPOCH FROM now() - p.created_at) AS bigint) AS age "
            "FROM journal_participations p WHERE p.status = :awaiting "
            "AND (CAST(:c AS text) IS NULL OR p.cycle_id = :c) ORDER BY p.created_at, p.participation_id "
            "LIMIT :n OFFSET :off"
        ),
        {"c": cycle_id, "awaiting": AWAITING, "n": limit, "off": offset},
    )
    return {
        "awaiting": [
            {"participation_id": a.participation_id, "cycle_id": a.cycle_id, "user_id": a.user_id,
             "character_name": a.character_name, "memo": a.memo, "pledged": a.pledged,
             "created_at": a.created_at.isoformat(), "age_seconds": int(a.age)}
            for a in awaiting
        ],
        "participations": participations(conn, cycle_id, limit, offset),
        "unmatched": unmatched(conn, cycle_id, limit, offset),
        "ambiguous": ambiguous(conn, cycle_id, limit, offset),
    }


def participations(conn: Connection, cycle_id: str | None, limit: int | None = None,
                   offset: int = 0) -> list[dict[str, Any]]:
    """A page of participations (of ``cycle_id``, or of every cycle) with their payments."""
    parts = conn.execute(
        text(
            "SELECT p.participation_id, p.cycle_id, p.user_id, p.character_name, p.status, p.amount, "
            "p.pledged, p.payer_character_id, p.match_type, p.validated_at, p.created_at, "
            "COALESCE((SELECT array_agg(l.journal_id ORDER BY l.linked_at, l.journal_id) "
            "FROM journal_payment_links l WHERE l.participation_id = p.participation_id), "
            "'{}') AS journal_ids "
            "FROM journal_participations p "
            "WHERE CAST(:c AS text) IS NULL OR p.cycle_id = :c "
            "ORDER BY p.cycle_id, p.created_at, p.participation_id "
            "LIMIT :n OFFSET :off"
        ),
        {"c": cycle_id, "n": limit, "off": offset},
    )
    return [
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
    ]


def participation_count(conn: Connection, cycle_id: str | None) -> int:
    query = select(func.count()).select_from(participations_t)
    if cycle_id is not None:
        query = query.where(participations_t.c.cycle_id == cycle_id)
    return int(conn.execute(query).scalar_one())


#: Ambiguous payments with a candidate in cycle ``:c`` (or every one when ``:c`` is null).
#: (The candidates are looked up by primary key, a few per payment, never the cycle's list.)
_AMBIGUOUS = (" AND e.review_state = 'ambiguous' AND (CAST(:c AS text) IS NULL OR :c = ANY(ARRAY("
              "SELECT p.cycle_id FROM journal_participations p WHERE p.participation_id = ANY(ARRAY("
              "SELECT jsonb_array_elements_text(COALESCE(e.review_note->'participation_ids', "
              "'[]'::jsonb)))))))")
_UNMATCHED = " AND e.review_state IS DISTINCT FROM 'ambiguous'"


def _pending(conn: Connection, where: str, cycle_id: str | None, limit: int | None,
             offset: int):
    return conn.execute(text(
        "SELECT e.journal_id, e.character_id, e.first_party_id, e.amount, e.reason, e.date, "
        "e.review_state, e.review_note " + repo.CANDIDATE_PAYMENTS + where
        + " ORDER BY e.date, e.journal_id LIMIT :n OFFSET :off"),
        {"c": cycle_id, "n": limit, "off": offset, **repo.CANDIDATE_PARAMS})


def _payment(r) -> dict[str, Any]:
    return {
        "journal_id": r.journal_id,
        "character_id": repo.game_id(r.character_id),
        "payer_character_id": repo.game_id(r.first_party_id),
        "amount": r.amount,
        "memo": r.reason,
        "date": r.date.isoformat(),
    }


def unmatched(conn: Connection, cycle_id: str | None = None, limit: int | None = None,
              offset: int = 0) -> list[dict[str, Any]]:
    """A page of the payments no participation took, each with ranked suggestions (those
    of ``cycle_id``'s participations when given).  Unmatched payments belong to no cycle."""
    out = []
    for r in _pending(conn, _UNMATCHED, None, limit, offset):
        note = r.review_note or {}
        out.append({**_payment(r), "reviewed": r.review_state is not None,
                    "near_participation_ids": note.get("participation_ids", []),
                    "near_score": note.get("score")})
    _add_suggestions(conn, out, cycle_id)
    return out


def ambiguous(conn: Connection, cycle_id: str | None = None, limit: int | None = None,
              offset: int = 0) -> list[dict[str, Any]]:
    """A page of the payments left for review because they fit several participations
    (for a cycle: those with a candidate in it)."""
    out = []
    for r in _pending(conn, _AMBIGUOUS, cycle_id, limit, offset):
        note = r.review_note or {}
        out.append({**_payment(r), "participation_ids": note.get("participation_ids", []),
                    "score": note.get("score")})
    return out


def pending_counts(conn: Connection, cycle_id: str | None = None) -> dict[str, int]:
    """How many payments are unmatched and how many ambiguous (as the lists above count)."""
    row = conn.execute(text(
        "SELECT count(*) FILTER (WHERE e.review_state IS DISTINCT FROM 'ambiguous') AS unmatched, "
        "count(*) FILTER (WHERE true" + _AMBIGUOUS + ") AS ambiguous "
        + repo.CANDIDATE_PAYMENTS), {"c": cycle_id, **repo.CANDIDATE_PARAMS}).one()
    return {"unmatched": int(row.unmatched), "ambiguous": int(row.ambiguous)}


def _add_suggestions(conn: Connection, unmatched: list[dict[str, Any]], cycle_id: str | None) -> None:
    """Each payment without a usable memo gets ranked suggestions (same amount as a pledge,
    the payer's known character, nearest date) for a person to review; nothing is linked."""
    if not unmatched:
        return
    # Character ids are the game's integers in documents and text in the tables.
    payers = sorted({str(u["payer_character_id"]) for u in unmatched
                     if u["payer_character_id"] is not None})
    parts = conn.execute(
        text(
            "SELECT p.participation_id, p.user_id, lower(p.character_name) AS name, p.pledged, "
            "CAST(EXTRACT(EPOCH FROM p.created_at) AS bigint) AS at "
            "FROM journal_participations p JOIN journal_cycles c USING (cycle_id) "
            "WHERE c.status = :taking AND p.status = ANY(:expecting) "
            "AND (CAST(:c AS text) IS NULL OR p.cycle_id = :c) "
            # Only those one of these payments could be suggested: the same amount as a
            # payment, or a payer's known character or user (a page's worth, not a cycle's).
            "AND (p.pledged = ANY(CAST(:amounts AS bigint[])) "
            "OR lower(p.character_name) IN (SELECT lower(k.name) FROM journal_characters k "
            "WHERE k.character_id = ANY(CAST(:ids AS text[]))) "
            "OR p.user_id IN (SELECT q.user_id FROM journal_payment_links l "
            "JOIN journal_participations q USING (participation_id) "
            "WHERE l.payer_character_id = ANY(CAST(:ids AS text[]))))"
        ),
        {"taking": CYCLE_TAKING_PAYMENTS, "expecting": list(TAKING_PAYMENT), "c": cycle_id,
         "amounts": sorted({int(u["amount"]) for u in unmatched}), "ids": payers},
    ).all()
    if not parts:
        for u in unmatched:
            u["suggestions"] = []
        return
    ch, lk, pt = characters.c, links_t.c, participations_t.c
    names = dict(conn.execute(
        select(ch.character_id, func.lower(ch.name)).where(ch.character_id.in_(payers))).all())
    paid_for = {(r.payer, r.user_id) for r in conn.execute(
        select(lk.payer_character_id.label("payer"), pt.user_id).distinct()
        .join_from(links_t, participations_t, pt.participation_id == lk.participation_id)
        .where(lk.payer_character_id.in_(payers)))}
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


def cycle_view(conn: Connection, cycle_id: str) -> dict[str, Any]:
    """A cycle: status, how many participations, what was confirmed, the initial capital."""
    cyc = repo.cycle(conn, cycle_id)
    pt = participations_t.c
    counts = conn.execute(
        select(pt.status, func.count().label("n"),
               func.coalesce(func.sum(pt.amount), 0).label("received"))
        .where(pt.cycle_id == cycle_id).group_by(pt.status))
    by_status = {r.status: {"count": int(r.n), "amount": int(r.received)} for r in counts}
    balance = conn.execute(
        select(accounts_t.c.balance).where(accounts_t.c.code == accounts.cycle(cycle_id))
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
