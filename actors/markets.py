"""Market payouts actors (SPEC §2): adapters of the handlers in ``services/markets.py``."""

from __future__ import annotations

from infra.contract.markets import (
    ConfirmMarket,
    DisputeMarket,
    OpenMarket,
    PlaceCommitment,
    ResolveMarket,
    RetryMarketSettlement,
    RollbackMarket,
    SettleMarket,
    VoidMarket,
)
from infra.messaging import command
from infra.uow import UnitOfWork
from services import markets

#: A settlement of 100,000 commitments takes seconds; leave room, stay below
#: RabbitMQ's consumer timeout (30 min).
SETTLE_TIME_LIMIT_MS = 10 * 60 * 1000  # ms


@command()
def open_market(cmd: OpenMarket, uow: UnitOfWork):
    return markets.open_market(cmd, uow)


@command()
def place_commitment(cmd: PlaceCommitment, uow: UnitOfWork):
    return markets.place_commitment(cmd, uow)


@command()
def resolve_market(cmd: ResolveMarket, uow: UnitOfWork):
    return markets.resolve_market(cmd, uow)


@command()
def void_market(cmd: VoidMarket, uow: UnitOfWork):
    return markets.void_market(cmd, uow)


@command()
def rollback_market(cmd: RollbackMarket, uow: UnitOfWork):
    return markets.rollback_market(cmd, uow)


@command()
def dispute_market(cmd: DisputeMarket, uow: UnitOfWork):
    return markets.dispute_market(cmd, uow)


@command()
def confirm_market(cmd: ConfirmMarket, uow: UnitOfWork):
    return markets.confirm_market(cmd, uow)


@command()
def retry_market_settlement(cmd: RetryMarketSettlement, uow: UnitOfWork):
    return markets.retry_market_settlement(cmd, uow)


@command(transactional=False, time_limit=SETTLE_TIME_LIMIT_MS)  # one transaction of its own
def settle_market(cmd: SettleMarket, uow: UnitOfWork):
    return markets.settle_market(cmd, uow)
