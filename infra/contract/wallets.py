"""Queue ``ballast.wallets`` (CONTRACT.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from infra.contract.base import (
    ActorSpec,
    Amount,
    Command,
    Currency,
    Identifier,
    ShortText,
    SignedAmount,
)

QUEUE = "ballast.wallets"

Tier = Literal["bronze", "silver", "gold", "platinum", "diamond"]


class Deposit(Command):
    user_id: Identifier
    currency: Currency
    amount: Amount
    reference: ShortText


class Withdraw(Command):
    user_id: Identifier
    currency: Currency
    amount: Amount
    reference: ShortText


class AdjustBalance(Command):
    user_id: Identifier
    currency: Currency
    amount: SignedAmount
    reason: ShortText
    performed_by: Identifier

    @field_validator("amount")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("an adjustment of zero changes nothing")
        return v


class SetTier(Command):
    user_id: Identifier
    tier: Tier


class FundTreasury(Command):
    currency: Currency
    amount: Amount
    reference: ShortText
    performed_by: Identifier


SPECS = [
    ActorSpec("deposit", QUEUE, Deposit),
    ActorSpec("withdraw", QUEUE, Withdraw),
    ActorSpec("adjust_balance", QUEUE, AdjustBalance),
    ActorSpec("set_tier", QUEUE, SetTier),
    ActorSpec("fund_treasury", QUEUE, FundTreasury),
]
