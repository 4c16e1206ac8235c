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


# --- page counts and the paged lists the views do not page themselves ------------------------
# Every list the console shows is one page read with LIMIT/OFFSET (one row more than the page,
# to know a next page exists) and, for the "last page" link, a count(*) of the same rows.

def count(conn: Connection, table_sql: str, params: dict[str, Any] | None = None) -> int:
    """``SELECT count(*) FROM <table_sql>``: ``table_sql`` is the console's own text."""
    return int(conn.execute(text(f"SELECT count(*) FROM {table_sql}"), params or {}).scalar_one())


def challenge_count(conn: Connection) -> int:
    return count(conn, "challenges")


def market_count(conn: Connection) -> int:
    return count(conn, "markets")


def match_count(conn: Connection, challenge_id: str) -> int:
    return count(conn, "treasury_matches WHERE challenge_id = :c AND status <> 'reserved'",
                 {"c": challenge_id})


def commitments_page(conn: Connection, market_id: str, limit: int,
                     offset: int) -> list[dict[str, Any]]:
    """A page of a market's commitments, newest first (index market_commitments_by_market)."""
    rows = conn.execute(
        text("SELECT commitment_id, user_id, option_id, position, method, amount, status, "
             "created_at FROM market_commitments WHERE market_id = :m "
             "ORDER BY created_at DESC, commitment_id DESC LIMIT :n OFFSET :o"),
        {"m": market_id, "n": limit, "o": offset})
    return [dict(r._mapping) | {"amount": int(r.amount)} for r in rows]


def distribution_line_count(conn: Connection, distribution_id: int) -> int:
    return count(conn, "market_distribution_lines WHERE distribution_id = :d",
                 {"d": distribution_id})


def conversion_count(conn: Connection) -> int:
    return count(conn, "conversion_jobs")


def audit_count(conn: Connection, operator: str | None) -> int:
    return count(conn, "console_audit WHERE CAST(:o AS text) IS NULL OR operator = :o",
                 {"o": operator})


def alert_count(conn: Connection, open_only: bool, user_id: str | None = None) -> int:
    return count(conn, "alerts WHERE (NOT :open_only OR status <> 'resolved') "
                 "AND (CAST(:user AS text) IS NULL OR data->>'user_id' = :user)",
                 {"open_only": open_only, "user": user_id})


def wallet_audit_count(conn: Connection, user_id: str) -> int:
    return count(conn, "wallet_audit WHERE user_id = :u", {"u": user_id})


def dead_letters_page(conn: Connection, queue: str | None, limit: int,
                      offset: int) -> list[dict[str, Any]]:
    """A page of the live dead letters (``dead_letters`` rows still ``dead``), newest first:
    what RabbitMQ holds in the queues' XQs, kept even once RabbitMQ has expired its copy."""
    rows = conn.execute(
        text("SELECT queue, message_id, actor, request_id, reason, retries, code, "
             "dead_lettered_at FROM dead_letters WHERE status = 'dead' "
             "AND (CAST(:q AS text) IS NULL OR queue = :q) "
             "ORDER BY dead_lettered_at DESC, id DESC LIMIT :n OFFSET :o"),
        {"q": queue, "n": limit, "o": offset})
    return [{"queue": r.queue, "message_id": r.message_id, "actor": r.actor,
             "request_id": r.request_id, "reason": r.reason, "retries": r.retries,
             "code": r.code, "failed_at": r.dead_lettered_at.isoformat()} for r in rows]


def dead_letter_counts(conn: Connection) -> dict[str, int]:
    """Live dead letters per queue, from the durable log."""
    rows = conn.execute(text("SELECT queue, count(*) AS n FROM dead_letters WHERE status = 'dead' "
                             "GROUP BY queue"))
    return {r.queue: int(r.n) for r in rows}
