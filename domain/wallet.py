"""Wallet changes and the rules every change to a user wallet must pass.

The tiered balance guard (SPEC §4) plugs in here: ``check`` is the single
place a user-initiated change is validated.  Until tiers exist a wallet may
not be overdrawn by its owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from domain.errors import Refused

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
      rule: the rule's name (``min_balance``, ``daily_limit``...).
      exceeded_by: by how much, in minor units.
    """

    code = "balance_refused"

    def __init__(self, message: str, *, rule: str, exceeded_by: int) -> None:
        super().__init__(message)
        self.rule = rule
        self.exceeded_by = exceeded_by


def wallet_account(user_id: str, currency: str) -> str:
    return f"user:{user_id}:{currency}"


def check_no_overdraft(change: WalletChange, balance_before: int) -> None:
    """Until the tiered guard: an owner may not take a wallet below zero."""
    after = balance_before + change.amount
    if change.user_initiated and change.amount < 0 and after < 0:
        raise BalanceRefused(
            f"{change.kind} of {-change.amount} {change.currency} refused: balance is "
            f"{balance_before}, short by {-after}",
            rule="insufficient_balance",
            exceeded_by=-after,
        )
