"""Double-entry rules, pure: postings, balance per currency, account rules."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from domain import accounts
from domain.errors import InsufficientFunds, LedgerError
from domain.money import CURRENCIES

#: Account-code prefixes whose balance may go below zero.  ``world`` is the
#: outside of the platform; ``user`` wallets carry a tiered credit line that
#: the balance guard enforces; ``provider`` mirrors an external party;
#: ``adjustments`` is the platform's side of operator corrections (an upward
#: correction is a cost to the platform, so it goes negative).
NEGATIVE_ALLOWED_PREFIXES = tuple(accounts.prefix(k) for k in (
    accounts.WORLD, accounts.USER, accounts.PROVIDER, accounts.ADJUSTMENTS))

#: The accounts among those that have no limit at all: no rule ever reads their
#: balance before a change (a user wallet's credit line and the guard's limits do read
#: theirs).  Their cached balance is kept in shards, so postings never queue on them.
UNLIMITED_PREFIXES = (accounts.prefix(accounts.WORLD), accounts.prefix(accounts.ADJUSTMENTS))


@dataclass(frozen=True, slots=True)
class Posting:
    """One line of a ledger transaction.

    Parameters:
      account: the account code, e.g. ``user:42:NGN``.
      currency: ISO-like currency code of the amount.
      amount: signed minor units; positive credits the account's balance.
    """

    account: str
    currency: str
    amount: int


def may_go_negative(code: str) -> bool:
    return code.startswith(NEGATIVE_ALLOWED_PREFIXES)


def is_unlimited(code: str) -> bool:
    """May go negative and no rule limits it: its balance may be kept in shards."""
    return code.startswith(UNLIMITED_PREFIXES) and may_go_negative(code)


@dataclass(frozen=True, slots=True)
class PostingBatchItem:
    """One transaction of a batch posted at once (``infra.ledger.post_many``).

    Parameters:
      postings: its lines; they must balance per currency on their own.
      kind: the transaction's kind, e.g. ``market_payout``.
      idempotency_key: optional; unique across the ledger and within the batch.
      memo, metadata: stored with the transaction.
    """

    postings: tuple[Posting, ...] | list[Posting]
    kind: str
    idempotency_key: str | None = None
    memo: str | None = None
    metadata: dict | None = None


def validate_batch(items: Iterable[PostingBatchItem]) -> list[tuple[PostingBatchItem, list[Posting]]]:
    """Check every transaction of a batch (as ``validate_postings``) and that no
    idempotency key is used twice in it; each item with its postings as a list."""
    checked = []
    keys: set[str] = set()
    for n, item in enumerate(items):
        try:
            postings = validate_postings(item.postings)
        except LedgerError as exc:
            raise LedgerError(f"transaction {n} of the batch: {exc}") from None
        if item.idempotency_key is not None:
            if item.idempotency_key in keys:
                raise LedgerError(f"idempotency key {item.idempotency_key!r} twice in one batch")
            keys.add(item.idempotency_key)
        checked.append((item, postings))
    if not checked:
        raise LedgerError("an empty batch posts nothing")
    return checked


def validate_postings(postings: Iterable[Posting]) -> list[Posting]:
    """Check a transaction before it touches anything; return it as a list.

    Raises LedgerError when it is empty, has a non-integer or zero amount,
    an unknown currency, or does not sum to zero in every currency.
    """
    postings = list(postings)
    if len(postings) < 2:
        raise LedgerError("a transaction needs at least two postings")
    sums: dict[str, int] = defaultdict(int)
    for p in postings:
        if type(p.amount) is not int:
            raise LedgerError(f"amount for {p.account} is not an integer: {p.amount!r}")
        if p.amount == 0:
            raise LedgerError(f"zero amount for {p.account}")
        if p.currency not in CURRENCIES:
            raise LedgerError(f"unknown currency {p.currency!r}")
        if not p.account or len(p.account) > 200:
            raise LedgerError(f"bad account code {p.account!r}")
        sums[p.currency] += p.amount
    unbalanced = {cur: s for cur, s in sums.items() if s != 0}
    if unbalanced:
        raise LedgerError(f"transaction does not balance: {unbalanced}")
    return postings


def net_by_account(postings: Iterable[Posting]) -> dict[str, int]:
    """Sum of postings per account code."""
    net: dict[str, int] = defaultdict(int)
    for p in postings:
        net[p.account] += p.amount
    return dict(net)


def check_resulting_balance(code: str, allow_negative: bool, balance: int, delta: int) -> int:
    """The balance after ``delta``; refuses a forbidden negative balance."""
    after = balance + delta
    if after < 0 and not allow_negative:
        raise InsufficientFunds(
            f"{code} would go negative: balance {balance}, change {delta}, short by {-after}"
        )
    return after


def reversal_of(postings: Iterable[Posting]) -> list[Posting]:
    """The postings that undo ``postings`` exactly."""
    return [Posting(p.account, p.currency, -p.amount) for p in postings]
