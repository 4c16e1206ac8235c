"""Challenges, participants, treasury configs, fills and matches in PostgreSQL.

Every function takes the unit of work's open ``Connection`` and commits
nothing.  Whatever changes a challenge's pairing or budget first locks its
row (``get(..., lock=True)``): joins, fills, resolution and settlement of one
challenge run one at a time, and always take that lock before any ledger
account, so they never deadlock on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from sqlalchemy import Connection, text

from domain.challenges import (
    CHALLENGE,
    MATCH,
    Challenge,
    MatchSettlement,
    SideTally,
    TreasuryConfig,
    UserSettlement,
)
from domain.errors import NotFound, Refused


# --- challenges -----------------------------------------------------------------------

def get(conn: Connection, challenge_id: str, *, lock: bool = False) -> Challenge:
    row = conn.execute(
        text("SELECT id, title, currency, stake, admin_created, status, result, closes_at, "
             "max_participants FROM challenges WHERE id = :id" + (" FOR UPDATE" if lock else "")),
        {"id": challenge_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"challenge {challenge_id} does not exist")
    return Challenge(row.id, row.title, row.currency, int(row.stake), row.admin_created,
                     row.status, row.result, row.closes_at, row.max_participants)


def exists(conn: Connection, challenge_id: str) -> bool:
    return conn.execute(text("SELECT 1 FROM challenges WHERE id = :id"),
                        {"id": challenge_id}).first() is not None


def add(conn: Connection, challenge: Challenge) -> bool:
    """Insert the challenge; False when it already exists on the same terms.

    Raises Refused when the id is taken by a challenge on other terms.
    """
    inserted = conn.execute(
        text("INSERT INTO challenges (id, title, currency, stake, admin_created, closes_at, "
             "max_participants) VALUES (:id, :title, :cur, :stake, :admin, :closes, :cap) "
             "ON CONFLICT (id) DO NOTHING RETURNING 1"),
        {"id": challenge.challenge_id, "title": challenge.title, "cur": challenge.currency,
         "stake": challenge.stake, "admin": challenge.admin_created,
         "closes": challenge.closes_at, "cap": challenge.max_participants},
    ).scalar_one_or_none()
    if inserted:
        return True
    existing = get(conn, challenge.challenge_id)
    if not existing.same_terms(challenge):
        raise Refused(f"challenge {challenge.challenge_id} already exists with other terms "
                      f"({existing.currency} stake {existing.stake}, "
                      f"admin_created={existing.admin_created}, closes_at={existing.closes_at}, "
                      f"max_participants={existing.max_participants})")
    return False


def db_now(conn: Connection):
    """The transaction's time (the same clock for every worker)."""
    return conn.execute(text("SELECT now()")).scalar_one()


def participant_count(conn: Connection, challenge_id: str) -> int:
    return int(conn.execute(
        text("SELECT count(*) FROM challenge_participants WHERE challenge_id = :c"),
        {"c": challenge_id}).scalar_one())


def _move(new: str, *, only: Sequence[str] = ()) -> dict:
    """Bound parameters of a guarded status UPDATE: the new status and where it may come
    from (all its lifecycle's sources, or ``only`` these, each a legal source)."""
    for current in only:
        CHALLENGE.check(current, new)
    return {"s": new, "from": list(only or CHALLENGE.sources(new))}


def mark_settlement_failed(conn: Connection, challenge_id: str, reason: str) -> bool:
    """A resolved challenge whose settlement failed for good; True when it was resolved."""
    return conn.execute(
        text("UPDATE challenges SET status = :s, settlement_failure = :why, "
             "settlement_failed_at = now() WHERE id = :id AND status = ANY(:from) RETURNING 1"),
        {"id": challenge_id, "why": reason[:500], **_move("settlement_failed")},
    ).first() is not None


def reopen_settlement(conn: Connection, challenge_id: str) -> int:
    """settlement_failed → resolved for a retry; returns the retry's number."""
    return int(conn.execute(
        text("UPDATE challenges SET status = :s, settlement_retries = settlement_retries + 1 "
             "WHERE id = :id AND status = ANY(:from) RETURNING settlement_retries"),
        {"id": challenge_id, **_move("resolved", only=("settlement_failed",))},
    ).scalar_one())


def save_resolution(conn: Connection, challenge: Challenge, resolved_by: str) -> None:
    conn.execute(
        text("UPDATE challenges SET status = :s, result = :r, resolved_by = :by, "
             "resolved_at = now() WHERE id = :id AND status = ANY(:from)"),
        {"id": challenge.challenge_id, "r": challenge.result, "by": resolved_by,
         **_move("resolved", only=("open",))},
    )


def mark_settled(conn: Connection, challenge_id: str) -> None:
    conn.execute(
        text("UPDATE challenges SET status = :s, settled_at = now() "
             "WHERE id = :id AND status = ANY(:from)"),
        {"id": challenge_id, **_move("settled")},
    )


# --- participants and pairing ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Participant:
    id: int
    user_id: str
    side: str


def has_joined(conn: Connection, challenge_id: str, user_id: str) -> bool:
    return conn.execute(
        text("SELECT 1 FROM challenge_participants WHERE challenge_id = :c AND user_id = :u"),
        {"c": challenge_id, "u": user_id},
    ).first() is not None


def add_participant(conn: Connection, challenge: Challenge, user_id: str, side: str,
                    join_transaction_id: int) -> Participant:
    pid = conn.execute(
        text("INSERT INTO challenge_participants "
             "(challenge_id, user_id, side, stake, join_transaction_id) "
             "VALUES (:c, :u, :s, :stake, :t) RETURNING id"),
        {"c": challenge.challenge_id, "u": user_id, "s": side, "stake": challenge.stake,
         "t": join_transaction_id},
    ).scalar_one()
    return Participant(pid, user_id, side)


_WAITING = (
    "p.challenge_id = :c AND p.paired_with IS NULL AND p.treasury_match_id IS NULL "
    "AND p.settled_at IS NULL "
    # a user held by a fill in progress is not waiting any more
    "AND NOT EXISTS (SELECT 1 FROM treasury_matches m WHERE m.participant_id = p.id)"
)


def waiting_counts(conn: Connection, challenge_id: str) -> dict[str, int]:
    rows = conn.execute(
        text(f"SELECT p.side, count(*) AS n FROM challenge_participants p WHERE {_WAITING} "
             "GROUP BY p.side"),
        {"c": challenge_id},
    )
    counts = {"YES": 0, "NO": 0}
    counts.update({r.side: int(r.n) for r in rows})
    return counts


def waiting(conn: Connection, challenge_id: str, side: str, limit: int) -> list[Participant]:
    """The side's earliest unmatched users, oldest first."""
    rows = conn.execute(
        text(f"SELECT p.id, p.user_id, p.side FROM challenge_participants p WHERE {_WAITING} "
             "AND p.side = :s ORDER BY p.id LIMIT :n"),
        {"c": challenge_id, "s": side, "n": limit},
    )
    return [Participant(r.id, r.user_id, r.side) for r in rows]


def pair(conn: Connection, pairs: Sequence[tuple[Participant, Participant]]) -> None:
    if not pairs:
        return
    ids_a = [a.id for a, b in pairs] + [b.id for a, b in pairs]
    ids_b = [b.id for a, b in pairs] + [a.id for a, b in pairs]
    conn.execute(
        text("UPDATE challenge_participants p SET paired_with = x.other FROM "
             "unnest(CAST(:a AS bigint[]), CAST(:b AS bigint[])) AS x(id, other) WHERE p.id = x.id"),
        {"a": ids_a, "b": ids_b},
    )


def tallies(conn: Connection, challenge_id: str) -> tuple[SideTally, SideTally]:
    rows = conn.execute(
        text("SELECT side, count(*) AS n, COALESCE(sum(stake), 0) AS total, "
             "count(*) FILTER (WHERE paired_with IS NULL AND treasury_match_id IS NULL) AS unmatched "
             "FROM challenge_participants WHERE challenge_id = :c GROUP BY side"),
        {"c": challenge_id},
    )
    by_side = {r.side: SideTally(int(r.n), int(r.total), int(r.unmatched)) for r in rows}
    return by_side.get("YES", SideTally()), by_side.get("NO", SideTally())


# --- the treasury config --------------------------------------------------------------

def config(conn: Connection, challenge_id: str, *, lock: bool = False) -> TreasuryConfig | None:
    row = conn.execute(
        text("SELECT max_risk, allocated, reserved, filled_count, notes FROM challenge_treasury "
             "WHERE challenge_id = :c" + (" FOR UPDATE" if lock else "")),
        {"c": challenge_id},
    ).one_or_none()
    if row is None:
        return None
    return TreasuryConfig(int(row.max_risk), int(row.allocated), int(row.reserved),
                          int(row.filled_count), row.notes)


def save_config(conn: Connection, challenge_id: str, cfg: TreasuryConfig, by: str | None = None) -> None:
    conn.execute(
        text("INSERT INTO challenge_treasury (challenge_id, max_risk, allocated, reserved, "
             "filled_count, notes, configured_by) VALUES (:c, :m, :a, :r, :f, :n, :by) "
             "ON CONFLICT (challenge_id) DO UPDATE SET max_risk = EXCLUDED.max_risk, "
             "allocated = EXCLUDED.allocated, reserved = EXCLUDED.reserved, "
             "filled_count = EXCLUDED.filled_count, notes = EXCLUDED.notes, "
             "configured_by = COALESCE(:by_update, challenge_treasury.configured_by), "
             "updated_at = now()"),
        {"c": challenge_id, "m": cfg.max_risk, "a": cfg.allocated, "r": cfg.reserved,
         "f": cfg.filled_count, "n": cfg.notes, "by": by or "system", "by_update": by},
    )


def record_config_change(conn: Connection, challenge_id: str, cfg: TreasuryConfig, admin_id: str) -> None:
    conn.execute(
        text("INSERT INTO challenge_treasury_changes (challenge_id, max_risk, notes, admin_id) "
             "VALUES (:c, :m, :n, :a)"),
        {"c": challenge_id, "m": cfg.max_risk, "n": cfg.notes, "a": admin_id},
    )


# --- fills and matches ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fill:
    id: int
    challenge_id: str
    side: str
    requested: int
    status: str
    admin_id: str


@dataclass(frozen=True, slots=True)
class Persona:
    id: int
    code: str
    display_name: str
    category: str


@dataclass(frozen=True, slots=True)
class ReservedMatch:
    match_id: int
    participant_id: int
    user_id: str
    user_side: str
    persona: Persona


def add_fill(conn: Connection, challenge_id: str, side: str, requested: int, admin_id: str,
             request_id: str) -> int:
    return conn.execute(
        text("INSERT INTO treasury_fills (challenge_id, side, requested, admin_id, request_id) "
             "VALUES (:c, :s, :n, :a, :r) RETURNING id"),
        {"c": challenge_id, "s": side, "n": requested, "a": admin_id, "r": request_id},
    ).scalar_one()


def get_fill(conn: Connection, fill_id: int, challenge_id: str) -> Fill:
    row = conn.execute(
        text("SELECT id, challenge_id, side, requested, status, admin_id FROM treasury_fills "
             "WHERE id = :id AND challenge_id = :c FOR UPDATE"),
        {"id": fill_id, "c": challenge_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"fill {fill_id} of challenge {challenge_id} does not exist")
    return Fill(row.id, row.challenge_id, row.side, row.requested, row.status, row.admin_id)


def record_assignment(conn: Connection, fill_id: int, assigned: int, shortfall: int,
                      reasons: Iterable[str]) -> None:
    conn.execute(
        text("UPDATE treasury_fills SET assigned = :n, shortfall = :s, shortfall_reasons = :r, "
             "status = CASE WHEN :n > 0 THEN 'assigned' ELSE 'empty' END, assigned_at = now(), "
             "completed_at = CASE WHEN :n > 0 THEN NULL ELSE now() END WHERE id = :id"),
        {"id": fill_id, "n": assigned, "s": shortfall, "r": list(reasons)},
    )


def finish_fill(conn: Connection, fill_id: int, status: str, *, reason: str | None = None,
                transaction_id: int | None = None) -> None:
    conn.execute(
        text("UPDATE treasury_fills SET status = :st, failure_reason = :why, "
             "transaction_id = :t, completed_at = now() WHERE id = :id"),
        {"id": fill_id, "st": status, "why": reason, "t": transaction_id},
    )


def unused_personas(conn: Connection, challenge_id: str) -> list[Persona]:
    rows = conn.execute(
        text("SELECT p.id, p.code, p.display_name, p.category FROM shadow_personas p "
             "WHERE p.active AND NOT EXISTS (SELECT 1 FROM treasury_matches m "
             "WHERE m.challenge_id = :c AND m.persona_id = p.id) ORDER BY p.id"),
        {"c": challenge_id},
    )
    return [Persona(r.id, r.code, r.display_name, r.category) for r in rows]


def reserve(conn: Connection, fill: Fill, pairs: Sequence[tuple[Participant, Persona]],
            stake: int) -> None:
    """Hold the users and personas of a fill (the database refuses a persona twice)."""
    conn.execute(
        text("INSERT INTO treasury_matches (challenge_id, fill_id, participant_id, persona_id, "
             "user_id, user_side, stake) SELECT :c, :f, x.pid, x.persona, x.uid, :side, :stake "
             "FROM unnest(CAST(:pids AS bigint[]), CAST(:personas AS int[]), "
             "CAST(:uids AS text[])) AS x(pid, persona, uid)"),
        {"c": fill.challenge_id, "f": fill.id, "side": fill.side, "stake": stake,
         "pids": [u.id for u, _ in pairs], "personas": [p.id for _, p in pairs],
         "uids": [u.user_id for u, _ in pairs]},
    )


def reserved_of_fill(conn: Connection, fill_id: int) -> list[ReservedMatch]:
    rows = conn.execute(
        text("SELECT m.id, m.participant_id, m.user_id, m.user_side, p.id AS persona_id, p.code, "
             "p.display_name, p.category FROM treasury_matches m "
             "JOIN shadow_personas p ON p.id = m.persona_id "
             "WHERE m.fill_id = :f AND m.status = 'reserved' ORDER BY m.participant_id"),
        {"f": fill_id},
    )
    return [ReservedMatch(r.id, r.participant_id, r.user_id, r.user_side,
                          Persona(r.persona_id, r.code, r.display_name, r.category)) for r in rows]


def activate(conn: Connection, matches: Sequence[ReservedMatch]) -> None:
    """The reserved matches became real: the users are paired with their personas."""
    ids = [m.match_id for m in matches]
    conn.execute(
        text("UPDATE treasury_matches SET status = :s, matched_at = now() "
             "WHERE id = ANY(:ids) AND status = ANY(:from)"),
        {"ids": ids, "s": "active", "from": list(MATCH.sources("active"))},
    )
    conn.execute(
        text("UPDATE challenge_participants p SET treasury_match_id = m.id FROM treasury_matches m "
             "WHERE m.id = ANY(:ids) AND p.id = m.participant_id"),
        {"ids": ids},
    )


def release(conn: Connection, fill_id: int) -> int:
    """Drop a fill's reservations (they never became matches); returns the stake they held."""
    held = conn.execute(
        text("DELETE FROM treasury_matches WHERE fill_id = :f AND status = 'reserved' "
             "RETURNING stake"),
        {"f": fill_id},
    ).scalars().all()
    return int(sum(held))


def open_fills(conn: Connection, challenge_id: str) -> list[int]:
    return list(conn.execute(
        text("SELECT id FROM treasury_fills WHERE challenge_id = :c "
             "AND status IN ('requested', 'assigned') ORDER BY id FOR UPDATE"),
        {"c": challenge_id},
    ).scalars())


# --- settlement -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Seat:
    """One participant awaiting settlement and who, if anyone, faces them."""

    participant_id: int
    user_id: str
    side: str
    stake: int
    opponent: str | None  # user | treasury | None (unpaired)
    match_id: int | None


def unsettled(conn: Connection, challenge_id: str, limit: int) -> list[Seat]:
    rows = conn.execute(
        text("SELECT id, user_id, side, stake, treasury_match_id, "
             "CASE WHEN paired_with IS NOT NULL THEN 'user' "
             "WHEN treasury_match_id IS NOT NULL THEN 'treasury' END AS opponent "
             "FROM challenge_participants WHERE challenge_id = :c AND settled_at IS NULL "
             "ORDER BY id LIMIT :n"),
        {"c": challenge_id, "n": limit},
    )
    return [Seat(r.id, r.user_id, r.side, int(r.stake), r.opponent, r.treasury_match_id)
            for r in rows]


def settle_seats(conn: Connection, seats: Sequence[tuple[Seat, UserSettlement]],
                 transaction_id: int | None) -> None:
    conn.execute(
        text("UPDATE challenge_participants p SET outcome = x.outcome, payout = x.payout, "
             "settle_transaction_id = CASE WHEN x.payout > 0 THEN CAST(:t AS bigint) END, "
             "settled_at = now() FROM unnest(CAST(:ids AS bigint[]), CAST(:outcomes AS text[]), "
             "CAST(:payouts AS bigint[])) AS x(id, outcome, payout) "
             "WHERE p.id = x.id AND p.settled_at IS NULL"),
        {"t": transaction_id, "ids": [s.participant_id for s, _ in seats],
         "outcomes": [o.outcome for _, o in seats], "payouts": [o.payout for _, o in seats]},
    )


def settle_matches(conn: Connection, matches: Sequence[tuple[int, MatchSettlement]]) -> None:
    if not matches:
        return
    conn.execute(
        text("UPDATE treasury_matches m SET status = x.status, result = x.result, "
             "treasury_payout = x.payout, pnl = x.pnl, settled_at = now() "
             "FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]), "
             "CAST(:results AS text[]), CAST(:payouts AS bigint[]), CAST(:pnls AS bigint[])) "
             "AS x(id, status, result, payout, pnl) "
             "WHERE m.id = x.id AND m.status = 'active'"),
        {"ids": [i for i, _ in matches], "statuses": [MATCH.check("active", m.status)
                                                      for _, m in matches],
         "results": [m.result for _, m in matches],
         "payouts": [m.payout for _, m in matches], "pnls": [m.pnl for _, m in matches]},
    )


def settled_matches(conn: Connection, challenge_id: str) -> list[MatchSettlement]:
    rows = conn.execute(
        text("SELECT result, treasury_payout, pnl FROM treasury_matches "
             "WHERE challenge_id = :c AND status IN ('settled', 'refunded') ORDER BY id"),
        {"c": challenge_id},
    )
    return [MatchSettlement(r.result, int(r.treasury_payout), int(r.pnl)) for r in rows]


def user_outcomes(conn: Connection, challenge_id: str) -> dict[str, int]:
    rows = conn.execute(
        text("SELECT outcome, count(*) AS n FROM challenge_participants "
             "WHERE challenge_id = :c AND outcome IS NOT NULL GROUP BY outcome"),
        {"c": challenge_id},
    )
    counts = {"won": 0, "lost": 0, "refunded": 0}
    counts.update({r.outcome: int(r.n) for r in rows})
    return counts
