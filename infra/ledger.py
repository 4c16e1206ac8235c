"""The ledger on PostgreSQL: post balanced transactions, reverse them, check them.

Every function takes the unit of work's open ``Connection``; nothing here
commits.  Accounts touched by one transaction are locked in ascending id
order, so two postings never deadlock on each other's accounts.

A posting (or a batch, ``post_many``) is one call of the server-side function
``ledger_post_many`` (migration 0012): open missing accounts, lock, check, write
transactions, entries and cached balances.  The rules stay in ``domain.ledger``:
validation runs here before the call, the account flags and net amounts are the
domain's, and a refusal the database reports is re-derived with the domain rule.
Unlimited accounts (``world:``, ``adjustments:``) keep their balance in shards
(``account_shards``) so concurrent postings never queue on their row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import Connection, text

from infra.db.engine import fetch, pg_array, sql

from domain.errors import InsufficientFunds, LedgerError, NotFound
from domain.money import CURRENCIES
from domain.ledger import (
    Posting,
    PostingBatchItem,
    check_resulting_balance,
    is_unlimited,
    may_go_negative,
    reversal_of,
    validate_batch,
    validate_postings,
)

__all__ = ["Account", "Posting", "PostingBatchItem", "balance", "balances", "check",
           "ensure_accounts", "lock_accounts", "open_and_lock_accounts", "post", "post_many",
           "PreparedPosting", "prepare_post_many", "account_arrays", "account_of", "post_select",
           "postings_of", "reverse"]


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    code: str
    currency: str
    allow_negative: bool
    balance: int
    #: An unlimited account (``domain.ledger.is_unlimited``): its balance is kept in
    #: shards, and its row is never locked for update.
    sharded: bool = False


def account_arrays(currency_of: dict[str, str]) -> dict[str, str]:
    """The per-account arrays (``codes``, ``curs``, ``negs``, ``sharded``) the ledger's
    server functions take, in code order."""
    codes = sorted(currency_of)
    return {
        "codes": pg_array(codes),
        "curs": pg_array([currency_of[c] for c in codes]),
        "negs": pg_array([may_go_negative(c) for c in codes]),
        "sharded": pg_array([is_unlimited(c) for c in codes]),
    }


def ensure_accounts(conn: Connection, wanted: dict[str, str]) -> None:
    """Create the accounts (code -> currency) that do not exist yet, in code order."""
    if wanted:
        conn.execute(
            text("SELECT ledger_open_accounts(CAST(:codes AS text[]), CAST(:curs AS text[]), "
                 "CAST(:negs AS boolean[]), CAST(:sharded AS boolean[]))"),
            account_arrays(wanted),
        )


def lock_accounts(conn: Connection, codes: Iterable[str]) -> dict[str, Account]:
    """Lock the named accounts FOR UPDATE in ascending id order; read their balances.

    Unlimited (sharded) accounts are read, not locked: no rule depends on their
    balance, and locking them would queue every posting of a currency on one row.
    """
    rows = conn.execute(
        text("SELECT * FROM ledger_lock_accounts(CAST(:codes AS text[]))"),
        {"codes": sorted(set(codes))},
    )
    return {r.code: account_of(r) for r in rows}


def open_and_lock_accounts(conn: Connection, wanted: dict[str, str]) -> dict[str, Account]:
    """``ensure_accounts`` then ``lock_accounts`` in one statement (one round trip): the
    lock runs after the opening (it takes the opening's result as its argument), and, as a
    volatile function, sees the accounts the opening created."""
    rows = conn.execute(
        sql("SELECT l.* FROM (SELECT ledger_open_accounts(CAST(:codes AS text[]), "
             "CAST(:curs AS text[]), CAST(:negs AS boolean[]), CAST(:sharded AS boolean[])) "
             "AS created) o CROSS JOIN LATERAL ledger_lock_accounts(CASE WHEN o.created IS NULL "
             "THEN NULL ELSE CAST(:codes AS text[]) END) l"),
        account_arrays(wanted),
    )
    return {r.code: account_of(r) for r in rows}


def account_of(r) -> Account:
    """An ``Account`` from a row of ``ledger_lock_accounts`` (or a function returning its
    columns)."""
    return Account(r.id, r.code, r.currency, r.allow_negative, int(r.balance), r.sharded)


_POST_MANY = sql(
    "SELECT * FROM ledger_post_many("
    "CAST(:keys AS text[]), CAST(:kinds AS text[]), CAST(:memos AS text[]), "
    "CAST(:metas AS jsonb[]), CAST(:revs AS bigint[]), "
    "CAST(:codes AS text[]), CAST(:curs AS text[]), CAST(:negs AS boolean[]), "
    "CAST(:sharded AS boolean[]), "
    "CAST(:e_txn AS int[]), CAST(:e_codes AS text[]), CAST(:e_curs AS text[]), "
    "CAST(:e_amts AS bigint[]))"
)


@dataclass(frozen=True, slots=True)
class PreparedPosting:
    """One ``ledger_post_many`` call, validated and bound, to run inside a bigger statement
    (``uow.wallets.post_and_record_many``: ``sql`` as a CTE, its row given back to
    ``outcome``)."""

    #: ``SELECT * FROM ledger_post_many(...)``: one row (status, ids, idx, code, ...).
    sql: str
    params: dict[str, Any]
    checked: list[tuple[PostingBatchItem, list[Posting]]]
    reverses: list[int | None]

    def outcome(self, conn: Connection, row) -> list[int]:
        """The transaction ids of the call's row, or the refusal it reports, raised."""
        return _outcome(conn, self.checked, self.reverses, row)


def prepare_post_many(items: Sequence[PostingBatchItem]) -> PreparedPosting:
    """``post_many``'s validation and parameters, not run yet (a batch inside a bigger
    statement: ``uow.wallets.post_and_record_many``)."""
    checked = validate_batch(items)
    reverses: list[int | None] = [None] * len(checked)
    return PreparedPosting(_POST_MANY.text, _post_params(checked, reverses), checked, reverses)


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
    go negative would.  One round trip to the database (two for a repeat).
    """
    postings = validate_postings(postings)
    item = PostingBatchItem(postings, kind, idempotency_key, memo, metadata)
    return _post_checked(conn, [(item, postings)], [reverses_id])[0]


def post_many(conn: Connection, items: Sequence[PostingBatchItem]) -> list[int]:
    """Post many balanced transactions at once, all or none; their ids, in order.

    Each transaction is checked as ``post`` checks it (balanced per currency, the
    accounts' currencies, no forbidden negative balance after the transactions before
    it in the batch, its idempotency key); the accounts are locked once, in ascending id
    order.  A transaction whose key is already used with the same postings gives the
    earlier id and is not posted again; with other postings the whole batch is refused.
    One round trip to the database for the whole batch.
    """
    checked = validate_batch(items)
    return _post_checked(conn, checked, [None] * len(checked))


def _post_params(checked: list[tuple[PostingBatchItem, list[Posting]]],
                 reverses: list[int | None]) -> dict[str, Any]:
    currency_of: dict[str, str] = {}
    e_txn, e_codes, e_curs, e_amts = [], [], [], []
    for n, (_, postings) in enumerate(checked, start=1):
        for p in postings:
            currency_of[p.account] = p.currency
            e_txn.append(n)
            e_codes.append(p.account)
            e_curs.append(p.currency)
            e_amts.append(p.amount)
    items = [item for item, _ in checked]
    return {
        "keys": pg_array([i.idempotency_key for i in items]),
        "kinds": pg_array([i.kind for i in items]),
        "memos": pg_array([i.memo for i in items]),
        "metas": pg_array([_json(i.metadata) for i in items]),
        "revs": pg_array(reverses),
        **account_arrays(currency_of),
        "e_txn": pg_array(e_txn), "e_codes": pg_array(e_codes), "e_curs": pg_array(e_curs),
        "e_amts": pg_array(e_amts),
    }


def _post_checked(conn: Connection, checked: list[tuple[PostingBatchItem, list[Posting]]],
                  reverses: list[int | None]) -> list[int]:
    """Post validated transactions through ``ledger_post_many``; raise on a refusal
    (which wrote nothing)."""
    (row,) = fetch(conn, _POST_MANY, _post_params(checked, reverses))
    return _outcome(conn, checked, reverses, row)


def _outcome(conn: Connection, checked: list[tuple[PostingBatchItem, list[Posting]]],
             reverses: list[int | None], row) -> list[int]:
    """What ``ledger_post_many``'s row means: the ids, the earlier ones of a repeat, or the
    refusal raised."""
    if row.status == "posted":
        return list(row.ids)
    if row.status == "existing":
        return _repeats(conn, checked, reverses, dict(zip(row.idx, row.ids)))
    _refused(row, len(checked))


def _refused(row, n: int) -> None:
    """Raise the refusal ``ledger_post_many`` answered (re-derived with the domain rule)."""
    if row.status == "currency":
        raise LedgerError(f"{row.code} holds {row.currency}, not {row.wanted}")
    if row.status == "negative":
        where = f"transaction {row.idx[0] - 1} of the batch: " if n > 1 else ""
        try:
            check_resulting_balance(row.code, row.allow_negative, int(row.balance), int(row.delta))
        except InsufficientFunds as exc:
            raise InsufficientFunds(f"{where}{exc}") from None
        raise LedgerError(f"the database refused {row.code} going to "
                          f"{row.balance + row.delta}, which the ledger rules allow")
    raise LedgerError(f"unexpected answer from ledger_post_many: {row.status!r}")


def post_select(conn: Connection, transactions_sql: str, entries_sql: str,
                params: dict[str, Any]) -> list[int]:
    """Post the transactions two SELECTs describe, set-based: no row passes through Python.

    ``transactions_sql`` gives one row per transaction: ``txn`` (1, 2, … T), ``key`` (the
    idempotency key, unique, or NULL), ``kind``, ``memo``, ``meta`` (jsonb); ``entries_sql``
    one row per entry: ``txn``, ``code`` (an existing account), ``currency``, ``amount``,
    ``ord`` (the posting order).  The domain's rules (``validate_postings``: at least two
    entries, no zero amount, a known currency, balanced per currency; each key once) are
    checked by the same statement, with the domain's currencies as a parameter, before
    ``ledger_post_many`` is called; then that function locks, checks the accounts' currencies
    and limits (nothing may go below zero that may not) and writes, as for ``post_many``.
    Any refusal raises and writes nothing.  A key already used raises LedgerError (this
    path never repeats a posting).  Returns the new ids in ``txn`` order.
    """
    row = conn.execute(text(_POST_SELECT.format(transactions=transactions_sql,
                                                entries=entries_sql)),
                       {**params, "_currencies": list(CURRENCIES)}).one()
    if row.problem is not None:
        raise LedgerError(f"transaction {row.bad_txn} of the batch: {row.problem}"
                          if row.bad_txn is not None else row.problem)
    if row.status == "posted":
        return list(row.ids)
    if row.status == "existing":
        raise LedgerError(f"idempotency keys already used (transactions {list(row.ids)})")
    _refused(row, 2)
    raise AssertionError("unreachable")


# The entries and transactions (CTEs ``t`` and ``e``), the domain's checks on them
# (``bad``: the first problem, if any) and, only when there is none, ledger_post_many over
# their arrays (``posted``: its WHERE is uncorrelated, a one-time filter run before the
# function, so the function is never called when a problem was found).
_POST_SELECT = (
    "WITH t AS MATERIALIZED ({transactions}), e AS MATERIALIZED ({entries}), "
    "acc AS MATERIALIZED (SELECT a.code, a.currency, a.allow_negative, a.sharded "
    "FROM accounts a WHERE a.code IN (SELECT e.code FROM e)), "
    "bad AS (SELECT * FROM ("
    "SELECT e.txn, 'does not balance in ' || e.currency AS problem FROM e "
    "GROUP BY e.txn, e.currency HAVING sum(e.amount) <> 0 "
    "UNION ALL SELECT e.txn, 'zero amount for ' || e.code FROM e WHERE e.amount = 0 "
    "UNION ALL SELECT e.txn, 'unknown currency ' || e.currency FROM e "
    "WHERE e.currency <> ALL(CAST(:_currencies AS text[])) "
    "UNION ALL SELECT t.txn, 'a transaction needs at least two postings' FROM t "
    "LEFT JOIN e ON e.txn = t.txn GROUP BY t.txn HAVING count(e.txn) < 2 "
    "UNION ALL SELECT e.txn, 'an entry of no transaction' FROM e "
    "WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.txn = e.txn) "
    "UNION ALL SELECT min(t.txn), 'idempotency key ' || t.key || ' twice' FROM t "
    "WHERE t.key IS NOT NULL GROUP BY t.key HAVING count(*) > 1 "
    "UNION ALL SELECT NULL, 'transactions not numbered 1..T' FROM t "
    "HAVING count(*) > 0 AND (min(t.txn) <> 1 OR max(t.txn) <> count(*) "
    "OR count(DISTINCT t.txn) <> count(*)) "
    "UNION ALL SELECT NULL, 'no account ' || d.code FROM (SELECT DISTINCT e.code FROM e) d "
    "WHERE NOT EXISTS (SELECT 1 FROM acc WHERE acc.code = d.code) "
    "UNION ALL SELECT NULL, 'nothing to post' WHERE NOT EXISTS (SELECT 1 FROM t)"
    ") x ORDER BY x.txn NULLS FIRST LIMIT 1), "
    "posted AS MATERIALIZED (SELECT p.* FROM ledger_post_many("
    "ARRAY(SELECT t.key FROM t ORDER BY t.txn), ARRAY(SELECT t.kind FROM t ORDER BY t.txn), "
    "ARRAY(SELECT t.memo FROM t ORDER BY t.txn), "
    "ARRAY(SELECT CAST(t.meta AS jsonb) FROM t ORDER BY t.txn), "
    "ARRAY(SELECT CAST(NULL AS bigint) FROM t ORDER BY t.txn), "
    "ARRAY(SELECT acc.code FROM acc ORDER BY acc.code), "
    "ARRAY(SELECT acc.currency FROM acc ORDER BY acc.code), "
    "ARRAY(SELECT acc.allow_negative FROM acc ORDER BY acc.code), "
    "ARRAY(SELECT acc.sharded FROM acc ORDER BY acc.code), "
    "ARRAY(SELECT CAST(e.txn AS int) FROM e ORDER BY e.txn, e.ord), "
    "ARRAY(SELECT e.code FROM e ORDER BY e.txn, e.ord), "
    "ARRAY(SELECT e.currency FROM e ORDER BY e.txn, e.ord), "
    "ARRAY(SELECT CAST(e.amount AS bigint) FROM e ORDER BY e.txn, e.ord)) "
    "p WHERE NOT EXISTS (SELECT 1 FROM bad)) "
    "SELECT b.txn AS bad_txn, b.problem, p.* FROM (SELECT 1) one "
    "LEFT JOIN bad b ON true LEFT JOIN posted p ON true"
)


def _repeats(conn, checked, reverses, earlier: dict[int, int]) -> list[int]:
    """Transactions whose key is already used: the earlier id when the postings are the
    same (refused otherwise); the others are posted."""
    for n, txn_id in earlier.items():
        item, postings = checked[n - 1]
        if sorted(postings_of(conn, txn_id)) != sorted(
            (p.account, p.currency, p.amount) for p in postings
        ):
            raise LedgerError(f"idempotency key {item.idempotency_key!r} reused with other postings")
    rest = [n for n in range(1, len(checked) + 1) if n not in earlier]
    posted = iter(_post_checked(conn, [checked[n - 1] for n in rest],
                                [reverses[n - 1] for n in rest]) if rest else [])
    return [earlier[n] if n in earlier else next(posted) for n in range(1, len(checked) + 1)]


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
    """The account with its balance (a sharded account's: its row plus its shards)."""
    row = conn.execute(
        text("SELECT id, code, currency, allow_negative, sharded, balance FROM account_balances "
             "WHERE code = :c"),
        {"c": code},
    ).one_or_none()
    if row is None:
        raise NotFound(f"no account {code!r}")
    return account_of(row)


def balances(conn: Connection, codes: Iterable[str]) -> dict[str, int]:
    """Balances of the accounts that exist among ``codes``, read in one snapshot."""
    rows = conn.execute(
        text("SELECT code, balance FROM account_balances WHERE code = ANY(:c)"),
        {"c": list(codes)},
    )
    return {r.code: int(r.balance) for r in rows}


#: Transactions proven per query when ``check`` reports its progress.
CHECK_BATCH = 20_000


def check(conn: Connection, progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """Prove the ledger's invariants on the live database (``ballast ledger check``).

    ``progress(n, total=...)``, when given, is told the number of transactions first
    (``progress(0, total=N)``), then each batch of transactions proven balanced, then the
    remaining checks as they finish; the proof is the same as in one pass.
    """
    tick = progress or (lambda n=1, total=None: None)
    counts = conn.execute(
        text(
            "SELECT (SELECT count(*) FROM ledger_transactions) AS n_txn, "
            "(SELECT count(*) FROM ledger_entries) AS n_entries"
        )
    ).one()
    unbalanced_sql = (
        "SELECT transaction_id, currency, sum(amount) AS total FROM ledger_entries "
        "WHERE transaction_id > :lo AND transaction_id <= :hi "
        "GROUP BY transaction_id, currency HAVING sum(amount) <> 0 "
        "ORDER BY transaction_id LIMIT 1000"
    )
    lo, hi = conn.execute(text(
        "SELECT COALESCE(min(transaction_id), 1) - 1, COALESCE(max(transaction_id), 0) "
        "FROM ledger_entries")).one()
    # The transactions, then the five other checks, one tick each.
    tick(0, total=int(counts.n_txn) + 5)
    step = (hi - lo) if progress is None else CHECK_BATCH
    unbalanced: list[dict[str, Any]] = []
    done = 0
    start = lo
    while start < hi and len(unbalanced) < 1000:
        end = min(hi, start + max(step, 1))
        unbalanced += [
            {"transaction_id": r.transaction_id, "currency": r.currency, "sum": int(r.total)}
            for r in conn.execute(text(unbalanced_sql), {"lo": start, "hi": end})
        ][: 1000 - len(unbalanced)]
        if progress is not None:
            seen = conn.execute(text(
                "SELECT count(*) FROM ledger_transactions WHERE id > :lo AND id <= :hi"),
                {"lo": start, "hi": end}).scalar_one()
            done += seen
            tick(seen)
        start = end
    if progress is not None and done < int(counts.n_txn):
        tick(int(counts.n_txn) - done)  # transactions without entries
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
    tick(1)
    # A sharded account's cached balance is its row plus its shards (account_balances).
    mismatches = [
        {"account": r.code, "cached": int(r.balance), "entries": int(r.total)}
        for r in conn.execute(
            text(
                "SELECT a.code, a.balance, COALESCE(s.total, 0) AS total FROM account_balances a "
                "LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_entries "
                "GROUP BY account_id) s ON s.account_id = a.id "
                "WHERE a.balance <> COALESCE(s.total, 0) ORDER BY a.code LIMIT 1000"
            )
        )
    ]
    tick(1)
    negatives = [
        {"account": r.code, "balance": int(r.balance)}
        for r in conn.execute(
            text(
                "SELECT code, balance FROM account_balances WHERE NOT allow_negative "
                "AND balance < 0 ORDER BY code LIMIT 1000"
            )
        )
    ]
    tick(1)
    # Shards belong to unlimited accounts only; one on an account with a limit would
    # hide money from its CHECK constraint.
    mismatches += [
        {"account": r.code, "cached": int(r.balance), "entries": None,
         "problem": f"{r.code} has a limit but {r.n} shard(s)"}
        for r in conn.execute(
            text(
                "SELECT a.code, a.balance, count(*) AS n FROM account_shards s "
                "JOIN account_balances a ON a.id = s.account_id "
                "WHERE NOT a.sharded OR NOT a.allow_negative GROUP BY a.code, a.balance "
                "ORDER BY a.code LIMIT 1000"
            )
        )
    ]
    tick(2)
    return {
        "ok": not (unbalanced or mismatches or negatives),
        "transactions": int(counts.n_txn),
        "entries": int(counts.n_entries),
        "unbalanced": unbalanced,
        "balance_mismatches": mismatches,
        "negative_balances": negatives,
    }


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
