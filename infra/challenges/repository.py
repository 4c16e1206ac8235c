"""Challenges, participants, treasury configs, fills and matches in PostgreSQL:
``ChallengeRepository``, as the unit of work hands it out (``uow.challenges``).

Nothing here commits.  Whatever changes a challenge's pairing or budget first locks its
row (``get(..., lock=True)``): joins, fills, resolution and settlement of one challenge
run one at a time, and always take that lock before any ledger account, so they never
deadlock on each other.

Ordinary reads and writes are Core statements on ``infra/db/tables.py``.  The steps of
the challenge pipeline each read what they need in one statement and write what they
decided in one more (issue 12: a join, a fill step, a settlement batch is a handful of
statements); those merged statements are the named ``text()`` ones below, each a CTE
chain.  Their events, next-step commands and resolved alerts are written in the same
statement and handed to the unit of work to publish after commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain.challenges import (
    CHALLENGE,
    MATCH,
    MATCH_REFUNDED,
    MATCH_SETTLED,
    TREASURY_LOST,
    TREASURY_WON,
    Challenge,
    MatchSettlement,
    SideTally,
    TreasuryConfig,
    UserSettlement,
)
from domain.errors import NotFound
from domain.resends import check_same_terms
from infra import alerts, outbox
from infra.db import tables
from infra.db.engine import fetch, pg_array, sql

_ch, _pt = tables.challenges.c, tables.challenge_participants.c
_tr, _fl = tables.challenge_treasury.c, tables.treasury_fills.c
_tm, _sp = tables.treasury_matches.c, tables.shadow_personas.c


# --- rows -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Participant:
    id: int
    user_id: str
    side: str


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


@dataclass(frozen=True, slots=True)
class Seat:
    """One participant awaiting settlement and who, if anyone, faces them."""

    participant_id: int
    user_id: str
    side: str
    stake: int
    opponent: str | None  # user | treasury | None (unpaired)
    match_id: int | None


@dataclass(frozen=True, slots=True)
class Written:
    """What a merged write statement left for its caller: the alerts it resolved (rows for
    ``uow.alerts.announce_resolved``) and the keys of the alerts it newly opened
    (``{dedupe_key: id}``).  Its outbox rows are already handed to the unit of work."""

    resolved: list
    raised: dict[str, int]


@dataclass(frozen=True, slots=True)
class Resolved:
    """An alert a merged statement resolved (the columns ``announce_resolved`` reads)."""

    id: int
    kind: str
    severity: str
    subject: str
    dedupe_key: str
    data: dict


@dataclass(frozen=True, slots=True)
class Closed:
    """What closing a settlement read: the escrow left, the settled matches and the
    users' outcome counts; the alerts it resolved."""

    escrow_left: int
    matches: list[MatchSettlement]
    users: dict[str, int]
    resolved: list


# --- ordinary statements (Core) -------------------------------------------------------

_CHALLENGE = sa.select(_ch.id, _ch.title, _ch.currency, _ch.stake, _ch.admin_created,
                       _ch.status, _ch.result, _ch.closes_at, _ch.max_participants
                       ).where(_ch.id == sa.bindparam("id"))
_CHALLENGE_LOCKED = _CHALLENGE.with_for_update()

_CONFIG = sa.select(_tr.max_risk, _tr.allocated, _tr.reserved, _tr.filled_count, _tr.notes
                    ).where(_tr.challenge_id == sa.bindparam("c"))
_CONFIG_LOCKED = _CONFIG.with_for_update()

_INSERT_CHALLENGE = (
    pg_insert(tables.challenges)
    .values(id=sa.bindparam("id"), title=sa.bindparam("title"), currency=sa.bindparam("cur"),
            stake=sa.bindparam("stake"), admin_created=sa.bindparam("admin"),
            closes_at=sa.bindparam("closes"), max_participants=sa.bindparam("cap"))
    .on_conflict_do_nothing(index_elements=["id"])
    .returning(sa.func.now()))

_UNUSED_PERSONAS = (
    sa.select(_sp.id, _sp.code, _sp.display_name, _sp.category)
    .where(_sp.active, ~sa.exists().where(_tm.challenge_id == sa.bindparam("c"),
                                          _tm.persona_id == _sp.id))
    .order_by(_sp.id))

_UNSETTLED = (
    sa.select(_pt.id, _pt.user_id, _pt.side, _pt.stake, _pt.treasury_match_id,
              sa.case((_pt.paired_with.is_not(None), "user"),
                      (_pt.treasury_match_id.is_not(None), "treasury")).label("opponent"))
    .where(_pt.challenge_id == sa.bindparam("c"), _pt.settled_at.is_(None))
    .order_by(_pt.id).limit(sa.bindparam("n")))

_TALLIES = (
    sa.select(_pt.side, sa.func.count().label("n"),
              sa.func.coalesce(sa.func.sum(_pt.stake), 0).label("total"),
              sa.func.count().filter(sa.and_(_pt.paired_with.is_(None),
                                             _pt.treasury_match_id.is_(None))).label("unmatched"))
    .where(_pt.challenge_id == sa.bindparam("c")).group_by(_pt.side))

#: The settlement columns a challenge row carries beside its terms (``challenge show``).
_SETTLEMENT_STATE = sa.select(_ch.settlement_failure, _ch.settlement_failed_at,
                              _ch.settlement_retries).where(_ch.id == sa.bindparam("c"))


#: The treasury's P&L over settled matches ``m`` (``domain.challenges.treasury_outcome``'s
#: sums, in SQL for the reports; held equal to it by tests/infra/test_challenges_pnl.py):
#: the results and the refunded status are the domain's, bound (``PNL_PARAMS``).
PNL_COLUMNS = (
    "count(*) AS matches, "
    "count(*) FILTER (WHERE m.result = :won) AS won, "
    "count(*) FILTER (WHERE m.result = :lost) AS lost, "
    "count(*) FILTER (WHERE m.status = :refunded) AS refunded, "
    "COALESCE(sum(m.stake) FILTER (WHERE m.result = :won), 0) AS won_amount, "
    "COALESCE(sum(m.stake) FILTER (WHERE m.result = :lost), 0) AS lost_amount, "
    "COALESCE(sum(m.stake) FILTER (WHERE m.status = :refunded), 0) AS refunded_amount, "
    "COALESCE(sum(m.treasury_payout), 0) AS payout, "
    "COALESCE(sum(m.pnl), 0) AS net_pnl")
PNL_PARAMS = {"won": TREASURY_WON, "lost": TREASURY_LOST, "refunded": MATCH_REFUNDED,
              "settled": list(MATCH_SETTLED)}


# --- the merged statements' parts (text: the pipeline's hot path) ----------------------

#: A waiting user: unpaired, not matched with a persona, not settled, and not held by a fill
#: in progress (``:c`` the challenge).
WAITING = (
    "p.challenge_id = :c AND p.paired_with IS NULL AND p.treasury_match_id IS NULL "
    "AND p.settled_at IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM treasury_matches m WHERE m.participant_id = p.id)"
)

#: The config row written by fills, assignment and ``configure_treasury`` (a CTE ``cf``).
SAVE_CONFIG = (
    "INSERT INTO challenge_treasury (challenge_id, max_risk, allocated, reserved, "
    "filled_count, notes, configured_by) VALUES (:c, :m, :a, :r, :f, :n, :by) "
    "ON CONFLICT (challenge_id) DO UPDATE SET max_risk = EXCLUDED.max_risk, "
    "allocated = EXCLUDED.allocated, reserved = EXCLUDED.reserved, "
    "filled_count = EXCLUDED.filled_count, notes = EXCLUDED.notes, "
    "configured_by = COALESCE(CAST(:by_update AS text), challenge_treasury.configured_by), "
    "updated_at = now()"
)

_FILL_AND_CONFIG = (
    "SELECT f.id, f.challenge_id, f.side, f.requested, f.status, f.admin_id, "
    "t.max_risk, t.allocated, t.reserved, t.filled_count, t.notes, "
)
_FILL_FROM = ("FROM treasury_fills f LEFT JOIN challenge_treasury t "
              "ON t.challenge_id = f.challenge_id "
              "WHERE f.id = :id AND f.challenge_id = :c FOR UPDATE OF f")


def _move(new: str, *, only: Sequence[str] = ()) -> dict:
    """Bound parameters of a guarded status UPDATE: the new status and where it may come
    from (all its lifecycle's sources, or ``only`` these, each a legal source)."""
    for current in only:
        CHALLENGE.check(current, new)
    return {"s": new, "from": list(only or CHALLENGE.sources(new))}


def _config_params(challenge_id: str, cfg: TreasuryConfig, by: str | None) -> dict:
    return {"c": challenge_id, "m": cfg.max_risk, "a": cfg.allocated, "r": cfg.reserved,
            "f": cfg.filled_count, "n": cfg.notes, "by": by or "system", "by_update": by}


def _config_of(row) -> TreasuryConfig | None:
    if row is None or row.max_risk is None:
        return None
    return TreasuryConfig(int(row.max_risk), int(row.allocated), int(row.reserved),
                          int(row.filled_count), row.notes)


def _fill_of(row) -> Fill:
    return Fill(row.id, row.challenge_id, row.side, row.requested, row.status, row.admin_id)


class _Merged:
    """One CTE chain being built: its parts, its final selects, its parameters."""

    _NO_ROWS = ("SELECT NULL::text AS what, NULL::bigint AS id, NULL::text AS key, "
                "NULL::boolean AS inserted, NULL::jsonb AS doc WHERE false")

    def __init__(self, parts: list[str], params: dict, selects: Sequence[str] = ()) -> None:
        self.parts, self.params, self.selects = parts, params, list(selects)
        self.bodies: list[dict] = []
        self.message: outbox.OutboxRow | None = None

    def events(self, events) -> None:
        """``events`` (``(name, data, recipient)``) as the CTE ``ev``."""
        if not events:
            return
        ev_sql, ev_params, self.bodies = outbox.events_statement(events)
        self.parts.append(f"ev AS ({ev_sql})")
        self.params.update(ev_params)
        self.selects.append("SELECT 'ev' AS what, id, key, NULL::boolean AS inserted, "
                            "NULL::jsonb AS doc FROM ev")

    def resolve(self, keys: Sequence[str]) -> None:
        """Resolve the open alerts of ``keys`` as the CTE ``rs``."""
        if not keys:
            return
        rs_sql, rs_params = alerts.resolve_statement(keys)
        self.parts.append(f"rs AS ({rs_sql})")
        self.params.update(rs_params)
        self.selects.append(
            "SELECT 'rs' AS what, id, dedupe_key AS key, NULL::boolean AS inserted, "
            "jsonb_build_object('kind', kind, 'severity', severity, 'subject', subject, "
            "'data', data) AS doc FROM rs")

    def raise_(self, items: Sequence[alerts.Alert]) -> None:
        """Open (or refresh) ``items`` as the CTE ``al``."""
        if not items:
            return
        al_sql, al_params = alerts.upsert_statement(items)
        self.parts.append(f"al AS ({al_sql})")
        self.params.update(al_params)
        self.selects.append("SELECT 'al' AS what, id, key, inserted, NULL::jsonb AS doc FROM al")

    def send(self, actor: str | None, kwargs: dict) -> None:
        """A command for ``actor`` as the CTE ``msg``."""
        if actor is None:
            return
        msg_sql, msg_params, self.message = outbox.message_statement(actor, kwargs)
        self.parts.append(f"msg AS ({msg_sql})")
        self.params.update(msg_params)
        self.selects.append("SELECT 'msg' AS what, id, NULL::text AS key, "
                            "NULL::boolean AS inserted, NULL::jsonb AS doc FROM msg")

    def run(self, conn: Connection) -> tuple[list, list[outbox.OutboxRow], Written]:
        """Run it: the rows it returned, the outbox rows to publish, what it resolved/raised."""
        selects = self.selects or [self._NO_ROWS]
        got = fetch(conn, f"WITH {', '.join(self.parts)} {' UNION ALL '.join(selects)}",
                    self.params)
        rows = outbox.rows_of(self.bodies, {r.key: r.id for r in got if r.what == "ev"}
                              ) if self.bodies else []
        if self.message is not None:
            rows.append(replace(self.message, id=next(r.id for r in got if r.what == "msg")))
        resolved = [Resolved(r.id, r.doc["kind"], r.doc["severity"], r.doc["subject"], r.key,
                             r.doc["data"]) for r in got if r.what == "rs"]
        raised = {r.key: r.id for r in got if r.what == "al" and r.inserted}
        return got, rows, Written(resolved, raised)


class ChallengeRepository:
    """Treasury balancing's rows, in the unit of work's transaction.

    Parameters:
      conn: the open connection.
      unit: the unit of work whose outbox gets the rows the merged statements write
        (``publish_after_commit``); None for a reader (the views, the console).
    """

    def __init__(self, conn: Connection, unit: Any = None) -> None:
        self.conn = conn
        self.unit = unit

    def _publish(self, rows: list[outbox.OutboxRow]) -> None:
        if rows:
            self.unit.publish_after_commit(rows)

    # --- challenges -------------------------------------------------------------------

    def get(self, challenge_id: str, *, lock: bool = False) -> Challenge:
        rows = fetch(self.conn, _CHALLENGE_LOCKED if lock else _CHALLENGE, {"id": challenge_id})
        row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"challenge {challenge_id} does not exist")
        return Challenge(row.id, row.title, row.currency, int(row.stake), row.admin_created,
                         row.status, row.result, row.closes_at, row.max_participants)

    def open_new(self, challenge: Challenge) -> datetime | None:
        """Insert the challenge; the transaction's time when it is new (the caller checks
        its terms against it), None when it already existed on the same terms (Refused on
        others)."""
        now = self.conn.execute(_INSERT_CHALLENGE, {
            "id": challenge.challenge_id, "title": challenge.title, "cur": challenge.currency,
            "stake": challenge.stake, "admin": challenge.admin_created,
            "closes": challenge.closes_at, "cap": challenge.max_participants,
        }).scalar_one_or_none()
        if now is not None:
            return now
        check_same_terms(f"challenge {challenge.challenge_id}",
                         self.get(challenge.challenge_id).terms, challenge.terms)
        return None

    def settlement_state(self, challenge_id: str):
        """``settlement_failure, settlement_failed_at, settlement_retries`` of a challenge."""
        return self.conn.execute(_SETTLEMENT_STATE, {"c": challenge_id}).one()

    def mark_settlement_failed(self, challenge_id: str, reason: str) -> bool:
        """A resolved challenge whose settlement failed for good; True when it was resolved."""
        moved = _move("settlement_failed")
        return self.conn.execute(
            sa.update(tables.challenges)
            .where(_ch.id == challenge_id, _ch.status.in_(moved["from"]))
            .values(status=moved["s"], settlement_failure=reason[:500],
                    settlement_failed_at=sa.func.now())
            .returning(_ch.id)).first() is not None

    def reopen_settlement(self, challenge_id: str) -> int:
        """settlement_failed → resolved for a retry; returns the retry's number."""
        moved = _move("resolved", only=("settlement_failed",))
        return int(self.conn.execute(
            sa.update(tables.challenges)
            .where(_ch.id == challenge_id, _ch.status.in_(moved["from"]))
            .values(status=moved["s"], settlement_retries=_ch.settlement_retries + 1)
            .returning(_ch.settlement_retries)).scalar_one())

    # --- participants and pairing -----------------------------------------------------

    def join_context(self, challenge_id: str, user_ids: Sequence[str]
                          ) -> tuple[datetime, int, set[str]]:
        """``(now, participants, those of user_ids already joined)`` in one statement
        (after the challenge lock)."""
        (row,) = fetch(
            self.conn,
            "SELECT now() AS now, "
            "(SELECT count(*) FROM challenge_participants WHERE challenge_id = :c) AS n, "
            "(SELECT array_agg(user_id) FROM challenge_participants WHERE challenge_id = :c "
            "AND user_id = ANY(CAST(:u AS text[]))) AS joined",
            {"c": challenge_id, "u": pg_array(list(user_ids))})
        return row.now, int(row.n), set(row.joined or [])

    def add_participants_waiting(self, challenge: Challenge,
                                 joins: Sequence[tuple[str, str, int]]
                                 ) -> tuple[list[Participant], list[Participant]]:
        """Insert the participants ``(user_id, side, join transaction id)`` in order; of
        each side, the ``k`` earliest waiting users (the new ones included, ``k`` the
        smaller side's number of waiting users), in one statement: what the joins one
        after the other would have paired, since each pairs the earliest waiting of the
        other side."""
        rows = fetch(
            self.conn,
            ("WITH ins AS (INSERT INTO challenge_participants "
             "(challenge_id, user_id, side, stake, join_transaction_id) "
             "SELECT :c, x.u, x.s, :stake, x.t FROM json_to_recordset(CAST(:rows AS json)) "
             "AS x(u text, s text, t bigint, n int) ORDER BY x.n RETURNING id, user_id, side), "
             "w AS (SELECT id, user_id, side FROM ins UNION ALL "
             f"SELECT p.id, p.user_id, p.side FROM challenge_participants p WHERE {WAITING}), "
             "r AS (SELECT w.*, row_number() OVER (PARTITION BY side ORDER BY id) AS rn FROM w), "
             "k AS (SELECT LEAST(count(*) FILTER (WHERE side = 'YES'), "
             "count(*) FILTER (WHERE side = 'NO')) AS k FROM w) "
             "SELECT r.id, r.user_id, r.side FROM r, k WHERE r.rn <= k.k ORDER BY r.id"),
            {"c": challenge.challenge_id, "stake": challenge.stake,
             "rows": json.dumps([{"u": u, "s": side, "t": txn, "n": n}
                                 for n, (u, side, txn) in enumerate(joins)])})
        yes = [Participant(r.id, r.user_id, r.side) for r in rows if r.side == "YES"]
        no = [Participant(r.id, r.user_id, r.side) for r in rows if r.side == "NO"]
        return yes, no

    def waiting_counts(self, challenge_id: str) -> dict[str, int]:
        rows = self.conn.execute(
            sql(f"SELECT p.side, count(*) AS n FROM challenge_participants p WHERE {WAITING} "
                "GROUP BY p.side"),
            {"c": challenge_id},
        )
        counts = {"YES": 0, "NO": 0}
        counts.update({r.side: int(r.n) for r in rows})
        return counts

    def waiting(self, challenge_id: str, side: str, limit: int) -> list[Participant]:
        """The side's earliest unmatched users, oldest first."""
        rows = self.conn.execute(
            sql(f"SELECT p.id, p.user_id, p.side FROM challenge_participants p WHERE {WAITING} "
                "AND p.side = :s ORDER BY p.id LIMIT :n"),
            {"c": challenge_id, "s": side, "n": limit},
        )
        return [Participant(r.id, r.user_id, r.side) for r in rows]

    def pair(self, pairs: Sequence[tuple[Participant, Participant]], events) -> None:
        """Pair both users of each pair and write the events ``(name, data, recipient)``,
        in one statement."""
        ids_a = [a.id for a, b in pairs] + [b.id for a, b in pairs]
        ids_b = [b.id for a, b in pairs] + [a.id for a, b in pairs]
        merged = _Merged(["pr AS (UPDATE challenge_participants p SET paired_with = x.other FROM "
                          "unnest(CAST(:pa AS bigint[]), CAST(:pb AS bigint[])) AS x(id, other) "
                          "WHERE p.id = x.id)"], {"pa": ids_a, "pb": ids_b})
        merged.events(events)
        self._publish(merged.run(self.conn)[1])

    def tallies(self, challenge_id: str) -> tuple[SideTally, SideTally]:
        rows = self.conn.execute(_TALLIES, {"c": challenge_id})
        by_side = {r.side: SideTally(int(r.n), int(r.total), int(r.unmatched)) for r in rows}
        return by_side.get("YES", SideTally()), by_side.get("NO", SideTally())

    # --- the treasury config ----------------------------------------------------------

    def config(self, challenge_id: str, *, lock: bool = False) -> TreasuryConfig | None:
        rows = fetch(self.conn, _CONFIG_LOCKED if lock else _CONFIG, {"c": challenge_id})
        return _config_of(rows[0] if rows else None)

    def save_config(self, challenge_id: str, cfg: TreasuryConfig) -> None:
        self.conn.execute(sql(SAVE_CONFIG), _config_params(challenge_id, cfg, None))

    def configure(self, challenge_id: str, cfg: TreasuryConfig, admin_id: str,
                  resolve_keys: Sequence[str] = ()) -> Written:
        """The config, the admin's change recorded (and the alerts of ``resolve_keys``
        resolved), in one statement."""
        merged = _Merged([f"cf AS ({SAVE_CONFIG})",
                          "ch AS (INSERT INTO challenge_treasury_changes (challenge_id, "
                          "max_risk, notes, admin_id) VALUES (:c, :m, :n, :by))"],
                         _config_params(challenge_id, cfg, admin_id))
        merged.resolve(resolve_keys)
        return merged.run(self.conn)[2]

    # --- fills and matches ------------------------------------------------------------

    def add_fill(self, challenge_id: str, side: str, requested: int, admin_id: str,
                 request_id: str, next_actor: str, next_kwargs: dict) -> int:
        """A requested fill and the next step's command, which carries the new fill's id as
        ``fill_id``, in one statement; the fill's id."""
        msg_sql, msg_params, row = outbox.message_statement(next_actor,
                                                            {**next_kwargs, "fill_id": 0})
        got = self.conn.execute(
            sql("WITH f AS (INSERT INTO treasury_fills (challenge_id, side, requested, admin_id, "
                "request_id) VALUES (:c, :s, :n, :a, :r) RETURNING id), "
                "msg AS (INSERT INTO outbox (kind, destination, routing_key, event_name, "
                "recipient, body) SELECT 'message', :msg_q, :msg_q, NULL, NULL, "
                "jsonb_set(CAST(:msg_b AS jsonb), '{kwargs,fill_id}', to_jsonb(f.id)) FROM f "
                "RETURNING id) SELECT f.id AS fill_id, msg.id AS outbox_id FROM f, msg"),
            {"c": challenge_id, "s": side, "n": requested, "a": admin_id, "r": request_id,
             **msg_params},
        ).one()
        body = {**row.body, "kwargs": {**row.body["kwargs"], "fill_id": got.fill_id}}
        self._publish([replace(row, id=got.outbox_id, body=body)])
        return got.fill_id

    def finish_fill(self, fill_id: int, status: str, *, reason: str | None = None) -> None:
        self.conn.execute(sa.update(tables.treasury_fills).where(_fl.id == fill_id).values(
            status=status, failure_reason=reason, transaction_id=None,
            completed_at=sa.func.now()))

    def unused_personas(self, challenge_id: str) -> list[Persona]:
        rows = self.conn.execute(_UNUSED_PERSONAS, {"c": challenge_id})
        return [Persona(r.id, r.code, r.display_name, r.category) for r in rows]

    def release(self, fill_id: int) -> int:
        """Drop a fill's reservations (they never became matches); the stake they held."""
        held = self.conn.execute(
            sa.delete(tables.treasury_matches)
            .where(_tm.fill_id == fill_id, _tm.status == MATCH.initial)
            .returning(_tm.stake)).scalars().all()
        return int(sum(held))

    def assign_context(self, fill_id: int, challenge_id: str
                       ) -> tuple[Fill, TreasuryConfig | None, list[Participant], list[Persona]]:
        """The fill (locked), the treasury config, the fill side's earliest waiting users (at
        most ``requested``) and the unused personas, in one statement (after the challenge
        lock)."""
        row = self.conn.execute(
            sql(_FILL_AND_CONFIG
                + "(SELECT json_agg(json_build_array(w.id, w.user_id, w.side) ORDER BY w.id) FROM "
                "(SELECT p.id, p.user_id, p.side FROM challenge_participants p WHERE "
                + WAITING.replace(":c", "f.challenge_id") + " AND p.side = f.side "
                "ORDER BY p.id LIMIT f.requested) w) AS waiting, "
                "(SELECT json_agg(json_build_array(p.id, p.code, p.display_name, p.category) "
                "ORDER BY p.id) FROM shadow_personas p WHERE p.active AND NOT EXISTS "
                "(SELECT 1 FROM treasury_matches m WHERE m.challenge_id = f.challenge_id "
                "AND m.persona_id = p.id)) AS personas " + _FILL_FROM),
            {"id": fill_id, "c": challenge_id},
        ).one_or_none()
        if row is None:
            raise NotFound(f"fill {fill_id} of challenge {challenge_id} does not exist")
        waiting_users = [Participant(w[0], w[1], w[2]) for w in row.waiting or []]
        personas = [Persona(p[0], p[1], p[2], p[3]) for p in row.personas or []]
        return _fill_of(row), _config_of(row), waiting_users, personas

    def reserve(self, fill: Fill, pairs: Sequence[tuple[Participant, Persona]], stake: int,
                cfg: TreasuryConfig, shortfall: int, reasons: Iterable[str],
                next_actor: str | None = None, next_kwargs: dict | None = None) -> None:
        """The fill's matches reserved (user and persona, one stake each), the config, the
        fill's assignment (``empty`` when nobody was assigned) and the next step's command,
        in one statement."""
        merged = _Merged([
            "rv AS (INSERT INTO treasury_matches (challenge_id, fill_id, participant_id, "
            "persona_id, user_id, user_side, stake) SELECT :c, :fid, x.pid, x.persona, x.uid, "
            ":side, :stake FROM unnest(CAST(:pids AS bigint[]), CAST(:personas AS int[]), "
            "CAST(:uids AS text[])) AS x(pid, persona, uid))",
            f"cf AS ({SAVE_CONFIG})",
            "fa AS (UPDATE treasury_fills SET assigned = :na, shortfall = :sf, "
            "shortfall_reasons = :why, status = CASE WHEN :na > 0 THEN 'assigned' ELSE 'empty' "
            "END, assigned_at = now(), completed_at = CASE WHEN :na > 0 THEN NULL ELSE now() END "
            "WHERE id = :fid)",
        ], {**_config_params(fill.challenge_id, cfg, None), "fid": fill.id, "side": fill.side,
            "stake": stake, "pids": [u.id for u, _ in pairs],
            "personas": [p.id for _, p in pairs], "uids": [u.user_id for u, _ in pairs],
            "na": len(pairs), "sf": shortfall, "why": list(reasons)})
        merged.send(next_actor, next_kwargs or {})
        self._publish(merged.run(self.conn)[1])

    def fill_context(self, fill_id: int, challenge_id: str
                     ) -> tuple[Fill, TreasuryConfig | None, list[ReservedMatch]]:
        """The fill (locked), the challenge's treasury config and the fill's reserved
        matches, in one statement (after the challenge lock)."""
        row = self.conn.execute(
            sql(_FILL_AND_CONFIG
                + "(SELECT json_agg(json_build_array(m.id, m.participant_id, m.user_id, "
                "m.user_side, p.id, p.code, p.display_name, p.category) ORDER BY m.participant_id) "
                "FROM treasury_matches m JOIN shadow_personas p ON p.id = m.persona_id "
                "WHERE m.fill_id = f.id AND m.status = 'reserved') AS matches " + _FILL_FROM),
            {"id": fill_id, "c": challenge_id},
        ).one_or_none()
        if row is None:
            raise NotFound(f"fill {fill_id} of challenge {challenge_id} does not exist")
        matches = [ReservedMatch(m[0], m[1], m[2], m[3], Persona(m[4], m[5], m[6], m[7]))
                   for m in row.matches or []]
        return _fill_of(row), _config_of(row), matches

    def activate(self, challenge_id: str, fill_id: int, matches: Sequence[ReservedMatch],
                 cfg: TreasuryConfig, transaction_id: int, events,
                 resolve_keys: Sequence[str] = (),
                 raise_items: Sequence[alerts.Alert] = ()) -> Written:
        """Once the treasury's stake is posted: the matches active, their users paired with
        them, the config, the fill ``created``, the events (and alerts resolved and raised),
        in one statement."""
        merged = _Merged([
            "am AS (UPDATE treasury_matches SET status = :ms, matched_at = now() "
            "WHERE id = ANY(:ids) AND status = ANY(:from) RETURNING id, participant_id)",
            "ap AS (UPDATE challenge_participants p SET treasury_match_id = am.id FROM am "
            "WHERE p.id = am.participant_id)",
            f"cf AS ({SAVE_CONFIG})",
            "ff AS (UPDATE treasury_fills SET status = 'created', failure_reason = NULL, "
            "transaction_id = :txn, completed_at = now() WHERE id = :fid)",
        ], {**_config_params(challenge_id, cfg, None), "ids": [m.match_id for m in matches],
            "ms": "active", "from": list(MATCH.sources("active")), "txn": transaction_id,
            "fid": fill_id})
        merged.events(events)
        merged.resolve(resolve_keys)
        merged.raise_(raise_items)
        _, rows, written = merged.run(self.conn)
        self._publish(rows)
        return written

    def resolve(self, challenge: Challenge, resolved_by: str, next_actor: str,
                next_kwargs: dict) -> list[int]:
        """The resolution and the next step's command in one statement; the ids of the
        challenge's fills still in progress (locked)."""
        merged = _Merged(
            ["sr AS (UPDATE challenges SET status = :s, result = :r, resolved_by = :by, "
             "resolved_at = now() WHERE id = :id AND status = ANY(:from))",
             "of AS (SELECT id FROM treasury_fills WHERE challenge_id = :id "
             "AND status IN ('requested', 'assigned') ORDER BY id FOR UPDATE)"],
            {"id": challenge.challenge_id, "r": challenge.result, "by": resolved_by,
             **_move("resolved", only=("open",))},
            ["SELECT 'of' AS what, id, NULL::text AS key, NULL::boolean AS inserted, "
             "NULL::jsonb AS doc FROM of"])
        merged.send(next_actor, next_kwargs)
        got, rows, _ = merged.run(self.conn)
        self._publish(rows)
        return [r.id for r in got if r.what == "of"]

    # --- settlement -------------------------------------------------------------------

    def unsettled(self, challenge_id: str, limit: int) -> list[Seat]:
        rows = fetch(self.conn, _UNSETTLED, {"c": challenge_id, "n": limit})
        return [Seat(r.id, r.user_id, r.side, int(r.stake), r.opponent, r.treasury_match_id)
                for r in rows]

    def settle_seats(self, seats: Sequence[tuple[Seat, UserSettlement]],
                     transaction_id: int | None, matches: Sequence[tuple[int, MatchSettlement]],
                     events) -> None:
        """The seats settled (outcome, payout, the paying transaction), the treasury matches
        settled, and the events, in one statement."""
        merged = _Merged([
            "ss AS (UPDATE challenge_participants p SET outcome = x.outcome, payout = x.payout, "
            "settle_transaction_id = CASE WHEN x.payout > 0 THEN CAST(:t AS bigint) END, "
            "settled_at = now() FROM unnest(CAST(:s_ids AS bigint[]), CAST(:s_outcomes AS text[]), "
            "CAST(:s_payouts AS bigint[])) AS x(id, outcome, payout) "
            "WHERE p.id = x.id AND p.settled_at IS NULL)",
        ], {"t": transaction_id, "s_ids": [s.participant_id for s, _ in seats],
            "s_outcomes": [o.outcome for _, o in seats],
            "s_payouts": [o.payout for _, o in seats]})
        if matches:
            merged.parts.append(
                "sm AS (UPDATE treasury_matches m SET status = x.status, result = x.result, "
                "treasury_payout = x.payout, pnl = x.pnl, settled_at = now() "
                "FROM unnest(CAST(:m_ids AS bigint[]), CAST(:m_statuses AS text[]), "
                "CAST(:m_results AS text[]), CAST(:m_payouts AS bigint[]), "
                "CAST(:m_pnls AS bigint[])) AS x(id, status, result, payout, pnl) "
                "WHERE m.id = x.id AND m.status = 'active')")
            merged.params.update({
                "m_ids": [i for i, _ in matches],
                "m_statuses": [MATCH.check("active", m.status) for _, m in matches],
                "m_results": [m.result for _, m in matches],
                "m_payouts": [m.payout for _, m in matches],
                "m_pnls": [m.pnl for _, m in matches]})
        merged.events(events)
        self._publish(merged.run(self.conn)[1])

    def close_settlement(self, challenge_id: str, escrow: str,
                         resolve_keys: Sequence[str]) -> Closed:
        """The challenge settled and the alerts of ``resolve_keys`` resolved, with what the
        settlement's report needs — the escrow's balance, the settled matches and the users'
        outcomes, read with this transaction's writes so far — in one statement.  (The
        caller raises on an escrow that is not empty: the transaction rolls back, the mark
        with it.)"""
        merged = _Merged(
            ["ms AS (UPDATE challenges SET status = :s, settled_at = now() "
             "WHERE id = :id AND status = ANY(:from))"],
            {"id": challenge_id, "e": escrow, "settled": list(MATCH_SETTLED), **_move("settled")},
            ["SELECT 'sum' AS what, NULL::bigint AS id, NULL::text AS key, "
             "NULL::boolean AS inserted, jsonb_build_object("
             "'escrow', (SELECT balance FROM account_balances WHERE code = :e), "
             "'matches', (SELECT jsonb_agg(jsonb_build_array(result, treasury_payout, pnl) "
             "ORDER BY id) FROM treasury_matches WHERE challenge_id = :id "
             "AND status = ANY(:settled)), "
             "'outcomes', (SELECT jsonb_object_agg(outcome, n) FROM (SELECT outcome, count(*) AS n "
             "FROM challenge_participants WHERE challenge_id = :id AND outcome IS NOT NULL "
             "GROUP BY outcome) o)) AS doc"])
        merged.resolve(resolve_keys)
        got, _, written = merged.run(self.conn)
        doc = next(r.doc for r in got if r.what == "sum")
        counts = {"won": 0, "lost": 0, "refunded": 0}
        counts.update({k: int(v) for k, v in (doc["outcomes"] or {}).items()})
        matches = [MatchSettlement(m[0], int(m[1]), int(m[2])) for m in doc["matches"] or []]
        return Closed(int(doc["escrow"] or 0), matches, counts, written.resolved)

    # --- reports ----------------------------------------------------------------------

    def daily_summary(self, start: datetime, end: datetime) -> dict[str, Any]:
        """The treasury's activity in ``[start, end)``, per currency: fills, matches,
        settlements, P&L (the domain's results and settled statuses, bound)."""
        window = {"start": start, "end": end, **PNL_PARAMS}
        per: dict[str, dict[str, int]] = {}

        def bucket(cur: str) -> dict[str, int]:
            return per.setdefault(cur, {
                "fills": 0, "fills_short": 0, "fills_failed": 0, "matches_created": 0,
                "treasury_staked": 0, "challenges_settled": 0, "matches_settled": 0, "won": 0,
                "lost": 0, "refunded": 0, "won_amount": 0, "lost_amount": 0, "net_pnl": 0})

        for r in self.conn.execute(sql(
                "SELECT c.currency, count(*) AS fills, "
                "count(*) FILTER (WHERE f.shortfall > 0) AS short, "
                "count(*) FILTER (WHERE f.status = 'failed') AS failed FROM treasury_fills f "
                "JOIN challenges c ON c.id = f.challenge_id "
                "WHERE f.created_at >= :start AND f.created_at < :end GROUP BY c.currency"),
                window):
            bucket(r.currency).update(fills=int(r.fills), fills_short=int(r.short),
                                      fills_failed=int(r.failed))
        for r in self.conn.execute(sql(
                "SELECT c.currency, count(*) AS n, sum(m.stake) AS staked FROM treasury_matches m "
                "JOIN challenges c ON c.id = m.challenge_id "
                "WHERE m.matched_at >= :start AND m.matched_at < :end GROUP BY c.currency"),
                window):
            bucket(r.currency).update(matches_created=int(r.n), treasury_staked=int(r.staked))
        for r in self.conn.execute(sql(
                f"SELECT c.currency, {PNL_COLUMNS} FROM treasury_matches m "
                "JOIN challenges c ON c.id = m.challenge_id "
                "WHERE m.settled_at >= :start AND m.settled_at < :end "
                "AND m.status = ANY(:settled) GROUP BY c.currency"), window):
            bucket(r.currency).update(
                matches_settled=int(r.matches), won=int(r.won), lost=int(r.lost),
                refunded=int(r.refunded), won_amount=int(r.won_amount),
                lost_amount=int(r.lost_amount), net_pnl=int(r.net_pnl))
        for r in self.conn.execute(sql(
                "SELECT currency, count(*) AS n FROM challenges "
                "WHERE settled_at >= :start AND settled_at < :end GROUP BY currency"), window):
            bucket(r.currency)["challenges_settled"] = int(r.n)
        return {"from": start.isoformat(), "to": end.isoformat(),
                "currencies": {cur: per[cur] for cur in sorted(per)}}
