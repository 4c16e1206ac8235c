"""Operational steps: the outbox sweeper and retention; the shadow persona pool an operator
grows (``add_persona``)."""

from __future__ import annotations

from infra import outbox, retention
from infra.broker import get_broker
from infra.contract.operations import AddPersona, PruneRetention, SweepOutbox
from infra.db.engine import get_engine
from infra.messaging import command
from infra.settings import get_settings
from infra.uow import UnitOfWork
from services import personas


# Fired every 10 s: transient errors are retried within the period, then the next firing
# takes over (tests/schedules/test_periodic_retries.py holds the budgets to the table).
@command(transactional=False, max_retries=20, retry_within_ms=9_000)
def sweep_outbox(cmd: SweepOutbox) -> None:
    """Publish what a crash between commit and publish left in the outbox."""
    outbox.sweep(get_engine(), get_broker())


@command(transactional=False, max_retries=20, retry_within_ms=3_500_000)  # fired hourly
def prune_retention(cmd: PruneRetention) -> None:
    """Delete published outbox rows and remembered request ids past their windows."""
    retention.run(get_engine(), get_settings())


@command()
def add_persona(cmd: AddPersona, uow: UnitOfWork):
    return personas.add_persona(cmd, uow)
