"""The balance guard's reads (SPEC §4): tiers, the audit trail, limits and analytics
reports for the CLI and the console, and the two steps ``infra`` callers run on it.

The guard's place in a wallet change (limits checked under the wallet locks, the
post-and-record path, balance alerts, refusals) is ``services/guard.py`` and
``services/wallets.py``, its rules ``domain.guard``, its statements
``infra/wallets/repository.py`` (``uow.guard``, ``uow.wallets``).  ``record_select`` and
``alerts_after`` serve the markets repository's set-based settlement (``uow.markets.pay_lines``).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import Connection, func, select, text

from domain import accounts
from domain import guard as rules
from domain.guard import DEFAULT_TIER, LimitTable, Usage
from domain import request_ids
from infra.db import tables as t
from infra.wallets import _escape_like
from infra.wallets.repository import (INLINE_ALERT_WALLETS, RISK_PARAMS, GuardRepository,
                                      load_limits, record_select, risk_sql, set_limits, tiers_of,
                                      usage)

__all__ = ["INLINE_ALERT_WALLETS", "RISK_PARAMS", "LimitTable", "agent_analytics", "alerts_after",
           "analytics", "balance_alert_expiry", "history", "history_page", "limit_table",
           "limits_report", "recent_changes", "record_select", "risk_sql", "set_limits", "tier_of",
           "tiers_of", "usage"]


def tier_of(conn: Connection, user_id: str) -> str:
    """The user's tier (bronze until set)."""
    return tiers_of(conn, [user_id]).get(user_id, DEFAULT_TIER)


def limit_table(conn: Connection) -> LimitTable:
    """Every stored (tier, currency) row of the limits, falling back to SPEC §4's table."""
    return load_limits(conn)


def alerts_after(uow, txn_id: int, wallets: int) -> None:
    """The balance alerts of a transaction whose audit lines are written (``record_select``):
    inline for up to INLINE_ALERT_WALLETS wallets, else handed to ``evaluate_balance_alerts``
    (as ``uow.wallets.record`` does)."""
    if wallets <= INLINE_ALERT_WALLETS:
        uow.guard.alerts_of_chunk(txn_id)
    else:
        uow.send("evaluate_balance_alerts", request_id=request_ids.next_step("balance-alerts", txn_id, 0),
                 transaction_id=txn_id)


def balance_alert_expiry(uow) -> None:
    """The alert sweep's condition: ``limit_exceeded`` clears when the window that refused
    has rolled past the refusal; ``significant_drop`` a day after the last drop."""
    GuardRepository(uow).expire_balance_alerts()


# --- reports -----------------------------------------------------------------------------------

def history(conn: Connection, user_id: str, currency: str | None = None,
            limit: int = 50, after: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """The wallet's audit trail, newest first (``after``: only lines older than that audit id;
    ``offset``: lines skipped, for the console's numbered pages)."""
    return history_page(conn, user_id, currency, limit, after, offset)[0]


def history_page(conn: Connection, user_id: str, currency: str | None = None, limit: int = 50,
                 after: int | None = None,
                 offset: int = 0) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the wallet's audit trail, newest first, and the next page's cursor."""
    w = t.wallet_audit.c
    query = select(t.wallet_audit).where(w.user_id == user_id)
    if currency is not None:
        query = query.where(w.currency == currency)
    if after is not None:
        query = query.where(w.id < after)
    rows = conn.execute(query.order_by(w.id.desc()).limit(limit + 1).offset(offset)).all()
    shown, cursor = rules.page(rows, limit, key=lambda r: r.id)
    return [_audit_line(r) for r in shown], cursor


def _audit_line(r) -> dict[str, Any]:
    return {"audit_id": r.id, "at": r.created_at.isoformat(), "transaction_id": r.transaction_id,
            "kind": r.kind, "currency": r.currency, "amount": r.amount,
            "balance_before": r.balance_before, "balance_after": r.balance_after,
            "reason": r.reason, "performed_by": r.performed_by, "risk_score": r.risk_score,
            "tier": r.tier, "metadata": r.metadata}


def recent_changes(conn: Connection, *, hours: int | None = 24, by: str | None = None,
                   min_risk: int = 0, limit: int = 50, after: int | None = None) -> dict[str, Any]:
    """Recent changes across all customers, newest first, keyset-paged on the audit id
    (``ballast audit recent``): a page never repeats or skips a line, whatever is written
    meanwhile (new lines have higher ids and are only on the first page of a new walk)."""
    w = t.wallet_audit.c
    query = select(t.wallet_audit).where(w.risk_score >= min_risk)
    if hours is not None:
        query = query.where(w.created_at >= func.now() - func.make_interval(0, 0, 0, 0, hours))
    if by is not None:
        query = query.where(w.performed_by == by)
    if after is not None:
        query = query.where(w.id < after)
    rows = conn.execute(query.order_by(w.id.desc()).limit(limit + 1)).all()
    shown, cursor = rules.page(rows, limit, key=lambda r: r.id)
    return {"changes": [{"user_id": r.user_id, **_audit_line(r)} for r in shown],
            "next_cursor": cursor, "hours": hours, "performed_by": by, "min_risk": min_risk}


def limits_report(conn: Connection, user_id: str, currencies: Sequence[str]) -> dict[str, Any]:
    """Each wallet's limits and what its trailing windows already hold."""
    tier = tier_of(conn, user_id)
    table = load_limits(conn)
    used = usage(conn, [(user_id, c) for c in currencies])
    out = {}
    for cur in currencies:
        lim = table.get(tier, cur)
        u = used.get((user_id, cur), Usage())
        out[cur] = {"min_balance": lim.min_balance, "max_balance": lim.max_balance,
                    "daily_limit": lim.daily, "daily_used": u.daily,
                    "weekly_limit": lim.weekly, "weekly_used": u.weekly,
                    "warning": lim.warning, "critical": lim.critical}
    return out


def analytics(conn: Connection, start: datetime, end: datetime, user_id: str | None = None,
              currency: str | None = None) -> dict[str, Any]:
    """SPEC §4's analytics over ``[start, end)`` for one user or the platform, per currency.

    Balances come from the ledger (the truth), changes and their types from the audit trail.
    """
    pattern = f"{accounts.prefix(accounts.USER)}{_escape_like(user_id)}:%" if user_id else f"{accounts.prefix(accounts.USER)}%"
    balances = conn.execute(
        text(
            "SELECT a.currency, "
            "COALESCE(sum(e.amount) FILTER (WHERE t.created_at < :start), 0) AS start_balance, "
            "COALESCE(sum(e.amount) FILTER (WHERE t.created_at < :end), 0) AS end_balance "
            "FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id "
            "LEFT JOIN ledger_transactions t ON t.id = e.transaction_id "
            "WHERE a.code LIKE :pattern AND (CAST(:cur AS text) IS NULL OR a.currency = :cur) "
            "GROUP BY a.currency"
        ),
        {"start": start, "end": end, "pattern": pattern, "cur": currency},
    ).all()
    stats = conn.execute(
        text(
            "SELECT currency, kind, count(*) AS n, sum(abs(amount)) AS s1, "
            "sum(CAST(amount AS numeric) * amount) AS s2, sum(amount) AS net FROM wallet_audit "
            "WHERE created_at >= :start AND created_at < :end "
            "AND (CAST(:user AS text) IS NULL OR user_id = :user) "
            "AND (CAST(:cur AS text) IS NULL OR currency = :cur) GROUP BY currency, kind"
        ),
        {"start": start, "end": end, "user": user_id, "cur": currency},
    ).all()
    per_cur: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "s1": 0, "s2": 0, "by": {}})
    for r in stats:
        acc = per_cur[r.currency]
        acc["n"] += int(r.n)
        acc["s1"] += int(r.s1)
        acc["s2"] += int(r.s2)
        acc["by"][r.kind] = int(r.net)
    currencies = {}
    for r in sorted(balances, key=lambda r: r.currency):
        acc = per_cur[r.currency]
        st = rules.ChangeStats(acc["n"], acc["s1"], acc["s2"], acc["by"])
        currencies[r.currency] = rules.analyze(r.currency, int(r.start_balance), int(r.end_balance), st)
    return {"user_id": user_id, "start": start.isoformat(), "end": end.isoformat(),
            "currencies": currencies}


def agent_analytics(conn: Connection, start: datetime, end: datetime, agent: str,
                    currency: str | None = None) -> dict[str, Any]:
    """What one agent (``performed_by``: an operator, an upstream service, ``system``) did
    over ``[start, end)``, per currency, from the audit trail."""
    rows = conn.execute(
        text(
            "SELECT currency, kind, count(*) AS n, sum(abs(amount)) AS s1, "
            "sum(CAST(amount AS numeric) * amount) AS s2, sum(amount) AS net, "
            "max(risk_score) AS max_risk, count(*) FILTER (WHERE risk_score >= :risky) AS risky "
            "FROM wallet_audit WHERE performed_by = :agent AND created_at >= :start "
            "AND created_at < :end AND (CAST(:cur AS text) IS NULL OR currency = :cur) "
            "GROUP BY currency, kind"
        ),
        {"agent": agent, "start": start, "end": end, "cur": currency, "risky": rules.RISKY_SCORE},
    ).all()
    users = dict(conn.execute(
        text("SELECT currency, count(DISTINCT user_id) FROM wallet_audit WHERE performed_by = :agent "
             "AND created_at >= :start AND created_at < :end "
             "AND (CAST(:cur AS text) IS NULL OR currency = :cur) GROUP BY currency"),
        {"agent": agent, "start": start, "end": end, "cur": currency},
    ).all())
    per_cur: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"n": 0, "s1": 0, "s2": 0, "by": {}, "max": 0, "risky": 0})
    for r in rows:
        acc = per_cur[r.currency]
        acc["n"] += int(r.n)
        acc["s1"] += int(r.s1)
        acc["s2"] += int(r.s2)
        acc["by"][r.kind] = int(r.net)
        acc["max"] = max(acc["max"], int(r.max_risk))
        acc["risky"] += int(r.risky)
    currencies = {
        cur: rules.analyze_agent(cur, rules.ChangeStats(a["n"], a["s1"], a["s2"], a["by"]),
                                 int(users.get(cur, 0)), a["max"], a["risky"])
        for cur, a in sorted(per_cur.items())
    }
    return {"agent": agent, "user_id": None, "start": start.isoformat(), "end": end.isoformat(),
            "currencies": currencies}
