"""Every change to a user wallet goes through here: guard, ledger, audit, event."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Sequence

from sqlalchemy import Connection, text

from domain import accounts
from domain.errors import LedgerError
from domain.ledger import Posting
from domain.wallet import BalanceRefused, WalletChange
from infra import guard, ledger

if TYPE_CHECKING:  # the unit of work hands out repositories that post through here
    from infra.uow import UnitOfWork


def apply_changes(
    uow: UnitOfWork,
    changes: Sequence[WalletChange],
    *,
    counter_account: str,
    kind: str,
    memo: str | None = None,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
    notify: bool = True,
) -> int:
    """Post ``changes`` against ``counter_account`` as one balanced ledger transaction.

    The wallets and the counter account are locked first (in id order), the
    guard sees every change with its balance before, then the ledger
    transaction is posted and the guard records the audit trail.  Returns the
    ledger transaction id.  A refusal raises before anything is written.
    """
    if not changes:
        raise LedgerError("no wallet changes to apply")
    currencies = {c.currency for c in changes}
    if len(currencies) != 1:
        raise LedgerError(f"one transaction per currency, got {sorted(currencies)}")
    currency = currencies.pop()
    net: dict[str, int] = defaultdict(int)
    for c in changes:
        net[c.account] += c.amount
    total = sum(net.values())
    postings = [Posting(acc, currency, amt) for acc, amt in net.items() if amt != 0]
    if total != 0:
        postings.append(Posting(counter_account, currency, -total))

    codes = {counter_account: currency, **{c.account: currency for c in changes}}
    # A few wallets: their accounts, locks and what the guard needs in one statement
    # (the context read after the locks), and the posting with the audit trail, events
    # and alerts in one more.
    few = len(changes) <= guard.CONTEXT_WALLETS
    if few:
        locked, context = guard.Context.lock_and_load(uow.conn, codes, changes)
    else:
        locked, context = ledger.open_and_lock_accounts(uow.conn, codes), None
    running = {code: acc.balance for code, acc in locked.items()}
    paired: list[tuple[WalletChange, int]] = []
    for c in changes:
        paired.append((c, running[c.account]))
        running[c.account] += c.amount
    try:
        guard.check(uow.conn, paired, context=context)
    except BalanceRefused as refusal:
        _record_refusal(uow, refusal)
        raise

    def changed(txn_id: int | None) -> list:
        return [
            ("wallet.changed",
             {"user_id": c.user_id, "currency": c.currency, "amount": c.amount, "kind": c.kind,
              "balance_before": before, "balance_after": before + c.amount,
              "transaction_id": txn_id},
             c.user_id)
            for c, before in paired
        ] if notify and len(changes) <= 100 else []

    if context is not None and idempotency_key is None:
        posting = ledger.prepare_post(postings, kind=kind, memo=memo, metadata=metadata)
        return guard.post_and_record(uow, paired, posting, context, changed(None))
    txn_id = ledger.post(
        uow.conn,
        postings,
        kind=kind,
        memo=memo,
        idempotency_key=idempotency_key,
        metadata=metadata,
    )
    guard.record(uow.conn, paired, txn_id, uow=uow, context=context, events=changed(txn_id))
    return txn_id


def _record_refusal(uow: UnitOfWork, refusal: BalanceRefused) -> None:
    """The refusal's event and alert, committed on their own: the change's transaction
    is about to roll back, and the refusal must still be told."""
    with type(uow)(engine=uow.engine, broker=uow._broker) as side:
        # Never wait long on the outer transaction's locks (it waits for us).
        side.conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        guard.refused(side, refusal)
        side.commit()


def balances(conn: Connection, user_id: str, currency: str | None = None) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT currency, balance FROM accounts WHERE code LIKE :pattern "
            "AND (CAST(:cur AS text) IS NULL OR currency = :cur) ORDER BY currency"
        ),
        {"pattern": f"{accounts.prefix(accounts.USER)}{_escape_like(user_id)}:%", "cur": currency},
    )
    return {r.currency: int(r.balance) for r in rows}


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


def reverse_with_audit(uow: UnitOfWork, txn_id: int, *, kind: str = "reversal", memo: str, reason: str,
                       by: str) -> int:
    """``ledger.reverse`` with the wallet audit kept: each user wallet it touches is a
    system change of kind ``reversal`` seen by the guard (never blocked, always recorded).
    Returns the reversal's transaction id (the first one, if already reversed).
    """
    conn = uow.conn
    original = ledger.postings_of(conn, txn_id)
    # Lock every account of the reversal in id order before reading the balances.
    locked = ledger.lock_accounts(conn, [code for code, _, _ in original])
    running = {code: acc.balance for code, acc in locked.items()}
    paired: list[tuple[WalletChange, int]] = []
    for code, cur, amount in original:
        user_id = accounts.owner_of_wallet(code)
        if user_id is None:
            continue
        change = WalletChange(user_id, cur, -amount, "reversal", reason=reason, performed_by=by,
                              metadata={"reverses_transaction_id": txn_id})
        paired.append((change, running[code]))
        running[code] -= amount
    guard.check(conn, paired)
    reversal = ledger.reverse(conn, txn_id, kind=kind, memo=memo)
    if paired:
        guard.record(conn, paired, reversal, uow=uow)
    return reversal
