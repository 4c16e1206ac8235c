"""User wallets on PostgreSQL: their balances and ledger lines (reads), and a ledger
reversal with its wallet audit (the markets rollback's, in ``infra``).

A wallet change (guard, ledger, audit, event) is ``services.wallets.apply_changes``; the
statements it runs are ``repository``'s (``uow.wallets``, ``uow.guard``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, text

from domain import accounts
from domain.wallet import WalletChange
from infra import ledger
from infra.db import tables as t


def balances(conn: Connection, user_id: str, currency: str | None = None) -> dict[str, int]:
    """The user's wallet balances, per currency (one currency when given)."""
    a = t.accounts.c
    query = select(a.currency, a.balance).where(
        a.code.like(f"{accounts.prefix(accounts.USER)}{_escape_like(user_id)}:%"))
    if currency is not None:
        query = query.where(a.currency == currency)
    return {r.currency: int(r.balance) for r in conn.execute(query.order_by(a.currency))}


def history(
    conn: Connection, user_id: str, currency: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The wallet's ledger lines, newest first, with the running balance after each."""
    rows = conn.execute(
        text(
            "SELECT t.id AS transaction_id, t.kind, t.memo, t.created_at, e.currency, e.amount, "
            "t.reverses_id, sum(e.amount) OVER (PARTITION BY e.account_id ORDER BY e.id) AS balance_after "
            "FROM ledger_entries e JOIN accounts a ON a.id = e.account_id "
            "JOIN ledger_transactions t ON t.id = e.transaction_id "
            "WHERE a.code LIKE :pattern AND (CAST(:cur AS text) IS NULL OR e.currency = :cur) "
            "ORDER BY e.id DESC LIMIT :limit"
        ),
        {"pattern": f"{accounts.prefix(accounts.USER)}{_escape_like(user_id)}:%", "cur": currency, "limit": limit},
    )
    return [
        {
            "transaction_id": r.transaction_id,
            "kind": r.kind,
            "memo": r.memo,
            "currency": r.currency,
            "amount": int(r.amount),
            "balance_after": int(r.balance_after),
            "reverses": r.reverses_id,
            "at": r.created_at.isoformat(),
        }
        for r in rows
    ]


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def reverse_with_audit(uow, txn_id: int, *, kind: str = "reversal", memo: str, reason: str,
                       by: str) -> int:
    """``ledger.reverse`` with the wallet audit kept: each user wallet it touches is a
    system change of kind ``reversal`` (never refused by the guard, always recorded).
    Returns the reversal's transaction id (the first one, if already reversed).
    """
    original = ledger.postings_of(uow.conn, txn_id)
    # Lock every account of the reversal in id order before reading the balances.
    running = uow.wallets.lock_balances([code for code, _, _ in original])
    paired: list[tuple[WalletChange, int]] = []
    for code, cur, amount in original:
        user_id = accounts.owner_of_wallet(code)
        if user_id is None:
            continue
        change = WalletChange(user_id, cur, -amount, "reversal", reason=reason, performed_by=by,
                              metadata={"reverses_transaction_id": txn_id})
        paired.append((change, running[code]))
        running[code] -= amount
    # A reversal is a system change (``domain.wallet.USER_INITIATED``): the guard has
    # nothing to check, only the audit to record.
    reversal = ledger.reverse(uow.conn, txn_id, kind=kind, memo=memo)
    if paired:
        uow.wallets.record(paired, reversal)
    return reversal
