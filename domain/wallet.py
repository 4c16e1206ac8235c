"""Wallet changes: what one change to a user wallet is, and how a refusal reads.

The rules a change must pass (tiers, limits, SPEC §4) are in ``domain.guard``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from domain import accounts
from domain.errors import LedgerError, Refused
from domain.ledger import Posting

ChangeKind = Literal[
    "deposit", "withdrawal", "wager", "adjustment", "payout", "refund", "reversal", "transfer"
]

#: Changes a user (or an operator on their behalf) asks for: validated.
USER_INITIATED: frozenset[str] = frozenset({"deposit", "withdrawal", "wager", "adjustment"})


@dataclass(frozen=True, slots=True)
class WalletChange:
    """One change to one user wallet.

    Parameters:
      user_id: whose wallet.
      currency: which wallet (one per currency).
      amount: signed minor units; negative takes money out.
      kind: what it is (see ChangeKind); decides whether it is validated.
      reason: free text for the audit trail.
      performed_by: who asked (the user, an admin, ``system``).
      metadata: anything an operator would want in the audit line.
    """

    user_id: str
    currency: str
    amount: int
    kind: str
    reason: str = ""
    performed_by: str = "system"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def account(self) -> str:
        return wallet_account(self.user_id, self.currency)

    @property
    def user_initiated(self) -> bool:
        return self.kind in USER_INITIATED


class BalanceRefused(Refused):
    """A user-initiated change broke a balance rule.

    Parameters:
      rule: the rule's name (``min_balance``, ``max_balance``, ``daily_limit``,
        ``weekly_limit``).
      exceeded_by: by how much, in minor units.
      limit: the rule's limit, in minor units (when known).
      change: the refused change (when known).
    """

    code = "balance_refused"

    def __init__(self, message: str, *, rule: str, exceeded_by: int, limit: int | None = None,
                 change: WalletChange | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.exceeded_by = exceeded_by
        self.limit = limit
        self.change = change

    def data(self) -> dict[str, Any]:
        """The refusal as an event payload (``balance.change_rejected``)."""
        c = self.change
        return {
            "user_id": c.user_id if c else None,
            "currency": c.currency if c else None,
            "amount": c.amount if c else None,
            "kind": c.kind if c else None,
            "rule": self.rule,
            "limit": self.limit,
            "exceeded_by": self.exceeded_by,
            "reason": str(self),
        }


def wallet_account(user_id: str, currency: str) -> str:
    return accounts.user(user_id, currency)



def postings_for(changes: Sequence[WalletChange], counter_account: str) -> tuple[str, list[Posting]]:
    """The one balanced transaction of ``changes`` (one currency): each wallet's net
    change, and ``counter_account`` taking the other side.  Returns (currency, postings)."""
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
    return currency, postings


def paired_with_balances(changes: Sequence[WalletChange],
                         balances: Mapping[str, int]) -> list[tuple[WalletChange, int]]:
    """Each change with its wallet's balance just before it (``balances``: before the
    first), in order."""
    running = dict(balances)
    paired: list[tuple[WalletChange, int]] = []
    for c in changes:
        paired.append((c, running[c.account]))
        running[c.account] += c.amount
    return paired


#: Up to this many changes in one transaction are told one by one (``wallet.changed``).
NOTIFY_MAX_CHANGES = 100


def changed_events(paired: Sequence[tuple[WalletChange, int]],
                   txn_id: int | None) -> list[tuple[str, dict[str, Any], str | None]]:
    """The ``wallet.changed`` events of the changes (none past ``NOTIFY_MAX_CHANGES``)."""
    if len(paired) > NOTIFY_MAX_CHANGES:
        return []
    return [
        ("wallet.changed",
         {"user_id": c.user_id, "currency": c.currency, "amount": c.amount, "kind": c.kind,
          "balance_before": before, "balance_after": before + c.amount,
          "transaction_id": txn_id},
         c.user_id)
        for c, before in paired
    ]
