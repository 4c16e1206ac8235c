"""Double-entry rules, pure: postings, balance per currency, account rules."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from domain.errors import InsufficientFunds, LedgerError
from domain.money import CURRENCIES

#: Account-code prefixes whose balance may go below zero.  ``world`` is the
#: outside of the platform; ``user`` wallets carry a tiered credit line that
#: the balance guard enforces; ``provider`` mirrors an external party;
#: ``adjustments`` is the platform's side of operator corrections (an upward
#: correction is a cost to the platform, so it goes negative).
NEGATIVE_ALLOWED_PREFIXES = ("world:", "user:", "provider:", "adjustments:")


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
