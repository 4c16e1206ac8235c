"""Challenges, participants, treasury configs, fills and matches in PostgreSQL.

Every function takes the unit of work's open ``Connection`` and commits
nothing.  Whatever changes a challenge's pairing or budget first locks its
row (``get(..., lock=True)``): joins, fills, resolution and settlement of one
challenge run one at a time, and always take that lock before any ledger
account, so they never deadlock on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from sqlalchemy import Connection

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
from infra import alerts, outbox
from infra.db.engine import sql


# --- challenges -----------------------------------------------------------------------

def get(conn: Connection, challenge_id: str, *, lock: bool = False) -> Challenge:
    row = conn.execute(
        sql("SELECT id, title, currency, stake, admin_created, status, result, closes_at, "
             "max_participants FROM challenges WHERE id = :id" + (" FOR UPDATE" if lock else "")),
        {"id": challenge_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"challenge {challenge_id} does not exist")
    return Challenge(row.id, row.title, row.currency, int(row.stake), row.admin_created,
                     row.status, row.result, row.closes_at, row.max_participants)


def add(conn: Connection, challenge: Challenge) -> bool:
    """Insert the challenge; False when it already exists on the same terms.

    Raises Refused when the id is taken by a challenge on other terms.
    """
    inserted = conn.execute(
        sql("INSERT INTO challenges (id, title, currency, stake, admin_created, closes_at, "
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


def _move(new: str, *, only: Sequence[str] = ()) -> dict:
    """Bound parameters of a guarded status UPDATE: the new status and where it may come
    from (all its lifecycle's sources, or ``only`` these, each a legal source)."""
    for current in only:
        CHALLENGE.check(current, new)
    return {"s": new, "from": list(only or CHALLENGE.sources(new))}


def mark_settlement_failed(conn: Connection, challenge_id: str, reason: str) -> bool:
    """A resolved challenge whose settlement failed for good; True when it was resolved."""
    return conn.execute(
        sql("UPDATE challenges SET status = :s, settlement_failure = :why, "
             "settlement_failed_at = now() WHERE id = :id AND status = ANY(:from) RETURNING 1"),
        {"id": challenge_id, "why": reason[:500], **_move("settlement_failed")},
    ).first() is not None


def reopen_settlement(conn: Connection, challenge_id: str) -> int:
    """settlement_failed → resolved for a retry; returns the retry's number."""
    return int(conn.execute(
        sql("UPDATE challenges SET status = :s, settlement_retries = settlement_retries + 1 "
             "WHERE id = :id AND status = ANY(:from) RETURNING settlement_retries"),
        {"id": challenge_id, **_move("resolved", only=("settlement_failed",))},
    ).scalar_one())


# --- participants and pairing ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Participant:
    id: int
    user_id: str
    side: str


_WAITING = (
    "p.challenge_id = :c AND p.paired_with IS NULL AND p.treasury_match_id IS NULL "
    "AND p.settled_at IS NULL "
    # a user held by a fill in progress is not waiting any more
    "AND NOT EXISTS (SELECT 1 FROM treasury_matches m WHERE m.participant_id = p.id)"
)


def waiting_counts(conn: Connection, challenge_id: str) -> dict[str, int]:
    rows = conn.execute(
        sql(f"SELECT p.side, count(*) AS n FROM challenge_participants p WHERE {_WAITING} "
             "GROUP BY p.side"),
        {"c": challenge_id},
    )
    counts = {"YES": 0, "NO": 0}
    counts.update({r.side: int(r.n) for r in rows})
    return counts


def waiting(conn: Connection, challenge_id: str, side: str, limit: int) -> list[Participant]:
    """The side's earliest unmatched users, oldest first."""
    rows = conn.execute(
        sql(f"SELECT p.id, p.user_id, p.side FROM challenge_participants p WHERE {_WAITING} "
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
        sql("UPDATE challenge_participants p SET paired_with = x.other FROM "
             "unnest(CAST(:a AS bigint[]), CAST(:b AS bigint[])) AS x(id, other) WHERE p.id = x.id"),
        {"a": ids_a, "b": ids_b},
    )


def tallies(conn: Connection, challenge_id: str) -> tuple[SideTally, SideTally]:
    rows = conn.execute(
        sql("SELECT side, count(*) AS n, COALESCE(sum(stake), 0) AS total, "
             "count(*) FILTER (WHERE paired_with IS NULL AND treasury_match_id IS NULL) AS unmatched "
             "FROM challenge_participants WHERE challenge_id = :c GROUP BY side"),
        {"c": challenge_id},
    )
    by_side = {r.side: SideTally(int(r.n), int(r.total), int(r.unmatched)) for r in rows}
    return by_side.get("YES", SideTally()), by_side.get("NO", SideTally())


# --- the treasury config --------------------------------------------------------------

def config(conn: Connection, challenge_id: str, *, lock: bool = False) -> TreasuryConfig | None:
    row = conn.execute(
        sql("SELECT max_risk, allocated, reserved, filled_count, notes FROM challenge_treasury "
             "WHERE challenge_id = :c" + (" FOR UPDATE" if lock else "")),
        {"c": challenge_id},
    ).one_or_none()
    if row is None:
        return None
    return TreasuryConfig(int(row.max_risk), int(row.allocated), int(row.reserved),
                          int(row.filled_count), row.notes)


def save_config(conn: Connection, challenge_id: str, cfg: TreasuryConfig, by: str | None = None) -> None:
    conn.execute(
        sql("INSERT INTO challenge_treasury (challenge_id, max_risk, allocated, reserved, "
             "filled_count, notes, configured_by) VALUES (:c, :m, :a, :r, :f, :n, :by) "
             "ON CONFLICT (challenge_id) DO UPDATE SET max_risk = EXCLUDED.max_risk, "
             "allocated = EXCLUDED.allocated, reserved = EXCLUDED.reserved, "
             "filled_count = EXCLUDED.filled_count, notes = EXCLUDED.notes, "
             "configured_by = COALESCE(:by_update, challenge_treasury.configured_by), "
             "updated_at = now()"),
        {"c": challenge_id, "m": cfg.max_risk, "a": cfg.allocated, "r": cfg.reserved,
         "f": cfg.filled_count, "n": cfg.notes, "by": by or "system", "by_update": by},
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


def finish_fill(conn: Connection, fill_id: int, status: str, *, reason: str | None = None,
                transaction_id: int | None = None) -> None:
    conn.execute(
        sql("UPDATE treasury_fills SET status = :st, failure_reason = :why, "
             "transaction_id = :t, completed_at = now() WHERE id = :id"),
        {"id": fill_id, "st": status, "why": reason, "t": transaction_id},
    )


def unused_personas(conn: Connection, challenge_id: str) -> list[Persona]:
    rows = conn.execute(
        sql("SELECT p.id, p.code, p.display_name, p.category FROM shadow_personas p "
             "WHERE p.active AND NOT EXISTS (SELECT 1 FROM treasury_matches m "
             "WHERE m.challenge_id = :c AND m.persona_id = p.id) ORDER BY p.id"),
        {"c": challenge_id},
    )
    return [Persona(r.id, r.code, r.display_name, r.category) for r in rows]


def release(conn: Connection, fill_id: int) -> int:
    """Drop a fill's reservations (they never became matches); returns the stake they held."""
    held = conn.execute(
        sql("DELETE FROM treasury_matches WHERE fill_id = :f AND status = 'reserved' "
             "RETURNING stake"),
        {"f": fill_id},
    ).scalars().all()
    return int(sum(held))


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
        sql("SELECT id, user_id, side, stake, treasury_match_id, "
             "CASE WHEN paired_with IS NOT NULL THEN 'user' "
             "WHEN treasury_match_id IS NOT NULL THEN 'treasury' END AS opponent "
             "FROM challenge_participants WHERE challenge_id = :c AND settled_at IS NULL "
             "ORDER BY id LIMIT :n"),
        {"c": challenge_id, "n": limit},
    )
    return [Seat(r.id, r.user_id, r.side, int(r.stake), r.opponent, r.treasury_match_id)
            for r in rows]


# --- the steps' statements, merged ----------------------------------------------------
#
# Each step locks its challenge row first (``get(..., lock=True)``), then reads what it
# needs in one statement and writes what it decided in one more: a statement that reads
# must start after the lock is held (READ COMMITTED gives each statement a fresh snapshot;
# a read in the locking statement itself would not see what the previous holder
# committed), and every writer of these rows holds the same challenge lock.

def _rows_of(got, what: str):
    return [r for r in got if r.what == what]


def _events_part(events, parts: list[str], selects: list[str], params: dict):
    """Add ``events`` (``(name, data, recipient)``) as the CTE ``ev``; their bodies."""
    if not events:
        return []
    ev_sql, ev_params, bodies = outbox.events_statement(events)
    parts.append(f"ev AS ({ev_sql})")
    params.update(ev_params)
    selects.append("SELECT 'ev' AS what, id, key, NULL::boolean AS inserted, "
                   "NULL::jsonb AS doc FROM ev")
    return bodies


def _resolve_part(keys: Sequence[str], parts: list[str], selects: list[str], params: dict) -> None:
    """Resolve the open alerts of ``keys`` as the CTE ``rs``."""
    if not keys:
        return
    rs_sql, rs_params = alerts.resolve_statement(keys)
    parts.append(f"rs AS ({rs_sql})")
    params.update(rs_params)
    selects.append("SELECT 'rs' AS what, id, dedupe_key AS key, NULL::boolean AS inserted, "
                   "jsonb_build_object('kind', kind, 'severity', severity, 'subject', subject, "
                   "'data', data) AS doc FROM rs")


def _raise_part(items: Sequence["alerts.Alert"], parts: list[str], selects: list[str],
                params: dict) -> None:
    """Open (or refresh) ``items`` as the CTE ``al``."""
    if not items:
        return
    al_sql, al_params = alerts.upsert_statement(items)
    parts.append(f"al AS ({al_sql})")
    params.update(al_params)
    selects.append("SELECT 'al' AS what, id, key, inserted, NULL::jsonb AS doc FROM al")


def _message_part(actor: str | None, kwargs: dict, parts: list[str], selects: list[str],
                  params: dict):
    """A command for ``actor`` as the CTE ``msg``; its row (id set from the result)."""
    if actor is None:
        return None
    msg_sql, msg_params, row = outbox.message_statement(actor, kwargs)
    parts.append(f"msg AS ({msg_sql})")
    params.update(msg_params)
    selects.append("SELECT 'msg' AS what, id, NULL::text AS key, NULL::boolean AS inserted, "
                   "NULL::jsonb AS doc FROM msg")
    return row


@dataclass(frozen=True, slots=True)
class Written:
    """What a merged write statement returned: outbox rows to publish after commit, the
    alerts it resolved (rows for ``alerts.announce_resolved``) and the keys of the alerts
    it newly opened (``{dedupe_key: id}``)."""

    rows: list[outbox.OutboxRow]
    resolved: list
    raised: dict[str, int]


@dataclass(frozen=True, slots=True)
class _Resolved:
    id: int
    kind: str
    severity: str
    subject: str
    dedupe_key: str
    data: dict


def _run(conn: Connection, parts: list[str], selects: list[str], params: dict, *,
         bodies=(), message=None) -> Written:
    if not selects:
        selects.append("SELECT NULL::text AS what, NULL::bigint AS id, NULL::text AS key, "
                       "NULL::boolean AS inserted, NULL::jsonb AS doc WHERE false")
    got = conn.execute(sql(f"WITH {', '.join(parts)} {' UNION ALL '.join(selects)}"),
                       params).all()
    rows = outbox.rows_of(list(bodies), {r.key: r.id for r in _rows_of(got, "ev")}) if bodies else []
    if message is not None:

        rows.append(replace(message, id=_rows_of(got, "msg")[0].id))
    resolved = [_Resolved(r.id, r.doc["kind"], r.doc["severity"], r.doc["subject"], r.key,
                          r.doc["data"]) for r in _rows_of(got, "rs")]
    raised = {r.key: r.id for r in _rows_of(got, "al") if r.inserted}
    return Written(rows, resolved, raised)


def open_new(conn: Connection, challenge: Challenge):
    """Insert the challenge; the transaction's time when it is new (the caller checks its
    terms against it), None when it already existed on the same terms (Refused on others)."""
    now = conn.execute(
        sql("INSERT INTO challenges (id, title, currency, stake, admin_created, closes_at, "
            "max_participants) VALUES (:id, :title, :cur, :stake, :admin, :closes, :cap) "
            "ON CONFLICT (id) DO NOTHING RETURNING now()"),
        {"id": challenge.challenge_id, "title": challenge.title, "cur": challenge.currency,
         "stake": challenge.stake, "admin": challenge.admin_created,
         "closes": challenge.closes_at, "cap": challenge.max_participants},
    ).scalar_one_or_none()
    if now is not None:
        return now
    add(conn, challenge)  # the existing one: same terms, or Refused
    return None


def join_context(conn: Connection, challenge_id: str, user_id: str):
    """``(now, participants, already joined)`` in one statement (after the challenge lock)."""
    row = conn.execute(
        sql("SELECT now() AS now, "
            "(SELECT count(*) FROM challenge_participants WHERE challenge_id = :c) AS n, "
            "EXISTS (SELECT 1 FROM challenge_participants WHERE challenge_id = :c "
            "AND user_id = :u) AS joined"),
        {"c": challenge_id, "u": user_id},
    ).one()
    return row.now, int(row.n), bool(row.joined)


def add_participant_waiting(conn: Connection, challenge: Challenge, user_id: str, side: str,
                            join_transaction_id: int) -> tuple[Participant, list[Participant],
                                                               list[Participant]]:
    """Insert the participant; the new one and, of each side, the ``k`` earliest waiting
    users (the new one included, ``k`` the smaller side's number of waiting users): what
    ``waiting_counts`` and ``waiting`` would read after the insert, in one statement."""
    rows = conn.execute(
        sql("WITH ins AS (INSERT INTO challenge_participants "
            "(challenge_id, user_id, side, stake, join_transaction_id) "
            "VALUES (:c, :u, :s, :stake, :t) RETURNING id, user_id, side), "
            "w AS (SELECT id, user_id, side, true AS mine FROM ins UNION ALL "
            f"SELECT p.id, p.user_id, p.side, false FROM challenge_participants p WHERE {_WAITING}), "
            "r AS (SELECT w.*, row_number() OVER (PARTITION BY side ORDER BY id) AS rn FROM w), "
            "k AS (SELECT LEAST(count(*) FILTER (WHERE side = 'YES'), "
            "count(*) FILTER (WHERE side = 'NO')) AS k FROM w) "
            "SELECT r.id, r.user_id, r.side, r.mine, r.rn <= k.k AS pairable FROM r, k "
            "WHERE r.mine OR r.rn <= k.k ORDER BY r.id"),
        {"c": challenge.challenge_id, "u": user_id, "s": side, "stake": challenge.stake,
         "t": join_transaction_id},
    ).all()
    me = next(Participant(r.id, r.user_id, r.side) for r in rows if r.mine)
    yes = [Participant(r.id, r.user_id, r.side) for r in rows if r.pairable and r.side == "YES"]
    no = [Participant(r.id, r.user_id, r.side) for r in rows if r.pairable and r.side == "NO"]
    return me, yes, no


def pair_with_events(conn: Connection, pairs: Sequence[tuple[Participant, Participant]],
                     events) -> list[outbox.OutboxRow]:
    """``pair`` and the events ``(name, data, recipient)`` in one statement; the outbox rows
    to publish after commit."""
    ids_a = [a.id for a, b in pairs] + [b.id for a, b in pairs]
    ids_b = [b.id for a, b in pairs] + [a.id for a, b in pairs]
    parts = ["pr AS (UPDATE challenge_participants p SET paired_with = x.other FROM "
             "unnest(CAST(:pa AS bigint[]), CAST(:pb AS bigint[])) AS x(id, other) "
             "WHERE p.id = x.id)"]
    params: dict = {"pa": ids_a, "pb": ids_b}
    selects: list[str] = []
    bodies = _events_part(events, parts, selects, params)
    return _run(conn, parts, selects, params, bodies=bodies).rows


def save_config_recorded(conn: Connection, challenge_id: str, cfg: TreasuryConfig, admin_id: str,
                         resolve_keys: Sequence[str] = ()) -> Written:
    """``save_config`` + ``record_config_change`` (+ resolving the alerts of
    ``resolve_keys``) in one statement."""
    parts = [f"cf AS ({_SAVE_CONFIG})",
             "ch AS (INSERT INTO challenge_treasury_changes (challenge_id, max_risk, notes, "
             "admin_id) VALUES (:c, :m, :n, :by))"]
    params = _config_params(challenge_id, cfg, admin_id)
    selects: list[str] = []
    _resolve_part(resolve_keys, parts, selects, params)
    return _run(conn, parts, selects, params)


_SAVE_CONFIG = (
    "INSERT INTO challenge_treasury (challenge_id, max_risk, allocated, reserved, "
    "filled_count, notes, configured_by) VALUES (:c, :m, :a, :r, :f, :n, :by) "
    "ON CONFLICT (challenge_id) DO UPDATE SET max_risk = EXCLUDED.max_risk, "
    "allocated = EXCLUDED.allocated, reserved = EXCLUDED.reserved, "
    "filled_count = EXCLUDED.filled_count, notes = EXCLUDED.notes, "
    "configured_by = COALESCE(CAST(:by_update AS text), challenge_treasury.configured_by), "
    "updated_at = now()"
)


def _config_params(challenge_id: str, cfg: TreasuryConfig, by: str | None) -> dict:
    return {"c": challenge_id, "m": cfg.max_risk, "a": cfg.allocated, "r": cfg.reserved,
            "f": cfg.filled_count, "n": cfg.notes, "by": by or "system", "by_update": by}


def fill_context(conn: Connection, fill_id: int, challenge_id: str
                 ) -> tuple[Fill, TreasuryConfig | None, list[ReservedMatch]]:
    """The fill (locked), the challenge's treasury config (locked) and the fill's reserved
    matches, in one statement (after the challenge lock)."""
    row = conn.execute(
        sql("SELECT f.id, f.challenge_id, f.side, f.requested, f.status, f.admin_id, "
            "t.max_risk, t.allocated, t.reserved, t.filled_count, t.notes, "
            "(SELECT json_agg(json_build_array(m.id, m.participant_id, m.user_id, m.user_side, "
            "p.id, p.code, p.display_name, p.category) ORDER BY m.participant_id) "
            "FROM treasury_matches m JOIN shadow_personas p ON p.id = m.persona_id "
            "WHERE m.fill_id = f.id AND m.status = 'reserved') AS matches "
            "FROM treasury_fills f LEFT JOIN challenge_treasury t ON t.challenge_id = f.challenge_id "
            "WHERE f.id = :id AND f.challenge_id = :c FOR UPDATE OF f"),
        {"id": fill_id, "c": challenge_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"fill {fill_id} of challenge {challenge_id} does not exist")
    fill, cfg = _fill_and_config(row)
    matches = [ReservedMatch(m[0], m[1], m[2], m[3], Persona(m[4], m[5], m[6], m[7]))
               for m in row.matches or []]
    return fill, cfg, matches


def _fill_and_config(row) -> tuple[Fill, TreasuryConfig | None]:
    """The fill and the challenge's treasury config of a context row (``f.*`` and ``t.*``)."""
    fill = Fill(row.id, row.challenge_id, row.side, row.requested, row.status, row.admin_id)
    cfg = None if row.max_risk is None else TreasuryConfig(
        int(row.max_risk), int(row.allocated), int(row.reserved), int(row.filled_count), row.notes)
    return fill, cfg


def assign_context(conn: Connection, fill_id: int, challenge_id: str
                   ) -> tuple[Fill, TreasuryConfig | None, list[Participant], list[Persona]]:
    """The fill (locked), the treasury config, the fill side's earliest waiting users (at
    most ``requested``) and the unused personas, in one statement (after the challenge lock)."""
    row = conn.execute(
        sql("SELECT f.id, f.challenge_id, f.side, f.requested, f.status, f.admin_id, "
            "t.max_risk, t.allocated, t.reserved, t.filled_count, t.notes, "
            "(SELECT json_agg(json_build_array(w.id, w.user_id, w.side) ORDER BY w.id) FROM "
            "(SELECT p.id, p.user_id, p.side FROM challenge_participants p WHERE "
            + _WAITING.replace(":c", "f.challenge_id") + " AND p.side = f.side "
            "ORDER BY p.id LIMIT f.requested) w) AS waiting, "
            "(SELECT json_agg(json_build_array(p.id, p.code, p.display_name, p.category) "
            "ORDER BY p.id) FROM shadow_personas p WHERE p.active AND NOT EXISTS "
            "(SELECT 1 FROM treasury_matches m WHERE m.challenge_id = f.challenge_id "
            "AND m.persona_id = p.id)) AS personas "
            "FROM treasury_fills f LEFT JOIN challenge_treasury t ON t.challenge_id = f.challenge_id "
            "WHERE f.id = :id AND f.challenge_id = :c FOR UPDATE OF f"),
        {"id": fill_id, "c": challenge_id},
    ).one_or_none()
    if row is None:
        raise NotFound(f"fill {fill_id} of challenge {challenge_id} does not exist")
    fill, cfg = _fill_and_config(row)
    waiting_users = [Participant(w[0], w[1], w[2]) for w in row.waiting or []]
    personas = [Persona(p[0], p[1], p[2], p[3]) for p in row.personas or []]
    return fill, cfg, waiting_users, personas


def reserve_assigned(conn: Connection, fill: Fill, pairs: Sequence[tuple[Participant, Persona]],
                     stake: int, cfg: TreasuryConfig, assigned: int, shortfall: int,
                     reasons: Iterable[str], next_actor: str | None = None,
                     next_kwargs: dict | None = None) -> Written:
    """``reserve`` + ``save_config`` + ``record_assignment`` (+ the next step's command) in
    one statement."""
    parts = [
        "rv AS (INSERT INTO treasury_matches (challenge_id, fill_id, participant_id, persona_id, "
        "user_id, user_side, stake) SELECT :c, :fid, x.pid, x.persona, x.uid, :side, :stake "
        "FROM unnest(CAST(:pids AS bigint[]), CAST(:personas AS int[]), "
        "CAST(:uids AS text[])) AS x(pid, persona, uid))",
        f"cf AS ({_SAVE_CONFIG})",
        "fa AS (UPDATE treasury_fills SET assigned = :na, shortfall = :sf, "
        "shortfall_reasons = :why, status = CASE WHEN :na > 0 THEN 'assigned' ELSE 'empty' END, "
        "assigned_at = now(), completed_at = CASE WHEN :na > 0 THEN NULL ELSE now() END "
        "WHERE id = :fid)",
    ]
    params = {**_config_params(fill.challenge_id, cfg, None), "fid": fill.id, "side": fill.side,
              "stake": stake, "pids": [u.id for u, _ in pairs],
              "personas": [p.id for _, p in pairs], "uids": [u.user_id for u, _ in pairs],
              "na": assigned, "sf": shortfall, "why": list(reasons)}
    selects: list[str] = []
    message = _message_part(next_actor, next_kwargs or {}, parts, selects, params)
    return _run(conn, parts, selects, params, message=message)


def activate_created(conn: Connection, challenge_id: str, fill_id: int,
                     matches: Sequence[ReservedMatch], cfg: TreasuryConfig, transaction_id: int,
                     events, resolve_keys: Sequence[str] = (),
                     raise_items: Sequence["alerts.Alert"] = ()) -> Written:
    """``activate`` + ``save_config`` + ``finish_fill(created)`` + the events (+ alerts
    resolved and raised) in one statement, once the treasury's stake is posted."""
    parts = [
        "am AS (UPDATE treasury_matches SET status = :ms, matched_at = now() "
        "WHERE id = ANY(:ids) AND status = ANY(:from) RETURNING id, participant_id)",
        "ap AS (UPDATE challenge_participants p SET treasury_match_id = am.id FROM am "
        "WHERE p.id = am.participant_id)",
        f"cf AS ({_SAVE_CONFIG})",
        "ff AS (UPDATE treasury_fills SET status = 'created', failure_reason = NULL, "
        "transaction_id = :txn, completed_at = now() WHERE id = :fid)",
    ]
    params = {**_config_params(challenge_id, cfg, None), "ids": [m.match_id for m in matches],
              "ms": "active", "from": list(MATCH.sources("active")), "txn": transaction_id,
              "fid": fill_id}
    selects: list[str] = []
    bodies = _events_part(events, parts, selects, params)
    _resolve_part(resolve_keys, parts, selects, params)
    _raise_part(raise_items, parts, selects, params)
    return _run(conn, parts, selects, params, bodies=bodies)


def resolve_with_next(conn: Connection, challenge: Challenge, resolved_by: str, next_actor: str,
                      next_kwargs: dict) -> tuple[list[int], outbox.OutboxRow]:
    """``save_resolution`` + the next step's command, and ``open_fills`` (locked), in one
    statement."""
    parts = ["sr AS (UPDATE challenges SET status = :s, result = :r, resolved_by = :by, "
             "resolved_at = now() WHERE id = :id AND status = ANY(:from))",
             "of AS (SELECT id FROM treasury_fills WHERE challenge_id = :id "
             "AND status IN ('requested', 'assigned') ORDER BY id FOR UPDATE)"]
    params = {"id": challenge.challenge_id, "r": challenge.result, "by": resolved_by,
              **_move("resolved", only=("open",))}
    selects = ["SELECT 'of' AS what, id, NULL::text AS key, NULL::boolean AS inserted, "
               "NULL::jsonb AS doc FROM of"]
    message = _message_part(next_actor, next_kwargs, parts, selects, params)
    got = conn.execute(sql(f"WITH {', '.join(parts)} {' UNION ALL '.join(selects)}"),
                       params).all()

    return ([r.id for r in got if r.what == "of"],
            replace(message, id=next(r.id for r in got if r.what == "msg")))


def settle_batch(conn: Connection, seats: Sequence[tuple[Seat, UserSettlement]],
                 transaction_id: int | None, matches: Sequence[tuple[int, MatchSettlement]],
                 events) -> list[outbox.OutboxRow]:
    """``settle_seats`` + ``settle_matches`` + the events in one statement; the outbox rows."""
    parts = [
        "ss AS (UPDATE challenge_participants p SET outcome = x.outcome, payout = x.payout, "
        "settle_transaction_id = CASE WHEN x.payout > 0 THEN CAST(:t AS bigint) END, "
        "settled_at = now() FROM unnest(CAST(:s_ids AS bigint[]), CAST(:s_outcomes AS text[]), "
        "CAST(:s_payouts AS bigint[])) AS x(id, outcome, payout) "
        "WHERE p.id = x.id AND p.settled_at IS NULL)",
    ]
    params: dict = {"t": transaction_id, "s_ids": [s.participant_id for s, _ in seats],
                    "s_outcomes": [o.outcome for _, o in seats],
                    "s_payouts": [o.payout for _, o in seats]}
    if matches:
        parts.append(
            "sm AS (UPDATE treasury_matches m SET status = x.status, result = x.result, "
            "treasury_payout = x.payout, pnl = x.pnl, settled_at = now() "
            "FROM unnest(CAST(:m_ids AS bigint[]), CAST(:m_statuses AS text[]), "
            "CAST(:m_results AS text[]), CAST(:m_payouts AS bigint[]), CAST(:m_pnls AS bigint[])) "
            "AS x(id, status, result, payout, pnl) WHERE m.id = x.id AND m.status = 'active')")
        params.update({"m_ids": [i for i, _ in matches],
                       "m_statuses": [MATCH.check("active", m.status) for _, m in matches],
                       "m_results": [m.result for _, m in matches],
                       "m_payouts": [m.payout for _, m in matches],
                       "m_pnls": [m.pnl for _, m in matches]})
    selects: list[str] = []
    bodies = _events_part(events, parts, selects, params)
    return _run(conn, parts, selects, params, bodies=bodies).rows


def close_settlement(conn: Connection, challenge_id: str, escrow: str,
                     resolve_keys: Sequence[str]) -> tuple[int, list[MatchSettlement],
                                                          dict[str, int], Written]:
    """``mark_settled`` + resolving the alerts of ``resolve_keys``, and what the settlement's
    report needs — the escrow's balance, the settled matches (``settled_matches``) and the
    users' outcomes (``user_outcomes``), read with this transaction's writes so far — in
    one statement.  (The caller raises on an escrow that is not empty: the transaction
    rolls back, the mark with it.)"""
    parts = ["ms AS (UPDATE challenges SET status = :s, settled_at = now() "
             "WHERE id = :id AND status = ANY(:from))"]
    params = {"id": challenge_id, "e": escrow, **_move("settled")}
    selects = [
        "SELECT 'sum' AS what, NULL::bigint AS id, NULL::text AS key, NULL::boolean AS inserted, "
        "jsonb_build_object("
        "'escrow', (SELECT balance FROM account_balances WHERE code = :e), "
        "'matches', (SELECT jsonb_agg(jsonb_build_array(result, treasury_payout, pnl) ORDER BY id) "
        "FROM treasury_matches WHERE challenge_id = :id AND status IN ('settled', 'refunded')), "
        "'outcomes', (SELECT jsonb_object_agg(outcome, n) FROM (SELECT outcome, count(*) AS n "
        "FROM challenge_participants WHERE challenge_id = :id AND outcome IS NOT NULL "
        "GROUP BY outcome) o)) AS doc"]
    _resolve_part(resolve_keys, parts, selects, params)
    got = conn.execute(sql(f"WITH {', '.join(parts)} {' UNION ALL '.join(selects)}"),
                       params).all()
    doc = _rows_of(got, "sum")[0].doc
    counts = {"won": 0, "lost": 0, "refunded": 0}
    counts.update({k: int(v) for k, v in (doc["outcomes"] or {}).items()})
    matches = [MatchSettlement(m[0], int(m[1]), int(m[2])) for m in doc["matches"] or []]
    resolved = [_Resolved(r.id, r.doc["kind"], r.doc["severity"], r.doc["subject"], r.key,
                          r.doc["data"]) for r in _rows_of(got, "rs")]
    return int(doc["escrow"] or 0), matches, counts, Written([], resolved, {})


def add_fill_with_next(conn: Connection, challenge_id: str, side: str, requested: int,
                       admin_id: str, request_id: str, next_actor: str,
                       next_kwargs: dict) -> tuple[int, outbox.OutboxRow]:
    """``add_fill`` and the next step's command, which carries the new fill's id as
    ``fill_id``, in one statement; the fill's id and the outbox row."""
    msg_sql, msg_params, row = outbox.message_statement(next_actor, {**next_kwargs, "fill_id": 0})
    got = conn.execute(
        sql("WITH f AS (INSERT INTO treasury_fills (challenge_id, side, requested, admin_id, "
            "request_id) VALUES (:c, :s, :n, :a, :r) RETURNING id), "
            "msg AS (INSERT INTO outbox (kind, destination, routing_key, event_name, recipient, body) "
            "SELECT 'message', :msg_q, :msg_q, NULL, NULL, "
            "jsonb_set(CAST(:msg_b AS jsonb), '{kwargs,fill_id}', to_jsonb(f.id)) FROM f RETURNING id) "
            "SELECT f.id AS fill_id, msg.id AS outbox_id FROM f, msg"),
        {"c": challenge_id, "s": side, "n": requested, "a": admin_id, "r": request_id, **msg_params},
    ).one()
    body = {**row.body, "kwargs": {**row.body["kwargs"], "fill_id": got.fill_id}}
    return got.fill_id, replace(row, id=got.outbox_id, body=body)
