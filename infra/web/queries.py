"""Reads the console needs beyond the CLI's documents: paged lists of what exists, and
the state of a command an operator sent.  Numbers come from the views; these only list."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, func, select

from domain.markets import SETTLED, VOIDED
from infra.db.tables import (
    accounts,
    alerts,
    challenges,
    console_audit,
    conversion_jobs,
    dead_letters,
    journal_cycles,
    ledger_entries,
    ledger_transactions,
    market_commitments,
    market_distribution_lines,
    market_options as options_t,
    markets,
    outbox,
    processed_requests,
    treasury_matches,
    wallet_audit,
)

#: Statuses of rows the console lists after the live ones.
_CHALLENGE_DONE = "settled"
_RESOLVED = "resolved"
_DEAD = "dead"
_RESERVED = "reserved"


def challenges_page(conn: Connection, limit: int, offset: int) -> list[dict[str, Any]]:
    c = challenges.c
    rows = conn.execute(
        select(c.id, c.title, c.status, c.currency, c.stake, c.admin_created, c.created_at)
        .order_by(c.status == _CHALLENGE_DONE, c.created_at.desc(), c.id)
        .limit(limit).offset(offset))
    return [dict(r._mapping) for r in rows]


def markets_page(conn: Connection, limit: int, offset: int) -> list[dict[str, Any]]:
    m = markets.c
    rows = conn.execute(
        select(m.market_id, m.title, m.kind, m.status, m.currency, m.created_at)
        .order_by(m.status.in_([SETTLED, VOIDED]), m.created_at.desc(), m.market_id)
        .limit(limit).offset(offset))
    return [dict(r._mapping) for r in rows]


def market_header(conn: Connection, market_id: str) -> dict[str, Any] | None:
    m = markets.c
    row = conn.execute(
        select(m.market_id, m.title, m.kind, m.currency, m.creator_id, m.creator_fee_bps,
               m.house_fee_bps, m.status).where(m.market_id == market_id)).one_or_none()
    return None if row is None else dict(row._mapping)


def market_options(conn: Connection, market_id: str) -> list[dict[str, Any]]:
    """Each option with its pool and number of commitments (one grouped scan, indexed)."""
    o, c = options_t.c, market_commitments.c
    rows = conn.execute(
        select(o.option_id, o.label, func.coalesce(func.sum(c.amount), 0).label("pool"),
               func.count(c.commitment_id).label("n"))
        .select_from(options_t.outerjoin(
            market_commitments, (c.market_id == o.market_id) & (c.option_id == o.option_id)))
        .where(o.market_id == market_id)
        .group_by(o.option_id, o.label, o.ordinal).order_by(o.ordinal))
    return [{"option_id": r.option_id, "label": r.label, "pool": int(r.pool), "commitments": int(r.n)}
            for r in rows]


def cycles(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    y = journal_cycles.c
    rows = conn.execute(select(y.cycle_id, y.status)
                        .order_by(y.planned_at.desc(), y.cycle_id).limit(limit))
    return [dict(r._mapping) for r in rows]


def outbox_floor(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(outbox.c.id), 0))).scalar_one())


def command_state(conn: Connection, actor: str, request_id: str, floor: int) -> dict[str, Any]:
    """``applied`` once its claim is recorded, ``rejected`` (with the worker's reason) once a
    ``command.rejected`` names it, else ``pending``.  ``floor``: the outbox id when it was sent."""
    p = processed_requests.c
    if conn.execute(select(p.request_id).where(p.actor == actor, p.request_id == request_id)).first():
        return {"state": "applied", "reason": None}
    o = outbox.c
    data = o.body["data"]
    reason = conn.execute(
        select(data["reason"].astext)
        .where(o.id > floor, o.event_name == "command.rejected",
               data["request_id"].astext == request_id)
        .order_by(o.id.desc()).limit(1)).scalar_one_or_none()
    if reason is not None:
        return {"state": "rejected", "reason": reason}
    return {"state": "pending", "reason": None}


def open_alert_counts(conn: Connection) -> dict[str, int]:
    a = alerts.c
    rows = conn.execute(select(a.severity, func.count().label("n"))
                        .where(a.status != _RESOLVED).group_by(a.severity))
    return {r.severity: int(r.n) for r in rows}


def balance_history(conn: Connection, code: str, points: int = 60) -> list[dict[str, Any]]:
    """The account's balance after each of its last ``points`` entries, oldest first: the
    cached balance less what later entries added (one index range scan, no full sum)."""
    a, t = accounts.c, ledger_transactions.c
    last = (select(ledger_entries)
            .where(ledger_entries.c.account_id
                   == select(a.id).where(a.code == code).scalar_subquery())
            .order_by(ledger_entries.c.id.desc()).limit(points).subquery("e"))
    later = func.sum(last.c.amount).over(order_by=last.c.id.desc(), rows=(None, -1))
    rows = conn.execute(
        select(t.created_at.label("at"), (a.balance - func.coalesce(later, 0)).label("balance"))
        .select_from(last.join(accounts, a.id == last.c.account_id)
                     .join(ledger_transactions, t.id == last.c.transaction_id))
        .order_by(last.c.id.desc()))
    return [{"at": r.at.isoformat(), "balance": int(r.balance)} for r in rows][::-1]


# --- page counts and the paged lists the views do not page themselves ------------------------
# Every list the console shows is one page read with LIMIT/OFFSET (one row more than the page,
# to know a next page exists) and, for the "last page" link, a count(*) of the same rows.

def count(conn: Connection, table: Table, *where: Any) -> int:
    """``SELECT count(*) FROM table WHERE …`` (Core conditions on ``table``)."""
    return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def challenge_count(conn: Connection) -> int:
    return count(conn, challenges)


def market_count(conn: Connection) -> int:
    return count(conn, markets)


def match_count(conn: Connection, challenge_id: str) -> int:
    m = treasury_matches.c
    return count(conn, treasury_matches, m.challenge_id == challenge_id, m.status != _RESERVED)


def commitments_page(conn: Connection, market_id: str, limit: int,
                     offset: int) -> list[dict[str, Any]]:
    """A page of a market's commitments, newest first (index market_commitments_by_market)."""
    c = market_commitments.c
    rows = conn.execute(
        select(c.commitment_id, c.user_id, c.option_id, c.position, c.method, c.amount,
               c.status, c.created_at)
        .where(c.market_id == market_id)
        .order_by(c.created_at.desc(), c.commitment_id.desc()).limit(limit).offset(offset))
    return [dict(r._mapping) | {"amount": int(r.amount)} for r in rows]


def distribution_line_count(conn: Connection, distribution_id: int) -> int:
    return count(conn, market_distribution_lines,
                 market_distribution_lines.c.distribution_id == distribution_id)


def conversion_count(conn: Connection) -> int:
    return count(conn, conversion_jobs)


def audit_count(conn: Connection, operator: str | None) -> int:
    if operator is None:
        return count(conn, console_audit)
    return count(conn, console_audit, console_audit.c.operator == operator)


def alert_count(conn: Connection, open_only: bool, user_id: str | None = None) -> int:
    a = alerts.c
    where = []
    if open_only:
        where.append(a.status != _RESOLVED)
    if user_id is not None:
        where.append(a.data["user_id"].astext == user_id)
    return count(conn, alerts, *where)


def wallet_audit_count(conn: Connection, user_id: str) -> int:
    return count(conn, wallet_audit, wallet_audit.c.user_id == user_id)


def dead_letters_page(conn: Connection, queue: str | None, limit: int,
                      offset: int) -> list[dict[str, Any]]:
    """A page of the live dead letters (``dead_letters`` rows still ``dead``), newest first:
    what RabbitMQ holds in the queues' XQs, kept even once RabbitMQ has expired its copy."""
    d = dead_letters.c
    query = (select(d.queue, d.message_id, d.actor, d.request_id, d.reason, d.retries, d.code,
                    d.dead_lettered_at).where(d.status == _DEAD))
    if queue is not None:
        query = query.where(d.queue == queue)
    rows = conn.execute(query.order_by(d.dead_lettered_at.desc(), d.id.desc())
                        .limit(limit).offset(offset))
    return [{"queue": r.queue, "message_id": r.message_id, "actor": r.actor,
             "request_id": r.request_id, "reason": r.reason, "retries": r.retries,
             "code": r.code, "failed_at": r.dead_lettered_at.isoformat()} for r in rows]


def dead_letter_counts(conn: Connection) -> dict[str, int]:
    """Live dead letters per queue, from the durable log."""
    d = dead_letters.c
    rows = conn.execute(select(d.queue, func.count().label("n"))
                        .where(d.status == _DEAD).group_by(d.queue))
    return {r.queue: int(r.n) for r in rows}
