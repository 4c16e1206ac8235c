"""Reads the console needs beyond the CLI's documents: paged lists of what exists, and
the state of a command an operator sent.  Numbers come from the views; these only list."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text


def challenges_page(conn: Connection, limit: int, offset: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        text("SELECT id, title, status, currency, stake, admin_created, created_at FROM challenges "
             "ORDER BY (status = 'settled'), created_at DESC, id LIMIT :n OFFSET :o"),
        {"n": limit, "o": offset})
    return [dict(r._mapping) for r in rows]


def markets_page(conn: Connection, limit: int, offset: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        text("SELECT market_id, title, kind, status, currency, created_at FROM markets "
             "ORDER BY (status IN ('settled', 'voided')), created_at DESC, market_id "
             "LIMIT :n OFFSET :o"), {"n": limit, "o": offset})
    return [dict(r._mapping) for r in rows]


def market_header(conn: Connection, market_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        text("SELECT market_id, title, kind, currency, creator_id, creator_fee_bps, house_fee_bps, "
             "status FROM markets WHERE market_id = :m"), {"m": market_id}).one_or_none()
    return None if row is None else dict(row._mapping)


def market_options(conn: Connection, market_id: str) -> list[dict[str, Any]]:
    """Each option with its pool and number of commitments (one grouped scan, indexed)."""
    rows = conn.execute(
        text("SELECT o.option_id, o.label, COALESCE(sum(c.amount), 0) AS pool, count(c.*) AS n "
             "FROM market_options o LEFT JOIN market_commitments c "
             "ON c.market_id = o.market_id AND c.option_id = o.option_id "
             "WHERE o.market_id = :m GROUP BY o.option_id, o.label, o.ordinal ORDER BY o.ordinal"),
        {"m": market_id})
    return [{"option_id": r.option_id, "label": r.label, "pool": int(r.pool), "commitments": int(r.n)}
            for r in rows]


def cycles(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(text("SELECT cycle_id, status FROM journal_cycles "
                             "ORDER BY planned_at DESC, cycle_id LIMIT :n"), {"n": limit})
    return [dict(r._mapping) for r in rows]


def outbox_floor(conn: Connection) -> int:
    return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM outbox")).scalar_one())


def command_state(conn: Connection, actor: str, request_id: str, floor: int) -> dict[str, Any]:
    """``applied`` once its claim is recorded, ``rejected`` (with the worker's reason) once a
    ``command.rejected`` names it, else ``pending``.  ``floor``: the outbox id when it was sent."""
    if conn.execute(text("SELECT 1 FROM processed_requests WHERE actor = :a AND request_id = :r"),
                    {"a": actor, "r": request_id}).first():
        return {"state": "applied", "reason": None}
    reason = conn.execute(
        text("SELECT body->'data'->>'reason' FROM outbox WHERE id > :f "
             "AND event_name = 'command.rejected' AND body->'data'->>'request_id' = :r "
             "ORDER BY id DESC LIMIT 1"), {"f": floor, "r": request_id}).scalar_one_or_none()
    if reason is not None:
        return {"state": "rejected", "reason": reason}
    return {"state": "pending", "reason": None}


def open_alert_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(text("SELECT severity, count(*) AS n FROM alerts WHERE status <> 'resolved' "
                             "GROUP BY severity"))
    return {r.severity: int(r.n) for r in rows}


def balance_history(conn: Connection, code: str, points: int = 60) -> list[dict[str, Any]]:
    """The account's balance after each of its last ``points`` entries, oldest first: the
    cached balance less what later entries added (one index range scan, no full sum)."""
    rows = conn.execute(
        text("SELECT t.created_at AS at, a.balance - COALESCE(sum(e.amount) OVER ("
             "ORDER BY e.id DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS balance "
             "FROM (SELECT * FROM ledger_entries WHERE account_id = "
             "(SELECT id FROM accounts WHERE code = :c) ORDER BY id DESC LIMIT :n) e "
             "JOIN accounts a ON a.id = e.account_id "
             "JOIN ledger_transactions t ON t.id = e.transaction_id ORDER BY e.id DESC"),
        {"c": code, "n": points})
    return [{"at": r.at.isoformat(), "balance": int(r.balance)} for r in rows][::-1]
