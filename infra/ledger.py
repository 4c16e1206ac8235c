"""The ledger on PostgreSQL: post balanced transactions, reverse them, check them.

Every function takes the unit of work's open ``Connection``; nothing here
commits.  Accounts touched by one transaction are locked in ascending id
order, so two postings never deadlock on each other's accounts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from sqlalchemy import Connection, text

from domain.errors import LedgerError, NotFound
from domain.ledger import (
    Posting,
    check_resulting_balance,
    may_go_negative,
    net_by_account,
    reversal_of,
    validate_postings,
)


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    code: str
    currency: str
    allow_negative: bool
    balance: int


def ensure_accounts(conn: Connection, wanted: dict[str, str]) -> None:
    """Create the accounts (code -> currency) that do not exist yet, in code order."""
    _create_accounts(conn, _missing_accounts(conn, wanted), wanted)


def _missing_accounts(conn: Connection, wanted: dict[str, str]) -> list[str]:
    if not wanted:
        return []
    codes = sorted(wanted)
    existing = {
        row.code
        for row in conn.execute(
            text("SELECT code FROM accounts WHERE code = ANY(:codes)"), {"codes": codes}
        )
    }
    return [c for c in codes if c not in existing]


def _create_accounts(conn: Connection, missing: list[str], wanted: dict[str, str]) -> None:
    if missing:
        conn.execute(
            text(
                "INSERT INTO accounts (code, currency, allow_negative) "
                "SELECT * FROM unnest(CAST(:codes AS text[]), CAST(:curs AS text[]), "
                "CAST(:negs AS boolean[])) ON CONFLICT (code) DO NOTHING"
            ),
            {
                "codes": missing,
                "curs": [wanted[c] for c in missing],
                "negs": [may_go_negative(c) for c in missing],
            },
        )


def lock_accounts(conn: Connection, codes: Iterable[str]) -> dict[str, Account]:
    """Lock the named accounts FOR UPDATE in ascending id order."""
    rows = conn.execute(
        text(
            "SELECT id, code, currency, allow_negative, balance FROM accounts "
            "WHERE code = ANY(:codes) ORDER BY id FOR UPDATE"
        ),
        {"codes": sorted(set(codes))},
    )
    return {r.code: Account(r.id, r.code, r.currency, r.allow_negative, r.balance) for r in rows}


def post(
    conn: Connection,
    postings: Sequence[Posting],
    *,
    kind: str,
    idempotency_key: str | None = None,
    memo: str | None = None,
    metadata: dict[str, Any] | None = None,
    reverses_id: int | None = None,
) -> int:
    """Post one balanced transaction and return its id.

    With an ``idempotency_key`` already used, returns the earlier transaction
    when it has the same postings and raises LedgerError when it differs.
    Raises InsufficientFunds (nothing written) when an account that may not
    go negative would.
    """
    postings = validate_postings(postings)
    if idempotency_key is not None:
        earlier = _by_key(conn, idempotency_key)
        if earlier is not None:
            if sorted(postings_of(conn, earlier)) != sorted(
                (p.account, p.currency, p.amount) for p in postings
            ):
                raise LedgerError(f"idempotency key {idempotency_key!r} reused with other postings")
            return earlier

    currency_of = {p.account: p.currency for p in postings}
    missing = _missing_accounts(conn, currency_of)
    if not missing:
        return _post_locked(conn, postings, currency_of, kind, idempotency_key, memo, metadata,
                            reverses_id)
    # A refusal must leave nothing behind, not even the accounts it would have opened.
    with conn.begin_nested():
        _create_accounts(conn, missing, currency_of)
        return _post_locked(conn, postings, currency_of, kind, idempotency_key, memo, metadata,
                            reverses_id)


def _post_locked(conn, postings, currency_of, kind, idempotency_key, memo, metadata, reverses_id):
    """Lock the (existing) accounts, check every rule, then write; raises before any write."""
    accounts = lock_accounts(conn, currency_of)
    for p in postings:
        if accounts[p.account].currency != p.currency:
            raise LedgerError(
                f"{p.account} holds {accounts[p.account].currency}, not {p.currency}"
            )
    net = net_by_account(postings)
    for code, delta in net.items():
        acc = accounts[code]
        check_resulting_balance(code, acc.allow_negative, acc.balance, delta)

    txn_id = conn.execute(
        text(
            "INSERT INTO ledger_transactions (idempotency_key, kind, memo, metadata, reverses_id) "
            "VALUES (:key, :kind, :memo, CAST(:meta AS jsonb), :rev) RETURNING id"
        ),
        {
            "key": idempotency_key,
            "kind": kind,
            "memo": memo,
            "meta": _json(metadata),
            "rev": reverses_id,
        },
    ).scalar_one()
    conn.execute(
        text(
            "INSERT INTO ledger_entries (transaction_id, account_id, currency, amount) "
            "SELECT :txn, * FROM unnest(CAST(:accs AS bigint[]), CAST(:curs AS text[]), "
            "CAST(:amts AS bigint[]))"
        ),
        {
            "txn": txn_id,
            "accs": [accounts[p.account].id for p in postings],
            "curs": [p.currency for p in postings],
            "amts": [p.amount for p in postings],
        },
    )
    changed = [(accounts[c].id, d) for c, d in net.items() if d != 0]
    if changed:
        conn.execute(
            text(
                "UPDATE accounts a SET balance = a.balance + d.delta "
                "FROM unnest(CAST(:ids AS bigint[]), CAST(:deltas AS bigint[])) AS d(id, delta) "
                "WHERE a.id = d.id"
            ),
            {"ids": [i for i, _ in changed], "deltas": [d for _, d in changed]},
        )
    return txn_id


def reverse(
    conn: Connection, txn_id: int, *, kind: str = "reversal", memo: str | None = None
) -> int:
    """Post the reversal of ``txn_id`` (once: a second call returns the first reversal)."""
    row = conn.execute(
        text("SELECT id, reverses_id FROM ledger_transactions WHERE id = :id"), {"id": txn_id}
    ).one_or_none()
    if row is None:
        raise NotFound(f"ledger transaction {txn_id} does not exist")
    if row.reverses_id is not None:
        raise LedgerError(f"transaction {txn_id} is itself a reversal; post a new transaction")
    done = conn.execute(
        text("SELECT id FROM ledger_transactions WHERE reverses_id = :id"), {"id": txn_id}
    ).scalar_one_or_none()
    if done is not None:
        return done
    original = [Posting(a, c, amt) for a, c, amt in postings_of(conn, txn_id)]
    return post(
        conn,
        reversal_of(original),
        kind=kind,
        memo=memo or f"reversal of {txn_id}",
        reverses_id=txn_id,
        idempotency_key=f"reversal:{txn_id}",
    )


def balance(conn: Connection, code: str) -> Account:
    row = conn.execute(
        text("SELECT id, code, currency, allow_negative, balance FROM accounts WHERE code = :c"),
        {"c": code},
    ).one_or_none()
    if row is None:
        raise NotFound(f"no account {code!r}")
    return Account(row.id, row.code, row.currency, row.allow_negative, row.balance)


def balances(conn: Connection, codes: Iterable[str]) -> dict[str, int]:
    rows = conn.execute(
        text("SELECT code, balance FROM accounts WHERE code = ANY(:c)"), {"c": list(codes)}
    )
    return {r.code: r.balance for r in rows}


def check(conn: Connection) -> dict[str, Any]:
    """Prove the ledger's invariants on the live database (``ballast ledger check``)."""
    counts = conn.execute(
        text(
            "SELECT (SELECT count(*) FROM ledger_transactions) AS n_txn, "
            "(SELECT count(*) FROM ledger_entries) AS n_entries"
        )
    ).one()
    unbalanced = [
        {"transaction_id": r.transaction_id, "currency": r.currency, "sum": int(r.total)}
        for r in conn.execute(
            text(
                "SELECT transaction_id, currency, sum(amount) AS total FROM ledger_entries "
                "GROUP BY transaction_id, currency HAVING sum(amount) <> 0 "
                "ORDER BY transaction_id LIMIT 1000"
            )
        )
    ]
    # Entries whose currency differs from their account's also break the books.
    unbalanced += [
        {"transaction_id": r.transaction_id, "currency": r.currency, "sum": None,
         "problem": f"entry in {r.currency} on {r.code} ({r.account_currency})"}
        for r in conn.execute(
            text(
                "SELECT e.transaction_id, e.currency, a.code, a.currency AS account_currency "
                "FROM ledger_entries e JOIN accounts a ON a.id = e.account_id "
                "WHERE e.currency <> a.currency LIMIT 1000"
            )
        )
    ]
    mismatches = [
        {"account": r.code, "cached": int(r.balance), "entries": int(r.total)}
        for r in conn.execute(
            text(
                "SELECT a.code, a.balance, COALESCE(s.total, 0) AS total FROM accounts a "
                "LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_entries "
                "GROUP BY account_id) s ON s.account_id = a.id "
                "WHERE a.balance <> COALESCE(s.total, 0) ORDER BY a.code LIMIT 1000"
            )
        )
    ]
    negatives = [
        {"account": r.code, "balance": int(r.balance)}
        for r in conn.execute(
            text(
                "SELECT code, balance FROM accounts WHERE NOT allow_negative AND balance < 0 "
                "ORDER BY code LIMIT 1000"
            )
        )
    ]
    return {
        "ok": not (unbalanced or mismatches or negatives),
        "transactions": int(counts.n_txn),
        "entries": int(counts.n_entries),
        "unbalanced": unbalanced,
        "balance_mismatches": mismatches,
        "negative_balances": negatives,
    }


def _by_key(conn: Connection, key: str) -> int | None:
    return conn.execute(
        text("SELECT id FROM ledger_transactions WHERE idempotency_key = :k"), {"k": key}
    ).scalar_one_or_none()


def postings_of(conn: Connection, txn_id: int) -> list[tuple[str, str, int]]:
    """(account code, currency, amount) of each entry of a transaction, in entry order."""
    return [
        (r.code, r.currency, int(r.amount))
        for r in conn.execute(
            text(
                "SELECT a.code, e.currency, e.amount FROM ledger_entries e "
                "JOIN accounts a ON a.id = e.account_id WHERE e.transaction_id = :t ORDER BY e.id"
            ),
            {"t": txn_id},
        )
    ]


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, default=str)
