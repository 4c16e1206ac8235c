"""Queue ``ballast.markets`` and the market settlement step (CONTRACT.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from infra.contract.base import ActorSpec, Amount, Command, Currency, Identifier, ShortText

QUEUE = "ballast.markets"

Bps = Annotated[StrictInt, Field(ge=0, le=10_000)]


class MarketOption(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    option_id: Identifier
    label: ShortText


class OpenMarket(Command):
    market_id: Identifier
    title: ShortText
    kind: Literal["binary", "multi"]
    options: Annotated[list[MarketOption], Field(min_length=2, max_length=100)]
    currency: Currency
    creator_id: Identifier
    creator_fee_bps: Bps
    house_fee_bps: Bps = 500


class PlaceCommitment(Command):
    commitment_id: Identifier
    market_id: Identifier
    user_id: Identifier
    amount: Amount
    option_id: Identifier | None = None
    position: Literal["yes", "no"] | None = None


class ResolveMarket(Command):
    market_id: Identifier
    winning_option_id: Identifier
    resolved_by: Identifier


class VoidMarket(Command):
    market_id: Identifier
    reason: ShortText
    resolved_by: Identifier


class RollbackMarket(Command):
    market_id: Identifier
    reason: ShortText
    requested_by: Identifier


class DisputeMarket(Command):
    market_id: Identifier
    reason: ShortText
    disputed_by: Identifier


class ConfirmMarket(Command):
    market_id: Identifier
    confirmed_by: Identifier
    note: ShortText = ""


class RetryMarketSettlement(Command):
    """``ballast market settle ID --by NAME`` as a message: a failed settlement is retried."""

    market_id: Identifier
    retried_by: Identifier


class SettleMarket(Command):
    market_id: Identifier
    distribution_id: StrictInt


SPECS = [
    ActorSpec("open_market", QUEUE, OpenMarket),
    ActorSpec("place_commitment", QUEUE, PlaceCommitment),
    ActorSpec("resolve_market", QUEUE, ResolveMarket),
    ActorSpec("void_market", QUEUE, VoidMarket),
    ActorSpec("rollback_market", QUEUE, RollbackMarket),
    ActorSpec("dispute_market", QUEUE, DisputeMarket),
    ActorSpec("confirm_market", QUEUE, ConfirmMarket),
    ActorSpec("retry_market_settlement", QUEUE, RetryMarketSettlement),
    ActorSpec("settle_market", "ballast.step.settlement", SettleMarket, step=True),
]
